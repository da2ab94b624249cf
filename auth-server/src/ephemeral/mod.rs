//! Short-lived, atomically decided state (revoked token ids and sessions now; codes, tickets,
//! challenges and counters as they arrive): in Redis through fred when configured, so that
//! every replica sees the same state, or in process for a single embedded instance.

mod memory;
mod redis;

pub use memory::MemoryEphemeral;
pub use redis::RedisEphemeral;

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

    /// Removes and returns the value under `key`, atomically: of concurrent callers at most
    /// one gets it.
    pub async fn take(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        match self {
            Self::Memory(m) => Ok(m.take(key)),
            Self::Redis(r) => r.take(key).await,
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
