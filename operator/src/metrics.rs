//! The operator's Prometheus metrics: reconciles, their errors and duration by the kind that
//! triggered them, resources by kind and acceptance, configuration writes, the leader state,
//! key rotations and the age of each SigningKey's signing key, and the OidcProviders' health.

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
struct SigningKeyLabels {
    signing_key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

/// Keys generated to replace a SigningKey's signing key (process-wide: counted where the key
/// Secret is created).
static ROTATIONS: std::sync::LazyLock<Family<SigningKeyLabels, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Counts a rotation of `signing_key` (a new key after the first).
pub fn record_rotation(signing_key: &str) {
    ROTATIONS
        .get_or_create(&SigningKeyLabels {
            signing_key: signing_key.to_owned(),
        })
        .inc();
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
    errors: Family<KindLabels, Counter>,
    leader: Gauge,
    key_age: Family<SigningKeyLabels, Gauge>,
    provider_ready: Family<ProviderLabels, Gauge>,
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
        let errors = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        let key_age = Family::<SigningKeyLabels, Gauge>::default();
        let provider_ready = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles (retried with backoff) by triggering kind",
            errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (reconciles and writes), 0 while it stands by",
            leader.clone(),
        );
        registry.register(
            "key_rotations",
            "Keys generated to take over from a SigningKey's previous key",
            ROTATIONS.clone(),
        );
        registry.register(
            "signing_key_age_seconds",
            "Age of the key each SigningKey signs with now, from its activation",
            key_age.clone(),
        );
        registry.register(
            "oidc_provider_ready",
            "1 when the OidcProvider's issuer answered its last check with usable keys, else 0",
            provider_ready.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            resources,
            writes,
            errors,
            leader,
            key_age,
            provider_ready,
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
        if !ok {
            self.errors.get_or_create(&KindLabels { kind }).inc();
        }
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
    }

    /// Whether this replica leads.
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Replaces the signing-key ages: (SigningKey name, seconds since its key activated).
    pub fn key_ages(&self, ages: impl IntoIterator<Item = (String, i64)>) {
        self.key_age.clear();
        for (signing_key, age) in ages {
            self.key_age
                .get_or_create(&SigningKeyLabels { signing_key })
                .set(age);
        }
    }

    /// Replaces the providers' health: (OidcProvider name, ready).
    pub fn providers_ready(&self, ready: impl IntoIterator<Item = (String, bool)>) {
        self.provider_ready.clear();
        for (provider, ok) in ready {
            self.provider_ready
                .get_or_create(&ProviderLabels { provider })
                .set(i64::from(ok));
        }
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
