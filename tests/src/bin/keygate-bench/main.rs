//! `keygate-bench`: measures Keygate against the limits it cannot beat, in one run on one
//! machine. Password login against raw argon2id with the server's parameters; each
//! store-bound operation (refresh, ticket sign-in, `/auth/me`) against `pgbench` running
//! exactly the statements the operation issued (checked against `pg_stat_statements`) plus a
//! bare client sending its Redis commands (checked against `INFO commandstats`); latency at
//! half the maximum rate; resident memory idle and under load; time to ready; one against
//! three replicas; and a thousand against a million users (with the tables scanned). Run it
//! through `scripts/bench`, which starts a durable Postgres and a Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drive;
mod issuer;
mod pg;
mod raw;
mod wire;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use drive::Measured;
use keygate_tests::delivery::SmtpServer;
use keygate_tests::{ServerOptions, ServerProcess, add_user};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Keygate benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of measurement per scenario (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients (HTTP clients for Keygate, connections for the baselines).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Postgres server URL (a superuser; databases are created). Durable settings expected.
    #[arg(long, env = "KEYGATE_TEST_DATABASE_URL")]
    postgres_url: String,
    /// Redis server URL.
    #[arg(long, env = "KEYGATE_TEST_REDIS_URL")]
    redis_url: String,
    /// The `pgbench` program.
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// argon2id memory cost in KiB (the server default).
    #[arg(long, default_value_t = 19456)]
    memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, default_value_t = 2)]
    iterations: u32,
    /// User counts for the scaling scenario (users added to the database before it runs).
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
    users: Vec<u64>,
    /// The servers' async worker threads (`KEYGATE_WORKER_THREADS`; unset: the server's
    /// default, half the CPUs).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Only these parts: login, refresh, ticket, code, id_token, me, jwks, ready, reload,
    /// replicas, users.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Replica counts compared (refresh on shared Postgres and Redis).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
}

const PW: &str = "benchmark password 1";
/// The clients' `User-Agent` (recorded in audit events).
const AGENT: &str = "keygate-bench";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(AGENT)
        .build()
        .expect("HTTP client")
}
/// Fixed times of the baselines' rows (their values cost nothing in particular).
const NOW: i64 = 1_800_000_000;
/// The issuer of the baselines' external accounts.
const BASELINE_ISSUER: &str = "http://127.0.0.1:1";

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let res = client.post(url).json(body).send().await?;
    let status = res.status();
    let body: Value = res.json().await?;
    ensure!(status == 200, "{url} answered {status}: {body}");
    Ok(body)
}

fn text(v: &Value, path: &[&str]) -> Result<String> {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {} in {v}", path.join(".")))
}

/// A server for one scenario, with its users (`bench0..`, `bench-admin`).
struct Server {
    process: ServerProcess,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(
        args: &Args,
        database_url: Option<&str>,
        redis: bool,
        users: usize,
        extras: Option<&Extras>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let providers = extras.map_or(json!([]), |e| {
            json!([e.issuer.provider_config(ISSUER_NAME)])
        });
        let mut env = vec![
            (
                "KEYGATE_CONFIG".to_owned(),
                config_file(dir.path(), args, providers),
            ),
            ("KEYGATE_LOG".to_owned(), "warn".to_owned()),
        ];
        if let Some(e) = extras {
            env.push(("KEYGATE_SMTP_URL".to_owned(), e.smtp.url()));
            env.push((
                "KEYGATE_SMTP_FROM".to_owned(),
                "bench@keygate.test".to_owned(),
            ));
        }
        if let Some(n) = args.worker_threads {
            env.push(("KEYGATE_WORKER_THREADS".to_owned(), n.to_string()));
        }
        if let Some(url) = database_url {
            env.push(("KEYGATE_DATABASE_URL".to_owned(), url.to_owned()));
        }
        if redis {
            env.push(("KEYGATE_REDIS_URL".to_owned(), args.redis_url.clone()));
        }
        for i in 0..users {
            add_user(dir.path(), &env, &["--username", &format!("bench{i}")], PW);
        }
        add_user(
            dir.path(),
            &env,
            &["--username", "bench-admin", "--role", "admin"],
            PW,
        );
        let process = ServerProcess::start(ServerOptions {
            data_dir: Some(dir.path().to_path_buf()),
            env: env.clone(),
            ..Default::default()
        });
        Self { process, env, dir }
    }

    /// Another process with the same data and settings (a replica).
    fn replica(&self) -> ServerProcess {
        ServerProcess::start(ServerOptions {
            data_dir: Some(self.dir.path().to_path_buf()),
            env: self.env.clone(),
            ..Default::default()
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.base_url)
    }

    async fn login(&self, client: &reqwest::Client, who: &str) -> Result<Value> {
        post(
            client,
            &self.url("/api/v1/auth/login"),
            &json!({"identity": who, "password": PW}),
        )
        .await
    }
}

fn config_file(dir: &std::path::Path, args: &Args, oidc_providers: Value) -> String {
    let path = dir.join("bench-config.json");
    // The limiter is not what is measured here: no rules. The code scenario sends all its
    // codes before the first sign-in (minutes at the SMTP server's pace), so they live the
    // longest time the policy allows; at the default five minutes the first ones sent expired
    // before they were used on a slow day.
    let config = json!({
        "password_hashing": {"memory_kib": args.memory_kib, "iterations": args.iterations, "parallelism": 1},
        "rate_limits": {"rules": []},
        "oidc_providers": oidc_providers,
        "policy": {"login_codes": {"ttl_seconds": CODE_TTL_SECONDS}},
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path.display().to_string()
}

/// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) so far, from
/// /proc/stat.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// CPU seconds used so far by the Postgres backends serving database `db` (their command
/// line names it).
fn backend_cpu_seconds(db: &str) -> f64 {
    backends(db).map(cpu_seconds).sum()
}

/// The PIDs of the Postgres backends connected to database `db`.
fn backends(db: &str) -> impl Iterator<Item = u32> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("postgres: ") && c.contains(&format!(" {db} "))
            })
        })
}

/// CPU seconds of the backends of a database whose clients come and go (pgbench's close
/// when it ends, and an exited backend's CPU can no longer be read): each backend's last
/// reading, taken every 50 ms until [`BackendSampler::stop`]. What a backend spends after its
/// last reading is missed (at most 50 ms of its time).
struct BackendSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl BackendSampler {
    fn start(db: String) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last = std::collections::HashMap::new();
            loop {
                let done = stopped.load(std::sync::atomic::Ordering::SeqCst);
                for pid in backends(&db) {
                    let cpu = cpu_seconds(pid);
                    let seen = last.entry(pid).or_insert(0.0);
                    *seen = f64::max(*seen, cpu);
                }
                if done {
                    return last.values().sum();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { stop, thread }
    }

    /// The backends' CPU seconds seen.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or(0.0)
    }
}

/// Where the CPU of one operation went, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct CpuSplit {
    machine: f64,
    server: f64,
    database: f64,
    client: f64,
}

impl CpuSplit {
    /// Reads the counters now; `since` turns two readings into per-operation figures.
    fn now(server_pid: u32, db: &str) -> Self {
        Self {
            machine: machine_busy_seconds(),
            server: cpu_seconds(server_pid),
            database: backend_cpu_seconds(db),
            client: cpu_seconds(std::process::id()),
        }
    }

    fn per_op(self, before: Self, ops: u64) -> Self {
        let ms = |a: f64, b: f64| (a - b) * 1000.0 / ops.max(1) as f64;
        Self {
            machine: ms(self.machine, before.machine),
            server: ms(self.server, before.server),
            database: ms(self.database, before.database),
            client: ms(self.client, before.client),
        }
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = stat_user_system(&format!("/proc/{pid}/stat"));
    user + system
}

/// A server's threads so far: CPU seconds of its password-hashing threads, of SQLite's
/// connection threads and of the rest (async workers and everything else), the system time
/// of all but the hashing threads, and context switches of all.
#[derive(Debug, Default, Clone, Copy)]
struct Threads {
    hashing: f64,
    database: f64,
    other: f64,
    /// Kernel time of the threads besides hashing (included in `database` and `other`).
    system: f64,
    switches: f64,
}

impl Threads {
    /// The CPU besides the hashing threads.
    fn rest(&self) -> f64 {
        self.database + self.other
    }

    /// Every field over `n` operations, CPU in milliseconds.
    fn per(&self, n: u64) -> Threads {
        let n = n as f64;
        Threads {
            hashing: self.hashing * 1000.0 / n,
            database: self.database * 1000.0 / n,
            other: self.other * 1000.0 / n,
            system: self.system * 1000.0 / n,
            switches: self.switches / n,
        }
    }
}

impl std::ops::Sub for Threads {
    type Output = Threads;
    fn sub(self, before: Threads) -> Threads {
        Threads {
            hashing: self.hashing - before.hashing,
            database: self.database - before.database,
            other: self.other - before.other,
            system: self.system - before.system,
            switches: (self.switches - before.switches).max(0.0),
        }
    }
}

impl std::ops::AddAssign for Threads {
    fn add_assign(&mut self, other: Threads) {
        self.hashing += other.hashing;
        self.database += other.database;
        self.other += other.other;
        self.system += other.system;
        self.switches += other.switches;
    }
}

/// [`Threads`] of process `pid`, from /proc/PID/task (hashing threads are named
/// `keygate-hash-N`, SQLite's `sqlx-sqlite-worker-N`, cut to 15 characters).
fn threads(pid: u32) -> Threads {
    let mut t = Threads::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return t;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let (user, system) = stat_user_system(&dir.join("stat").to_string_lossy());
        if comm.starts_with("keygate-hash") {
            t.hashing += user + system;
        } else {
            if comm.starts_with("sqlx-sqlite") {
                t.database += user + system;
            } else {
                t.other += user + system;
            }
            t.system += system;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        t.switches += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum::<f64>();
    }
    t
}

/// User and system CPU seconds from a `stat` file of /proc.
fn stat_user_system(path: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let seconds = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (seconds(11), seconds(12))
}

/// A `/proc/PID/status` field in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Refresh tokens (or tickets) shared by the clients: taking waits until one is there, so an
/// operation that is due while all are in flight waits (and its latency shows it).
struct Pool {
    items: Mutex<Vec<String>>,
    available: tokio::sync::Semaphore,
}

impl Pool {
    fn new() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            available: tokio::sync::Semaphore::new(0),
        }
    }

    async fn take(&self) -> Result<String> {
        self.available.acquire().await?.forget();
        self.items.lock().await.pop().context("pool empty")
    }

    async fn put(&self, item: String) {
        self.items.lock().await.push(item);
        self.available.add_permits(1);
    }
}

/// One line of the results table.
struct Row {
    name: String,
    keygate: Measured,
    limit: Option<(String, f64)>,
    half: Option<Measured>,
    /// The database work's own p50 and p99 (ms) at the open loop's rate.
    limit_half: Option<(f64, f64)>,
}

struct Login {
    row: Row,
    server_cpu_ms: f64,
    /// Per login: the server's threads' CPU ms and context switches.
    per_login: Threads,
    client_cpu_ms: f64,
    raw_cpu_ms: f64,
    /// Standard error of Keygate / raw, from the spread of the rounds' own ratios.
    ratio_error: f64,
    rss_idle: f64,
    rss_peak: f64,
}

/// Rounds of the login scenario, each a window of raw argon2id and one of Keygate: this
/// virtual machine's speed drifts by more than the gap being measured, and taking the two in
/// turns puts the same drift into both. Many short rounds rather than a few long ones: the
/// speed also moves by several per cent from one second to the next, and the spread of the
/// rounds' ratios gives the figure's standard error.
const LOGIN_ROUNDS: u32 = 20;

async fn login(args: &Args) -> Result<Login> {
    let server = Server::start(args, None, false, args.concurrency, None);
    let pid = server.process.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = memory_mib(pid, "VmRSS:");
    let client = Arc::new(wire::Client::new(&server.process.base_url)?);
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|i| {
                wire::post_json(
                    &client.host(),
                    "/api/v1/auth/login",
                    &json!({"identity": format!("bench{i}"), "password": PW}),
                )
            })
            .collect(),
    );
    let op = move |w: u64| {
        let (client, requests) = (client.clone(), requests.clone());
        async move { client.expect(&requests[(w % 8) as usize], 200).await }
    };
    // One warm-up (connections, the account's cached state), then the rounds.
    drive::closed_window(
        args.concurrency,
        Duration::ZERO,
        Duration::from_secs(1),
        op.clone(),
    )
    .await?;
    let window = Duration::from_secs(args.seconds) / LOGIN_ROUNDS;
    let raw_argon2 = raw::Argon2Limit::new(args.memory_kib, args.iterations);
    let (mut ours, mut limit) = (Vec::new(), Vec::new());
    let (mut server_cpu, mut own_cpu, mut by_thread) = (0.0, 0.0, Threads::default());
    for round in 0..LOGIN_ROUNDS {
        // Raw first in even rounds, last in odd ones (raw, Keygate, Keygate, raw, ...): a
        // steady drift adds to both sides alike.
        if round % 2 == 0 {
            limit.push(raw_argon2.measure(window));
        }
        let (server_before, own_before, threads_before) = (
            cpu_seconds(pid),
            cpu_seconds(std::process::id()),
            threads(pid),
        );
        ours.push(
            drive::closed_window(
                args.concurrency,
                Duration::from_millis(300),
                window,
                op.clone(),
            )
            .await?,
        );
        server_cpu += cpu_seconds(pid) - server_before;
        by_thread += threads(pid) - threads_before;
        own_cpu += cpu_seconds(std::process::id()) - own_before;
        if round % 2 == 1 {
            limit.push(raw_argon2.measure(window));
        }
    }
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&limit)
        .map(|(k, r)| k.rate() / r.rate())
        .collect();
    let (m, raw) = (Measured::combined(ours), Measured::combined(limit));
    let rss_peak = memory_mib(pid, "VmHWM:");
    let half = drive::open(m.rate() / 2.0, args.seconds, op).await?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok(Login {
        server_cpu_ms: server_cpu * 1000.0 / m.total as f64,
        per_login: by_thread.per(m.total),
        client_cpu_ms: own_cpu * 1000.0 / m.total as f64,
        raw_cpu_ms: cpus * 1000.0 / raw.rate(),
        ratio_error: standard_error(&ratios),
        rss_idle,
        rss_peak,
        row: Row {
            name: "POST /auth/login (SQLite)".into(),
            limit: Some(("raw argon2id verify".into(), raw.rate())),
            keygate: m,
            half: Some(half),
            limit_half: None,
        },
    })
}

/// Standard error of the mean of `values` (the sample standard deviation over the square root
/// of their count).
fn standard_error(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (variance / n).sqrt()
}

/// The database work of one operation, measured by `pgbench` on a database of its own with
/// Keygate's schema, after checking (on Keygate's own run) which statements that is.
struct Baseline {
    script: &'static str,
    /// Rows the script's clients need, as SQL over `:clients` (replaced).
    seed: String,
    defines: Vec<(&'static str, String)>,
}

/// Rows for `clients` users `0..clients` (ids, and addresses, as text: pgbench binds a client
/// id, not a string made of it), each with a session `0..` holding refresh token `0..` and
/// an external account `0..` of the benchmark's issuer.
fn seed_users_sessions(clients: usize, hash: &str) -> String {
    let last = clients - 1;
    format!(
        "INSERT INTO users (id, tenant_id, username, email, password_hash, status, roles, \
         must_change_password, created_at, updated_at) \
         SELECT i::text, 'default', 'bench' || i, i::text, '{hash}', 'active', '', 0, {NOW}, {NOW} \
         FROM generate_series(0, {last}) i; \
         INSERT INTO federated_identities (tenant_id, issuer, subject, user_id, created_at) \
         SELECT 'default', '{BASELINE_ISSUER}', i::text, i::text, {NOW} FROM generate_series(0, {last}) i; \
         INSERT INTO sessions (id, tenant_id, user_id, amr, created_at, expires_at) \
         SELECT i::text, 'default', i::text, 'pwd', {NOW}, {NOW} + 2592000 \
         FROM generate_series(0, {last}) i; \
         INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, access_expires_at) \
         SELECT i::text, i::text, {NOW}, {NOW} + 2592000, {NOW} FROM generate_series(0, {last}) i;"
    )
}

/// The scaling scenario's population, added directly in SQL: `n` users, each with a
/// session, a refresh token and an audit event, so that every table an operation reads is
/// large.
fn seed_population(n: u64) -> String {
    format!(
        "INSERT INTO users (id, tenant_id, username, email, password_hash, status, roles, \
         must_change_password, created_at, updated_at) \
         SELECT 'usr_pop_' || i, 'default', 'pop' || i, 'pop' || i || '@example.com', \
         'x', 'active', '', 0, {NOW}, {NOW} FROM generate_series(1, {n}) i; \
         INSERT INTO sessions (id, tenant_id, user_id, amr, created_at, expires_at) \
         SELECT 'ses_pop_' || i, 'default', 'usr_pop_' || i, 'pwd', {NOW}, {NOW} + 2592000 \
         FROM generate_series(1, {n}) i; \
         INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, access_expires_at) \
         SELECT md5(i::text) || md5('r' || i), 'ses_pop_' || i, {NOW}, {NOW} + 2592000, {NOW} \
         FROM generate_series(1, {n}) i; \
         INSERT INTO audit_events (id, occurred_at, tenant_id, type, outcome, method, user_id) \
         SELECT 'evt_pop_' || i, {NOW}, 'default', 'sign_in', 'success', 'password', 'usr_pop_' || i \
         FROM generate_series(1, {n}) i; ANALYZE;"
    )
}

struct Ctx<'a> {
    args: &'a Args,
    bench_dir: PathBuf,
    migrations: PathBuf,
    /// A password hash as the server stores them (the baseline's users carry one).
    hash: String,
}

impl Ctx<'_> {
    /// Measures `baseline` on rows of its own (as fast as it goes, or at `rate` with its
    /// latency) and checks that it issued the statements `ours` lists per op.
    async fn pgbench(
        &self,
        baseline: &Baseline,
        ours: &pg::Statements,
        ops: u64,
        rate: Option<f64>,
    ) -> Result<Pgbench> {
        let url = keygate_tests::fresh_postgres_database_on(&self.args.postgres_url).await;
        pg::migrate(&url, &self.migrations).await?;
        pg::run(&url, &baseline.seed).await?;
        pg::run(&url, "ANALYZE").await?;
        pg::reset(&self.args.postgres_url).await?;
        let db = pg::database_name(&url);
        let script = self.bench_dir.join(baseline.script);
        let control = pg::script_control(&std::fs::read_to_string(&script)?);
        let sampler = BackendSampler::start(db.to_owned());
        let run = raw::pgbench(
            &self.args.pgbench,
            &url,
            &script,
            self.args.concurrency,
            self.args.seconds,
            &baseline.defines,
            rate,
        );
        let backends_seconds = sampler.stop();
        let run = run?;
        let theirs = pg::statements(&self.args.postgres_url, db).await?;
        ours.same_work(ops, &theirs, run.transactions, &control)
            .with_context(|| format!("checking {}", baseline.script))?;
        Ok(Pgbench {
            backends_ms: backends_seconds * 1000.0 / run.transactions.max(1) as f64,
            run,
        })
    }
}

/// A pgbench run and the CPU its Postgres backends spent per transaction (ms).
struct Pgbench {
    run: raw::PgbenchRun,
    backends_ms: f64,
}

/// What the code and id-token scenarios need besides Postgres and Redis: the SMTP server
/// codes are delivered to, and an issuer of id_tokens.
struct Extras {
    smtp: SmtpServer,
    issuer: issuer::Issuer,
}

/// The name the benchmark's issuer is configured under.
const ISSUER_NAME: &str = "bench";

/// A server on Postgres and Redis with its users, and the population added around them.
struct Shared {
    server: Server,
    db: String,
    population: u64,
    extras: Extras,
}

impl Shared {
    async fn start(args: &Args, population: u64) -> Result<Self> {
        let db = keygate_tests::fresh_postgres_database_on(&args.postgres_url).await;
        let extras = Extras {
            smtp: SmtpServer::start(),
            issuer: issuer::Issuer::start().await?,
        };
        let server = Server::start(args, Some(&db), true, args.concurrency, Some(&extras));
        if population > 0 {
            let started = Instant::now();
            pg::run(&db, &seed_population(population)).await?;
            println!(
                "{population} users with a session, a refresh token and an audit event each added in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Self {
            server,
            db,
            population,
            extras,
        })
    }

    fn label(&self, name: &str) -> String {
        if self.population == 0 {
            name.to_owned()
        } else {
            format!("{name} ({} users)", self.population)
        }
    }
}

/// What a store-bound scenario measured.
struct StoreRun {
    row: Row,
    statements: String,
    redis: String,
    /// Tables the statements' generic plans read by sequential scan.
    scans: Vec<String>,
    /// CPU per operation in Keygate's closed loop, and the machine's and the Postgres
    /// backends' per baseline transaction.
    cpu: CpuSplit,
    baseline_machine_ms: Option<f64>,
    baseline_backends_ms: Option<f64>,
}

/// Runs Keygate's side of a store-bound operation (closed loop, statements and commands
/// recorded, then the open loop at half the rate), then, on the population of the bench
/// users alone, its baselines.
async fn store_bound<F, Fut>(
    ctx: &Ctx<'_>,
    shared: &Shared,
    name: &str,
    baseline: &Baseline,
    redis_op: Option<RedisOp>,
    op: F,
) -> Result<StoreRun>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let args = ctx.args;
    let name = shared.label(name);
    let db_name = pg::database_name(&shared.db);
    pg::reset(&args.postgres_url).await?;
    raw::reset_command_stats(&args.redis_url).await?;
    let pid = shared.server.process.pid();
    let cpu_before = CpuSplit::now(pid, db_name);
    let m = drive::closed(args.concurrency, args.seconds, op.clone()).await?;
    let cpu = CpuSplit::now(pid, db_name).per_op(cpu_before, m.total);
    let ours = pg::statements(&args.postgres_url, db_name).await?;
    let commands = raw::commands_per_op(&raw::command_stats(&args.redis_url).await?, m.total);
    let scans = pg::sequential_scans(&shared.db, &ours.per_op_raw(m.total, 0.5)).await?;
    let half = drive::open(m.rate() / 2.0, args.seconds, op).await?;
    let mut run = StoreRun {
        statements: format!("{name}\n{}", ours.describe(m.total)),
        redis: "none".into(),
        scans,
        cpu,
        baseline_machine_ms: None,
        baseline_backends_ms: None,
        row: Row {
            name,
            limit: None,
            keygate: m,
            half: Some(half),
            limit_half: None,
        },
    };
    if shared.population > 0 {
        return Ok(run);
    }
    let busy = machine_busy_seconds();
    let Pgbench {
        run: pgb,
        backends_ms,
    } = ctx
        .pgbench(baseline, &ours, run.row.keygate.total, None)
        .await?;
    // Set-up and the statement check are inside this reading too: an upper bound.
    run.baseline_machine_ms =
        Some((machine_busy_seconds() - busy) * 1000.0 / pgb.transactions.max(1) as f64);
    run.baseline_backends_ms = Some(backends_ms);
    // The database's own latency at the rate Keygate's open loop ran at.
    let at_half = ctx
        .pgbench(
            baseline,
            &ours,
            run.row.keygate.total,
            Some(run.row.keygate.rate() / 2.0),
        )
        .await?
        .run;
    run.row.limit_half = at_half.latency;
    let mut limit_ms = 1000.0 / pgb.tps;
    let mut what = format!("pgbench {}", baseline.script);
    run.statements
        .push_str(&format!("\n  pgbench alone: {:.0} tx/s", pgb.tps));
    if let Some(redis_op) = redis_op {
        let r = redis_op.measure(args, &commands).await?;
        limit_ms += 1000.0 / r.rate();
        what.push_str(" + Redis");
        run.redis = format!(
            "{} ({:.0}/s alone)",
            commands
                .iter()
                .map(|(c, n)| format!("{n:.2} {}", c.to_uppercase()))
                .collect::<Vec<_>>()
                .join(", "),
            r.rate()
        );
    } else {
        ensure!(
            commands.is_empty(),
            "{} sent Redis commands the baseline lacks: {commands:?}",
            run.row.name
        );
    }
    run.row.limit = Some((what, 1000.0 / limit_ms));
    Ok(run)
}

/// The Redis side of an operation's baseline.
#[derive(Clone, Copy)]
enum RedisOp {
    /// `GETDEL` of a stored ticket (values as the server stores them).
    TakeTicket,
    /// `EXISTS` of the two deny-list keys of a bearer check.
    DenyCheck,
    /// A code redeemed as the server does it: `GET` of the stored code, the attempt counter's
    /// script, and the take-if-unchanged script (the server's own Lua).
    RedeemCode,
    /// The single-use claim of an id_token (the server's own Lua: `SET NX PX`).
    SpendIdToken,
}

/// The server's Lua scripts, as it sends them.
const INCR_LUA: &str = include_str!("../../../../auth-server/src/ephemeral/lua/incr.lua");
const TAKE_IF_LUA: &str = include_str!("../../../../auth-server/src/ephemeral/lua/take_if.lua");
const CLAIM_LUA: &str = include_str!("../../../../auth-server/src/ephemeral/lua/claim.lua");
/// The nonce of the baseline's stored codes (the server's are random, of this length).
const CODE_NONCE: &str = "bench-code-nonce";

impl RedisOp {
    /// The value stored under each key beforehand, for the operations that take one.
    fn stored_value(self) -> Option<String> {
        match self {
            Self::TakeTicket => Some(format!(
                "{{\"user_id\":\"usr_{}\",\"tenant_id\":\"default\",\"issued_by\":\"usr_{}\",\"expires_at\":{NOW},\"reason\":null,\"issuer_act\":null}}",
                "0".repeat(26),
                "1".repeat(26)
            )),
            Self::RedeemCode => Some(format!(
                "{{\"nonce\":\"{CODE_NONCE}\",\"hash\":\"{}\",\"expires_at\":{NOW}}}",
                "0".repeat(64)
            )),
            Self::DenyCheck | Self::SpendIdToken => None,
        }
    }

    async fn measure(
        self,
        args: &Args,
        ours: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Measured> {
        let url = args.redis_url.clone();
        // Redis answers in microseconds: three seconds measure it well, and bound the values
        // that must be stored beforehand (pipelined) for the window.
        let seconds = args.seconds.min(3);
        let run: u32 = rand::random();
        if let Some(value) = self.stored_value() {
            let mut c = raw::Resp::connect(&url).await?;
            for w in 0..args.concurrency {
                for chunk in (0..KEYS_PER_CLIENT).collect::<Vec<_>>().chunks(10_000) {
                    let commands: Vec<Vec<Vec<u8>>> = chunk
                        .iter()
                        .map(|step| {
                            vec![
                                b"SET".to_vec(),
                                baseline_key(run, w, *step).into_bytes(),
                                value.clone().into_bytes(),
                                b"EX".to_vec(),
                                b"600".to_vec(),
                            ]
                        })
                        .collect();
                    c.pipeline(&commands).await?;
                }
            }
        }
        raw::reset_command_stats(&url).await?;
        let m = raw::redis_closed(
            &url,
            args.concurrency,
            seconds,
            move |conn, w, step| async move {
                let mut conn = conn.lock().await;
                let key = baseline_key(run, w, step);
                match self {
                    Self::TakeTicket => {
                        let got = conn.command(&[b"GETDEL", key.as_bytes()]).await?;
                        ensure!(got != raw::Reply::Nil, "ticket {key} missing");
                    }
                    Self::DenyCheck => {
                        conn.command(&[
                            b"EXISTS",
                            b"kg:deny:jti:0123456789abcdefghijkl",
                            b"kg:deny:sid:ses_01m8tmd9363evp9zbxe6gp928p",
                        ])
                        .await?;
                    }
                    Self::RedeemCode => {
                        let got = conn.command(&[b"GET", key.as_bytes()]).await?;
                        ensure!(got != raw::Reply::Nil, "code {key} missing");
                        let attempts = format!("kg:code:att:{run:08x}{w:02}{step:022}");
                        conn.command(&[
                            b"EVAL",
                            INCR_LUA.as_bytes(),
                            b"1",
                            attempts.as_bytes(),
                            b"360000",
                        ])
                        .await?;
                        let taken = conn
                            .command(&[
                                b"EVAL",
                                TAKE_IF_LUA.as_bytes(),
                                b"1",
                                key.as_bytes(),
                                CODE_NONCE.as_bytes(),
                            ])
                            .await?;
                        ensure!(taken != raw::Reply::Nil, "code {key} not taken");
                    }
                    Self::SpendIdToken => {
                        let claimed = conn
                            .command(&[
                                b"EVAL",
                                CLAIM_LUA.as_bytes(),
                                b"1",
                                key.as_bytes(),
                                b"660000",
                            ])
                            .await?;
                        ensure!(
                            claimed == raw::Reply::Value(b"-1".to_vec()),
                            "{key} claimed twice"
                        );
                    }
                }
                Ok(())
            },
        )
        .await?;
        let theirs = raw::commands_per_op(&raw::command_stats(&url).await?, m.total);
        raw::same_commands(ours, &theirs)?;
        Ok(m)
    }
}

/// Values stored per client for the Redis baselines (more than four seconds at the fastest
/// rate seen here, 150 000 per second over all clients).
const KEYS_PER_CLIENT: u64 = 150_000;

/// The baseline's key for client `w`'s `step`-th operation of run `run` (as long as the
/// server's keys; a run of its own so that keys an earlier run left are not met again).
fn baseline_key(run: u32, w: usize, step: u64) -> String {
    format!("kg:bench:{run:08x}{w:02}{step:054}")
}

/// 64 sessions of the bench users: their refresh tokens, shared by the clients.
async fn refresh_chains(
    server: &Server,
    client: &reqwest::Client,
    users: usize,
) -> Result<Arc<Pool>> {
    let pool = Arc::new(Pool::new());
    for i in 0..64 {
        let login = server.login(client, &format!("bench{}", i % users)).await?;
        pool.put(text(&login, &["refresh_token"])?).await;
    }
    Ok(pool)
}

/// One refresh: a token from the pool exchanged at `url`, its successor put back.
async fn refresh_once(client: reqwest::Client, url: String, pool: Arc<Pool>) -> Result<()> {
    let token = pool.take().await?;
    let body = post(&client, &url, &json!({"refresh_token": token})).await?;
    pool.put(text(&body, &["refresh_token"])?).await;
    Ok(())
}

/// Refresh on Postgres + Redis: each operation takes a refresh token from the pool and puts
/// its successor back.
async fn refresh(ctx: &Ctx<'_>, shared: &Shared) -> Result<StoreRun> {
    let args = ctx.args;
    let server = &shared.server;
    let client = client();
    let pool = refresh_chains(server, &client, args.concurrency).await?;
    let url = server.url("/api/v1/auth/refresh");
    let op = move |_| refresh_once(client.clone(), url.clone(), pool.clone());
    let baseline = Baseline {
        script: "refresh.pgbench",
        seed: seed_users_sessions(args.concurrency, &ctx.hash),
        defines: vec![
            ("now", NOW.to_string()),
            ("expires", (NOW + 2_592_000).to_string()),
        ],
    };
    store_bound(
        ctx,
        shared,
        "POST /auth/refresh (Postgres + Redis)",
        &baseline,
        None,
        op,
    )
    .await
}

/// Ticket sign-in alone: an administrator issues the tickets beforehand (for other users, as
/// SSO and impersonation do), each operation redeems one.
async fn ticket(ctx: &Ctx<'_>, shared: &Shared) -> Result<StoreRun> {
    let args = ctx.args;
    let server = &shared.server;
    let client = client();
    let admin = text(
        &server.login(&client, "bench-admin").await?,
        &["access_token"],
    )?;
    let mut users = Vec::new();
    for i in 0..args.concurrency {
        let login = server.login(&client, &format!("bench{i}")).await?;
        let me: Value = client
            .get(server.url("/api/v1/auth/me"))
            .bearer_auth(text(&login, &["access_token"])?)
            .send()
            .await?
            .json()
            .await?;
        users.push(text(&me, &["data", "id"])?);
    }
    let needed = prepared(args, TICKET_MAX_RATE);
    let issued: Prepared<String> = Arc::new(Mutex::new(Vec::with_capacity(needed)));
    let issue_url = server.url("/api/v1/auth/generate-ticket");
    drive_n(needed, args.concurrency, {
        let (client, admin, users, issued) =
            (client.clone(), admin.clone(), users.clone(), issued.clone());
        move |n| {
            let (client, admin, url, issued) = (
                client.clone(),
                admin.clone(),
                issue_url.clone(),
                issued.clone(),
            );
            let user = users[n % users.len()].clone();
            async move {
                let res = client
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&json!({"user_id": user}))
                    .send()
                    .await?;
                ensure!(
                    res.status() == 200,
                    "generate-ticket answered {}",
                    res.status()
                );
                let body: Value = res.json().await?;
                issued.lock().await.push(text(&body, &["data", "ticket"])?);
                Ok(())
            }
        }
    })
    .await?;
    let url = server.url("/api/v1/auth/ticket/signin");
    let op = move |_| {
        let (client, url, issued) = (client.clone(), url.clone(), issued.clone());
        async move {
            let ticket = next_prepared(&issued).await?;
            post(&client, &url, &json!({"ticket": ticket})).await?;
            Ok(())
        }
    };
    let actor = json!({"sub": format!("usr_{}", "1".repeat(26))}).to_string();
    let baseline = Baseline {
        script: "ticket.pgbench",
        seed: seed_users_sessions(args.concurrency, &ctx.hash),
        defines: vec![
            ("now", NOW.to_string()),
            ("expires", (NOW + 2_592_000).to_string()),
            ("tenant", "default".into()),
            ("amr", "ticket".into()),
            ("actor", actor.clone()),
            ("admin", format!("usr_{}", "1".repeat(26))),
            ("sign_in", "sign_in".into()),
            ("impersonation", "impersonation".into()),
            ("success", "success".into()),
            ("ip", "127.0.0.1".into()),
            ("agent", AGENT.into()),
            // Keygate binds NULL here; pgbench cannot bind NULL, so the baseline binds "-".
            ("reason", "-".into()),
            (
                "details",
                json!({"act": json!({"sub": format!("usr_{}", "1".repeat(26))}), "session_id": format!("ses_{}", "2".repeat(26))}).to_string(),
            ),
        ],
    };
    store_bound(
        ctx,
        shared,
        "POST /auth/ticket/signin (Postgres + Redis)",
        &baseline,
        Some(RedisOp::TakeTicket),
        op,
    )
    .await
}

/// `/auth/me` with a bearer token: the token's check (signature, deny list, session) and the
/// user.
async fn me(ctx: &Ctx<'_>, shared: &Shared) -> Result<StoreRun> {
    let args = ctx.args;
    let server = &shared.server;
    let client = client();
    let mut tokens = Vec::new();
    for i in 0..args.concurrency {
        tokens.push(text(
            &server.login(&client, &format!("bench{i}")).await?,
            &["access_token"],
        )?);
    }
    let tokens = Arc::new(tokens);
    let url = server.url("/api/v1/auth/me");
    let op = move |n: u64| {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        async move {
            let res = client
                .get(&url)
                .bearer_auth(&tokens[n as usize % tokens.len()])
                .send()
                .await?;
            ensure!(res.status() == 200, "/auth/me answered {}", res.status());
            res.bytes().await?;
            Ok(())
        }
    };
    let baseline = Baseline {
        script: "me.pgbench",
        seed: seed_users_sessions(args.concurrency, &ctx.hash),
        defines: vec![],
    };
    store_bound(
        ctx,
        shared,
        "GET /auth/me (Postgres + Redis)",
        &baseline,
        Some(RedisOp::DenyCheck),
        op,
    )
    .await
}

/// Operations prepared beforehand for a scenario whose operations consume them (tickets,
/// codes, id_tokens): enough for the closed window at `max_rate` per second and the open one
/// at half of it, with a margin.
fn prepared(args: &Args, max_rate: f64) -> usize {
    (max_rate * (args.seconds as f64 + 1.0) * 1.6) as usize
}

/// Above the code and id-token sign-ins measured here (400 to 2200 per second, bound by the
/// CPU the server and Postgres share; codes go out over SMTP beforehand at about 140 per second,
/// so this also bounds the time preparing them takes).
const SIGN_IN_MAX_RATE: f64 = 2800.0;
/// Ticket sign-in reached 2100 per second here; tickets are cheap to issue.
const TICKET_MAX_RATE: f64 = 5000.0;

/// Items made beforehand, one per operation.
type Prepared<T> = Arc<Mutex<Vec<T>>>;

async fn next_prepared<T>(items: &Prepared<T>) -> Result<T> {
    items
        .lock()
        .await
        .pop()
        .context("out of prepared items: prepare more")
}

/// The `-D` variables of a sign-in baseline's session and `sign_in` audit entry.
fn sign_in_defines(amr: &str, method: &str) -> Vec<(&'static str, String)> {
    vec![
        ("now", NOW.to_string()),
        ("expires", (NOW + 2_592_000).to_string()),
        ("tenant", "default".into()),
        ("amr", amr.into()),
        ("method", method.into()),
        ("sign_in", "sign_in".into()),
        ("success", "success".into()),
        // Keygate binds NULL for these; pgbench cannot bind NULL, so the baseline binds "-".
        ("actor", "-".into()),
        ("reason", "-".into()),
        ("ip", "127.0.0.1".into()),
        ("agent", AGENT.into()),
        (
            "details",
            json!({"session_id": format!("ses_{}", "2".repeat(26))}).to_string(),
        ),
    ]
}

/// How long the benchmark server's login codes stay valid: the most the policy allows.
const CODE_TTL_SECONDS: u64 = 3600;

/// The address of the `i`-th account of the code scenario.
fn code_email(i: usize) -> String {
    format!("code{i}@bench.keygate.test")
}

/// Code sign-in alone: accounts with an address each (added in SQL), a code sent to every
/// one beforehand through the server and delivered to a local SMTP server (the send rate is a
/// row of its own), each operation signs in with one.
async fn code(ctx: &Ctx<'_>, shared: &Shared) -> Result<(Row, StoreRun)> {
    let args = ctx.args;
    let server = &shared.server;
    let client = client();
    let needed = prepared(args, SIGN_IN_MAX_RATE);
    pg::run(
        &shared.db,
        &format!(
            "INSERT INTO users (id, tenant_id, username, email, password_hash, status, roles, \
             must_change_password, created_at, updated_at) \
             SELECT 'usr_code_' || i, 'default', 'code' || i, 'code' || i || '@bench.keygate.test', \
             'x', 'active', '', 0, {NOW}, {NOW} FROM generate_series(0, {}) i; ANALYZE users;",
            needed - 1
        ),
    )
    .await?;
    let send_url = server.url("/api/v1/auth/send-login-code");
    let started = Instant::now();
    drive_n(needed, args.concurrency, {
        let client = client.clone();
        move |n| {
            let (client, url) = (client.clone(), send_url.clone());
            async move {
                post(&client, &url, &json!({"email": code_email(n)})).await?;
                Ok(())
            }
        }
    })
    .await?;
    // Every code must still be valid when the last sign-in uses it: the two loops that use
    // them take 2 x seconds, the statement checks between them a few more.
    ensure!(
        started.elapsed().as_secs() + 2 * args.seconds + 60 < CODE_TTL_SECONDS,
        "sending {needed} codes took {:.0} s: they would expire (after {CODE_TTL_SECONDS} s) \
         before the sign-ins that use them; run fewer --seconds",
        started.elapsed().as_secs_f64()
    );
    let send = Row {
        name: shared.label("POST /auth/send-login-code (SMTP, prepared)"),
        keygate: Measured::count(needed as u64, started.elapsed().as_secs_f64()),
        limit: None,
        half: None,
        limit_half: None,
    };
    let codes: Vec<(String, String)> = shared
        .extras
        .smtp
        .messages()
        .into_iter()
        .map(|m| {
            let code = m.code(6);
            (m.to, code)
        })
        .collect();
    ensure!(
        codes.len() == needed,
        "{} of {needed} codes arrived",
        codes.len()
    );
    let codes: Prepared<(String, String)> = Arc::new(Mutex::new(codes));
    let url = server.url("/api/v1/auth/login/email-code");
    let op = move |_| {
        let (client, url, codes) = (client.clone(), url.clone(), codes.clone());
        async move {
            let (email, code) = next_prepared(&codes).await?;
            post(&client, &url, &json!({"email": email, "code": code})).await?;
            Ok(())
        }
    };
    let baseline = Baseline {
        script: "code.pgbench",
        seed: seed_users_sessions(args.concurrency, &ctx.hash),
        defines: sign_in_defines("otp_email", "email_code"),
    };
    let run = store_bound(
        ctx,
        shared,
        "POST /auth/login/email-code (Postgres + Redis)",
        &baseline,
        Some(RedisOp::RedeemCode),
        op,
    )
    .await?;
    Ok((send, run))
}

/// Id-token sign-in with the issuer's keys cached: each of the bench subjects signs in once
/// beforehand (creating and linking its account, fetching the keys), then every operation
/// presents a fresh id_token (its own `jti`: tokens are single use) of one of them.
async fn id_token(ctx: &Ctx<'_>, shared: &Shared) -> Result<StoreRun> {
    let args = ctx.args;
    let server = &shared.server;
    let client = client();
    let issuer = &shared.extras.issuer;
    let url = server.url("/api/v1/auth/id-token/signin");
    let subject = |i: usize| format!("bench-subject-{i}");
    for token in issuer.id_tokens(args.concurrency, subject).await? {
        post(
            &client,
            &url,
            &json!({"provider": ISSUER_NAME, "id_token": token}),
        )
        .await?;
    }
    let clients = args.concurrency;
    let tokens: Prepared<String> = Arc::new(Mutex::new(
        issuer
            .id_tokens(prepared(args, SIGN_IN_MAX_RATE), move |i| {
                subject(i % clients)
            })
            .await?,
    ));
    let op = move |_| {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        async move {
            let token = next_prepared(&tokens).await?;
            post(
                &client,
                &url,
                &json!({"provider": ISSUER_NAME, "id_token": token}),
            )
            .await?;
            Ok(())
        }
    };
    let baseline = Baseline {
        script: "id_token.pgbench",
        seed: seed_users_sessions(args.concurrency, &ctx.hash),
        defines: [
            sign_in_defines("fed", "federated"),
            vec![("issuer", BASELINE_ISSUER.into())],
        ]
        .concat(),
    };
    store_bound(
        ctx,
        shared,
        "POST /auth/id-token/signin (Postgres + Redis)",
        &baseline,
        Some(RedisOp::SpendIdToken),
        op,
    )
    .await
}

/// Configuration reload latency: the runtime configuration in a directory laid out as the
/// kubelet mounts a Secret, each change swapped in atomically as the kubelet does (the
/// operator's path to a server), timed to the first JWKS answer that lists the signing key
/// the new version added. Median and slowest of `runs` changes, made at random points of
/// the server's polling interval.
async fn reload(runs: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount)?;
    let keys: Vec<Value> = (0..=runs)
        .map(|_| keygate_tests::generate_signing_key())
        .collect();
    let version = |k: &Value| {
        vec![(
            "keygate.json".to_owned(),
            json!({"signing_keys": [k]}).to_string().into_bytes(),
        )]
    };
    keygate_tests::operator::project(&mount, &version(&keys[0]));
    let process = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().join("data")),
        env: vec![
            (
                "KEYGATE_CONFIG".to_owned(),
                mount.join("keygate.json").display().to_string(),
            ),
            ("KEYGATE_LOG".to_owned(), "warn".to_owned()),
        ],
        ..Default::default()
    });
    let client = client();
    let url = format!("{}/.well-known/jwks.json", process.base_url);
    let mut times = Vec::new();
    for (i, key) in keys.iter().enumerate().skip(1) {
        let kid = text(key, &["kid"])?;
        // Spread the changes over the 250 ms polling interval.
        tokio::time::sleep(Duration::from_millis(300 + (i as u64 * 37) % 250)).await;
        keygate_tests::operator::project(&mount, &version(key));
        let started = Instant::now();
        loop {
            let jwks = client.get(&url).send().await?.text().await?;
            if jwks.contains(&kid) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(5),
                "the new key was not served within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// Runs `op(0..n)` from `concurrency` workers until all are done.
async fn drive_n<F, Fut>(n: usize, concurrency: usize, op: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// `GET /.well-known/jwks.json`: no store, the published keys.
async fn jwks(args: &Args) -> Result<Row> {
    let server = Server::start(args, None, false, 0, None);
    let client = client();
    let url = server.url("/.well-known/jwks.json");
    let op = move |_: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let res = client.get(&url).send().await?;
            ensure!(res.status() == 200, "JWKS answered {}", res.status());
            res.bytes().await?;
            Ok(())
        }
    };
    let m = drive::closed(args.concurrency, args.seconds, op.clone()).await?;
    let half = drive::open(m.rate() / 2.0, args.seconds, op).await?;
    Ok(Row {
        name: "GET /.well-known/jwks.json".into(),
        keygate: m,
        limit: None,
        half: Some(half),
        limit_half: None,
    })
}

/// Time from spawning the server on a fresh embedded default (no arguments but a listen
/// address, new data directory) to its first `200` from `/readyz`, the median of `runs`.
fn ready_time(runs: usize) -> Result<[(f64, f64); 2]> {
    /// Whether `GET path` answers 200 (a bare HTTP/1.1 request, no client set-up to time).
    fn answers_200(port: u16, path: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = [0u8; 12];
        s.write_all(request.as_bytes()).is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
    }
    let bin = keygate_tests::workspace_bin("auth-server");
    let (mut ready_times, mut key_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let port = keygate_tests::free_port();
        let started = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("KEYGATE_DATA_DIR", dir.path())
            .env("KEYGATE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let until = |path: &str| -> Result<Duration> {
            loop {
                if answers_200(port, path) {
                    return Ok(started.elapsed());
                }
                ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "{path} not answering in 30 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // Ready, then the tenant configuration, which publishes the transmission key
        // (generated in the background on a first start): when that finished.
        let timed = until("/readyz")
            .and_then(|ready| Ok((ready, until("/api/v1/public/auth-config/default")?)));
        child.kill().ok();
        child.wait().ok();
        let (ready, key) = timed?;
        ready_times.push(ready.as_secs_f64() * 1000.0);
        key_times.push(key.as_secs_f64() * 1000.0);
    }
    Ok([ready_times, key_times].map(|mut times| {
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], times[times.len() - 1])
    }))
}

/// Refresh throughput and latency with `n` replicas on the same Postgres and Redis, clients
/// spread over them.
async fn replicas(args: &Args, n: usize) -> Result<Measured> {
    let db = keygate_tests::fresh_postgres_database_on(&args.postgres_url).await;
    let first = Server::start(args, Some(&db), true, args.concurrency, None);
    let mut urls = vec![first.url("/api/v1/auth/refresh")];
    let mut others = Vec::new();
    for _ in 1..n {
        let p = first.replica();
        urls.push(format!("{}/api/v1/auth/refresh", p.base_url));
        others.push(p);
    }
    let client = client();
    let pool = refresh_chains(&first, &client, args.concurrency).await?;
    drive::closed(args.concurrency, args.seconds, move |w| {
        let url = urls[w as usize % urls.len()].clone();
        refresh_once(client.clone(), url, pool.clone())
    })
    .await
}

fn print_rows(rows: &[&Row]) {
    println!(
        "| operation | ops/s | p50 ms | p99 ms | limit (same run) | limit ops/s | Keygate / limit | p50 / p99 ms at half the rate | pgbench p50 / p99 ms at that rate |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for r in rows {
        let (what, limit, ratio) = match &r.limit {
            Some((what, l)) => (
                what.clone(),
                format!("{l:.1}"),
                format!("{:.3}", r.keygate.rate() / l),
            ),
            None => ("none".into(), String::new(), String::new()),
        };
        let half = r.half.as_ref().map_or(String::new(), |h| {
            format!("{:.1} / {:.1}", h.p50_ms, h.p99_ms)
        });
        let limit_half = r
            .limit_half
            .map_or(String::new(), |(p50, p99)| format!("{p50:.1} / {p99:.1}"));
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {what} | {limit} | {ratio} | {half} | {limit_half} |",
            r.name,
            r.keygate.rate(),
            r.keygate.p50_ms,
            r.keygate.p99_ms,
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "keygate-bench: {cpus} CPUs, argon2id m={} KiB t={} p=1, {} clients, {} s per scenario, server worker threads: {}",
        args.memory_kib,
        args.iterations,
        args.concurrency,
        args.seconds,
        args.worker_threads
            .map_or("default (half the CPUs)".to_owned(), |n| n.to_string())
    );
    let mut conn = pg::connect(&args.postgres_url).await?;
    pg::run(
        &args.postgres_url,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    )
    .await?;
    let settings: Vec<(String, String)> = sqlx::query_as::<_, (String, String)>(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'server_version') ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    println!(
        "Postgres: {}\n",
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let root = keygate_tests::repo_root();
    let ctx = Ctx {
        args: &args,
        bench_dir: root.join("tests/bench"),
        migrations: root.join("auth-server/migrations/postgres"),
        hash: {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let params = argon2::Params::new(args.memory_kib, args.iterations, 1, None).unwrap();
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(
                    b"baseline",
                    &SaltString::encode_b64(b"baseline-salt").unwrap(),
                )
                .unwrap()
                .to_string()
        },
    };

    let want = |part: &str| args.only.is_empty() || args.only.iter().any(|o| o == part);
    let mut rows = Vec::new();
    let mut login_facts = None;
    if want("login") {
        let signin = login(&args).await?;
        login_facts = Some(format!(
            "raw argon2id verify ({cpus} threads, {LOGIN_ROUNDS} windows taken in turns with Keygate's): {:.1} ops/s; \
             Keygate / raw {:.3}, standard error {:.3} (the rounds' own ratios)\n\
             CPU per login: server {:.2} ms (hashing threads {:.2}, the rest {:.2}: SQLite's connection threads {:.2}, async workers and others {:.2}, of it kernel time {:.2}; {:.1} context switches), load generator {:.2} ms; raw argon2id verify {:.2} ms\n\
             What that CPU allows with both CPUs busy: raw / (server + load generator) = {:.3}; with the server's CPU besides hashing at zero {:.3}, and with the hashing threads as fast as raw {:.3}\n\
             Resident memory (login server, SQLite): {:.1} MiB idle, {:.1} MiB peak under login load",
            signin.row.limit.as_ref().map_or(f64::NAN, |l| l.1),
            signin
                .row
                .limit
                .as_ref()
                .map_or(f64::NAN, |l| signin.row.keygate.rate() / l.1),
            signin.ratio_error,
            signin.server_cpu_ms,
            signin.per_login.hashing,
            signin.per_login.rest(),
            signin.per_login.database,
            signin.per_login.other,
            signin.per_login.system,
            signin.per_login.switches,
            signin.client_cpu_ms,
            signin.raw_cpu_ms,
            signin.raw_cpu_ms / (signin.server_cpu_ms + signin.client_cpu_ms),
            signin.raw_cpu_ms / (signin.per_login.hashing + signin.client_cpu_ms),
            signin.raw_cpu_ms
                / (signin.raw_cpu_ms + signin.per_login.rest() + signin.client_cpu_ms),
            signin.rss_idle,
            signin.rss_peak
        ));
        rows.push(signin.row);
    }
    let mut runs = Vec::new();
    if ["refresh", "ticket", "code", "id_token", "me"]
        .iter()
        .any(|p| want(p))
    {
        let shared = Shared::start(&args, 0).await?;
        if want("refresh") {
            runs.push(refresh(&ctx, &shared).await?);
        }
        if want("ticket") {
            runs.push(ticket(&ctx, &shared).await?);
        }
        if want("code") {
            let (send, run) = code(&ctx, &shared).await?;
            rows.push(send);
            runs.push(run);
        }
        if want("id_token") {
            runs.push(id_token(&ctx, &shared).await?);
        }
        if want("me") {
            runs.push(me(&ctx, &shared).await?);
        }
    }
    if want("jwks") {
        rows.push(jwks(&args).await?);
    }
    let mut all: Vec<&Row> = rows.iter().collect();
    all.extend(runs.iter().map(|r| &r.row));
    print_rows(&all);
    if let Some(facts) = login_facts {
        println!("\n{facts}");
    }
    println!(
        "\nStatements per operation (pg_stat_statements of Keygate's run; the baselines issued the same):"
    );
    for s in &runs {
        println!("{}\n  Redis: {}", s.statements, s.redis);
    }
    println!(
        "\nCPU per operation, ms (Keygate's closed loop; the baseline's machine-wide figure includes its set-up)\n\n| operation | machine | server | Postgres backends | load generator | baseline machine | baseline Postgres backends |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    let ms = |v: Option<f64>| v.map_or(String::new(), |b| format!("{b:.3}"));
    for s in &runs {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            s.row.name,
            s.cpu.machine,
            s.cpu.server,
            s.cpu.database,
            s.cpu.client,
            ms(s.baseline_machine_ms),
            ms(s.baseline_backends_ms),
        );
    }
    if want("ready") {
        let [(ready_p50, ready_max), (key_p50, key_max)] = ready_time(9)?;
        println!(
            "\nStart to ready (embedded default, fresh directory, 9 starts): median {ready_p50:.0} ms, slowest {ready_max:.0} ms\n\
             Start to the transmission key published (generated in the background): median {key_p50:.0} ms, slowest {key_max:.0} ms"
        );
    }
    if want("reload") {
        let (reload_p50, reload_max) = reload(20).await?;
        println!(
            "\nConfiguration reload (a mounted Secret's atomic swap to the new key in the JWKS, 20 changes): median {reload_p50:.0} ms, slowest {reload_max:.0} ms"
        );
    }
    if want("replicas") {
        println!("\n| replicas | refresh ops/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|");
        for n in &args.replicas {
            let m = replicas(&args, *n).await?;
            println!(
                "| {n} | {:.1} | {:.1} | {:.1} |",
                m.rate(),
                m.p50_ms,
                m.p99_ms
            );
        }
    }
    if want("users") {
        let mut scaled = Vec::new();
        for users in &args.users {
            let shared = Shared::start(&args, *users).await?;
            scaled.push(refresh(&ctx, &shared).await?);
            scaled.push(ticket(&ctx, &shared).await?);
            scaled.push(me(&ctx, &shared).await?);
        }
        println!();
        print_rows(&scaled.iter().map(|s| &s.row).collect::<Vec<_>>());
        println!("\nSequential scans in the generic plans of the statements each operation ran:");
        for s in &scaled {
            println!(
                "  {}: {}",
                s.row.name,
                if s.scans.is_empty() {
                    "none".to_owned()
                } else {
                    s.scans.join(", ")
                }
            );
        }
    }
    Ok(())
}
