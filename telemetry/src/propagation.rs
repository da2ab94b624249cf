//! W3C trace context (`traceparent`, `tracestate`): taken from incoming requests, put on
//! outgoing ones, with a client span per outgoing HTTP call.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The caller's trace context from a request's headers (empty without a valid `traceparent`).
pub fn parent_from(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` a child of the caller's trace, when the request carried one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = parent_from(headers);
    if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// How much of an outgoing URL its span may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Url {
    /// `url.full` without credentials, query and fragment (discovery and key URLs).
    Path,
    /// Only `server.address` and `server.port`: the URL itself may be a credential (webhooks).
    HostOnly,
}

/// Sends an outgoing request inside a client span (`{method}`, with `http.request.method`,
/// `server.address`, `server.port`, `url.full` as `shown` allows, `http.response.status_code`)
/// and carries the trace on in `traceparent`.
pub async fn send(
    request: reqwest::RequestBuilder,
    shown: Url,
) -> reqwest::Result<reqwest::Response> {
    let (client, request) = request.build_split();
    let mut request = request?;
    let url = request.url();
    let full = match shown {
        Url::Path => {
            let mut full = url.clone();
            full.set_query(None);
            full.set_fragment(None);
            let _ = full.set_password(None);
            let _ = full.set_username("");
            full.to_string()
        }
        Url::HostOnly => String::new(),
    };
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default().unwrap_or_default(),
        url.full = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    if !full.is_empty() {
        span.record("url.full", full.as_str());
    }
    {
        let _entered = span.enter();
        inject_current(request.headers_mut());
    }
    let result = client.execute(request).instrument(span.clone()).await;
    match &result {
        Ok(response) => {
            let status = response.status().as_u16();
            span.record("http.response.status_code", status);
            if status >= 400 {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.to_string());
            }
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record(
                "error.type",
                if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                },
            );
        }
    }
    result
}
