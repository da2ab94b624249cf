//! The audit trail through the router: what each kind of event records (method, user, actor,
//! outcome, reason, client), that it never holds a secret, the administrator's filters and
//! cursor pagination, and who may read it.

use crate::common::{TestApp, assert_problem, small_hashing};
use auth_server::auth::clock::Clock;
use keygate_config::{CaptchaMode, CaptchaPolicy, LockoutPolicy, RuntimeConfig, TenantPolicy};
use serde_json::{Value, json};

const PW: &str = "correct horse battery";
const NEW_PW: &str = "a different long password";
const EVENTS: &str = "/api/v1/admin/audit-events";

async fn events(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app.get(&format!("{EVENTS}?{query}"), Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"]["events"].as_array().unwrap().clone()
}

fn summary(e: &Value) -> String {
    format!(
        "{} {} {} {}",
        e["type"].as_str().unwrap(),
        e["outcome"].as_str().unwrap(),
        e["method"].as_str().unwrap_or("-"),
        e["reason"].as_str().unwrap_or("-"),
    )
}

#[tokio::test]
async fn sign_ins_tickets_impersonation_and_password_changes_are_recorded() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy: TenantPolicy {
            captcha: CaptchaPolicy {
                mode: CaptchaMode::Never,
                ..Default::default()
            },
            lockout: LockoutPolicy {
                delay_after: 2,
                lock_after: 3,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let admin = app.add_user("root", PW, &["admin"]).await;
    let bob = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;

    // A sign-in with a user agent; a wrong password; an unknown identity.
    let req = axum::http::Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .header("user-agent", "audit-test/1.0")
        .body(axum::body::Body::from(
            json!({"identity": "bob", "password": PW}).to_string(),
        ))
        .unwrap();
    let bob_token = app.send(req).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.login("bob", "wrong password!").await.status, 400);
    assert_eq!(app.login("nobody", "wrong password!").await.status, 400);

    // A ticket issued by the administrator and redeemed: an impersonation.
    let r = app
        .post(
            "/api/v1/auth/generate-ticket",
            json!({"user_id": bob, "reason": "case 7"}),
            Some(&root),
        )
        .await;
    let ticket = r.body["data"]["ticket"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post(
            "/api/v1/auth/ticket/signin",
            json!({"ticket": ticket}),
            None
        )
        .await
        .status,
        200
    );

    // Password changes: a wrong current password, then a right one.
    let change = |old: &str| json!({"old_password": old, "new_password": NEW_PW});
    assert_eq!(
        app.send_put(
            "/api/v1/auth/me/password",
            change("not my password"),
            &bob_token
        )
        .await
        .status,
        400
    );
    // The wrong current password counted as bob's second failure (the one at sign-in was the
    // first): the next try waits out its delay.
    let r = app
        .send_put("/api/v1/auth/me/password", change(PW), &bob_token)
        .await;
    assert_problem(&r, 429, 42900002);
    app.clock.advance(r.body["retry_after"].as_i64().unwrap());
    let r = app
        .send_put("/api/v1/auth/me/password", change(PW), &bob_token)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Failures until the account locks, then an administrator's unlock. (The right current
    // password reset the count: delays after two, the lock at three.)
    assert_eq!(app.login("bob", "wrong password!").await.status, 400);
    assert_eq!(app.login("bob", "wrong password!").await.status, 400);
    let r = app.login("bob", "wrong password!").await;
    assert_problem(&r, 429, 42900002);
    app.clock.advance(r.body["retry_after"].as_i64().unwrap());
    assert_eq!(app.login("bob", "wrong password!").await.status, 400);
    assert_problem(&app.login("bob", NEW_PW).await, 429, 42900003);
    let r = app
        .post(
            &format!("/api/v1/admin/users/{bob}/unlock"),
            json!({}),
            Some(&root),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let all = events(&app, &root, "limit=500").await;
    let trail: Vec<String> = all.iter().rev().map(summary).collect();
    for want in [
        "sign_in success password -",
        "sign_in failure password invalid_credentials",
        "ticket_issued success - case 7",
        "sign_in success ticket case 7",
        "impersonation success ticket case 7",
        "password_change failure - wrong_old_password",
        "password_change success - -",
        "lockout success - too_many_failures",
        "sign_in failure password locked",
        "unlock success - -",
    ] {
        assert!(
            trail.iter().any(|t| t == want),
            "missing {want:?} in {trail:#?}"
        );
    }
    let by = |kind: &str| all.iter().find(|e| e["type"] == kind).unwrap().clone();
    let imp = by("impersonation");
    assert_eq!(
        (imp["user_id"].clone(), imp["actor_id"].clone()),
        (json!(bob), json!(admin))
    );
    assert_eq!(by("unlock")["actor_id"], admin.as_str());
    assert_eq!(by("lockout")["user_id"], bob.as_str());
    let ua = all
        .iter()
        .find(|e| e["user_agent"] == "audit-test/1.0")
        .expect("the user agent is recorded");
    assert_eq!(ua["user_id"], bob.as_str());
    // A failure names the account and identity when the identity exists; otherwise only a
    // hash of what was typed (people type passwords there).
    let unknown = all
        .iter()
        .find(|e| e["details"]["identity_sha256"].is_string())
        .unwrap();
    assert!(unknown["user_id"].is_null());
    assert!(!serde_json::to_string(&all).unwrap().contains("nobody"));
    assert!(all.iter().any(|e| e["details"]["identity"] == "bob"
        && e["reason"] == "invalid_credentials"
        && e["user_id"] == bob.as_str()));
    // No secret anywhere.
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        PW,
        NEW_PW,
        "wrong password!",
        "not my password",
        &ticket,
        &root,
        &bob_token,
    ] {
        assert!(!text.contains(secret), "the trail holds a secret");
    }
}

#[tokio::test]
async fn the_trail_is_filtered_paginated_and_for_administrators_only() {
    let app = TestApp::new().await;
    app.add_user("root", PW, &["admin"]).await;
    let bob = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;
    let start = app.clock.unix();
    for _ in 0..3 {
        app.clock.advance(60);
        assert_eq!(app.login("bob", PW).await.status, 200);
    }
    app.clock.advance(60);
    app.login("bob", "wrong password!").await;

    let bobs = events(&app, &root, &format!("user_id={bob}")).await;
    assert_eq!(bobs.len(), 4);
    assert!(bobs.iter().all(|e| e["user_id"] == bob.as_str()));
    let failures = events(&app, &root, "type=sign_in")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "failure")
        .count();
    assert_eq!(failures, 1);
    let rfc = |t: i64| auth_server::auth::clock::rfc3339(t);
    let window = events(
        &app,
        &root,
        &format!("since={}&until={}", rfc(start + 120), rfc(start + 181)),
    )
    .await;
    assert_eq!(window.len(), 2, "{window:#?}");

    // Pages of two, newest first, cover everything once.
    let all = events(&app, &root, "limit=500").await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app
            .get(&format!("{EVENTS}?limit=2&cursor={cursor}"), Some(&root))
            .await;
        let page = r.body["data"]["events"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match r.body["data"]["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let ids: Vec<String> = all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ids);
    // Newest first by time (the events are a minute apart on the clock).
    let times: Vec<&str> = all
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert!(times.first() > times.last());

    // An administrator of another tenant sees none of these.
    app.auth.create_tenant("acme", "Acme").await.unwrap();
    app.auth
        .create_user(
            "acme",
            auth_server::auth::users::UserInput {
                username: "boss".into(),
                password: Some(PW.into()),
                roles: vec!["admin".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = app
        .post(
            "/api/v1/auth/login",
            json!({"identity": "boss", "password": PW, "tenant_id": "acme"}),
            None,
        )
        .await;
    let boss = r.body["access_token"].as_str().unwrap().to_owned();
    let theirs = events(&app, &boss, "limit=500").await;
    assert!(
        theirs.iter().all(|e| e["tenant_id"] == "acme"),
        "{theirs:#?}"
    );
    assert!(
        events(&app, &boss, &format!("user_id={bob}"))
            .await
            .is_empty()
    );

    assert_problem(&app.get(EVENTS, None).await, 401, 40100001);
    let bob_token = app.token("bob", PW).await;
    assert_problem(&app.get(EVENTS, Some(&bob_token)).await, 403, 40300001);
    for bad in [
        "type=nope",
        "since=yesterday",
        "limit=0",
        "limit=x",
        "limit=501",
    ] {
        let r = app.get(&format!("{EVENTS}?{bad}"), Some(&root)).await;
        assert_problem(&r, 400, 40000001);
    }
}
