//! Test harness for cross-process tests: the real Postgres and Redis servers that the test
//! command started (a fresh database per test), and `auth-server` processes started from the
//! built binary on free loopback ports and killed when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod collector;
pub mod delivery;
pub mod oidc;
pub mod operator;
pub mod postgres;
pub mod sentinel;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// URL of the Postgres server started by the test command (`scripts/test`).
pub fn postgres_server_url() -> String {
    std::env::var("KEYGATE_TEST_DATABASE_URL").expect(
        "KEYGATE_TEST_DATABASE_URL is not set: run the tests through scripts/test, which starts \
         a real Postgres server",
    )
}

/// URL of the Redis server started by the test command.
pub fn redis_url() -> String {
    std::env::var("KEYGATE_TEST_REDIS_URL").expect(
        "KEYGATE_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts a \
         real Redis server",
    )
}

/// A random lowercase suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen();
    format!("{prefix}{n:016x}")
}

/// Creates an empty database on the test Postgres server and returns its URL.
pub async fn fresh_postgres_database() -> String {
    fresh_postgres_database_on(&postgres_server_url()).await
}

/// Creates an empty database on the Postgres server at `server` and returns its URL.
pub async fn fresh_postgres_database_on(server: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let name = unique("kg_");
    let mut conn = sqlx::AnyConnection::connect(server)
        .await
        .expect("connect to the test Postgres server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    conn.close().await.ok();
    with_database(server, &name)
}

fn with_database(server_url: &str, db: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{db}{query}", &base[..host_end])
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The directory of the built workspace binaries: `target/<profile>`, seen from a test
/// binary (in `deps/`) or from another workspace binary.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("the executable has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary such as `auth-server`; panics with advice when not built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (scripts/test runs `cargo build --workspace --bins`)",
        path.display()
    );
    if let Some(newer) = newer_source(&path) {
        panic!(
            "{} is older than {}: a test would run stale code; build first (`cargo build --workspace --bins`, which scripts/test runs)",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A source file of `binary` changed after it was built, if any: the files are those cargo
/// lists in the binary's dep-info (`target/debug/NAME.d`), so exactly what the build read.
fn newer_source(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    let (_, deps) = dep_info.lines().next()?.split_once(": ")?;
    deps.split_whitespace().map(PathBuf::from).find(|dep| {
        std::fs::metadata(dep)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
    })
}

/// A running `auth-server serve` process, killed on drop.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// The data directory it uses.
    pub data_dir: PathBuf,
    /// Its stderr log.
    pub log_path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// How to start a server.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    /// Data directory; a new temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
}

impl ServerProcess {
    /// Starts `auth-server serve` and waits until `/healthz` answers.
    pub fn start(options: ServerOptions) -> Self {
        let (temp, data_dir) = match options.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("temp dir");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let port = free_port();
        let log_path = data_dir.join(format!("server-{port}.log"));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(workspace_bin("auth-server"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(&options.args)
            .env("KEYGATE_DATA_DIR", &data_dir)
            .env("KEYGATE_LOG", "info,sqlx=warn")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn auth-server");
        let mut server = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            data_dir,
            log_path,
            _temp: temp,
        };
        server.wait_healthy(Duration::from_secs(30));
        server
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let started = Instant::now();
        let addr = self.base_url.trim_start_matches("http://").to_owned();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "auth-server exited with {status} before becoming healthy:\n{}",
                    self.log()
                );
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ =
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf)
                    .map(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
                    .unwrap_or(false)
                {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "auth-server did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "auth-server did not stop after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `auth-server user add` against a data directory and returns the new user id.
pub fn add_user(
    data_dir: &Path,
    env: &[(String, String)],
    args: &[&str],
    password: &str,
) -> String {
    let mut child = Command::new(workspace_bin("auth-server"))
        .args(["user", "add"])
        .args(args)
        .arg("--password-stdin")
        .env("KEYGATE_DATA_DIR", data_dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn auth-server user add");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let out = child.wait_with_output().expect("user add output");
    assert!(
        out.status.success(),
        "user add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A Redis server of one test (to stop and restart it), killed on drop.
pub struct RedisProcess {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisProcess {
    /// Starts `redis-server` (no persistence) on a free port and waits until it answers.
    pub fn start() -> Self {
        let mut r = Self {
            child: None,
            port: free_port(),
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = redis_server(self.port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `redis-server` on 127.0.0.1:`port` without persistence (a restart starts it empty).
pub fn redis_server(port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    cmd
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new signing key as one `signing_keys` entry, from `auth-server key generate`.
pub fn generate_signing_key() -> serde_json::Value {
    let out = Command::new(workspace_bin("auth-server"))
        .args(["key", "generate", "--alg", "ES256"])
        .output()
        .expect("auth-server key generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON key entry")
}

/// The issuer replicas share (they stand behind one public address).
pub const REPLICA_ISSUER: &str = "https://id.keygate.test";

/// Environment for replicas that share a fresh Postgres database, the test Redis, a data key,
/// the issuer and one runtime configuration (`config`, given a shared signing key unless it names keys).
///
/// Each call starts a Redis server of its own (returned; it stops when dropped), so that
/// counters one test leaves behind (failed sign-ins from 127.0.0.1, rate budgets) cannot
/// change another test's outcome.
pub async fn replica_env(
    dir: &Path,
    mut config: serde_json::Value,
) -> (Vec<(String, String)>, RedisProcess) {
    if config.get("signing_keys").is_none() {
        config["signing_keys"] = serde_json::json!([generate_signing_key()]);
    }
    let data_key = {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(key)
    };
    let redis = RedisProcess::start();
    let env = vec![
        (
            "KEYGATE_DATABASE_URL".to_owned(),
            fresh_postgres_database().await,
        ),
        ("KEYGATE_DATA_KEY".to_owned(), data_key),
        ("KEYGATE_ISSUER".to_owned(), REPLICA_ISSUER.to_owned()),
        ("KEYGATE_REDIS_URL".to_owned(), redis.url()),
        ("KEYGATE_CONFIG".to_owned(), write_config(dir, &config)),
    ];
    (env, redis)
}

/// Starts `n` server processes with the same environment (replicas).
pub fn start_replicas(env: &[(String, String)], n: usize) -> Vec<ServerProcess> {
    (0..n)
        .map(|_| {
            ServerProcess::start(ServerOptions {
                env: env.to_vec(),
                ..Default::default()
            })
        })
        .collect()
}

/// POSTs `body` as JSON to `url` (with a bearer token when given); the status and the JSON
/// body (`null` when there is none).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    send_json(client.post(url).json(body), bearer).await
}

/// GETs `url` (with a bearer token when given); the status and the JSON body (`null` when
/// there is none).
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    send_json(client.get(url), bearer).await
}

async fn send_json(
    mut req: reqwest::RequestBuilder,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("HTTP request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// Writes a runtime-configuration file (JSON) into `dir` and returns its path.
pub fn write_config(dir: &Path, config: &serde_json::Value) -> String {
    let path = dir.join("keygate.json");
    write_atomically(&path, &serde_json::to_vec_pretty(config).expect("json"));
    path.display().to_string()
}

/// The TOTP code of `secret` (base32) at now + `offset_seconds`, computed by Python's `pyotp`
/// (an implementation independent of the server's).
pub fn pyotp(secret: &str, offset_seconds: i64) -> String {
    let script = format!(
        "import pyotp, time; print(pyotp.TOTP('{secret}').at(int(time.time()) + {offset_seconds}))"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyotp is missing (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Replaces `path` with `bytes` in one step (a temporary file renamed over it), as a
/// configuration tool does: a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

/// The repository root (for scripts and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Polls `probe` until it returns `Some`, for at most `limit`.
pub async fn eventually<T>(
    limit: std::time::Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_rewritten() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "kg_1"),
            "postgres://u@127.0.0.1:5432/kg_1"
        );
        assert_eq!(
            with_database("postgres://u@h:1?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
    }
}
