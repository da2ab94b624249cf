//! Redis going away and coming back under a running server: revocation checks and single-use
//! state (key exchanges, one-time codes) fail closed (503), sign-in delays and rate limits
//! degrade to per-replica counters with a warning, readiness says so, and everything recovers
//! without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{RedisProcess, ServerOptions, ServerProcess, add_user, write_config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn redis_outage_fails_closed_where_it_must_and_recovers_by_itself() {
    let mut redis = RedisProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("KEYGATE_REDIS_URL".to_owned(), redis.url()),
        (
            "KEYGATE_CONFIG".to_owned(),
            write_config(
                dir.path(),
                &json!({"policy": {"captcha": {"mode": "never"}, "lockout": {"delay_after": 2, "base_delay_seconds": 20, "max_delay_seconds": 20, "lock_after": 3, "lock_seconds": 600}}}),
            ),
        ),
    ];
    add_user(
        dir.path(),
        &env,
        &["--username", "alice", "--email", "alice@example.com"],
        PW,
    );
    add_user(dir.path(), &env, &["--username", "bob"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = server.base_url.clone();
    let get = |path: &'static str, token: Option<String>| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move { keygate_tests::get_json(&client, &url, token.as_deref()).await }
    };
    let post = |path: &'static str, body: Value| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move { keygate_tests::post_json(&client, &url, None, &body).await }
    };
    let login = || {
        post(
            "/api/v1/auth/login",
            json!({"identity": "alice", "password": PW}),
        )
    };
    let send_code = || {
        post(
            "/api/v1/auth/send-login-code",
            json!({"email": "alice@example.com"}),
        )
    };
    let code_login = |code: String| {
        post(
            "/api/v1/auth/login/email-code",
            json!({"email": "alice@example.com", "code": code}),
        )
    };
    // The newest code the development mode logged.
    let logged_code = || {
        let log = server.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("NOT delivered"))
            .unwrap();
        keygate_tests::delivery::first_digits(&line[line.find("code=").unwrap()..], 6).unwrap()
    };

    let (status, body) = login().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(send_code().await.0, 200);
    let pending = logged_code();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get("/api/v1/auth/me", Some(token.clone())).await.0, 200);

    redis.stop();
    // Revocations cannot be checked: tokens are not trusted blindly.
    let (status, body) = get("/api/v1/auth/me", Some(token.clone())).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 50300001);
    // Single-use state cannot be kept: no key exchange is handed out.
    assert_eq!(get("/api/v1/public/key-exchange", None).await.0, 503);
    // Codes can be neither issued nor checked.
    let (status, body) = send_code().await;
    assert_eq!(
        (status, body["code"].clone()),
        (503, json!(50300001)),
        "{body}"
    );
    let (status, body) = code_login(pending.clone()).await;
    assert_eq!(
        (status, body["code"].clone()),
        (503, json!(50300001)),
        "{body}"
    );
    // An address without an account answers exactly alike (no enumeration by outage).
    let (status, body) = post(
        "/api/v1/auth/send-login-code",
        json!({"email": "nobody@example.com"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (503, json!(50300001)),
        "{body}"
    );
    // Readiness says why.
    let (status, body) = get("/readyz", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["ephemeral"], "unavailable");
    // Sign-in still works, its delays and limits counted on this replica, and says so.
    let (status, body) = login().await;
    assert_eq!(status, 200, "{body}");
    assert!(
        server.log().contains("Redis unavailable"),
        "{}",
        server.log()
    );
    let degraded = async || {
        server
            .metrics()
            .await
            .lines()
            .find(|l| l.starts_with("keygate_ephemeral_degraded_decisions_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let degraded_before = degraded().await;
    // Not failing open: the delay and the lock still bite on this replica's counters, and
    // each decision is counted.
    let wrong = |n: u32| {
        post(
            "/api/v1/auth/login",
            json!({"identity": "bob", "password": format!("wrong password {n}")}),
        )
    };
    assert_eq!(wrong(1).await.0, 400);
    assert_eq!(wrong(2).await.0, 400);
    // Two failures: the next attempt must wait (up to the 20 s delay).
    let (status, body) = wrong(3).await;
    assert_eq!(status, 429, "{body}");
    let wait = body["retry_after"].as_u64().unwrap();
    assert!((1..=20).contains(&wait), "{body}");
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
    // The third failure locks the account.
    assert_eq!(wrong(4).await.0, 400);
    let (status, body) = post(
        "/api/v1/auth/login",
        json!({"identity": "bob", "password": PW}),
    )
    .await;
    assert_eq!(status, 429, "the lock held for the right password: {body}");
    assert!(
        body["retry_after"].as_u64().is_some_and(|s| s > 300),
        "a lock, not a short delay: {body}"
    );
    let degraded = degraded().await - degraded_before;
    assert!(
        degraded >= 6.0,
        "each of the 6 decisions counted: {degraded}"
    );

    redis.restart();
    let started = Instant::now();
    loop {
        if get("/readyz", None).await.0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "did not recover:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back to shared state: revocation works again.
    assert_eq!(get("/api/v1/auth/me", Some(token.clone())).await.0, 200);
    let res = client
        .post(format!("{base}/api/v1/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(get("/api/v1/auth/me", Some(token)).await.0, 401);
    assert_eq!(get("/api/v1/public/key-exchange", None).await.0, 200);
    // This Redis keeps nothing on disk: the code issued before the outage is gone with it
    // (never accepted without the shared record), and a new one works.
    assert_eq!(code_login(pending).await.0, 400);
    assert_eq!(send_code().await.0, 200);
    let (status, body) = code_login(logged_code()).await;
    assert_eq!(status, 200, "{body}");
}
