//! Sessions and locks across two replicas on one Postgres and Redis: a refresh token rotated on
//! one replica and replayed on the other (inside the grace window a fresh token, past it the
//! whole session revoked), the absolute session lifetime under sliding refreshes, and an
//! account locked through both replicas and unlocked by an administrator on either.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{ServerProcess, add_user, post_json, replica_env, start_replicas};
use serde_json::{Value, json};
use std::time::Duration;

const PW: &str = "correct horse battery staple";

struct Pair {
    a: ServerProcess,
    b: ServerProcess,
    client: reqwest::Client,
    ids: Vec<String>,
    _dir: tempfile::TempDir,
    _redis: keygate_tests::RedisProcess,
}

/// Two replicas with `config` and the users `(username, extra args)`.
async fn pair(config: Value, users: &[(&str, &[&str])]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (env, redis) = replica_env(dir.path(), config).await;
    let ids = users
        .iter()
        .map(|(name, args)| {
            let mut all = vec!["--username", name];
            all.extend_from_slice(args);
            add_user(dir.path(), &env, &all, PW)
        })
        .collect();
    let mut replicas = start_replicas(&env, 2);
    let (b, a) = (replicas.pop().unwrap(), replicas.pop().unwrap());
    Pair {
        a,
        b,
        client: reqwest::Client::new(),
        ids,
        _dir: dir,
        _redis: redis,
    }
}

impl Pair {
    async fn post(&self, on: &ServerProcess, path: &str, body: Value) -> (u16, Value) {
        post_json(
            &self.client,
            &format!("{}/api/v1{path}", on.base_url),
            None,
            &body,
        )
        .await
    }

    async fn post_as(
        &self,
        on: &ServerProcess,
        path: &str,
        token: &str,
        body: Value,
    ) -> (u16, Value) {
        post_json(
            &self.client,
            &format!("{}/api/v1{path}", on.base_url),
            Some(token),
            &body,
        )
        .await
    }

    async fn login(&self, on: &ServerProcess, username: &str, password: &str) -> (u16, Value) {
        self.post(
            on,
            "/auth/login",
            json!({"identity": username, "password": password}),
        )
        .await
    }

    async fn refresh(&self, on: &ServerProcess, token: &str) -> (u16, Value) {
        self.post(on, "/auth/refresh", json!({"refresh_token": token}))
            .await
    }
}

fn refresh_token(body: &Value) -> String {
    body["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token: {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_refresh_token_replayed_on_the_other_replica_is_forgiven_in_the_grace_window_only() {
    let p = pair(
        json!({"tokens": {"refresh_reuse_grace_seconds": 3}}),
        &[("alice", &[])],
    )
    .await;
    let (status, body) = p.login(&p.a, "alice", PW).await;
    assert_eq!(status, 200, "{body}");
    let first = refresh_token(&body);
    let (status, body) = p.refresh(&p.a, &first).await;
    assert_eq!(status, 200, "{body}");
    let second = refresh_token(&body);
    // Two tabs refreshing at once, through different replicas: the old token gets a fresh one
    // in the same session.
    let (status, body) = p.refresh(&p.b, &first).await;
    assert_eq!(status, 200, "inside the grace window: {body}");
    let sibling = refresh_token(&body);
    // Past the window (counted in whole seconds, so up to a second longer), the replay on
    // the other replica is reuse: the whole session goes.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (status, body) = p.refresh(&p.b, &first).await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(40000201)),
        "{body}"
    );
    for (on, token) in [(&p.a, &second), (&p.b, &sibling)] {
        let (status, body) = p.refresh(on, token).await;
        assert_eq!(
            status, 400,
            "a token of the revoked session still refreshes: {body}"
        );
    }
}

#[tokio::test]
async fn refreshes_on_both_replicas_end_at_the_absolute_session_lifetime() {
    let p = pair(
        json!({"tokens": {"access_token_ttl_seconds": 30, "refresh_token_ttl_seconds": 30,
                          "session_max_lifetime_seconds": 30}}),
        &[("alice", &[])],
    )
    .await;
    let (status, body) = p.login(&p.a, "alice", PW).await;
    // The session's lifetime counts from the sign-in's answer at the latest.
    let started = std::time::Instant::now();
    assert_eq!(status, 200, "{body}");
    let mut token = refresh_token(&body);
    // Every 8 s, alternating replicas, each well inside the lifetimes. (The minimum access
    // lifetime, 30 s, bounds the refresh lifetime from below, so this shows the absolute end,
    // not the sliding refresh lifetime.)
    for (n, on) in [&p.b, &p.a, &p.b].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (status, body) = p.refresh(on, &token).await;
        assert_eq!(
            status,
            200,
            "refresh {n} at {:?}: {body}",
            started.elapsed()
        );
        token = refresh_token(&body);
    }
    assert!(
        started.elapsed() < Duration::from_secs(29),
        "too slow to test the lifetime"
    );
    // Past the session's absolute lifetime (counted from the sign-in), no refresh, anywhere.
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        started + Duration::from_secs(33),
    ))
    .await;
    for on in [&p.a, &p.b] {
        let (status, body) = p.refresh(on, &token).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!(40000202)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_lock_made_through_both_replicas_holds_on_both_until_an_admin_unlocks_it_on_either() {
    let p = pair(
        json!({
            "rate_limits": {"rules": []},
            "policy": {"captcha": {"mode": "never"},
                       "lockout": {"delay_after": 2, "base_delay_seconds": 1, "max_delay_seconds": 1,
                                   "lock_after": 3, "lock_seconds": 600,
                                   "ip_delay_after": 1000, "ip_lock_after": 2000}},
        }),
        &[("alice", &[]), ("root", &["--role", "admin"])],
    )
    .await;
    let alice = p.ids[0].clone();
    // Failures through alternating replicas count together: the third locks.
    assert_eq!(p.login(&p.a, "alice", "wrong password 1").await.0, 400);
    assert_eq!(p.login(&p.b, "alice", "wrong password 2").await.0, 400);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.login(&p.a, "alice", "wrong password 3").await.0, 400);
    for on in [&p.a, &p.b] {
        let (status, body) = p.login(on, "alice", PW).await;
        assert_eq!(status, 429, "{body}");
        assert!(
            body["retry_after"].as_u64().is_some_and(|s| s > 300),
            "a lock, not a delay: {body}"
        );
    }
    // An administrator signs in on one replica and unlocks on the other.
    let (status, body) = p.login(&p.a, "root", PW).await;
    assert_eq!(status, 200, "{body}");
    let admin = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = p
        .post_as(
            &p.b,
            &format!("/admin/users/{alice}/unlock"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for on in [&p.a, &p.b] {
        let (status, body) = p.login(on, "alice", PW).await;
        assert_eq!(status, 200, "still locked after the unlock: {body}");
    }
}

#[tokio::test]
async fn wrong_mfa_answers_over_both_replicas_spend_the_challenge_exactly() {
    let p = pair(
        json!({
            "rate_limits": {"rules": []},
            "policy": {"captcha": {"mode": "never"},
                       "lockout": {"delay_after": 100, "lock_after": 200,
                                   "ip_delay_after": 1000, "ip_lock_after": 2000}},
        }),
        &[("alice", &[])],
    )
    .await;
    let (_, body) = p.login(&p.a, "alice", PW).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, setup) = p
        .post_as(&p.a, "/auth/mfa/totp/setup", &token, json!({}))
        .await;
    assert_eq!(status, 200, "{setup}");
    let secret = setup["data"]["secret"].as_str().unwrap().to_owned();
    let (status, body) = p
        .post_as(
            &p.a,
            "/auth/mfa/totp/verify",
            &token,
            json!({"code": keygate_tests::pyotp(&secret, 0)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, challenge) = p.login(&p.b, "alice", PW).await;
    assert_eq!(challenge["requires_mfa"], true, "{challenge}");
    let right = keygate_tests::pyotp(&secret, 0);
    let wrong_code = |n: u32| {
        format!(
            "{:06}",
            (right.parse::<u32>().unwrap() + n * 7919) % 1_000_000
        )
    };
    // max_attempts (5 by default) + 5 wrong answers at once: eight through one replica, two
    // through the other.
    let answers: Vec<_> = (1..=10u32)
        .map(|n| {
            let on = if n > 8 { &p.b } else { &p.a };
            let url = format!("{}/api/v1/auth/mfa/verify-challenge", on.base_url);
            let body =
                json!({"challenge_token": challenge["challenge_token"], "code": wrong_code(n)});
            let client = p.client.clone();
            tokio::spawn(async move { post_json(&client, &url, None, &body).await })
        })
        .collect();
    let mut wrong = 0;
    for a in answers {
        let (status, body) = a.await.unwrap();
        match (status, body["code"].as_u64()) {
            (400, Some(61000402)) => wrong += 1,
            (403, Some(61000403)) => {}
            other => panic!("unexpected {other:?}: {body}"),
        }
    }
    assert_eq!(wrong, 5, "exactly max_attempts wrong answers are evaluated");
    // Spent on both replicas: the right code opens nothing.
    for on in [&p.a, &p.b] {
        let (status, body) = p
            .post(
                on,
                "/auth/mfa/verify-challenge",
                json!({"challenge_token": challenge["challenge_token"], "code": right}),
            )
            .await;
        assert_eq!(
            (status, body["code"].clone()),
            (403, json!(61000403)),
            "{body}"
        );
    }
}
