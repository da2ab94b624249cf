//! `keygate-bench`: measures, in one run, the raw argon2id verification rate with the server's
//! parameters (the physical limit of password login on this machine), password-login throughput
//! of a real `auth-server` process against it, refresh-rotation throughput on SQLite and (when
//! a server URL is given) Postgres, and one-time tickets (issue + sign-in) on Postgres and
//! Redis. Run it through `scripts/bench`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, ensure};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use clap::Parser;
use keygate_tests::{ServerOptions, ServerProcess, add_user};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Keygate benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of measurement per scenario (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Postgres server URL for the refresh benchmark on Postgres (a database is created).
    #[arg(long, env = "KEYGATE_TEST_DATABASE_URL")]
    postgres_url: Option<String>,
    /// Redis server URL for the ticket benchmark (with Postgres).
    #[arg(long, env = "KEYGATE_TEST_REDIS_URL")]
    redis_url: Option<String>,
    /// argon2id memory cost in KiB (the server default).
    #[arg(long, default_value_t = 19456)]
    memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, default_value_t = 2)]
    iterations: u32,
}

const PW: &str = "benchmark password 1";

struct Measured {
    ops: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// Raw argon2id verifications per second, one thread per CPU (as the server's hashing pool),
/// each reusing its working memory: the fastest way argon2 can verify, so the physical limit.
fn raw_argon2(args: &Args, seconds: u64) -> Measured {
    let params = Params::new(args.memory_kib, args.iterations, 1, None).unwrap();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    // The server verifies the 64-character canonical digest, not the password itself.
    let digest = "94d0ae21ee2a621d1118bbe8c4a3cc8dab96e96b800d1f8e6b7223042d734bd2";
    let salt = SaltString::encode_b64(b"benchmark-salt-1").unwrap();
    let phc = argon
        .hash_password(digest.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (argon, phc, count, params) =
                (argon.clone(), phc.clone(), count.clone(), params.clone());
            std::thread::spawn(move || {
                let parsed = PasswordHash::new(&phc).unwrap();
                let expected = parsed.hash.unwrap();
                let mut salt = [0u8; 64];
                let salt = parsed.salt.unwrap().decode_b64(&mut salt).unwrap();
                let mut memory = vec![argon2::Block::default(); params.block_count()];
                let mut out = vec![0u8; expected.len()];
                while Instant::now() < deadline {
                    argon
                        .hash_password_into_with_memory(
                            digest.as_bytes(),
                            salt,
                            &mut out,
                            &mut memory,
                        )
                        .unwrap();
                    assert_eq!(out.as_slice(), expected.as_bytes());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Measured {
        ops: count.load(Ordering::Relaxed),
        seconds: seconds as f64,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    }
}

/// Runs `op` from `concurrency` workers for one warm-up second, then `seconds` measured.
async fn drive<F, Fut>(concurrency: usize, seconds: u64, op: F) -> Result<Measured>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (op, measuring, stop) = (op.clone(), measuring.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                op(w).await?;
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Measured {
        ops: all.len() as u64,
        seconds: elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let res = client.post(url).json(body).send().await?;
    let status = res.status();
    let body: Value = res.json().await?;
    ensure!(status == 200, "{url} answered {status}: {body}");
    Ok(body)
}

fn config_file(dir: &std::path::Path, args: &Args) -> String {
    let path = dir.join("bench-config.json");
    // The limiter is not what is measured here: no rules.
    let config = json!({
        "password_hashing": {"memory_kib": args.memory_kib, "iterations": args.iterations, "parallelism": 1},
        "rate_limits": {"rules": []}
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path.display().to_string()
}

fn start_server(args: &Args, database_url: Option<String>) -> (ServerProcess, tempfile::TempDir) {
    start_server_with(args, database_url, None)
}

fn start_server_with(
    args: &Args,
    database_url: Option<String>,
    redis_url: Option<&str>,
) -> (ServerProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("KEYGATE_CONFIG".to_owned(), config_file(dir.path(), args)),
        ("KEYGATE_LOG".to_owned(), "warn".to_owned()),
    ];
    if let Some(url) = database_url {
        env.push(("KEYGATE_DATABASE_URL".to_owned(), url));
    }
    if let Some(url) = redis_url {
        env.push(("KEYGATE_REDIS_URL".to_owned(), url.to_owned()));
    }
    for i in 0..args.concurrency {
        add_user(dir.path(), &env, &["--username", &format!("bench{i}")], PW);
    }
    add_user(
        dir.path(),
        &env,
        &["--username", "bench-admin", "--role", "admin"],
        PW,
    );
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    (server, dir)
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

async fn login_throughput(args: &Args) -> Result<(Measured, f64, f64)> {
    let (server, _dir) = start_server(args, None);
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/auth/login", server.base_url);
    let (server_cpu, own_cpu) = (cpu_seconds(server.pid()), cpu_seconds(std::process::id()));
    let m = drive(args.concurrency, args.seconds, move |w| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            post(
                &client,
                &url,
                &json!({"identity": format!("bench{w}"), "password": PW}),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let server_cpu = cpu_seconds(server.pid()) - server_cpu;
    let own_cpu = cpu_seconds(std::process::id()) - own_cpu;
    Ok((m, server_cpu, own_cpu))
}

async fn refresh_throughput(args: &Args, database_url: Option<String>) -> Result<Measured> {
    let (server, _dir) = start_server(args, database_url);
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    // One session (refresh-token chain) per worker.
    let mut chains = Vec::new();
    for w in 0..args.concurrency {
        let login = post(
            &client,
            &format!("{base}/api/v1/auth/login"),
            &json!({"identity": format!("bench{w}"), "password": PW}),
        )
        .await?;
        chains.push(Arc::new(tokio::sync::Mutex::new(
            login["refresh_token"]
                .as_str()
                .context("refresh token")?
                .to_owned(),
        )));
    }
    let chains = Arc::new(chains);
    let url = format!("{base}/api/v1/auth/refresh");
    drive(args.concurrency, args.seconds, move |w| {
        let (client, url, chains) = (client.clone(), url.clone(), chains.clone());
        async move {
            let mut token = chains[w].lock().await;
            let body = post(&client, &url, &json!({"refresh_token": *token})).await?;
            *token = body["refresh_token"]
                .as_str()
                .context("refresh token")?
                .to_owned();
            Ok(())
        }
    })
    .await
}

/// One operation = an administrator issues a ticket for a user, then the ticket signs in
/// (two requests: the single-use state lives in Redis, the sessions in Postgres).
async fn ticket_throughput(args: &Args, database_url: String, redis_url: &str) -> Result<Measured> {
    let (server, _dir) = start_server_with(args, Some(database_url), Some(redis_url));
    let client = reqwest::Client::new();
    let base = server.base_url.clone();
    let admin = post(
        &client,
        &format!("{base}/api/v1/auth/login"),
        &json!({"identity": "bench-admin", "password": PW}),
    )
    .await?;
    let token = admin["access_token"]
        .as_str()
        .context("admin token")?
        .to_owned();
    let me = client
        .get(format!("{base}/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await?
        .json::<Value>()
        .await?;
    let user_id = me["data"]["id"].as_str().context("admin id")?.to_owned();
    drive(args.concurrency, args.seconds, move |_| {
        let (client, base, token, user_id) =
            (client.clone(), base.clone(), token.clone(), user_id.clone());
        async move {
            let res = client
                .post(format!("{base}/api/v1/auth/generate-ticket"))
                .bearer_auth(&token)
                .json(&json!({"user_id": user_id}))
                .send()
                .await?;
            ensure!(
                res.status() == 200,
                "generate-ticket answered {}",
                res.status()
            );
            let issued: Value = res.json().await?;
            let ticket = issued["data"]["ticket"].as_str().context("ticket")?;
            post(
                &client,
                &format!("{base}/api/v1/auth/ticket/signin"),
                &json!({"ticket": ticket}),
            )
            .await?;
            Ok(())
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "keygate-bench: {cpus} CPUs, argon2id m={} KiB t={} p=1, {} clients, {} s per scenario\n",
        args.memory_kib, args.iterations, args.concurrency, args.seconds
    );
    let raw = raw_argon2(&args, args.seconds);
    let (login, server_cpu, client_cpu) = login_throughput(&args).await?;
    let refresh_sqlite = refresh_throughput(&args, None).await?;
    let refresh_pg = match &args.postgres_url {
        Some(url) => Some(
            refresh_throughput(
                &args,
                Some(keygate_tests::fresh_postgres_database_on(url).await),
            )
            .await?,
        ),
        None => None,
    };
    let tickets = match (&args.postgres_url, &args.redis_url) {
        (Some(pg), Some(redis)) => Some(
            ticket_throughput(
                &args,
                keygate_tests::fresh_postgres_database_on(pg).await,
                redis,
            )
            .await?,
        ),
        _ => None,
    };
    println!("| scenario | ops/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| raw argon2id verify ({cpus} threads) | {:.1} | | |",
        raw.rate()
    );
    let row = |name: &str, m: &Measured| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            m.rate(),
            m.p50_ms,
            m.p99_ms
        );
    };
    row("POST /auth/login (SQLite)", &login);
    row("POST /auth/refresh (SQLite)", &refresh_sqlite);
    if let Some(pg) = &refresh_pg {
        row("POST /auth/refresh (Postgres)", pg);
    }
    if let Some(t) = &tickets {
        row("generate-ticket + ticket/signin (Postgres + Redis)", t);
    }
    // Warm-up second included in both: CPU per login over all logins of the run.
    let logins_in_run = login.rate() * (args.seconds as f64 + 1.0);
    println!(
        "\nlogin / raw argon2id = {:.3} (target >= 0.9)\nCPU per login: server {:.2} ms, load generator {:.2} ms; raw argon2id verify {:.2} ms",
        login.rate() / raw.rate(),
        server_cpu * 1000.0 / logins_in_run,
        client_cpu * 1000.0 / logins_in_run,
        cpus as f64 * 1000.0 / raw.rate(),
    );
    Ok(())
}
