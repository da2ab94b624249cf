//! The operator's Prometheus metrics: reconciles by the kind that triggered them and their
//! outcome, reconcile duration, resources by kind and acceptance, and configuration writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    kind: &'static str,
    accepted: &'static str,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    resources: Family<ResourceLabels, Gauge>,
    writes: Counter,
}

fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keygate_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(buckets);
        let resources = Family::<ResourceLabels, Gauge>::default();
        let writes = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles by the kind whose change triggered them (resync: the periodic one) and outcome",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles by triggering kind",
            duration.clone(),
        );
        registry.register(
            "resources",
            "Keygate resources by kind and whether they are accepted",
            resources.clone(),
        );
        registry.register(
            "config_writes",
            "Writes of the rendered configuration Secret (only when its content changed)",
            writes.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            resources,
            writes,
        }
    }
}

impl Metrics {
    /// Counts a reconcile triggered by `kind`.
    pub fn reconciled(&self, kind: &'static str, ok: bool, seconds: f64) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind,
                outcome: if ok { "success" } else { "error" },
            })
            .inc();
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
    }

    /// Sets how many resources of `kind` are accepted and refused.
    pub fn resources(&self, kind: &'static str, accepted: i64, refused: i64) {
        for (label, n) in [("true", accepted), ("false", refused)] {
            self.resources
                .get_or_create(&ResourceLabels {
                    kind,
                    accepted: label,
                })
                .set(n);
        }
    }

    /// Counts a configuration write.
    pub fn wrote(&self) {
        self.writes.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
