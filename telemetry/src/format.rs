//! The two log formats: a text line or a JSON object per event, each with the trace id and the
//! span id of the span the event happened in.

use crate::LogFormat;
use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::{Arc, OnceLock};
use tracing::Subscriber;
use tracing::dispatcher::{Dispatch, WeakDispatch};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Field formatting of spans: `key=value` pairs or a JSON object.
#[derive(Debug)]
pub(crate) struct Fields {
    json: bool,
}

impl Fields {
    pub(crate) fn new(format: LogFormat) -> Self {
        Self {
            json: format == LogFormat::Json,
        }
    }
}

/// Collects fields into a JSON object.
#[derive(Default)]
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        if self.json {
            let mut visitor = JsonVisitor::default();
            fields.record(&mut visitor);
            write!(writer, "{}", Value::Object(visitor.0))
        } else {
            DefaultFields::new().format_fields(writer, fields)
        }
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if self.json {
            let mut visitor =
                JsonVisitor(serde_json::from_str(&current.fields).unwrap_or_default());
            fields.record(&mut visitor);
            current.fields = Value::Object(visitor.0).to_string();
            Ok(())
        } else {
            if !current.fields.is_empty() {
                current.fields.push(' ');
            }
            DefaultFields::new().format_fields(current.as_writer(), fields)
        }
    }
}

/// Event formatting.
#[derive(Debug)]
pub(crate) struct Event {
    json: bool,
    /// The subscriber itself, to read the OpenTelemetry context of a span (set once it exists).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl Event {
    pub(crate) fn new(format: LogFormat, dispatch: Arc<OnceLock<WeakDispatch>>) -> Self {
        Self {
            json: format == LogFormat::Json,
            dispatch,
        }
    }

    /// The ids of the innermost span around `event` that has an OpenTelemetry span, read
    /// without the log filter (a `warn` filter hides the request spans from this layer, but
    /// not their ids from its lines).
    fn ids<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        event: &tracing::Event<'_>,
    ) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let id = match event.parent() {
            Some(parent) => parent.clone(),
            None if event.is_contextual() => ctx.current_span().id()?.clone(),
            None => return None,
        };
        ids_from(id, &dispatch)
    }
}

/// The ids (lowercase hex, as in `traceparent`) of span `id` or, when it has no
/// OpenTelemetry span (when nothing is exported only a trace's first span has one), of its
/// innermost ancestor that has.
pub(crate) fn ids_from(mut id: tracing::span::Id, dispatch: &Dispatch) -> Option<(String, String)> {
    let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
    loop {
        if let Some(cx) = tracing_opentelemetry::get_otel_context(&id, dispatch) {
            let span = cx.span();
            let sc = span.span_context();
            if sc.is_valid() {
                return Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
        id = registry.span(&id)?.parent()?.id();
    }
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl<S, N> FormatEvent<S, N> for Event
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = self.ids(ctx, event);
        let meta = event.metadata();
        if self.json {
            let mut line = Map::new();
            line.insert("timestamp".into(), Value::from(timestamp()));
            line.insert("level".into(), Value::from(meta.level().as_str()));
            line.insert("target".into(), Value::from(meta.target()));
            let mut fields = JsonVisitor::default();
            event.record(&mut fields);
            for (k, v) in fields.0 {
                line.entry(k).or_insert(v);
            }
            if let Some((trace_id, span_id)) = ids {
                line.insert("trace_id".into(), Value::from(trace_id));
                line.insert("span_id".into(), Value::from(span_id));
            }
            if let Some(scope) = ctx.event_scope() {
                let spans: Vec<Value> = scope
                    .from_root()
                    .map(|span| {
                        let mut obj = span
                            .extensions()
                            .get::<FormattedFields<N>>()
                            .and_then(|f| {
                                serde_json::from_str::<Map<String, Value>>(&f.fields).ok()
                            })
                            .unwrap_or_default();
                        obj.insert("name".into(), Value::from(span.name()));
                        Value::Object(obj)
                    })
                    .collect();
                if let Some(leaf) = spans.last() {
                    line.insert("span".into(), leaf.clone());
                }
                line.insert("spans".into(), Value::Array(spans));
            }
            return writeln!(writer, "{}", Value::Object(line));
        }

        let ansi = writer.has_ansi_escapes();
        let level = meta.level();
        let (on, off) = match (ansi, *level) {
            (false, _) => ("", ""),
            (true, tracing::Level::ERROR) => ("\x1b[31m", "\x1b[0m"),
            (true, tracing::Level::WARN) => ("\x1b[33m", "\x1b[0m"),
            (true, tracing::Level::INFO) => ("\x1b[32m", "\x1b[0m"),
            (true, _) => ("\x1b[34m", "\x1b[0m"),
        };
        write!(writer, "{} {on}{level:>5}{off} ", timestamp())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.fields.is_empty()
                {
                    write!(writer, "{{{}}}", fields.fields)?;
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        write!(writer, "{}: ", meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some((trace_id, span_id)) = ids {
            write!(writer, " trace_id={trace_id} span_id={span_id}")?;
        }
        writeln!(writer)
    }
}
