{{/* Names, labels and images shared by every template. */}}

{{- define "keygate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keygate.server.name" -}}{{ include "keygate.fullname" . }}-server{{- end -}}
{{- define "keygate.operator.name" -}}{{ include "keygate.fullname" . }}-operator{{- end -}}
{{- define "keygate.configSecret" -}}{{ include "keygate.fullname" . }}-config{{- end -}}

{{- define "keygate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: keygate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keygate
{{- end -}}

{{- define "keygate.selector" -}}
app.kubernetes.io/name: keygate
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "keygate.image" -}}
{{ .root.Values.image.registry }}/{{ .image }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{- define "keygate.issuer" -}}
{{- if .Values.server.issuer -}}
{{ .Values.server.issuer | trimSuffix "/" }}
{{- else -}}
http://{{ include "keygate.server.name" . }}.{{ .Release.Namespace }}.svc.cluster.local{{ if ne (int .Values.service.port) 80 }}:{{ .Values.service.port }}{{ end }}
{{- end -}}
{{- end -}}

{{/* The hardened security context of every container. */}}
{{- define "keygate.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keygate.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- /* The OpenTelemetry variables of a component (a YAML map; empty while tracing is off).
Takes (dict "root" $ "service" NAME). */ -}}
{{- define "keygate.tracingEnv" -}}
{{- $t := .root.Values.tracing -}}
{{- if $t.endpoint -}}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ $t.endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ $t.protocol | quote }}
OTEL_TRACES_SAMPLER: {{ $t.sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ $t.samplerArg | quote }}
OTEL_SERVICE_NAME: {{ .service | quote }}
OTEL_RESOURCE_ATTRIBUTES: {{ printf "service.namespace=%s,k8s.namespace.name=%s" .root.Release.Name .root.Release.Namespace | quote }}
{{- end -}}
{{- end -}}
