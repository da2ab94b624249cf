//! `OidcProvider` health: each accepted provider's issuer checked in the background (its
//! discovery document names the configured issuer, its `jwks_uri` answers with at least one key
//! of an allowed algorithm) right away when it appears or changes, then every check interval,
//! sooner with a doubling backoff after failures; the outcome is kept for the reconcile, which
//! writes it into status (the one writer of status), and each finished check asks for one.

use keygate_config::OidcProviderConfig;
use keygate_oidc::Fetcher;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

/// The first retry after a failed check; each further failure doubles it, up to the check
/// interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// What the last check of a provider found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `KeysPublished`, or what failed (`DiscoveryFailed`, `IssuerMismatch`, `JwksFailed`,
    /// `NoUsableKey`).
    pub reason: &'static str,
    /// For people: the failure, and what the servers do meanwhile.
    pub message: String,
    /// Usable keys at the last successful check.
    pub key_count: Option<usize>,
    /// Unix time of this check.
    pub checked_at: i64,
    /// Unix time of the last successful check.
    pub ready_at: Option<i64>,
    /// Failed checks in a row.
    pub failures: u32,
}

impl Outcome {
    /// The issuer answered as it should.
    pub fn ready(&self) -> bool {
        self.failures == 0
    }
}

#[derive(Debug)]
struct Entry {
    provider: OidcProviderConfig,
    outcome: Option<Outcome>,
    due: Instant,
    running: bool,
}

/// The checks of every provider of the namespace.
#[derive(Debug)]
pub struct Health {
    fetcher: Fetcher,
    interval: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    wake: Notify,
}

/// The wait before the next check after `failures` failed ones in a row.
pub fn next_check(failures: u32, interval: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(interval)
}

fn unix_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

impl Health {
    /// Checks that recur every `interval` while they succeed.
    pub fn new(interval: Duration) -> Self {
        Self {
            fetcher: Fetcher::default(),
            interval,
            entries: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The providers to check now, by resource name: new ones and changed ones are checked
    /// right away (a changed one starts over, its old outcome no longer says anything);
    /// others keep their schedule; absent ones are forgotten.
    pub fn track(&self, providers: Vec<(String, OidcProviderConfig)>) {
        let mut entries = self.entries();
        let mut fresh = false;
        entries.retain(|name, _| providers.iter().any(|(n, _)| n == name));
        for (name, provider) in providers {
            match entries.get_mut(&name) {
                Some(e) if e.provider == provider => {}
                _ => {
                    fresh = true;
                    entries.insert(
                        name,
                        Entry {
                            provider,
                            outcome: None,
                            due: Instant::now(),
                            running: false,
                        },
                    );
                }
            }
        }
        drop(entries);
        if fresh {
            self.wake.notify_one();
        }
    }

    /// What the last check of resource `name` found (`None`: not checked yet).
    pub fn outcome(&self, name: &str) -> Option<Outcome> {
        self.entries().get(name).and_then(|e| e.outcome.clone())
    }

    /// Runs the due checks while `leading` (a replica standing by does not call issuers),
    /// each in its own task so that a slow issuer delays no other; every finished check
    /// sends `trigger` so that a reconcile writes it into status.
    pub async fn run(
        self: Arc<Self>,
        leading: Arc<AtomicBool>,
        trigger: mpsc::Sender<&'static str>,
    ) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !leading.load(Ordering::Relaxed) {
                continue;
            }
            let now = Instant::now();
            let due: Vec<(String, OidcProviderConfig)> = self
                .entries()
                .iter_mut()
                .filter(|(_, e)| !e.running && e.due <= now)
                .map(|(name, e)| {
                    e.running = true;
                    (name.clone(), e.provider.clone())
                })
                .collect();
            for (name, provider) in due {
                let health = self.clone();
                let trigger = trigger.clone();
                let span = tracing::info_span!("operator.provider_check", keygate.provider = %name);
                tokio::spawn(async move {
                    let result = health.fetcher.discover(&provider).instrument(span).await;
                    health.finish(&name, &provider, result);
                    // A full channel has a reconcile coming already.
                    let _ = trigger.try_send("OidcProvider");
                });
            }
        }
    }

    /// Records a finished check (unless the provider changed or went meanwhile).
    fn finish(
        &self,
        name: &str,
        provider: &OidcProviderConfig,
        result: Result<keygate_oidc::Keys, keygate_oidc::FetchError>,
    ) {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(name).filter(|e| &e.provider == provider) else {
            return;
        };
        let previous = entry.outcome.take();
        let now = unix_now();
        let failures = match &result {
            Ok(_) => 0,
            Err(_) => previous.as_ref().map_or(0, |p| p.failures) + 1,
        };
        let wait = next_check(failures, self.interval);
        let outcome = match result {
            Ok(keys) => {
                let count = keygate_oidc::usable_keys(provider, &keys);
                Outcome {
                    reason: keygate_crds::status::reason::KEYS_PUBLISHED,
                    message: format!(
                        "{} names {} and its JWKS has {count} usable key{}",
                        provider.discovery(),
                        provider.issuer,
                        if count == 1 { "" } else { "s" }
                    ),
                    key_count: Some(count),
                    checked_at: now,
                    ready_at: Some(now),
                    failures: 0,
                }
            }
            Err(e) => {
                let retry = wait.as_secs();
                let since = previous.as_ref().and_then(|p| p.ready_at);
                Outcome {
                    reason: e.reason(),
                    message: format!(
                        "{e} ({failures} failed check{} in a row, next in {retry}s). The provider stays in the published configuration: servers keep verifying with the keys they have cached, and fetch them again when the issuer is back.",
                        if failures == 1 { "" } else { "s" }
                    ),
                    key_count: previous.and_then(|p| p.key_count),
                    checked_at: now,
                    ready_at: since,
                    failures,
                }
            }
        };
        entry.due = Instant::now() + wait;
        entry.outcome = Some(outcome);
        entry.running = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_up_to_the_interval() {
        let interval = Duration::from_secs(300);
        let waits: Vec<u64> = (0..9).map(|f| next_check(f, interval).as_secs()).collect();
        assert_eq!(waits, [300, 5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(next_check(u32::MAX, interval), interval);
    }

    fn provider(issuer: &str) -> OidcProviderConfig {
        serde_json::from_value(serde_json::json!({
            "name": "corp", "issuer": issuer, "client_id": "keygate", "allow_http": true,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_dead_issuer_is_not_ready_with_its_reason_and_backs_off() {
        let health = Arc::new(Health::new(Duration::from_secs(300)));
        let (tx, mut rx) = mpsc::channel(1);
        let leading = Arc::new(AtomicBool::new(true));
        tokio::spawn(health.clone().run(leading, tx));
        health.track(vec![("corp".into(), provider("http://127.0.0.1:9"))]);
        assert_eq!(rx.recv().await, Some("OidcProvider"));
        let o = health
            .outcome("corp")
            .unwrap_or_else(|| panic!("no outcome"));
        assert!(!o.ready());
        assert_eq!(o.reason, "DiscoveryFailed");
        assert!(o.message.contains("next in 5s"), "{}", o.message);
        assert_eq!(o.failures, 1);
        // A changed provider starts over; a removed one is forgotten.
        health.track(vec![("corp".into(), provider("http://127.0.0.1:10"))]);
        assert_eq!(health.outcome("corp"), None);
        health.track(Vec::new());
        assert_eq!(health.outcome("corp"), None);
    }
}
