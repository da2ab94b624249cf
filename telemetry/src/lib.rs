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

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::Dispatch;
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
/// the transport crates; only a trace's first span when nothing is exported), and `extra`. Call it inside the Tokio runtime (the exporters run on
/// it). Fails on a malformed filter or an unsupported `OTEL_*` setting.
pub fn init(options: &Options, extra: Option<ExtraLayer>) -> anyhow::Result<Telemetry> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (dispatch, telemetry) = build(options, extra, &export::process_env, std::io::stderr, ansi)?;
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|_| anyhow::anyhow!("a log subscriber is installed already"))?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(telemetry)
}

/// The subscriber [`init`] installs, writing to `writer`, with the variables `var` gives.
fn build<W>(
    options: &Options,
    extra: Option<ExtraLayer>,
    var: export::Vars<'_>,
    writer: W,
    ansi: bool,
) -> anyhow::Result<(Dispatch, Telemetry)>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match var("KEYGATE_LOG").or_else(|| var("RUST_LOG")) {
        Some(spec) => tracing_subscriber::EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("log filter {spec:?}: {e}"))?,
        None => tracing_subscriber::EnvFilter::new(options.default_filter),
    };
    let exporter = export::from_env(var)?;
    let exporting = exporter.is_some();
    let mut builder = SdkTracerProvider::builder().with_resource(export::resource(options, var));
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
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(format::Fields::new(options.format))
        .event_format(format::Event::new(options.format, dispatch_cell.clone()))
        .with_filter(filter);
    // Spans only: log events stay in the logs and never become span events (a log line's
    // fields are for the operator's eyes, not for a tracing backend).
    let span_targets = Targets::new()
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
    // When nothing is exported, only a trace's first span gets an OpenTelemetry span: the
    // spans inside it would never be seen, and what they cost is kept off every request
    // (log lines and problem bodies inside them carry the first span's ids).
    let span_filter = tracing_subscriber::filter::dynamic_filter_fn(move |_, cx| {
        exporting || cx.lookup_current().is_none()
    })
    .with_callsite_filter(move |meta| {
        if meta.is_span() && span_targets.would_enable(meta.target(), meta.level()) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    })
    .with_max_level_hint(LevelFilter::INFO);
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
    Ok((
        dispatch,
        Telemetry {
            provider,
            exporting,
        },
    ))
}

/// Trace id and span id (lowercase hex, as in `traceparent`) of the current span, or of its
/// innermost ancestor with an OpenTelemetry span, when there is one.
pub fn current_ids() -> Option<(String, String)> {
    let id = tracing::Span::current().id()?;
    tracing::dispatcher::get_default(|dispatch| format::ids_from(id.clone(), dispatch))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A log destination the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn options(format: LogFormat) -> Options {
        Options {
            service_name: "test",
            service_version: "0",
            format,
            default_filter: "info",
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// Logs one event inside a span whose parent is the caller's `traceparent`; returns the
    /// output and the span's ids.
    fn log_in_span(format: LogFormat) -> (String, (String, String)) {
        log_in_span_filtered(format, &[])
    }

    fn log_in_span_filtered(format: LogFormat, env: &[(&str, &str)]) -> (String, (String, String)) {
        let out = Buffer::default();
        let (dispatch, _telemetry) =
            build(&options(format), None, &vars(env), out.clone(), false).unwrap();
        let ids = tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request", route = "/x");
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            propagation::continue_trace(&span, &headers);
            let _entered = span.enter();
            // A step below the log filter's level, and one the span filter drops.
            let debug = tracing::debug_span!("detail");
            let _inner = debug.enter();
            tracing::warn!(status = 400, "request refused");
            drop(_inner);
            current_ids().unwrap()
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (text, ids)
    }

    #[test]
    fn json_lines_carry_the_ids_of_their_span_in_the_callers_trace() {
        let (text, (trace_id, span_id)) = log_in_span(LogFormat::Json);
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            span_id, "00f067aa0ba902b7",
            "the span is the caller's child"
        );
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        assert_eq!(line["message"], "request refused");
        assert_eq!(line["status"], 400);
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["route"], "/x");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    /// Nothing exported: a span inside a trace's first one gets no OpenTelemetry span of its
    /// own (what one costs is kept off every request), and its log lines and `current_ids`
    /// carry the first span's ids. Exported, it has ids of its own in the same trace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_inside_the_first_have_ids_of_their_own_only_when_exported() {
        let exported: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        for (env, own) in [(&[][..], false), (exported, true)] {
            let out = Buffer::default();
            let (dispatch, telemetry) = build(
                &options(LogFormat::Json),
                None,
                &vars(env),
                out.clone(),
                false,
            )
            .unwrap();
            assert_eq!(telemetry.exporting(), own);
            let (first, inner, tracked) = tracing::dispatcher::with_default(&dispatch, || {
                let span = tracing::info_span!("request");
                let _entered = span.enter();
                let first = current_ids().unwrap();
                let step = tracing::info_span!("store.step");
                let _inner = step.enter();
                tracing::warn!("inside");
                let tracked = step
                    .id()
                    .and_then(|id| tracing_opentelemetry::get_otel_context(&id, &dispatch))
                    .is_some();
                (first, current_ids().unwrap(), tracked)
            });
            assert_eq!(tracked, own, "exporting {own}");
            assert_eq!(inner.0, first.0, "one trace");
            assert_eq!(inner.1 != first.1, own, "exporting {own}");
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(line["trace_id"], inner.0.as_str(), "{text}");
            assert_eq!(line["span_id"], inner.1.as_str(), "{text}");
            telemetry.shutdown().await;
        }
    }

    #[test]
    fn a_filter_that_hides_the_spans_from_the_log_keeps_their_ids_on_its_lines() {
        let (text, (trace_id, span_id)) =
            log_in_span_filtered(LogFormat::Json, &[("KEYGATE_LOG", "warn")]);
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["trace_id"], trace_id.as_str(), "{text}");
        assert_eq!(line["span_id"], span_id.as_str(), "{text}");
    }

    #[test]
    fn text_lines_carry_the_ids_and_no_colours_off_a_terminal() {
        let (text, (trace_id, span_id)) = log_in_span(LogFormat::Text);
        assert!(text.contains("request{route=\"/x\"}: "), "{text}");
        assert!(text.contains("request refused status=400"), "{text}");
        assert!(
            text.trim_end()
                .ends_with(&format!("trace_id={trace_id} span_id={span_id}")),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn export_is_off_unless_asked_and_bad_settings_are_named() {
        let off = |pairs: &[(&str, &str)]| export::from_env(&vars(pairs)).unwrap().is_none();
        assert!(off(&[]));
        assert!(off(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ]));
        assert!(off(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ]));
        let err = |pairs: &[(&str, &str)]| export::from_env(&vars(pairs)).unwrap_err().to_string();
        assert!(err(&[("OTEL_TRACES_EXPORTER", "zipkin")]).contains("OTEL_TRACES_EXPORTER"));
        assert!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ])
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        assert!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
            ])
            .contains("/nonexistent/ca.pem")
        );
        let bad_filter = build(
            &options(LogFormat::Text),
            None,
            &vars(&[("KEYGATE_LOG", "info,=[")]),
            Buffer::default(),
            false,
        );
        assert!(bad_filter.unwrap_err().to_string().contains("log filter"));
    }

    #[tokio::test]
    async fn both_protocols_build_an_exporter() {
        for protocol in ["grpc", "http/protobuf"] {
            let exporter = export::from_env(&vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ]))
            .unwrap();
            assert!(exporter.is_some(), "{protocol}");
        }
    }
}
