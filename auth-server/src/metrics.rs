//! Prometheus metrics of the server: HTTP requests and latency by route and outcome, and
//! sign-in outcomes by method. One registry per server instance (tests run several).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

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

type HistogramFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// Sign-in delay, lockout and rate-limit decisions taken on one replica's own counters because
/// Redis was unavailable (process-wide).
pub static DEGRADED_DECISIONS: std::sync::LazyLock<Counter> =
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
            "audit_write_failures",
            "Audit events that could not be written to the database",
            AUDIT_WRITE_FAILURES.clone(),
        );
        registry.register(
            "config_reloads",
            "Runtime-configuration reloads by outcome (a rejected file leaves the last good one in force)",
            CONFIG_RELOADS.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            logins,
        }
    }
}

fn outcome_of(status: u16) -> &'static str {
    match status {
        0..=399 => "success",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts a sign-in or refresh attempt.
    pub fn record_login<E: std::fmt::Debug>(&self, method: &'static str, result: Result<(), &E>) {
        let outcome = match result {
            Ok(()) => "success",
            Err(_) => "failure",
        };
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
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    metrics.observe(
        &method,
        &route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("POST", "/api/v1/auth/login", 400, 0.02);
        m.record_login::<()>("password", Ok(()));
        let text = m.render().unwrap();
        assert!(text.contains(
            r#"keygate_http_requests_total{method="POST",route="/api/v1/auth/login",status="400",outcome="client_error"} 1"#
        ), "{text}");
        assert!(
            text.contains("keygate_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"keygate_logins_total{method="password",outcome="success"} 1"#),
            "{text}"
        );
    }
}
