//! Login hardening across processes: many parallel wrong passwords against two server
//! processes sharing one Redis evaluate no more passwords than the policy allows; a client
//! that solves a proof of work silently (no challenge id) is matched by its address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{ServerOptions, ServerProcess, add_user, get_json, post_json, write_config};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn parallel_wrong_passwords_on_two_replicas_evaluate_only_what_the_policy_allows() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "rate_limits": {"rules": []},
        "policy": {
            "captcha": {"mode": "never"},
            "lockout": {"delay_after": 5, "lock_after": 8, "base_delay_seconds": 30, "max_delay_seconds": 60,
                        "ip_delay_after": 1000, "ip_lock_after": 2000}
        }
    });
    let (env, _redis) = keygate_tests::replica_env(dir.path(), config).await;
    add_user(dir.path(), &env, &["--username", "alice"], PW);
    let mut replicas = keygate_tests::start_replicas(&env, 2);
    let (b, a) = (replicas.pop().unwrap(), replicas.pop().unwrap());
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for n in 0..80 {
        let url = format!(
            "{}/api/v1/auth/login",
            if n % 2 == 0 { &a.base_url } else { &b.base_url }
        );
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"identity": "alice", "password": format!("wrong {n}")}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (status, body["code"].as_u64().unwrap())
        }));
    }
    let mut evaluated = 0;
    let mut throttled = 0;
    for t in tasks {
        match t.await.unwrap() {
            (400, 40000101) => evaluated += 1,
            (429, 42900002) => throttled += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        evaluated, 5,
        "exactly delay_after passwords may be evaluated in a burst"
    );
    assert_eq!(throttled, 75);
    // The right password is refused too until the delay has passed, on both replicas.
    for base in [&a.base_url, &b.base_url] {
        let res = client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"identity": "alice", "password": PW}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
        assert!(res.headers().get("retry-after").is_some());
    }
}

fn solve(challenge: &str, difficulty: usize) -> String {
    let zeros = "0".repeat(difficulty);
    let mut n: u64 = 0;
    loop {
        if hex::encode(Sha256::digest(format!("{challenge}{n}"))).starts_with(&zeros) {
            let mut digits = Vec::new();
            let mut m = n;
            loop {
                digits.push(std::char::from_digit((m % 36) as u32, 36).unwrap());
                m /= 36;
                if m == 0 {
                    break;
                }
            }
            return format!("pow_{}", digits.iter().rev().collect::<String>());
        }
        n += 1;
    }
}

#[tokio::test]
async fn a_silently_solved_proof_of_work_is_matched_by_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({"policy": {"captcha": {"mode": "always", "pow_difficulty": 3}}}),
    );
    let env = vec![("KEYGATE_CONFIG".to_owned(), config)];
    add_user(dir.path(), &env, &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let base = &server.base_url;
    let (_, cfg) = get_json(
        &client,
        &format!("{base}/api/v1/public/auth-config/default"),
        None,
    )
    .await;
    assert_eq!(cfg["data"]["silent_challenge_enabled"], true);
    let (_, c) = get_json(
        &client,
        &format!("{base}/api/v1/auth/captcha/challenge?provider=pow"),
        None,
    )
    .await;
    let token = solve(
        c["data"]["data"]["challenge"].as_str().unwrap(),
        c["data"]["data"]["difficulty"].as_u64().unwrap() as usize,
    );
    let login = |token: String| {
        let client = client.clone();
        let url = format!("{}/api/v1/auth/login", server.base_url);
        async move {
            client
                .post(url)
                .json(&json!({"identity": "alice", "password": PW, "captcha_provider": "pow", "captcha_token": token}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(login(token.clone()).await, 200);
    // Consumed: the same answer again has no challenge behind it.
    assert_eq!(login(token).await, 400);
}

#[tokio::test]
async fn totp_interoperates_with_an_independent_implementation() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), &[], &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", server.base_url);
    let post = |path: &str, bearer: Option<String>, body: Value| {
        let (client, url) = (client.clone(), api(path));
        async move { post_json(&client, &url, bearer.as_deref(), &body).await }
    };
    let login = || async {
        post(
            "/auth/login",
            None,
            json!({"identity": "alice", "password": PW}),
        )
        .await
        .1
    };
    let token = login().await["access_token"].as_str().unwrap().to_owned();
    let (_, setup) = post("/auth/mfa/totp/setup", Some(token.clone()), json!({})).await;
    let secret = setup["data"]["secret"].as_str().unwrap().to_owned();
    let uri = setup["data"]["otpauth_uri"].as_str().unwrap();
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let (status, _) = post(
        "/auth/mfa/totp/verify",
        Some(token.clone()),
        json!({"code": keygate_tests::pyotp(&secret, 0)}),
    )
    .await;
    assert_eq!(status, 200);
    // Sign in: challenged; the next step's code (within the allowed skew) finishes it.
    let c = login().await;
    assert_eq!(c["requires_mfa"], true);
    let (status, body) = post(
        "/auth/mfa/verify-challenge",
        None,
        json!({"challenge_token": c["challenge_token"], "code": keygate_tests::pyotp(&secret, 30)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn rate_limits_are_shared_by_replicas_and_read_forwarded_for_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "rate_limits": {
            "trusted_proxies": ["127.0.0.0/8"],
            "rules": [{"name": "ip", "endpoints": ["key_exchange"], "key": "client_ip", "limit": 4, "window_seconds": 60}]
        }
    });
    let (env, _redis) = keygate_tests::replica_env(dir.path(), config).await;
    let mut replicas = keygate_tests::start_replicas(&env, 2);
    let (b, a) = (replicas.pop().unwrap(), replicas.pop().unwrap());
    let client = reqwest::Client::new();
    // Each item is one `X-Forwarded-For` line, in order.
    let hit_lines = |base: String, lines: Vec<String>| {
        let client = client.clone();
        async move {
            let mut req = client.get(format!("{base}/api/v1/public/key-exchange"));
            for line in lines {
                req = req.header("x-forwarded-for", line);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let retry = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = res.json().await.unwrap();
            (status, body["code"].as_u64().unwrap_or(0), retry)
        }
    };
    let hit = |base: String, forwarded: &'static str| hit_lines(base, vec![forwarded.to_owned()]);
    // One client behind the proxy, alternating replicas: exactly the limit passes.
    let mut admitted = 0;
    for n in 0..8 {
        let base = if n % 2 == 0 {
            a.base_url.clone()
        } else {
            b.base_url.clone()
        };
        match hit(base, "198.51.100.1").await {
            (200, 0, None) => admitted += 1,
            (429, 42900001, Some(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 4);
    // Another client behind the same proxy has its own budget.
    assert_eq!(hit(a.base_url.clone(), "198.51.100.2").await.0, 200);
    // The proxy's own address is not the client: the hop before it is. Its budget is spent by
    // requests that named it before the proxy, and the proxy's address keeps one of its own.
    for _ in 0..4 {
        assert_eq!(
            hit(b.base_url.clone(), "198.51.100.3, 127.0.0.1").await.0,
            200
        );
    }
    assert_eq!(hit(a.base_url.clone(), "198.51.100.3").await.0, 429);
    assert_eq!(
        hit(b.base_url.clone(), "198.51.100.4, 127.0.0.1").await.0,
        200
    );
    // A client that forges a line of its own, with the proxy appending the real address on a
    // second line: the real address is counted (and is over its budget).
    for n in 0..3 {
        let forged = format!("203.0.113.{}", 10 + n);
        let r = hit_lines(a.base_url.clone(), vec![forged, "198.51.100.1".into()]).await;
        assert_eq!(r.0, 429, "a forged first line chose the address: {r:?}");
    }
    // IPv6 clients count by /64: a new address in the same network has no fresh budget.
    for n in 0..4 {
        let addr = format!("2001:db8:7:7::{:x}", n + 1);
        assert_eq!(hit_lines(b.base_url.clone(), vec![addr]).await.0, 200);
    }
    let r = hit_lines(a.base_url.clone(), vec!["2001:db8:7:7:ffff::1".into()]).await;
    assert_eq!(r.0, 429, "{r:?}");
    assert_eq!(
        hit_lines(a.base_url.clone(), vec!["2001:db8:7:8::1".into()])
            .await
            .0,
        200
    );
}
