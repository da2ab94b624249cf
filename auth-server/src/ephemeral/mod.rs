//! Short-lived, atomically decided state (revoked token ids and sessions now; codes, tickets,
//! challenges and counters as they arrive): in Redis through fred when configured, so that
//! every replica sees the same state, or in process for a single embedded instance.

pub mod attempts;
mod memory;
mod redis;

pub use attempts::{Gate, GateRule};
pub use memory::MemoryEphemeral;
pub use redis::{MAX_WAIT, RedisEphemeral, ReplicaWait, fred_url, is_sentinel};

use std::time::Duration;

/// The shared store could not answer.
#[derive(Debug, thiserror::Error)]
#[error("ephemeral store unavailable: {0}")]
pub struct EphemeralError(pub String);

/// The ephemeral store in use.
#[derive(Debug, Clone)]
pub enum Ephemeral {
    /// One process.
    Memory(MemoryEphemeral),
    /// Redis, shared by every replica.
    Redis(RedisEphemeral),
}

impl Ephemeral {
    /// Stores `value` under `key` for `ttl` (overwriting).
    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), EphemeralError> {
        match self {
            Self::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Self::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Whether any of `keys` exists.
    pub async fn exists_any(&self, keys: &[String]) -> Result<bool, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.exists_any(keys)),
            Self::Redis(r) => r.exists_any(keys).await,
        }
    }

    /// The value under `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
            Self::Redis(r) => r.get(key).await,
        }
    }

    /// Adds one to the counter under `key` (created with `ttl`) and returns the new value;
    /// atomic across replicas.
    pub async fn incr(&self, key: &str, ttl: Duration) -> Result<i64, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.incr(key, ttl)),
            Self::Redis(r) => r.incr(key, ttl).await,
        }
    }

    /// Removes and returns the value under `key`, atomically: of concurrent callers at most
    /// one gets it.
    pub async fn take(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.take(key)),
            Self::Redis(r) => r.take(key).await,
        }
    }

    /// Removes and returns the value under `key` only if it contains `marker`, atomically (a
    /// value replaced meanwhile is left alone).
    pub async fn take_if(&self, key: &str, marker: &str) -> Result<Option<String>, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.take_if(key, marker)),
            Self::Redis(r) => r.take_if(key, marker).await,
        }
    }

    /// Claims `key` for `ttl` if nobody holds it (atomic across replicas): `None` when this
    /// caller got it, else the milliseconds until it is free again.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Result<Option<u64>, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.claim(key, ttl)),
            Self::Redis(r) => r.claim(key, ttl).await,
        }
    }

    /// Round trip (readiness); always fine in process.
    pub async fn ping(&self) -> Result<(), EphemeralError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ping().await,
        }
    }

    /// `memory` or `redis`, for logs and readiness.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }
}

/// Key of a revoked access-token id.
pub fn denied_jti_key(jti: &str) -> String {
    format!("kg:deny:jti:{jti}")
}

/// Key of a revoked session (every access token of it).
pub fn denied_sid_key(sid: &str) -> String {
    format!("kg:deny:sid:{sid}")
}

impl Ephemeral {
    /// Decides a sign-in attempt on an account key and a client-address key (see
    /// `attempts`). With Redis down, decides on this replica's own counters and says so.
    pub async fn gate_attempt(
        &self,
        account: &str,
        ip: &str,
        rules: (&GateRule, &GateRule),
        now_ms: i64,
    ) -> Gate {
        match self {
            Self::Memory(m) => m.gate_attempt(account, ip, rules, now_ms),
            Self::Redis(r) => match r.gate_attempt(account, ip, rules, now_ms).await {
                Ok(gate) => gate,
                Err(e) => {
                    degraded(&e);
                    r.fallback().gate_attempt(account, ip, rules, now_ms)
                }
            },
        }
    }

    /// A successful sign-in: the account's count is reset, the address gets its attempt back.
    pub async fn gate_success(&self, account: &str, ip: &str) {
        match self {
            Self::Memory(m) => m.gate_success(account, ip),
            Self::Redis(r) => {
                if let Err(e) = r.gate_success(account, ip).await {
                    degraded(&e);
                }
                r.fallback().gate_success(account, ip);
            }
        }
    }

    /// A right first factor whose sign-in goes on to a second one: its attempt is given back
    /// (see `attempts::refund`) without resetting the account's earlier failures.
    pub async fn gate_refund(&self, account: &str, ip: &str, lock_after: u32) {
        match self {
            Self::Memory(m) => m.gate_refund(account, ip, lock_after),
            Self::Redis(r) => {
                if let Err(e) = r.gate_refund(account, ip, lock_after).await {
                    degraded(&e);
                }
                r.fallback().gate_refund(account, ip, lock_after);
            }
        }
    }

    /// Failures counted so far on an account key and a client-address key.
    pub async fn gate_failures(&self, account: &str, ip: &str) -> (u32, u32) {
        match self {
            Self::Memory(m) => m.gate_failures(account, ip),
            Self::Redis(r) => match r.gate_failures(account, ip).await {
                Ok(f) => f,
                Err(e) => {
                    degraded(&e);
                    r.fallback().gate_failures(account, ip)
                }
            },
        }
    }

    /// Clears gate keys (an administrator's unlock).
    pub async fn gate_clear(&self, keys: &[String]) -> Result<(), EphemeralError> {
        match self {
            Self::Memory(m) => {
                m.gate_clear(keys);
                Ok(())
            }
            Self::Redis(r) => {
                r.fallback().gate_clear(keys);
                r.gate_clear(keys).await
            }
        }
    }
}

/// Logs (at most every few seconds) that counters and limits are per replica while Redis is
/// down.
fn degraded(e: &EphemeralError) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if LAST.swap(now, Ordering::Relaxed) + 5 <= now {
        tracing::warn!(
            error = %e,
            "Redis unavailable: sign-in delays and lockout are counted per replica until it returns"
        );
    }
    crate::metrics::DEGRADED_DECISIONS.inc();
}

impl Ephemeral {
    /// One request against a GCRA limit of `limit` per `window_ms` under `key`: `Ok(())` if
    /// admitted, else the milliseconds until the next one would be. With Redis down, decides
    /// on this replica's own state and says so.
    pub async fn rate_check(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now_ms: i64,
    ) -> Result<(), u64> {
        match self {
            Self::Memory(m) => m.rate_check(key, limit, window_ms, now_ms),
            Self::Redis(r) => match r.rate_check(key, limit, window_ms, now_ms).await {
                Ok(decision) => decision,
                Err(e) => {
                    degraded(&e);
                    r.fallback().rate_check(key, limit, window_ms, now_ms)
                }
            },
        }
    }
}

/// The GCRA step shared by both stores' semantics: given the stored theoretical arrival time,
/// the new one if admitted, or the wait.
pub fn gcra(stored_tat_ms: i64, limit: u32, window_ms: u64, now_ms: i64) -> Result<i64, u64> {
    let interval = (window_ms / u64::from(limit.max(1))).max(1) as i64;
    let tat = stored_tat_ms.max(now_ms);
    let new_tat = tat + interval;
    let allow_at = new_tat - window_ms as i64;
    if allow_at > now_ms {
        Err((allow_at - now_ms) as u64)
    } else {
        Ok(new_tat)
    }
}
