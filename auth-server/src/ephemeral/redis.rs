//! The Redis ephemeral store through a fred connection pool: commands time out quickly and the
//! pool reconnects by itself, so a Redis outage is an error now and recovery needs no restart.

use super::EphemeralError;
use fred::prelude::*;
use fred::types::Expiration;
use std::time::Duration;

/// Ephemeral state in Redis.
#[derive(Clone)]
pub struct RedisEphemeral {
    pool: Pool,
}

impl std::fmt::Debug for RedisEphemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEphemeral").finish_non_exhaustive()
    }
}

fn err(e: fred::error::Error) -> EphemeralError {
    EphemeralError(e.to_string())
}

impl RedisEphemeral {
    /// Connects a pool to `url` (`redis://`, `rediss://`, or fred's sentinel/cluster URL
    /// forms). Fails if the first connection cannot be made within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, EphemeralError> {
        let config = Config::from_url(url).map_err(err)?;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = Duration::from_secs(3);
                c.max_command_attempts = 2;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(4)
            .map_err(err)?;
        pool.init().await.map_err(err)?;
        Ok(Self { pool })
    }

    pub(super) async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), EphemeralError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.pool
            .set::<(), _, _>(key, value, Some(Expiration::PX(ms)), None, false)
            .await
            .map_err(err)
    }

    pub(super) async fn exists_any(&self, keys: &[String]) -> Result<bool, EphemeralError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let n: i64 = self.pool.exists(keys.to_vec()).await.map_err(err)?;
        Ok(n > 0)
    }

    pub(super) async fn take(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        self.pool.getdel(key).await.map_err(err)
    }

    pub(super) async fn ping(&self) -> Result<(), EphemeralError> {
        self.pool.ping::<()>(None).await.map_err(err)
    }
}
