//! The Redis ephemeral store through a fred connection pool: commands time out quickly and the
//! pool reconnects by itself (behind Sentinel, to whichever node the sentinels name primary), so
//! a Redis outage is an error now and recovery needs no restart. With a replica requirement,
//! every write whose loss could allow a second use is acknowledged only once `WAIT` confirms it
//! reached that many replicas.

use super::attempts::{Gate, GateRule};
use super::{EphemeralError, MemoryEphemeral};
use crate::auth::clock::SharedClock;
use fred::clients::Pipeline;
use fred::prelude::*;
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Expiration};
use std::time::Duration;

/// Ephemeral state in Redis.
#[derive(Clone)]
pub struct RedisEphemeral {
    pool: Pool,
    /// Per-replica counters used while Redis is unreachable.
    fallback: MemoryEphemeral,
    /// Replicas every single-use or counted write must reach before it counts.
    wait: Option<ReplicaWait>,
}

/// How many replicas a write must reach (`WAIT numreplicas timeout`) before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must confirm the write (at least 1).
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// Longest replica wait: it must end well inside the command timeout.
pub const MAX_WAIT: Duration = Duration::from_millis(1500);

/// A write whose loss could allow a second use (a taken ticket, a spent attempt).
enum Write<'a> {
    GetDel(&'a str),
    SetPx(&'a str, &'a str, i64),
    Eval(&'static str, Vec<String>, Vec<Value>),
}

impl Write<'_> {
    /// Sends the command on the pool.
    async fn send(&self, pool: &Pool) -> Result<Value, fred::error::Error> {
        match self {
            Self::GetDel(key) => pool.getdel(*key).await,
            Self::SetPx(key, value, ms) => {
                pool.set(*key, *value, Some(Expiration::PX(*ms)), None, false)
                    .await
            }
            Self::Eval(script, keys, args) => pool.eval(*script, keys.clone(), args.clone()).await,
        }
    }

    /// Queues the command on a pipeline (scripts as plain `EVAL`, which fred's pipelines
    /// take only as a custom command).
    async fn queue<C: KeysInterface + Sync>(
        &self,
        pipeline: &Pipeline<C>,
    ) -> Result<(), fred::error::Error> {
        match self {
            Self::GetDel(key) => pipeline.getdel(*key).await,
            Self::SetPx(key, value, ms) => {
                pipeline
                    .set(*key, *value, Some(Expiration::PX(*ms)), None, false)
                    .await
            }
            Self::Eval(script, keys, args) => {
                let mut all: Vec<Value> = vec![(*script).into(), (keys.len() as i64).into()];
                all.extend(keys.iter().map(|k| Value::from(k.as_str())));
                all.extend(args.iter().cloned());
                let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
                pipeline.custom(eval, all).await
            }
        }
    }
}

/// A Redis URL in fred's form: `redis-sentinel://H1:P1,H2:P2/...` (the sentinel list most
/// tools write) becomes `redis-sentinel://H1:P1/...?node=H2:P2`; other URLs are unchanged.
/// Checks that fred can read it, and that a Sentinel URL names its service.
pub fn fred_url(url: &str) -> Result<String, String> {
    let normalized = match url.split_once("://") {
        Some((scheme, rest)) if scheme.ends_with("-sentinel") => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), authority),
            };
            let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
            let first = hosts.next().ok_or("no sentinel address")?;
            let others: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
            let mut out = format!("{scheme}://{userinfo}{first}{tail}");
            if !others.is_empty() {
                out.push(if tail.contains('?') { '&' } else { '?' });
                out.push_str(&others.join("&"));
            }
            out
        }
        _ => url.to_owned(),
    };
    let config = Config::from_url(&normalized).map_err(|e| e.to_string())?;
    if let fred::types::config::ServerConfig::Sentinel { service_name, .. } = &config.server
        && service_name.is_empty()
    {
        return Err("a Sentinel URL needs ?sentinelServiceName=NAME".into());
    }
    Ok(normalized)
}

/// Whether `url` reaches Redis through Sentinel.
pub fn is_sentinel(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.ends_with("-sentinel"))
}

/// Deletes and returns the value under KEYS[1] only if it contains ARGV[1] (plain text).
const TAKE_IF_SCRIPT: &str = include_str!("lua/take_if.lua");

/// The attempt gate of `attempts.rs`, as one atomic script over both keys. Fields: `f`
/// failures, `n` next allowed (ms), `l` locked until (ms).
const GATE_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local function rule(o)
  return {tonumber(ARGV[o]), tonumber(ARGV[o+1]), tonumber(ARGV[o+2]), tonumber(ARGV[o+3]), tonumber(ARGV[o+4]), tonumber(ARGV[o+5])}
end
local function load(k)
  local v = redis.call('HMGET', k, 'f', 'n', 'l')
  local s = {f = tonumber(v[1]) or 0, n = tonumber(v[2]) or 0, l = tonumber(v[3]) or 0}
  if s.l > 0 and s.l <= now then s = {f = 0, n = 0, l = 0} end
  return s
end
local function refusal(s)
  if s.l > now then return {s.l - now, 1} end
  if s.n > now then return {s.n - now, 0} end
  return nil
end
local function admit(k, s, r)
  s.f = s.f + 1
  local d = 0
  if s.f >= r[1] then
    d = r[2] * (2 ^ math.min(s.f - r[1], 32))
    if d > r[3] then d = r[3] end
  end
  -- No wait owed is 0, not now: an attempt stamped a moment earlier must pass.
  if d > 0 then s.n = now + d else s.n = 0 end
  if s.f >= r[4] then s.l = now + r[5] end
  redis.call('HSET', k, 'f', s.f, 'n', string.format('%d', s.n), 'l', string.format('%d', s.l))
  local ttl = r[6]
  if s.l - now > ttl then ttl = s.l - now end
  redis.call('PEXPIRE', k, string.format('%d', ttl))
end
local a, i = load(KEYS[1]), load(KEYS[2])
local x, y = refusal(a), refusal(i)
if x or y then
  local best = x
  if y and (not x or y[1] > x[1]) then best = y end
  return {1, best[1], best[2]}
end
local af, ipf = a.f, i.f
admit(KEYS[1], a, rule(2))
admit(KEYS[2], i, rule(8))
return {0, af, ipf}
"#;

/// GCRA: KEYS[1] holds the theoretical arrival time (ms); ARGV: now, interval, window (ms).
const GCRA_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then return {0, allow_at - now} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', new_tat - now))
return {1, 0}
"#;

/// INCR that sets the expiry when it creates the counter.
const INCR_SCRIPT: &str = include_str!("lua/incr.lua");

const SUCCESS_SCRIPT: &str = r#"
redis.call('DEL', KEYS[1])
local f = tonumber(redis.call('HGET', KEYS[2], 'f') or '0')
if f > 0 then redis.call('HSET', KEYS[2], 'f', f - 1) end
return 1
"#;

/// The refund of `attempts::refund` on KEYS[1] (ARGV[1]: lock_after) and the address's
/// attempt back on KEYS[2].
const REFUND_SCRIPT: &str = r#"
local f = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if f > 0 then
  f = f - 1
  redis.call('HSET', KEYS[1], 'f', f, 'n', 0)
  if f < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'l', 0) end
end
local i = tonumber(redis.call('HGET', KEYS[2], 'f') or '0')
if i > 0 then redis.call('HSET', KEYS[2], 'f', i - 1) end
return 1
"#;

/// SET NX with an expiry; when the key is held, its remaining time (ms) instead.
const CLAIM_SCRIPT: &str = include_str!("lua/claim.lua");

fn rule_args(r: &GateRule) -> [i64; 6] {
    let c = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    [
        i64::from(r.delay_after),
        c(r.base_delay_ms),
        c(r.max_delay_ms),
        i64::from(r.lock_after),
        c(r.lock_ms),
        c(r.window_ms.max(1)),
    ]
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
    pub async fn connect(url: &str, clock: SharedClock) -> Result<Self, EphemeralError> {
        Self::connect_waiting(url, clock, None).await
    }

    /// [`connect`](Self::connect), with every single-use or counted write acknowledged only
    /// once `wait` replicas confirm it (a shortfall is an error, so the request fails closed).
    pub async fn connect_waiting(
        url: &str,
        clock: SharedClock,
        wait: Option<ReplicaWait>,
    ) -> Result<Self, EphemeralError> {
        let config = Config::from_url(&fred_url(url).map_err(EphemeralError)?).map_err(err)?;
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
        Ok(Self {
            pool,
            fallback: MemoryEphemeral::new(clock),
            wait: wait.filter(|w| w.replicas > 0),
        })
    }

    /// Runs `write`; with a replica requirement, follows it with `WAIT` on the same connection
    /// (one pipeline, never retried on another connection, where `WAIT` would count nothing
    /// of this write) and fails unless enough replicas confirmed it.
    async fn write<R: FromValue>(&self, write: Write<'_>) -> Result<R, EphemeralError> {
        let Some(wait) = self.wait else {
            return write
                .send(&self.pool)
                .await
                .and_then(Value::convert)
                .map_err(err);
        };
        let options = Options {
            max_attempts: Some(1),
            timeout: Some(wait.timeout + Duration::from_secs(1)),
            ..Options::default()
        };
        let pipeline = Pipeline::from(self.pool.next().with_options(&options));
        write.queue(&pipeline).await.map_err(err)?;
        let timeout_ms = i64::try_from(wait.timeout.as_millis()).unwrap_or(i64::MAX);
        pipeline
            .wait::<Value>(i64::from(wait.replicas), timeout_ms)
            .await
            .map_err(err)?;
        let mut replies: Vec<Value> = pipeline.all().await.map_err(err)?;
        let acked = replies.pop().and_then(|v| v.as_i64()).unwrap_or(0);
        let value = replies
            .pop()
            .ok_or_else(|| EphemeralError("empty reply".into()))?;
        if acked < i64::from(wait.replicas) {
            crate::metrics::REDIS_WAIT_SHORTFALLS.inc();
            return Err(EphemeralError(format!(
                "the write reached {acked} of {} Redis replicas within {} ms",
                wait.replicas,
                wait.timeout.as_millis()
            )));
        }
        value.convert().map_err(err)
    }

    #[tracing::instrument(name = "redis.set", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), EphemeralError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.write::<Value>(Write::SetPx(key, value, ms))
            .await
            .map(|_| ())
    }

    #[tracing::instrument(name = "redis.exists_any", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn exists_any(&self, keys: &[String]) -> Result<bool, EphemeralError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let n: i64 = self.pool.exists(keys.to_vec()).await.map_err(err)?;
        Ok(n > 0)
    }

    #[tracing::instrument(name = "redis.get", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn get(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        self.pool.get(key).await.map_err(err)
    }

    #[tracing::instrument(name = "redis.incr", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn incr(&self, key: &str, ttl: Duration) -> Result<i64, EphemeralError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.write(Write::Eval(
            INCR_SCRIPT,
            vec![key.to_owned()],
            vec![Value::from(ms)],
        ))
        .await
    }

    #[tracing::instrument(name = "redis.take_if", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn take_if(
        &self,
        key: &str,
        marker: &str,
    ) -> Result<Option<String>, EphemeralError> {
        self.write(Write::Eval(
            TAKE_IF_SCRIPT,
            vec![key.to_owned()],
            vec![Value::from(marker)],
        ))
        .await
    }

    #[tracing::instrument(name = "redis.take", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn take(&self, key: &str) -> Result<Option<String>, EphemeralError> {
        self.write(Write::GetDel(key)).await
    }

    #[tracing::instrument(name = "redis.ping", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn ping(&self) -> Result<(), EphemeralError> {
        self.pool.ping::<()>(None).await.map_err(err)
    }

    pub(super) fn fallback(&self) -> &MemoryEphemeral {
        &self.fallback
    }

    #[tracing::instrument(name = "redis.gate_attempt", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn gate_attempt(
        &self,
        account: &str,
        ip: &str,
        rules: (&GateRule, &GateRule),
        now_ms: i64,
    ) -> Result<Gate, EphemeralError> {
        let mut args = vec![now_ms];
        args.extend(rule_args(rules.0));
        args.extend(rule_args(rules.1));
        let reply: Vec<i64> = self
            .write(Write::Eval(
                GATE_SCRIPT,
                vec![account.to_owned(), ip.to_owned()],
                args.into_iter().map(Value::from).collect(),
            ))
            .await?;
        let field = |i: usize| reply.get(i).copied().unwrap_or(0);
        Ok(if field(0) == 1 {
            Gate::Refused {
                retry_after_ms: u64::try_from(field(1)).unwrap_or(0),
                locked: field(2) == 1,
            }
        } else {
            Gate::Admitted {
                account_failures: u32::try_from(field(1)).unwrap_or(u32::MAX),
                ip_failures: u32::try_from(field(2)).unwrap_or(u32::MAX),
            }
        })
    }

    #[tracing::instrument(name = "redis.gate_success", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn gate_success(&self, account: &str, ip: &str) -> Result<(), EphemeralError> {
        self.pool
            .eval::<i64, _, _, _>(
                SUCCESS_SCRIPT,
                vec![account.to_owned(), ip.to_owned()],
                Vec::<String>::new(),
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    #[tracing::instrument(name = "redis.gate_refund", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn gate_refund(
        &self,
        account: &str,
        ip: &str,
        lock_after: u32,
    ) -> Result<(), EphemeralError> {
        self.pool
            .eval::<i64, _, _, _>(
                REFUND_SCRIPT,
                vec![account.to_owned(), ip.to_owned()],
                vec![i64::from(lock_after)],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    #[tracing::instrument(name = "redis.claim", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn claim(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, EphemeralError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let held: i64 = self
            .write(Write::Eval(
                CLAIM_SCRIPT,
                vec![key.to_owned()],
                vec![Value::from(ms)],
            ))
            .await?;
        Ok(u64::try_from(held).ok())
    }

    #[tracing::instrument(name = "redis.gate_failures", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn gate_failures(
        &self,
        account: &str,
        ip: &str,
    ) -> Result<(u32, u32), EphemeralError> {
        let a: Option<u32> = self.pool.hget(account, "f").await.map_err(err)?;
        let i: Option<u32> = self.pool.hget(ip, "f").await.map_err(err)?;
        Ok((a.unwrap_or(0), i.unwrap_or(0)))
    }

    #[tracing::instrument(name = "redis.gate_clear", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn gate_clear(&self, keys: &[String]) -> Result<(), EphemeralError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.pool
            .del::<i64, _>(keys.to_vec())
            .await
            .map(|_| ())
            .map_err(err)
    }

    #[tracing::instrument(name = "redis.rate_check", skip_all, fields(db.system.name = "redis"))]
    pub(super) async fn rate_check(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now_ms: i64,
    ) -> Result<Result<(), u64>, EphemeralError> {
        let interval = (window_ms / u64::from(limit.max(1))).max(1);
        let args = vec![now_ms, interval as i64, window_ms as i64];
        let reply: Vec<i64> = self
            .pool
            .eval(GCRA_SCRIPT, vec![key.to_owned()], args)
            .await
            .map_err(err)?;
        Ok(match reply.as_slice() {
            [1, ..] => Ok(()),
            [_, wait, ..] => Err(u64::try_from(*wait).unwrap_or(1).max(1)),
            _ => Err(1),
        })
    }
}
