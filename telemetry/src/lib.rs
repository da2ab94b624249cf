//! Logs and traces of Keygate's binaries: one subscriber set-up (log format with trace ids,
//! OpenTelemetry spans exported over OTLP when the standard `OTEL_*` variables ask for it) and
//! the W3C trace context taken from requests and put on outgoing ones.
//!
//! Export is off unless `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_TRACES_EXPORTER=otlp` is set. Spans exist either way, so every log line and problem
//! body carries a trace id and a span id and an incoming `traceparent` is passed on.

mod export;
mod format;
pub mod propagation;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::Dispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::Registry;

pub use export::export_failures;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields,
    /// `trace_id`, `span_id` and the enclosing `spans`.
    Json,
}

impl LogFormat {
    /// `json` unless standard error is a terminal.
    pub fn for_stderr() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// What [`init`] needs to know about the binary.
#[derive(Debug, Clone)]
pub struct Options {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: &'static str,
    /// `service.version`.
    pub service_version: &'static str,
    /// Log format.
    pub format: LogFormat,
    /// Log filter when neither `KEYGATE_LOG` nor `RUST_LOG` is set.
    pub default_filter: &'static str,
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports the queued spans (bounded by `OTEL_BSP_EXPORT_TIMEOUT`) and stops the exporter.
    /// Runs on a blocking thread: the exporter's own tasks need the runtime's workers.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.shutdown();
        })
        .await;
    }
}

/// Layers a binary adds to the subscriber (for example metrics taken from span timings).
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber: the log layer (filtered by `KEYGATE_LOG`, then `RUST_LOG`,
/// then `default_filter`), the OpenTelemetry layer (spans at info and above of every crate but
/// the transport crates), and `extra`. Call it inside the Tokio runtime (the exporters run on
/// it). Fails on a malformed filter or an unsupported `OTEL_*` setting.
pub fn init(options: &Options, extra: Option<ExtraLayer>) -> anyhow::Result<Telemetry> {
    let filter = match std::env::var("KEYGATE_LOG").or_else(|_| std::env::var("RUST_LOG")) {
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("log filter {spec:?}: {e}"))?,
        Err(_) => tracing_subscriber::EnvFilter::new(options.default_filter),
    };
    let exporter = export::from_env()?;
    let exporting = exporter.is_some();
    let mut builder = SdkTracerProvider::builder().with_resource(export::resource(options));
    if let Some(exporter) = exporter {
        builder = builder.with_batch_exporter(exporter);
    } else {
        // Nothing is exported: root spans are not recorded (ids still exist for the logs),
        // and a caller's sampling decision is passed on unchanged.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    let provider = builder.build();
    let tracer = provider.tracer(options.service_name);

    let dispatch_cell = Arc::new(OnceLock::new());
    let log_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .fmt_fields(format::Fields::new(options.format))
        .event_format(format::Event::new(options.format, dispatch_cell.clone()))
        .with_filter(filter);
    let span_filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("rustls", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF);
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(span_filter);
    let subscriber = Registry::default()
        .with(extra)
        .with(otel_layer)
        .with(log_layer);
    let dispatch = Dispatch::new(subscriber);
    let _ = dispatch_cell.set(dispatch.downgrade());
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|_| anyhow::anyhow!("a log subscriber is installed already"))?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// Trace id and span id (lowercase hex, as in `traceparent`) of the current span, when there
/// is one.
pub fn current_ids() -> Option<(String, String)> {
    ids_of(&tracing::Span::current().context())
}

fn ids_of(cx: &opentelemetry::Context) -> Option<(String, String)> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
