//! The limits Keygate is measured against, taken in the same run: raw argon2id with the
//! server's parameters, `pgbench` running a script of exactly the statements one operation
//! issues, and a bare RESP client sending the Redis commands one operation sends (checked
//! against Redis's own `INFO commandstats`).

use crate::drive::{self, Measured};
use anyhow::{Context, Result, bail, ensure};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Raw argon2id verifications with the server's parameters, one thread per CPU (as the
/// server's hashing pool), each reusing its working memory: the fastest way argon2 can
/// verify, so the physical limit. The hash verified is made once.
pub struct Argon2Limit {
    argon: Argon2<'static>,
    params: Params,
    phc: String,
}

/// The server verifies the 64-character canonical digest, not the password itself.
const DIGEST: &str = "94d0ae21ee2a621d1118bbe8c4a3cc8dab96e96b800d1f8e6b7223042d734bd2";

impl Argon2Limit {
    pub fn new(memory_kib: u32, iterations: u32) -> Self {
        let params = Params::new(memory_kib, iterations, 1, None).expect("argon2 parameters");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = SaltString::encode_b64(b"benchmark-salt-1").expect("salt");
        let phc = argon
            .hash_password(DIGEST.as_bytes(), &salt)
            .expect("hash")
            .to_string();
        Self { argon, params, phc }
    }

    /// Verifications per second over `window`, one thread per CPU, each after verifying once
    /// (its memory faulted in); see [`Self::thread_rate`] for how a thread's rate is taken.
    pub fn measure(&self, window: Duration) -> Measured {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let start = std::sync::Barrier::new(threads);
        let per_thread: Vec<(u64, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| self.thread_rate(window, &start)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("argon2id thread"))
                .collect()
        });
        let ops: u64 = per_thread.iter().map(|(n, _)| n).sum();
        let rate: f64 = per_thread.iter().map(|(_, rate)| rate).sum();
        // The window length at which `ops` is that rate.
        Measured::count(
            ops,
            if rate > 0.0 {
                ops as f64 / rate
            } else {
                window.as_secs_f64()
            },
        )
    }

    /// One thread's verifications inside `window` (started when every thread has reached
    /// `start`) and their rate: the count over the time to the last of them. A window does
    /// not end on a verification's end, and counting over the whole window would drop half a
    /// verification per thread on average (2 % of a half-second window at 22 ms each).
    fn thread_rate(&self, window: Duration, start: &std::sync::Barrier) -> (u64, f64) {
        let parsed = PasswordHash::new(&self.phc).expect("phc");
        let expected = parsed.hash.expect("hash part");
        let mut salt = [0u8; 64];
        let salt = parsed
            .salt
            .expect("salt part")
            .decode_b64(&mut salt)
            .expect("salt bytes");
        let mut memory = vec![argon2::Block::default(); self.params.block_count()];
        let mut out = vec![0u8; expected.len()];
        let mut verify = || {
            self.argon
                .hash_password_into_with_memory(DIGEST.as_bytes(), salt, &mut out, &mut memory)
                .expect("argon2id");
            assert_eq!(out.as_slice(), expected.as_bytes());
        };
        verify();
        start.wait();
        let started = Instant::now();
        let (mut count, mut last) = (0u64, Duration::ZERO);
        loop {
            verify();
            let at = started.elapsed();
            if at > window {
                break;
            }
            (count, last) = (count + 1, at);
        }
        let rate = if count == 0 {
            0.0
        } else {
            count as f64 / last.as_secs_f64()
        };
        (count, rate)
    }
}

/// What a `pgbench` run gave: transactions (one operation each) and their rate.
#[derive(Debug, Clone)]
pub struct PgbenchRun {
    /// Transactions completed.
    pub transactions: u64,
    /// Transactions per second, without connection set-up.
    pub tps: f64,
    /// At a fixed arrival rate: median and 99th percentile latency in ms, from each
    /// transaction's scheduled start (pgbench's own per-transaction log).
    pub latency: Option<(f64, f64)>,
}

/// Runs `pgbench` with `script` (prepared statements, as the server's driver uses) from
/// `clients` connections for `seconds`, with `-D` variables `clients`, `k` (the per-client
/// step, from 0) and `defines`: as fast as it goes, or at `rate` transactions per second
/// with every transaction's latency logged.
pub fn pgbench(
    bin: &Path,
    url: &str,
    script: &Path,
    clients: usize,
    seconds: u64,
    defines: &[(&str, String)],
    rate: Option<f64>,
) -> Result<PgbenchRun> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-n", "-M", "prepared", "--no-vacuum"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--time={seconds}"))
        .arg(format!("--define=clients={clients}"))
        .arg("--define=k=0")
        .arg(format!("--file={}", script.display()));
    for (k, v) in defines {
        cmd.arg(format!("--define={k}={v}"));
    }
    let logs = tempfile::tempdir()?;
    if let Some(rate) = rate {
        cmd.arg(format!("--rate={rate:.1}"))
            .arg("--log")
            .arg(format!("--log-prefix={}", logs.path().join("tx").display()));
    }
    let out = cmd
        .arg(url)
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !err.contains("error"),
        "pgbench {} failed: {text}\n{err}",
        script.display()
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|v| v.split('/').next().unwrap_or(v).to_owned())
            .with_context(|| format!("pgbench printed no `{prefix}`: {text}"))
    };
    let latency = match rate {
        None => None,
        Some(_) => Some(logged_latency(logs.path())?),
    };
    Ok(PgbenchRun {
        transactions: field("number of transactions actually processed:")?.parse()?,
        tps: field("tps =")?.parse()?,
        latency,
    })
}

/// Median and 99th percentile (ms) of the `time` column (µs) of pgbench's per-transaction
/// logs in `dir`.
fn logged_latency(dir: &Path) -> Result<(f64, f64)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|t| t.parse::<f64>().ok())
            {
                all.push(us / 1000.0);
            }
        }
    }
    ensure!(!all.is_empty(), "pgbench logged no transaction");
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok((pct(0.5), pct(0.99)))
}

/// A bare RESP2 connection: one command at a time, the reply read whole.
pub struct Resp {
    conn: BufReader<TcpStream>,
}

/// A reply, as far as the benchmark needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Status, integer or bulk string.
    Value(Vec<u8>),
    /// Nil bulk or array.
    Nil,
    /// An array (elements not kept).
    Array(usize),
}

impl Resp {
    /// Connects to `redis://host:port`.
    pub async fn connect(url: &str) -> Result<Self> {
        let addr = url.trim_start_matches("redis://").trim_end_matches('/');
        Ok(Self {
            conn: BufReader::new(TcpStream::connect(addr).await?),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.conn.get_mut().write_all(&out).await?;
        self.reply().await
    }

    /// Sends `commands` in one write (set-up, not measured) and reads every reply.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<()> {
        let mut out = Vec::new();
        for c in commands {
            encode(&mut out, &c.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
        self.conn.get_mut().write_all(&out).await?;
        for _ in commands {
            self.reply().await?;
        }
        Ok(())
    }

    async fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        self.conn.read_until(b'\n', &mut line).await?;
        ensure!(line.ends_with(b"\r\n"), "connection closed");
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn reply(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            let line = self.line().await?;
            let (kind, rest) = line.split_first().context("empty reply")?;
            let n = || -> Result<i64> { Ok(std::str::from_utf8(rest)?.parse()?) };
            match kind {
                b'+' | b':' => Ok(Reply::Value(rest.to_vec())),
                b'-' => bail!("redis: {}", String::from_utf8_lossy(rest)),
                b'$' if n()? < 0 => Ok(Reply::Nil),
                b'$' => {
                    let mut buf = vec![0; usize::try_from(n()?)? + 2];
                    self.conn.read_exact(&mut buf).await?;
                    buf.truncate(buf.len() - 2);
                    Ok(Reply::Value(buf))
                }
                b'*' if n()? < 0 => Ok(Reply::Nil),
                b'*' => {
                    let len = usize::try_from(n()?)?;
                    for _ in 0..len {
                        self.reply().await?;
                    }
                    Ok(Reply::Array(len))
                }
                _ => bail!("unexpected reply {}", String::from_utf8_lossy(&line)),
            }
        })
    }
}

/// Appends one command in RESP2 to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Calls per command since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
pub async fn command_stats(url: &str) -> Result<BTreeMap<String, u64>> {
    let mut c = Resp::connect(url).await?;
    let Reply::Value(info) = c.command(&[b"INFO", b"commandstats"]).await? else {
        bail!("INFO answered no text");
    };
    Ok(String::from_utf8_lossy(&info)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// Clears Redis's command statistics.
pub async fn reset_command_stats(url: &str) -> Result<()> {
    Resp::connect(url)
        .await?
        .command(&[b"CONFIG", b"RESETSTAT"])
        .await?;
    Ok(())
}

/// Commands per operation (those issued at least half a time per operation).
pub fn commands_per_op(stats: &BTreeMap<String, u64>, ops: u64) -> BTreeMap<String, f64> {
    stats
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat" | "config"))
        .map(|(name, calls)| (name.clone(), *calls as f64 / ops.max(1) as f64))
        .filter(|(_, n)| *n >= 0.5)
        .collect()
}

/// Fails unless the baseline sent the same commands per operation as Keygate (within 5 %).
pub fn same_commands(ours: &BTreeMap<String, f64>, raw: &BTreeMap<String, f64>) -> Result<()> {
    let names: std::collections::BTreeSet<_> = ours.keys().chain(raw.keys()).collect();
    let off: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (
                ours.get(name).copied().unwrap_or(0.0),
                raw.get(name).copied().unwrap_or(0.0),
            );
            ((a - b).abs() > 0.05 * a.max(b))
                .then(|| format!("{name}: Keygate {a:.2}/op, baseline {b:.2}/op"))
        })
        .collect();
    ensure!(
        off.is_empty(),
        "the Redis baseline does not send Keygate's commands: {}",
        off.join("; ")
    );
    Ok(())
}

/// Runs `op` over one bare connection per client, back to back (as `drive::closed`).
pub async fn redis_closed<F, Fut>(
    url: &str,
    clients: usize,
    seconds: u64,
    op: F,
) -> Result<Measured>
where
    F: Fn(Arc<tokio::sync::Mutex<Resp>>, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Arc::new(tokio::sync::Mutex::new(Resp::connect(url).await?)));
    }
    let conns = Arc::new(conns);
    let steps: Arc<Vec<AtomicU64>> = Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
    drive::closed(clients, seconds, move |w| {
        let (op, conns, steps) = (op.clone(), conns.clone(), steps.clone());
        let w = w as usize;
        async move {
            let step = steps[w].fetch_add(1, Ordering::Relaxed);
            op(conns[w].clone(), w, step).await
        }
    })
    .await
}
