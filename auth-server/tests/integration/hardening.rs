//! Login hardening through the HTTP API: CAPTCHA after failures (proof of work and Turnstile
//! against a local verify server), progressive delay without the server sleeping, the hard
//! lock and the administrator's unlock, and unknown identities behaving like known ones.

use crate::common::{TestApp, assert_problem, small_hashing};
use auth_server::auth::captcha::solve_pow;
use keygate_config::{
    CaptchaMode, CaptchaPolicy, CaptchaProvider, LockoutPolicy, RuntimeConfig, TenantPolicy,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";

async fn app_with(policy: TenantPolicy) -> TestApp {
    TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy,
        ..Default::default()
    })
    .await
}

/// A policy without CAPTCHA and with `lockout`, to follow the attempt counter alone.
fn no_captcha(lockout: LockoutPolicy) -> TenantPolicy {
    TenantPolicy {
        captcha: CaptchaPolicy {
            mode: CaptchaMode::Never,
            ..Default::default()
        },
        lockout,
        ..Default::default()
    }
}

async fn solved_captcha(app: &TestApp) -> Value {
    let c = app
        .get("/api/v1/auth/captcha/challenge?provider=pow", None)
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    let d = &c.body["data"];
    assert_eq!(d["type"], "pow");
    let token = solve_pow(
        d["data"]["challenge"].as_str().unwrap(),
        d["data"]["difficulty"].as_u64().unwrap() as u32,
    );
    json!({"captcha_provider": "pow", "captcha_token": token, "captcha_challenge_id": d["id"]})
}

async fn attempt(
    app: &TestApp,
    identity: &str,
    password: &str,
    captcha: Option<Value>,
) -> crate::common::Reply {
    let mut body = json!({"identity": identity, "password": password});
    if let Some(Value::Object(c)) = captcha {
        body.as_object_mut().unwrap().extend(c);
    }
    app.post("/api/v1/auth/login", body, None).await
}

/// The sequence of (status, code) answers to a series of wrong passwords under the default
/// policy, with a solved CAPTCHA whenever one is demanded and the clock moved past each delay.
async fn wrong_password_series(app: &TestApp, identity: &str) -> Vec<(u16, u64)> {
    let mut seen = Vec::new();
    for _ in 0..40 {
        let mut r = attempt(app, identity, "wrong", None).await;
        if r.body["code"] == 40000301 {
            seen.push((400, 40000301));
            r = attempt(app, identity, "wrong", Some(solved_captcha(app).await)).await;
        }
        let code = r.body["code"].as_u64().unwrap_or(0);
        seen.push((r.status.as_u16(), code));
        if r.status == 429 {
            assert_eq!(
                r.headers.get("retry-after").unwrap().to_str().unwrap(),
                r.body["retry_after"].to_string()
            );
            if code == 42900003 {
                break;
            }
            app.clock.advance(r.body["retry_after"].as_i64().unwrap());
        }
    }
    seen
}

#[tokio::test]
async fn failures_bring_captcha_then_growing_delays_then_a_lock() {
    let app = TestApp::new().await;
    let alice = app.add_user("alice", PW, &[]).await;
    app.add_user("root", PW, &["admin"]).await;
    app.add_user("bob", PW, &[]).await;
    let admin = app.token("root", PW).await;
    let bob_token = app.token("bob", PW).await;
    let series = wrong_password_series(&app, "alice").await;
    // 3 plain failures; then CAPTCHA is demanded; each further evaluated failure first waits
    // its delay (429, no sleeping on the server); the 10th failure locks.
    let evaluated = series.iter().filter(|s| **s == (400, 40000101)).count();
    assert_eq!(evaluated, 10, "{series:?}");
    assert_eq!(series[..3], [(400, 40000101); 3], "{series:?}");
    assert!(series.contains(&(400, 40000301)), "{series:?}");
    assert!(series.contains(&(429, 42900002)), "{series:?}");
    assert_eq!(series.last(), Some(&(429, 42900003)), "{series:?}");
    // Locked: even the right password is refused, quickly, without evaluating it.
    let started = Instant::now();
    let r = attempt(&app, "alice", PW, Some(solved_captcha(&app).await)).await;
    assert_problem(&r, 429, 42900003);
    assert!(r.body["retry_after"].as_u64().unwrap() > 800);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Only administrators unlock.
    let path = format!("/api/v1/admin/users/{alice}/unlock");
    assert_problem(
        &app.post(&path, json!({}), Some(&bob_token)).await,
        403,
        40300001,
    );
    assert_problem(
        &app.post(
            "/api/v1/admin/users/usr_nope/unlock",
            json!({}),
            Some(&admin),
        )
        .await,
        404,
        40400001,
    );
    let r = app.post(&path, json!({}), Some(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Unlocked, and the account counter is gone: no delay (the shared test address has
    // failed often enough to still want a CAPTCHA).
    let r = attempt(&app, "alice", PW, Some(solved_captcha(&app).await)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn unknown_identities_get_the_same_series() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let known = wrong_password_series(&app, "alice").await;
    let app2 = TestApp::new().await;
    let unknown = wrong_password_series(&app2, "nobody").await;
    assert_eq!(known, unknown);
}

#[tokio::test]
async fn a_success_resets_the_account_counter() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    for _ in 0..2 {
        assert_problem(&attempt(&app, "alice", "wrong", None).await, 400, 40000101);
    }
    assert_eq!(attempt(&app, "alice", PW, None).await.status, 200);
    for _ in 0..2 {
        assert_problem(&attempt(&app, "alice", "wrong", None).await, 400, 40000101);
    }
    // Only 2 failures since the success: no CAPTCHA yet.
    assert_eq!(attempt(&app, "alice", PW, None).await.status, 200);
}

#[tokio::test]
async fn captcha_always_with_proof_of_work() {
    let app = app_with(TenantPolicy {
        captcha: CaptchaPolicy {
            mode: CaptchaMode::Always,
            pow_difficulty: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let r = attempt(&app, "alice", PW, None).await;
    let b = assert_problem(&r, 400, 40000301);
    assert!(b["type"].as_str().unwrap().contains("captcha"));
    assert!(b["i18n_key"].as_str().unwrap().contains("captcha"));
    let good = solved_captcha(&app).await;
    assert!(good["captcha_token"].as_str().unwrap().starts_with("pow_"));
    // A wrong solution burns the challenge.
    let mut wrong = good.clone();
    wrong["captcha_token"] = json!("pow_zzzzzz");
    assert_problem(
        &attempt(&app, "alice", PW, Some(wrong)).await,
        400,
        40000302,
    );
    assert_problem(&attempt(&app, "alice", PW, Some(good)).await, 400, 40000302);
    let good = solved_captcha(&app).await;
    assert_eq!(
        attempt(&app, "alice", PW, Some(good.clone())).await.status,
        200
    );
    // Single use.
    assert_problem(&attempt(&app, "alice", PW, Some(good)).await, 400, 40000302);
    // The server's floor wins over a client asking for an easy puzzle; harder is allowed.
    let c = app
        .get(
            "/api/v1/auth/captcha/challenge?provider=pow&difficulty=1",
            None,
        )
        .await;
    assert_eq!(c.body["data"]["data"]["difficulty"], 3);
    let c = app
        .get(
            "/api/v1/auth/captcha/challenge?provider=pow&difficulty=4",
            None,
        )
        .await;
    assert_eq!(c.body["data"]["data"]["difficulty"], 4);
    assert_problem(
        &app.get("/api/v1/auth/captcha/challenge?provider=recaptcha", None)
            .await,
        400,
        40000001,
    );
    // An expired challenge is refused.
    let good = solved_captcha(&app).await;
    app.clock.advance(301);
    assert_problem(&attempt(&app, "alice", PW, Some(good)).await, 400, 40000302);
}

#[tokio::test]
async fn turnstile_is_verified_against_the_configured_url() {
    // A local stand-in for the provider's verify endpoint: success for the token "good".
    async fn verify(
        axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
    ) -> axum::Json<Value> {
        let ok = form.get("secret").map(String::as_str) == Some("s3cret")
            && form.get("response").map(String::as_str) == Some("good");
        axum::Json(json!({"success": ok}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/siteverify", axum::routing::post(verify)),
        )
        .await
        .unwrap();
    });
    let app = app_with(TenantPolicy {
        captcha: CaptchaPolicy {
            mode: CaptchaMode::Always,
            provider: CaptchaProvider::Turnstile,
            turnstile_secret: Some("s3cret".into()),
            turnstile_verify_url: format!("http://{addr}/siteverify"),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let ts = |t: &str| Some(json!({"captcha_provider": "turnstile", "captcha_token": t}));
    assert_problem(&attempt(&app, "alice", PW, ts("bad")).await, 400, 40000302);
    assert_eq!(attempt(&app, "alice", PW, ts("good")).await.status, 200);
    let cfg = app
        .get("/api/v1/public/auth-config/default", None)
        .await
        .body;
    assert_eq!(cfg["data"]["captcha_provider"], "turnstile");
    assert_eq!(cfg["data"]["silent_challenge_enabled"], false);
}

#[tokio::test]
async fn turnstile_unreachable_fails_closed() {
    let port = keygate_tests::free_port();
    let app = app_with(TenantPolicy {
        captcha: CaptchaPolicy {
            mode: CaptchaMode::Always,
            provider: CaptchaProvider::Turnstile,
            turnstile_secret: Some("s".into()),
            turnstile_verify_url: format!("http://127.0.0.1:{port}/siteverify"),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let r = attempt(
        &app,
        "alice",
        PW,
        Some(json!({"captcha_provider": "turnstile", "captcha_token": "x"})),
    )
    .await;
    assert_problem(&r, 503, 50300001);
}

#[tokio::test]
async fn captcha_never_and_a_custom_lockout() {
    let app = app_with(no_captcha(LockoutPolicy {
        delay_after: 2,
        lock_after: 4,
        lock_seconds: 60,
        ..Default::default()
    }))
    .await;
    app.add_user("alice", PW, &[]).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = attempt(&app, "alice", "wrong", None).await;
        codes.push(r.body["code"].as_u64().unwrap());
        if r.status == 429 && r.body["code"] == 42900002 {
            app.clock.advance(r.body["retry_after"].as_i64().unwrap());
        }
    }
    assert_eq!(
        codes,
        [40000101, 40000101, 42900002, 40000101, 42900002, 40000101],
        "{codes:?}"
    );
    assert_problem(&attempt(&app, "alice", PW, None).await, 429, 42900003);
    app.clock.advance(61);
    assert_eq!(attempt(&app, "alice", PW, None).await.status, 200);
}

#[tokio::test]
async fn identity_rate_limit_answers_429_with_retry_after() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        rate_limits: keygate_config::RateLimits {
            rules: vec![keygate_config::RateLimitRule {
                name: "per-identity".into(),
                endpoints: vec!["login".into()],
                key: keygate_config::RateKey::Identity,
                limit: 3,
                window_seconds: 60,
            }],
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    for _ in 0..3 {
        assert_eq!(attempt(&app, "alice", PW, None).await.status, 200);
    }
    // The same identity in another spelling is the same key.
    let r = attempt(&app, "ALICE", PW, None).await;
    let b = assert_problem(&r, 429, 42900001);
    assert_eq!(b["retry_after"], 20);
    assert_eq!(r.headers.get("retry-after").unwrap(), "20");
    assert_eq!(attempt(&app, "bob", PW, None).await.status.as_u16(), 400);
    app.clock.advance(20);
    assert_eq!(attempt(&app, "alice", PW, None).await.status, 200);
}

#[tokio::test]
async fn a_turnstile_tenant_accepts_no_proof_of_work() {
    let mut config = RuntimeConfig {
        password_hashing: small_hashing(),
        ..Default::default()
    };
    config.tenants.insert(
        "acme".into(),
        TenantPolicy {
            captcha: CaptchaPolicy {
                mode: CaptchaMode::Always,
                provider: CaptchaProvider::Turnstile,
                turnstile_secret: Some("s3cret".into()),
                // Nothing listens here: a Turnstile token could not be verified either.
                turnstile_verify_url: format!("http://127.0.0.1:{}/", keygate_tests::free_port()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let app = TestApp::with_config(config).await;
    app.auth.create_tenant("acme", "Acme").await.unwrap();
    app.auth
        .create_user(
            "acme",
            auth_server::auth::users::UserInput {
                username: "alice".into(),
                password: Some(PW.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A proof of work solved for the default tenant, offered to acme's login: refused, with
    // or without naming the provider.
    for provider in [Some("pow"), None] {
        let mut body = json!({"identity": "alice", "password": PW, "tenant_id": "acme"});
        let mut solved = solved_captcha(&app).await;
        match provider {
            Some(p) => solved["captcha_provider"] = json!(p),
            None => {
                solved.as_object_mut().unwrap().remove("captcha_provider");
            }
        }
        body.as_object_mut()
            .unwrap()
            .extend(solved.as_object().unwrap().clone());
        let r = app.post("/api/v1/auth/login", body, None).await;
        match provider {
            // Naming another provider than the tenant's is refused outright.
            Some(_) => {
                assert_problem(&r, 400, 40000302);
            }
            // Unnamed, the token goes to Turnstile (unreachable here: fail closed), never
            // to the proof-of-work check.
            None => {
                assert_problem(&r, 503, 50300001);
            }
        }
    }
    // And acme issues no proof-of-work challenges.
    let r = app
        .get(
            "/api/v1/auth/captcha/challenge?provider=pow&tenant_id=acme",
            None,
        )
        .await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "provider");
    // Sign-in codes of acme are checked against Turnstile as well.
    let mut body = json!({"email": "alice@example.com", "tenant_id": "acme"});
    body.as_object_mut()
        .unwrap()
        .extend(solved_captcha(&app).await.as_object().unwrap().clone());
    let r = app.post("/api/v1/auth/send-login-code", body, None).await;
    assert_problem(&r, 400, 40000302);
}

#[tokio::test]
async fn identifiers_of_one_account_are_counted_apart_like_unknown_ones() {
    let app = TestApp::new().await;
    app.auth
        .create_user(
            "default",
            auth_server::auth::users::UserInput {
                username: "alice".into(),
                email: Some("alice@example.com".into()),
                password: Some(PW.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..3 {
        assert_problem(&attempt(&app, "alice", "wrong", None).await, 400, 40000101);
    }
    assert_problem(&attempt(&app, "alice", "wrong", None).await, 400, 40000301);
    // Her email address has a counter of its own, exactly as an address with no account:
    // the gate does not tell which identifiers belong together.
    let email = attempt(&app, "alice@example.com", "wrong", None).await;
    let stranger = attempt(&app, "nobody@example.com", "wrong", None).await;
    assert_problem(&email, 400, 40000101);
    assert_problem(&stranger, 400, 40000101);
    // An administrator's unlock clears every identifier of the account.
    let root = {
        app.add_user("root", PW, &["admin"]).await;
        app.token("root", PW).await
    };
    let alice = app
        .auth
        .store
        .user_by_identity(
            "default",
            auth_server::store::IdentityKind::Username,
            "alice",
        )
        .await
        .unwrap()
        .unwrap();
    let r = app
        .post(
            &format!("/api/v1/admin/users/{}/unlock", alice.id),
            json!({}),
            Some(&root),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_problem(&attempt(&app, "alice", "wrong", None).await, 400, 40000101);
}

#[tokio::test]
async fn wrong_current_passwords_are_gated_like_sign_ins() {
    let app = app_with(no_captcha(LockoutPolicy {
        delay_after: 2,
        lock_after: 4,
        ..Default::default()
    }))
    .await;
    app.add_user("alice", PW, &[]).await;
    let token = app.token("alice", PW).await;
    let change = |old: &str| json!({"old_password": old, "new_password": "a brand new password"});
    let mut seen = Vec::new();
    for _ in 0..12 {
        let r = app
            .send_put("/api/v1/auth/me/password", change("guess"), &token)
            .await;
        let code = r.body["code"].as_u64().unwrap();
        seen.push(code);
        if code == 42900003 {
            break;
        }
        if r.status == 429 {
            app.clock.advance(r.body["retry_after"].as_i64().unwrap());
        }
    }
    let evaluated = seen.iter().filter(|c| **c == 40000001).count();
    assert_eq!(evaluated, 4, "{seen:?}");
    assert!(seen.contains(&42900002), "{seen:?}");
    assert_eq!(seen.last(), Some(&42900003), "{seen:?}");
    // The lock holds at sign-in too: it is the account's counter.
    assert_problem(&attempt(&app, "alice", PW, None).await, 429, 42900003);
}

#[tokio::test]
async fn password_changes_have_a_rate_rule_per_account() {
    let mut config = RuntimeConfig {
        password_hashing: small_hashing(),
        ..Default::default()
    };
    config.policy.lockout.delay_after = 50;
    config.policy.lockout.lock_after = 60;
    config.policy.captcha.mode = CaptchaMode::Never;
    for r in &mut config.rate_limits.rules {
        if r.name == "password-change-per-identity" {
            r.limit = 2;
        }
    }
    let app = TestApp::with_config(config).await;
    app.add_user("alice", PW, &[]).await;
    let token = app.token("alice", PW).await;
    let body = json!({"old_password": "guess", "new_password": "a brand new password"});
    let codes: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = app
                .send_put("/api/v1/auth/me/password", body.clone(), &token)
                .await;
            v.push(r.body["code"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(codes, [40000001, 40000001, 42900001]);
}
