//! End to end through the real binary: the CLI adds users, the server signs them in over HTTP,
//! an independent JWT implementation (jose, on Node) verifies the tokens against the JWKS,
//! refresh rotation and reuse detection, logout; the embedded default, and two replicas on
//! Postgres and Redis; graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{
    ServerOptions, ServerProcess, add_user, repo_root, workspace_bin, write_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const PW: &str = "correct horse battery staple";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(base: &str, path: &str, body: Value, bearer: Option<&str>) -> (StatusCode, Value) {
    let (status, body) =
        keygate_tests::post_json(&client(), &format!("{base}/api/v1{path}"), bearer, &body).await;
    (StatusCode::from_u16(status).unwrap(), body)
}

async fn get(base: &str, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let (status, body) = keygate_tests::get_json(&client(), &format!("{base}{path}"), bearer).await;
    (StatusCode::from_u16(status).unwrap(), body)
}

/// Verifies `token` with jose against the server's JWKS; returns `{payload, protectedHeader}`.
fn verify_with_jose(base: &str, issuer: &str, token: &str) -> Result<Value, String> {
    let js = repo_root().join("tests/js");
    assert!(
        js.join("node_modules/jose").exists(),
        "tests/js/node_modules is missing: scripts/test runs `npm ci` there"
    );
    let out = Command::new("node")
        .current_dir(&js)
        .args([
            "verify-jwt.mjs",
            &format!("{base}/.well-known/jwks.json"),
            issuer,
            "keygate",
            token,
        ])
        .output()
        .expect("run node");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn full_session(alg: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({"tokens": {"refresh_reuse_grace_seconds": 0}}),
    );
    let env = vec![
        ("KEYGATE_CONFIG".to_owned(), config),
        ("KEYGATE_SIGNING_ALG".to_owned(), alg.to_owned()),
    ];
    let user_id = add_user(
        dir.path(),
        &env,
        &["--username", "alice", "--email", "alice@example.com"],
        PW,
    );
    assert!(user_id.starts_with("usr_"), "{user_id}");
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let base = server.base_url.as_str();

    let (status, login) = post(
        base,
        "/auth/login",
        json!({"identity": "alice", "password": PW}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let at = login["access_token"].as_str().unwrap();
    let verified =
        verify_with_jose(base, base, at).unwrap_or_else(|e| panic!("jose refused the token: {e}"));
    assert_eq!(verified["payload"]["sub"], user_id.as_str());
    assert_eq!(verified["payload"]["amr"], json!(["pwd"]));
    assert_eq!(verified["protectedHeader"]["alg"], alg);
    assert!(verified["protectedHeader"]["kid"].is_string());
    // jose also refuses a token for another audience or issuer.
    assert!(verify_with_jose(base, "https://elsewhere.example", at).is_err());

    let (status, me) = get(base, "/api/v1/auth/me", Some(at)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["email"], "alice@example.com");

    // Refresh rotates; the new access token verifies too.
    let rt1 = login["refresh_token"].as_str().unwrap();
    let (status, refreshed) =
        post(base, "/auth/refresh", json!({"refresh_token": rt1}), None).await;
    assert_eq!(status, 200, "{refreshed}");
    verify_with_jose(base, base, refreshed["access_token"].as_str().unwrap()).unwrap();
    let rt2 = refreshed["refresh_token"].as_str().unwrap();

    // Replaying the spent token after the (zero) grace window revokes the family.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, problem) = post(base, "/auth/refresh", json!({"refresh_token": rt1}), None).await;
    assert_eq!(status, 400);
    assert_eq!(problem["code"], 40000201, "{problem}");
    let (status, problem) = post(base, "/auth/refresh", json!({"refresh_token": rt2}), None).await;
    assert_eq!(status, 400);
    assert_eq!(problem["code"], 40000202, "{problem}");

    // Logout: the access token is refused afterwards.
    let (_, login) = post(
        base,
        "/auth/login",
        json!({"identity": "alice@example.com", "password": PW}),
        None,
    )
    .await;
    let at = login["access_token"].as_str().unwrap();
    let (status, _) = post(base, "/auth/logout", json!({}), Some(at)).await;
    assert_eq!(status, 200);
    let (status, problem) = get(base, "/api/v1/auth/me", Some(at)).await;
    assert_eq!(status, 401);
    assert_eq!(problem["code"], 40100002);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"route="/api/v1/auth/refresh""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn embedded_default_es256_end_to_end() {
    full_session("ES256").await;
}

#[tokio::test]
async fn embedded_default_eddsa_end_to_end() {
    full_session("EdDSA").await;
}

#[tokio::test]
async fn embedded_default_rs256_end_to_end() {
    full_session("RS256").await;
}

#[tokio::test]
async fn two_replicas_share_postgres_redis_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygate_tests::generate_signing_key();
    let (env, _redis) =
        keygate_tests::replica_env(dir.path(), json!({"signing_keys": [key]})).await;
    add_user(
        dir.path(),
        &env,
        &["--username", "root", "--role", "admin"],
        PW,
    );
    let mut replicas = keygate_tests::start_replicas(&env, 2);
    let (b, a) = (replicas.pop().unwrap(), replicas.pop().unwrap());

    let (status, login) = post(
        &a.base_url,
        "/auth/login",
        json!({"identity": "root", "password": PW}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let at = login["access_token"].as_str().unwrap();
    // B accepts A's token (same keys), and both publish the configured key.
    let (status, me) = get(&b.base_url, "/api/v1/auth/me", Some(at)).await;
    assert_eq!(status, 200, "{me}");
    verify_with_jose(&b.base_url, keygate_tests::REPLICA_ISSUER, at).unwrap();
    let (_, jwks) = get(&b.base_url, "/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"][0]["kid"], key["kid"]);
    // The admin creates a user through A; it signs in through B.
    let (status, created) = post(
        &a.base_url,
        "/admin/users",
        json!({"username": "bob", "password": PW}),
        Some(at),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, bob) = post(
        &b.base_url,
        "/auth/login",
        json!({"identity": "bob", "password": PW}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{bob}");
    // Refresh through B; logout through A is seen by B at once (shared Redis).
    let (status, refreshed) = post(
        &b.base_url,
        "/auth/refresh",
        json!({"refresh_token": login["refresh_token"]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let at2 = refreshed["access_token"].as_str().unwrap();
    let (status, _) = post(&a.base_url, "/auth/logout", json!({}), Some(at2)).await;
    assert_eq!(status, 200);
    for token in [at, at2] {
        let (status, problem) = get(&b.base_url, "/api/v1/auth/me", Some(token)).await;
        assert_eq!(status, 401, "{problem}");
    }
    let (status, ready) = get(&b.base_url, "/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["ephemeral"], "ok (redis)");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    // One hashing thread and hashes of about half a second: the eight sign-ins below queue
    // behind each other for seconds, so that they are provably in flight at the signal.
    let config = write_config(
        dir.path(),
        &json!({"password_hashing": {"memory_kib": 19456, "iterations": 16, "parallelism": 1, "max_concurrent": 1}}),
    );
    let env = [("KEYGATE_CONFIG".to_owned(), config)];
    // One user per request: concurrent sign-ins of one account count against its gate.
    for n in 0..8 {
        add_user(dir.path(), &env, &["--username", &format!("user{n}")], PW);
    }
    let mut server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env: env.to_vec(),
        ..Default::default()
    });
    let base = server.base_url.clone();
    let mut inflight = Vec::new();
    for n in 0..8 {
        let base = base.clone();
        inflight.push(tokio::spawn(async move {
            let status = post(
                &base,
                "/auth/login",
                json!({"identity": format!("user{n}"), "password": PW}),
                None,
            )
            .await
            .0;
            (status, std::time::Instant::now())
        }));
    }
    // Stop the server once every sign-in has reached it: one hashing, seven waiting for the
    // thread (the first finishes only after its half second or more).
    let started = std::time::Instant::now();
    loop {
        let metrics = server.metrics().await;
        let waiting = metrics
            .lines()
            .find_map(|l| l.strip_prefix("keygate_password_hash_queue_depth "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if waiting == Some(7.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the eight sign-ins never all waited for the hashing thread: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(Duration::from_secs(30));
        (s, server.log())
    })
    .await
    .unwrap();
    let mut after_signal = 0;
    for t in inflight {
        let (code, answered) = t.await.unwrap();
        assert_eq!(code, 200, "an in-flight login was cut off");
        if answered > signalled {
            after_signal += 1;
        }
    }
    // Not vacuous: the seven waiting at the signal were answered 200 after it.
    assert!(
        after_signal >= 7,
        "{after_signal} sign-ins answered after the signal"
    );
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1
    );
    assert!(
        status.1.contains("finishing in-flight requests"),
        "{}",
        status.1
    );
}

#[tokio::test]
async fn a_fresh_directory_gets_a_working_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let port = keygate_tests::free_port();
    /// Kills the server also when an assertion fails.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start = || {
        Killed(
            Command::new(workspace_bin("auth-server"))
                .current_dir(dir.path())
                .env_remove("KEYGATE_DATA_DIR")
                .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let base = format!("http://127.0.0.1:{port}");
    let until_ready = async || {
        keygate_tests::eventually(
            Duration::from_secs(30),
            "the server started with no arguments",
            async || {
                let client = client();
                let res = client.get(format!("{base}/readyz")).send().await.ok()?;
                (res.status() == reqwest::StatusCode::OK).then_some(())?;
                res.json::<Value>().await.ok()
            },
        )
        .await
    };
    let transmission_key = async || {
        let (status, config) = get(&base, "/api/v1/public/auth-config/default", None).await;
        assert_eq!(status, StatusCode::OK, "{config}");
        let data = &config["data"];
        let pem = data["transmission_public_key"].as_str().unwrap_or_default();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{config}");
        let kid = data["transmission_public_key_id"]
            .as_str()
            .unwrap_or_default();
        assert!(!kid.is_empty(), "{config}");
        (pem.to_owned(), kid.to_owned())
    };
    let mut server = start();
    let ready = until_ready().await;
    assert_eq!(ready["checks"]["database"], "ok", "{ready}");
    assert!(dir.path().join("data/keygate.db").exists());
    assert!(dir.path().join("data/signing-key-es256.pem").exists());
    // The RSA transmission key is generated in the background of a first start; the tenant
    // configuration waits for it, and it is kept in the data directory.
    let first_key = transmission_key().await;
    assert!(dir.path().join("data/transmission-key-rsa.pem").exists());
    // A restart loads the same keys instead of making new ones.
    drop(server);
    server = start();
    until_ready().await;
    assert_eq!(transmission_key().await, first_key);
    // The CLI's defaults find the same database: the first user signs in over HTTP.
    let mut add = Command::new(workspace_bin("auth-server"))
        .current_dir(dir.path())
        .env_remove("KEYGATE_DATA_DIR")
        .args(["user", "add", "--username", "alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), format!("{PW}\n").as_bytes())
        .unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, login) = post(
        &base,
        "/auth/login",
        json!({"identity": "alice", "password": PW}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let (status, me) = get(&base, "/api/v1/auth/me", login["access_token"].as_str()).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let (_, jwks) = get(&base, "/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    drop(server);
}

#[test]
fn the_cli_explains_itself_and_refuses_passwords_on_the_command_line() {
    let help = Command::new(workspace_bin("auth-server"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "serve",
        "migrate",
        "user",
        "key",
        "KEYGATE_DATABASE_URL",
        "KEYGATE_DATA_DIR",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let serve = Command::new(workspace_bin("auth-server"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for word in [
        "KEYGATE_LISTEN",
        "KEYGATE_REDIS_URL",
        "KEYGATE_CONFIG",
        "KEYGATE_BASE_PATH",
    ] {
        assert!(text.contains(word), "serve --help lacks {word}:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("auth-server"))
        .args(["user", "add", "--username", "x"])
        .env("KEYGATE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
    // Invalid users are refused with the reason.
    let out = Command::new(workspace_bin("auth-server"))
        .args(["user", "add", "--username", "bad name", "--password-stdin"])
        .env("KEYGATE_DATA_DIR", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("username"));
    // Tenants: created by the CLI, then users in them.
    let tenant = Command::new(workspace_bin("auth-server"))
        .args([
            "tenant",
            "add",
            "--id",
            "acme",
            "--display-name",
            "Acme Corp",
        ])
        .env("KEYGATE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        tenant.status.success(),
        "{}",
        String::from_utf8_lossy(&tenant.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&tenant.stdout).trim(), "acme");
    let again = Command::new(workspace_bin("auth-server"))
        .args(["tenant", "add", "--id", "acme", "--display-name", "Again"])
        .env("KEYGATE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    let id = add_user(
        dir.path(),
        &[],
        &["--username", "zed", "--tenant", "acme"],
        PW,
    );
    assert!(id.starts_with("usr_"));
    let migrate = Command::new(workspace_bin("auth-server"))
        .arg("migrate")
        .env("KEYGATE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(migrate.status.success());
    let op = Command::new(workspace_bin("auth-operator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(op.status.success());
    // Help text is wrapped to the terminal: compare words, not lines.
    let help = String::from_utf8_lossy(&op.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains("runtime configuration"), "{help}");
}

/// Runs the independent WebCrypto client (tests/js/login-client.mjs); returns (status, body).
fn webcrypto_login(base: &str, mode: &str, password: &str, variant: &str) -> (u16, Value) {
    let out = Command::new("node")
        .current_dir(repo_root().join("tests/js"))
        .args(["login-client.mjs", base, mode, "alice", password, variant])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "login-client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["status"].as_u64().unwrap() as u16, v["body"].clone())
}

#[test]
fn a_webcrypto_client_signs_in_with_every_transmission_mode() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), &[], &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    for (mode, variant) in [
        ("plain", ""),
        ("hash", ""),
        ("symmetric", "hkdf"),
        ("symmetric", "raw"),
        ("asymmetric", ""),
    ] {
        let (status, body) = webcrypto_login(&server.base_url, mode, PW, variant);
        assert_eq!(status, 200, "{mode} {variant}: {body}");
        assert!(body["access_token"].is_string());
        let (status, body) = webcrypto_login(&server.base_url, mode, "wrong password", variant);
        assert_eq!(status, 400, "{mode} {variant}: {body}");
        assert_eq!(body["code"], 40000101, "{mode} {variant}: {body}");
    }
}

#[tokio::test]
async fn the_runtime_configuration_hot_reloads_and_a_bad_file_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({"tokens": {"access_token_ttl_seconds": 600}}),
    );
    let env = vec![("KEYGATE_CONFIG".to_owned(), config.clone())];
    add_user(dir.path(), &env, &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let base = server.base_url.as_str();
    let expires_in = || async {
        post(
            base,
            "/auth/login",
            json!({"identity": "alice", "password": PW}),
            None,
        )
        .await
        .1["expires_in"]
            .as_u64()
    };
    assert_eq!(expires_in().await, Some(600));
    // A valid change takes effect without a restart.
    keygate_tests::write_atomically(
        std::path::Path::new(&config),
        json!({"tokens": {"access_token_ttl_seconds": 900}})
            .to_string()
            .as_bytes(),
    );
    let wait_for = |want: u64| async move {
        for _ in 0..50 {
            if expires_in().await == Some(want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(
        wait_for(900).await,
        "the new configuration was not picked up:\n{}",
        server.log()
    );
    // An invalid file is refused: the last good configuration stays, readiness says so, and
    // the rejection is counted.
    keygate_tests::write_atomically(
        std::path::Path::new(&config),
        br#"{"tokens": {"access_token_ttl_seconds": 5}}"#,
    );
    let mut reported = false;
    for _ in 0..50 {
        let (_, ready) = get(base, "/readyz", None).await;
        if ready["checks"]["config"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected")
        {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        reported,
        "readiness does not report the rejected file:\n{}",
        server.log()
    );
    assert_eq!(expires_in().await, Some(900));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"keygate_config_reloads_total{outcome="rejected"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_config_reloads_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(
        server.log().contains("access_token_ttl_seconds"),
        "{}",
        server.log()
    );
}
