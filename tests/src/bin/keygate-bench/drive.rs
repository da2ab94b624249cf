//! Load drivers of the benchmark: closed loop (N clients back to back: the maximum
//! throughput) and open loop (a fixed arrival rate: the latency a client sees below the
//! maximum, measured from each request's scheduled start so that a stall is not hidden).

use anyhow::Result;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one measured window gave.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Operations completed in all, warm-up included (what the database statistics saw).
    pub total: u64,
    /// Window length.
    pub seconds: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Every latency inside the window, sorted (empty for a bare count).
    latencies: Vec<f64>,
}

impl Measured {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Nothing but a count over a window (the raw limits).
    pub fn count(ops: u64, seconds: f64) -> Self {
        Self {
            ops,
            total: ops,
            seconds,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            latencies: Vec::new(),
        }
    }

    /// Windows of one scenario taken in turns (with its limit's in between) as one window.
    pub fn combined(parts: Vec<Self>) -> Self {
        let ops = parts.iter().map(|p| p.ops).sum();
        let total = parts.iter().map(|p| p.total).sum();
        let seconds = parts.iter().map(|p| p.seconds).sum();
        let latencies = parts.into_iter().flat_map(|p| p.latencies).collect();
        Self {
            ops,
            ..Self::from_latencies(latencies, total, seconds)
        }
    }

    fn from_latencies(mut all: Vec<f64>, total: u64, seconds: f64) -> Self {
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Self {
            ops: all.len() as u64,
            total,
            seconds,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            latencies: all,
        }
    }
}

/// Runs `op` from `concurrency` workers for one warm-up second, then `seconds` measured.
/// `op` gets the worker's number (the same operation serves `open`, which numbers its starts).
pub async fn closed<F, Fut>(concurrency: usize, seconds: u64, op: F) -> Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    closed_window(
        concurrency,
        Duration::from_secs(1),
        Duration::from_secs(seconds),
        op,
    )
    .await
}

/// [`closed`] with the warm-up and the measured window given.
pub async fn closed_window<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    op: F,
) -> Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (op, measuring, stop, total) =
            (op.clone(), measuring.clone(), stop.clone(), total.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                op(w as u64).await?;
                total.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    Ok(Measured::from_latencies(
        all,
        total.load(Ordering::Relaxed),
        elapsed,
    ))
}

/// Starts `op` at `rate` per second for `seconds` (after one warm-up second at that rate),
/// each start on its own task, and measures each latency from the moment the operation was
/// due. `op` gets the operation's sequence number. Fails if an operation fails.
pub async fn open<F, Fut>(rate: f64, seconds: u64, op: F) -> Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let warmup = (rate.max(1.0)) as u64;
    let total = warmup + (rate * seconds as f64) as u64;
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let (op, failures, first_failure) = (op.clone(), failures.clone(), first_failure.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = op(n).await {
                failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = first_failure.lock() {
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            (n >= warmup).then(|| due.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let failed = failures.load(Ordering::Relaxed);
    let first = first_failure.lock().ok().and_then(|f| f.clone());
    anyhow::ensure!(
        failed == 0,
        "{failed} operations failed at {rate:.0}/s, the first: {}",
        first.unwrap_or_default()
    );
    Ok(Measured::from_latencies(
        all,
        total,
        interval.mul_f64((total - warmup) as f64).as_secs_f64(),
    ))
}
