//! Signing keys of external issuers (OpenID providers, the cluster's service-account issuer),
//! cached per source: verified against the cached keys while they are young, refetched on a
//! token whose key is not among them or when they are old, at most once per refetch floor;
//! while a source cannot be reached, its cached keys still verify their own tokens.

use keygate_oidc::{Claims, FetchError, Invalid, Keys};
use std::collections::HashMap;
use std::sync::Arc;

/// The keys of one source as last fetched, with the issuer they were fetched as.
#[derive(Debug, Clone)]
pub struct SourceKeys {
    /// The issuer (a provider's configured one, or the one the cluster announced).
    pub issuer: Arc<str>,
    /// The keys.
    pub keys: Arc<Keys>,
}

#[derive(Debug)]
struct Entry {
    current: SourceKeys,
    /// Injected-clock time of the last successful fetch (0: never).
    fetched_at: i64,
    /// Injected-clock time of the last attempt, successful or not (the refetch floor).
    attempted_at: i64,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            current: SourceKeys {
                issuer: Arc::from(""),
                keys: Arc::new(Keys::new(Vec::new())),
            },
            fetched_at: 0,
            attempted_at: 0,
        }
    }
}

/// One source's slot: its own lock, held while its keys are fetched, so that a slow or
/// unreachable source delays only its own tokens.
type Slot = Arc<tokio::sync::Mutex<Entry>>;

/// How long a source's keys are trusted without a fetch, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Ages {
    /// Keys older than this are refetched (the old ones still verify if that fails).
    pub max_age: i64,
    /// At most one fetch per this many seconds, whatever the tokens say.
    pub refetch_floor: i64,
}

/// The verdict on a token, or why its keys could not be had (the source is unreachable
/// and no cached key verifies the token).
pub type Checked = Result<Result<Claims, Invalid>, FetchError>;

/// The cache of every source, keyed by a name of the source.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<HashMap<String, Slot>>,
}

impl KeyCache {
    fn slot(&self, source: &str) -> Slot {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 1000 {
            map.clear();
        }
        map.entry(source.to_owned()).or_default().clone()
    }

    /// Judges a token with `verdict` over the keys of `source`, fetching them with `fetch`
    /// as the ages allow. Verified outside the lock: tokens of one source do not queue
    /// behind each other.
    pub async fn check<F, Fut>(
        &self,
        source: &str,
        now: i64,
        ages: Ages,
        fetch: F,
        verdict: impl Fn(&SourceKeys) -> Result<Claims, Invalid>,
    ) -> Checked
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SourceKeys, FetchError>>,
    {
        let slot = self.slot(source);
        let (current, fetched_at) = {
            let entry = slot.lock().await;
            (entry.current.clone(), entry.fetched_at)
        };
        let cached = verdict(&current);
        let fresh = fetched_at > 0 && now - fetched_at < ages.max_age;
        if fresh && cached != Err(Invalid::UnknownKey) {
            return Ok(cached);
        }
        let mut entry = slot.lock().await;
        if entry.fetched_at != fetched_at {
            // Fetched for another token while this one waited.
            return Ok(verdict(&entry.current));
        }
        if entry.attempted_at > 0 && now - entry.attempted_at < ages.refetch_floor {
            // Fetched (or tried) a moment ago: no new request for this token.
            return Ok(cached);
        }
        entry.attempted_at = now;
        match fetch().await {
            Ok(keys) => {
                entry.current = keys;
                entry.fetched_at = now;
                Ok(verdict(&entry.current))
            }
            Err(e) if cached == Err(Invalid::UnknownKey) => Err(e),
            Err(e) => {
                tracing::warn!(source, error = %e, "keys could not be refreshed; using the cached ones");
                Ok(cached)
            }
        }
    }
}
