//! Prometheus metrics of the server: HTTP requests and latency by route, sign-ins by method
//! and outcome, and the process-wide counters of the auth steps (lockouts, rate-limit
//! rejections, MFA, codes, tickets, signing keys, reloads, store and Redis latency taken from
//! their spans, the hashing queue). One registry per server instance (tests run several).

use crate::auth::error::AuthError;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    method: String,
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    channel: &'static str,
    purpose: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    system: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    operation: &'static str,
}

type Lazy<T> = std::sync::LazyLock<T>;

static LOCKOUTS: Lazy<Counter> = Lazy::new(Counter::default);
static RATE_LIMITED: Lazy<Family<RuleLabels, Counter>> = Lazy::new(Family::default);
static MFA_ANSWERS: Lazy<Family<AnswerLabels, Counter>> = Lazy::new(Family::default);
static MFA_ISSUED: Lazy<Counter> = Lazy::new(Counter::default);
static CODES: Lazy<Family<CodeLabels, Counter>> = Lazy::new(Family::default);
static TICKETS_ISSUED: Lazy<Counter> = Lazy::new(Counter::default);
static TICKETS_REDEEMED: Lazy<Family<OutcomeLabels, Counter>> = Lazy::new(Family::default);

/// The exporter's own count of failed span batches, read at each scrape.
#[derive(Debug)]
struct ExportFailures;

impl prometheus_client::encoding::EncodeMetric for ExportFailures {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &keygate_telemetry::export_failures(),
            None,
        )
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

static STORE_LATENCY: Lazy<Histograms<StoreLabels>> =
    Lazy::new(|| Family::new_with_constructor(backend_histogram));
static REDIS_LATENCY: Lazy<Histograms<CommandLabels>> =
    Lazy::new(|| Family::new_with_constructor(backend_histogram));
/// Password hashes and verifications waiting for a hashing thread (process-wide).
pub static HASH_QUEUE: Lazy<Gauge> = Lazy::new(Gauge::default);

fn backend_histogram() -> Histogram {
    // 100 µs .. ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// An account was locked by its failed sign-ins.
pub fn record_lockout() {
    LOCKOUTS.inc();
}

/// A rate-limit rule refused a request.
pub fn record_rate_limited(rule: &str) {
    RATE_LIMITED
        .get_or_create(&RuleLabels {
            rule: rule.to_owned(),
        })
        .inc();
}

/// An MFA challenge was answered with `method` (`totp`, `backup`, `email`, `sms`).
pub fn record_mfa_answer(method: &'static str, result: Result<(), &AuthError>) {
    MFA_ANSWERS
        .get_or_create(&AnswerLabels {
            method,
            outcome: result.err().map_or("success", AuthError::reason),
        })
        .inc();
}

/// A one-time code the client was told about: `outcome` is `sent` or `failed`. A send
/// imitated for an address without an account counts as `sent`: `/metrics` shares the public
/// port and must not tell accounts apart.
pub fn record_code(channel: &'static str, purpose: &'static str, outcome: &'static str) {
    CODES
        .get_or_create(&CodeLabels {
            channel,
            purpose,
            outcome,
        })
        .inc();
}

/// A ticket was issued.
pub fn record_ticket_issued() {
    TICKETS_ISSUED.inc();
}

/// What a sign-in's success was, for `keygate_logins_total`.
pub trait SignInOutcome {
    /// `success`, or `mfa_required` while a second factor is pending.
    fn outcome(&self) -> &'static str;
}

impl SignInOutcome for crate::auth::challenge::LoginOutcome {
    fn outcome(&self) -> &'static str {
        match self {
            Self::SignedIn(_) => "success",
            Self::MfaRequired(_) => "mfa_required",
        }
    }
}

impl SignInOutcome for crate::auth::SignedIn {
    fn outcome(&self) -> &'static str {
        "success"
    }
}

impl SignInOutcome for crate::auth::federation::FederatedSignIn {
    fn outcome(&self) -> &'static str {
        self.outcome.outcome()
    }
}

impl SignInOutcome for crate::auth::tickets::TicketSignIn {
    fn outcome(&self) -> &'static str {
        "success"
    }
}

/// A code sign-in (with whether it created the account).
impl SignInOutcome for (crate::auth::challenge::LoginOutcome, bool) {
    fn outcome(&self) -> &'static str {
        self.0.outcome()
    }
}

type HistogramFamily = Histograms<LatencyLabels>;

/// Sign-in delay, lockout and rate-limit decisions taken on one replica's own counters because
/// Redis was unavailable (process-wide).
pub static DEGRADED_DECISIONS: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// Single-use or counted Redis writes that fewer replicas than required confirmed in time
/// (process-wide); each failed its request closed.
pub static REDIS_WAIT_SHORTFALLS: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

/// Audit events that could not be written (process-wide).
pub static AUDIT_WRITE_FAILURES: std::sync::LazyLock<Counter> =
    std::sync::LazyLock::new(Counter::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

/// Runtime-configuration reloads by outcome (process-wide).
static CONFIG_RELOADS: std::sync::LazyLock<Family<ReloadLabels, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Counts a configuration reload.
pub fn record_config_reload(accepted: bool) {
    CONFIG_RELOADS
        .get_or_create(&ReloadLabels {
            outcome: if accepted { "accepted" } else { "rejected" },
        })
        .inc();
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    logins: Family<LoginLabels, Counter>,
    key_age: Family<KidLabels, Gauge>,
    key_changes: Counter,
    /// The `kid` this instance signed with at the last scrape.
    key_seen: std::sync::Mutex<Option<String>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KidLabels {
    kid: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keygate");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and outcome",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and outcome",
            latency.clone(),
        );
        registry.register(
            "logins",
            "Sign-in and refresh attempts by method and outcome",
            logins.clone(),
        );
        registry.register(
            "ephemeral_degraded_decisions",
            "Delay, lockout and rate-limit decisions taken on per-replica counters while Redis was unavailable",
            DEGRADED_DECISIONS.clone(),
        );
        registry.register(
            "redis_wait_shortfalls",
            "Single-use or counted Redis writes not confirmed by the required replicas in time (the request failed closed)",
            REDIS_WAIT_SHORTFALLS.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written to the database",
            AUDIT_WRITE_FAILURES.clone(),
        );
        registry.register(
            "config_reloads",
            "Runtime-configuration reloads by outcome (a rejected file leaves the last good one in force)",
            CONFIG_RELOADS.clone(),
        );
        let process_wide: [(&str, &str, Box<dyn prometheus_client::registry::Metric>); 11] = [
            (
                "lockouts",
                "Accounts locked by their failed sign-ins",
                Box::new(LOCKOUTS.clone()),
            ),
            (
                "rate_limit_rejections",
                "Requests refused by a rate-limit rule, by rule",
                Box::new(RATE_LIMITED.clone()),
            ),
            (
                "mfa_challenges_issued",
                "Sign-ins that stopped at an MFA challenge",
                Box::new(MFA_ISSUED.clone()),
            ),
            (
                "mfa_challenges_answered",
                "Answers to MFA challenges by method and outcome",
                Box::new(MFA_ANSWERS.clone()),
            ),
            (
                "codes_sent",
                "One-time codes by channel, purpose and outcome (sent, failed); sends imitated for unknown addresses count as sent",
                Box::new(CODES.clone()),
            ),
            (
                "tickets_issued",
                "One-time tickets issued",
                Box::new(TICKETS_ISSUED.clone()),
            ),
            (
                "tickets_redeemed",
                "Ticket redemptions by outcome",
                Box::new(TICKETS_REDEEMED.clone()),
            ),
            (
                "trace_export_failures",
                "Span batches the OTLP exporter could not deliver (dropped)",
                Box::new(ExportFailures),
            ),
            (
                "store_operation_duration_seconds",
                "Database operations by system and operation",
                Box::new(STORE_LATENCY.clone()),
            ),
            (
                "redis_operation_duration_seconds",
                "Redis operations by operation",
                Box::new(REDIS_LATENCY.clone()),
            ),
            (
                "password_hash_queue_depth",
                "Password hashes and verifications waiting for a hashing thread",
                Box::new(HASH_QUEUE.clone()),
            ),
        ];
        for (name, help, metric) in process_wide {
            registry.register(name, help, BoxedMetric(metric));
        }
        let key_age = Family::<KidLabels, Gauge>::default();
        let key_changes = Counter::default();
        registry.register(
            "signing_key_age_seconds",
            "Seconds since the signing key in use activated (keys without an activation time have no age)",
            key_age.clone(),
        );
        registry.register(
            "signing_key_changes",
            "Changes of the signing key this server signs with, seen at scrapes",
            key_changes.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            logins,
            key_age,
            key_changes,
            key_seen: std::sync::Mutex::new(None),
        }
    }
}

/// The request method as a metric label and span name: the standard methods, else `_OTHER`
/// (the OpenTelemetry convention; an attacker's method must not mint series).
pub fn method_label(method: &http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("_OTHER")
}

fn outcome_of(status: u16) -> &'static str {
    match status {
        0..=399 => "success",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

impl Metrics {
    /// Takes in the signing key `auth` uses now: counts a change of `kid` since the last
    /// scrape and sets the key's age from its activation time.
    pub fn observe_signing_key(&self, auth: &crate::auth::AuthService) {
        let now = auth.clock.unix();
        let runtime = auth.runtime();
        let key = runtime.keys.signing_key(now);
        let mut seen = match self.key_seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        let kid = key.map(|k| k.kid.clone());
        if seen.is_some() && kid.is_some() && *seen != kid {
            self.key_changes.inc();
        }
        if kid.is_some() {
            *seen = kid;
        }
        self.key_age.clear();
        if let Some(key) = key
            && let Some(activated) = key.activates_at()
        {
            self.key_age
                .get_or_create(&KidLabels {
                    kid: key.kid.clone(),
                })
                .set(now.saturating_sub(activated).max(0));
        }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts a sign-in or refresh attempt by its outcome (`success`, `mfa_required`, or the
    /// failure's reason); a ticket sign-in also counts as a redemption.
    pub fn record_login<T: SignInOutcome>(
        &self,
        method: &'static str,
        result: &Result<T, AuthError>,
    ) {
        let outcome = match result {
            Ok(v) => v.outcome(),
            Err(e) => e.reason(),
        };
        if outcome == "mfa_required" {
            MFA_ISSUED.inc();
        }
        if method == "ticket" {
            TICKETS_REDEEMED
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
        self.logins
            .get_or_create(&LoginLabels { method, outcome })
            .inc();
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let outcome = outcome_of(status);
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                outcome,
            })
            .observe(seconds);
    }
}

/// Route middleware: records every routed request under its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method()).to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    if let Some(span) = req.extensions().get::<crate::http::error::RequestSpan>() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let name = format!("{method} {route}");
        span.0.record("http.route", route.as_str());
        // The span started when the request entered it (its children need its id), so it is
        // renamed in place; recording `otel.name` would only reach a span not started yet.
        span.0.context().span().update_name(name);
    }
    let res = next.run(req).await;
    metrics.observe(
        &method,
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// A process-wide metric registered in a server's registry.
#[derive(Debug)]
struct BoxedMetric(Box<dyn prometheus_client::registry::Metric>);

impl prometheus_client::encoding::EncodeMetric for BoxedMetric {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }
}

/// Tracing layer timing the spans of database and Redis operations (the spans that carry
/// `db.system.name`) into the store and Redis latency histograms; see [`span_timings`].
#[derive(Debug)]
pub struct SpanTimings;

/// [`SpanTimings`] behind a filter that lets only those spans through (at info and above), so
/// no other callsite is enabled for it.
pub fn span_timings() -> keygate_telemetry::ExtraLayer {
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.fields().field("db.system.name").is_some()
    })
    .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO);
    Box::new(SpanTimings.with_filter(filter))
}

struct Timing {
    started: Instant,
    system: &'static str,
}

struct SystemName(Option<&'static str>);

impl tracing::field::Visit for SystemName {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.system.name" {
            self.0 = ["postgresql", "sqlite", "redis"]
                .into_iter()
                .find(|known| *known == value);
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S> tracing_subscriber::Layer<S> for SpanTimings
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().fields().field("db.system.name").is_none() {
            return;
        }
        let mut system = SystemName(None);
        attrs.record(&mut system);
        if let (Some(system), Some(span)) = (system.0, ctx.span(id)) {
            span.extensions_mut().insert(Timing {
                started: Instant::now(),
                system,
            });
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(timing) = span.extensions_mut().remove::<Timing>() else {
            return;
        };
        let seconds = timing.started.elapsed().as_secs_f64();
        let operation = span.name();
        if timing.system == "redis" {
            REDIS_LATENCY
                .get_or_create(&CommandLabels { operation })
                .observe(seconds);
        } else {
            STORE_LATENCY
                .get_or_create(&StoreLabels {
                    system: timing.system,
                    operation,
                })
                .observe(seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("POST", "/api/v1/auth/login", 400, 0.02);
        m.record_login::<crate::auth::SignedIn>("password", &Err(AuthError::InvalidCredentials));
        let text = m.render().unwrap();
        assert!(text.contains(
            r#"keygate_http_requests_total{method="POST",route="/api/v1/auth/login",status="400",outcome="client_error"} 1"#
        ), "{text}");
        assert!(
            text.contains("keygate_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"keygate_logins_total{method="password",outcome="invalid_credentials"} 1"#
            ),
            "{text}"
        );
    }
}
