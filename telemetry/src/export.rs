//! The OTLP span exporter chosen by the standard variables (`grpc` or `http/protobuf`), the
//! resource, and a wrapper that counts and logs export failures without ever failing a request.

use crate::Options;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static FAILURES: AtomicU64 = AtomicU64::new(0);
static FAILING: AtomicBool = AtomicBool::new(false);

/// Span batches the exporter could not deliver since the process started.
pub fn export_failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// Reads a variable; empty counts as unset.
pub(crate) type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The resource: `service.name` (`OTEL_SERVICE_NAME`, else the binary's), `service.version`,
/// and `OTEL_RESOURCE_ATTRIBUTES`.
pub(crate) fn resource(options: &Options, var: Vars<'_>) -> Resource {
    let mut builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        options.service_version,
    ));
    if var("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(options.service_name);
    }
    builder.build()
}

/// The exporter the variables ask for, or none.
pub(crate) fn from_env(var: Vars<'_>) -> anyhow::Result<Option<Exporter>> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint_set = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None if !endpoint_set => return Ok(None),
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            anyhow::bail!("OTEL_TRACES_EXPORTER={other:?} is not supported (otlp or none)")
        }
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    // A private CA for the collector's certificate (the web PKI roots otherwise).
    let ca = match var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
    {
        Some(path) => Some(
            std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {e}"))?,
        ),
        None => None,
    };
    let https = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some_and(|e| e.starts_with("https://"));
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let inner = match protocol.as_str() {
        "grpc" => {
            let mut grpc = builder
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if https || ca.is_some() {
                use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
                let tls = match &ca {
                    Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                    None => ClientTlsConfig::new().with_enabled_roots(),
                };
                grpc = grpc.with_tls_config(tls);
            }
            grpc.build()
        }
        "http/protobuf" => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(HttpClient::new(ca.as_deref())?)
            .build(),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (grpc or http/protobuf)"
        ),
    }
    .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    Ok(Some(Exporter { inner }))
}

/// The OTLP exporter, counting failures.
#[derive(Debug)]
pub(crate) struct Exporter {
    inner: opentelemetry_otlp::SpanExporter,
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                if FAILING.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                if !FAILING.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "trace export failed (spans are dropped, requests are not affected)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// OTLP over HTTP with the workspace's reqwest client. The batch processor exports from a
/// thread of its own, so each request runs on the Tokio runtime `init` was called in.
#[derive(Debug)]
struct HttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpClient {
    fn new(ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("the OTLP exporter needs the Tokio runtime"))?;
        let mut client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            client = client.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?
            {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client.build()?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        task.await?
    }
}
