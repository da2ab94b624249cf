//! Adaptive MFA through the HTTP API: TOTP enrolment, the challenge flow (wrong code 400,
//! limited attempts, expiry and reuse 403), codes that work once, backup codes, and `amr`.

use crate::common::{Reply, Store, TestApp, assert_problem};
use auth_server::auth::clock::Clock;
use auth_server::auth::mfa::{PERIOD, totp_at};
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

fn secret_bytes(b32: &str) -> Vec<u8> {
    // RFC 4648 base32 decode (test side).
    let mut bits = 0u32;
    let mut value = 0u32;
    let mut out = Vec::new();
    for c in b32.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32"),
        };
        value = (value << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((value >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

/// A configuration whose account gate delays after `delay_after` failures and locks at
/// `lock_after`, with or without a CAPTCHA after failures.
fn gate_config(captcha: bool, delay_after: u32, lock_after: u32) -> keygate_config::RuntimeConfig {
    let mut config = keygate_config::RuntimeConfig {
        password_hashing: crate::common::small_hashing(),
        ..Default::default()
    };
    if !captcha {
        config.policy.captcha.mode = keygate_config::CaptchaMode::Never;
    }
    config.policy.lockout.delay_after = delay_after;
    config.policy.lockout.lock_after = lock_after;
    config
}

/// An application whose account gate neither delays, locks nor asks for a CAPTCHA within a
/// test's few answers.
async fn loose_gate_app() -> TestApp {
    TestApp::with_config(gate_config(false, 50, 60)).await
}

pub(crate) async fn enrol(app: &TestApp, token: &str) -> (Vec<u8>, Vec<String>) {
    let setup = app
        .post("/api/v1/auth/mfa/totp/setup", json!({}), Some(token))
        .await;
    assert_eq!(setup.status, 200, "{}", setup.body);
    let d = &setup.body["data"];
    assert!(
        d["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let secret = secret_bytes(d["secret"].as_str().unwrap());
    let now = app.clock.now().unix_timestamp();
    let wrong = app
        .post(
            "/api/v1/auth/mfa/totp/verify",
            json!({"code": "000000"}),
            Some(token),
        )
        .await;
    if wrong.status != 200 {
        assert_problem(&wrong, 400, 61000402);
    }
    let code = totp_at(&secret, now / PERIOD);
    let r = app
        .post(
            "/api/v1/auth/mfa/totp/verify",
            json!({"code": code}),
            Some(token),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let codes: Vec<String> = r.body["data"]["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// Answers an MFA challenge with `code` (and `mfa_method`, when given).
pub(crate) async fn answer(
    app: &TestApp,
    challenge_token: &Value,
    code: &str,
    method: Option<&str>,
) -> Reply {
    let mut body = json!({"challenge_token": challenge_token, "code": code});
    if let Some(m) = method {
        body["mfa_method"] = json!(m);
    }
    app.post("/api/v1/auth/mfa/verify-challenge", body, None)
        .await
}

async fn challenge(app: &TestApp) -> Value {
    let r = app.login("alice", PW).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["requires_mfa"], true, "{}", r.body);
    assert_eq!(r.body["access_token"], Value::Null);
    assert_eq!(r.body["refresh_token"], Value::Null);
    assert_eq!(r.body["required_mfa_methods"], json!(["totp", "backup"]));
    assert_eq!(r.body["mfa_check_reason"], "mfa_enrolled");
    assert!(
        r.body["challenge_token"]
            .as_str()
            .unwrap()
            .starts_with("chg_")
    );
    r.body
}

#[tokio::test]
async fn totp_enrolment_and_the_challenge_flow() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let token = app.token("alice", PW).await;
    let (secret, backup) = enrol(&app, &token).await;
    // A second setup while active is refused.
    assert_problem(
        &app.post("/api/v1/auth/mfa/totp/setup", json!({}), Some(&token))
            .await,
        409,
        40900001,
    );

    // Sign-in now stops at the challenge.
    app.clock.advance(PERIOD);
    let c = challenge(&app).await;
    assert_problem(
        &answer(&app, &c["challenge_token"], "123456", Some("totp")).await,
        400,
        61000402,
    );
    let now = app.clock.now().unix_timestamp();
    let code = totp_at(&secret, now / PERIOD);
    let r = answer(&app, &c["challenge_token"], &code, Some("totp")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["requires_mfa"], false);
    let claims = app
        .auth
        .authenticate(r.body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims.amr, ["pwd", "otp"]);
    // The challenge is spent; the code cannot be used twice.
    assert_problem(
        &answer(&app, &c["challenge_token"], &code, Some("totp")).await,
        403,
        61000403,
    );
    let c2 = challenge(&app).await;
    let r = answer(&app, &c2["challenge_token"], &code, None).await;
    assert_problem(&r, 400, 61000402);

    // Backup codes work once each, normalised.
    let r = answer(
        &app,
        &c2["challenge_token"],
        &backup[0].to_uppercase(),
        Some("backup"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app.auth
            .authenticate(r.body["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .amr,
        ["pwd", "backup"]
    );
    let c3 = challenge(&app).await;
    let r = answer(&app, &c3["challenge_token"], &backup[0], Some("backup")).await;
    assert_problem(&r, 400, 61000402);
    let r = answer(&app, &c3["challenge_token"], "x", Some("sms")).await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "mfa_method"
    );
}

#[tokio::test]
async fn challenges_have_limited_attempts_and_expire() {
    // The account's own gate is loosened here, to see the challenge's limit alone.
    let app = loose_gate_app().await;
    app.add_user("alice", PW, &[]).await;
    let token = app.token("alice", PW).await;
    let (secret, _) = enrol(&app, &token).await;
    app.clock.advance(PERIOD);
    let c = challenge(&app).await;
    for _ in 0..5 {
        let r = answer(&app, &c["challenge_token"], "000001", None).await;
        assert_problem(&r, 400, 61000402);
    }
    // Used up: even the right code is refused.
    let code = totp_at(&secret, app.clock.now().unix_timestamp() / PERIOD);
    let r = answer(&app, &c["challenge_token"], &code, None).await;
    assert_problem(&r, 403, 61000403);
    // Expiry.
    let c = challenge(&app).await;
    app.clock.advance(301);
    let code = totp_at(&secret, app.clock.now().unix_timestamp() / PERIOD);
    let r = answer(&app, &c["challenge_token"], &code, None).await;
    assert_problem(&r, 403, 61000403);
    assert_problem(
        &answer(&app, &json!("chg_nope"), "1", None).await,
        403,
        61000403,
    );
}

#[tokio::test]
async fn concurrent_right_answers_open_one_session() {
    concurrent_right_answers(Store::Memory).await;
}

#[tokio::test]
async fn concurrent_right_answers_on_redis_open_one_session() {
    concurrent_right_answers(Store::Redis).await;
}

async fn concurrent_right_answers(store: Store) {
    let app = TestApp::new_on(store).await;
    app.add_user("alice", PW, &[]).await;
    let token = app.token("alice", PW).await;
    let (_, backup) = enrol(&app, &token).await;
    let c = challenge(&app).await;
    let bodies = backup
        .iter()
        .take(6)
        .map(|code| json!({"challenge_token": c["challenge_token"], "code": code, "mfa_method": "backup"}))
        .collect();
    let statuses = app
        .post_in_parallel("/api/v1/auth/mfa/verify-challenge", bodies)
        .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1, "exactly one right answer may open a session");
}

#[tokio::test]
async fn risk_decides_when_mfa_is_asked_for() {
    use keygate_config::{MfaMode, MfaPolicy, RuntimeConfig, TenantPolicy};
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: crate::common::small_hashing(),
        policy: TenantPolicy {
            mfa: MfaPolicy {
                mode: MfaMode::Risk,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let login_from = |device: &'static str, password: &'static str| {
        let req = axum::http::Request::post("/api/v1/auth/login")
            .header("content-type", "application/json")
            .header("x-device-id", device)
            .body(axum::body::Body::from(
                json!({"identity": "alice", "password": password}).to_string(),
            ))
            .unwrap();
        app.send(req)
    };
    let first = login_from("laptop", PW).await;
    assert_eq!(first.body["risk_level"], "low");
    assert_eq!(first.body["risk_assessment"]["score"], 0);
    let token = first.body["access_token"].as_str().unwrap().to_owned();
    enrol(&app, &token).await;
    // The usual device at the usual hour: low risk, no challenge.
    for _ in 0..3 {
        let r = login_from("laptop", PW).await;
        assert_eq!(r.body["requires_mfa"], false, "{}", r.body);
    }
    // A new device right after a failure: medium risk, challenged, and told why.
    assert_problem(&login_from("laptop", "wrong").await, 400, 40000101);
    let r = login_from("phone", PW).await;
    assert_eq!(r.body["requires_mfa"], true, "{}", r.body);
    assert_eq!(r.body["mfa_check_reason"], "new_device");
    assert_eq!(r.body["risk_level"], "medium");
    assert_eq!(r.body["risk_assessment"]["score"], 40);
    assert_eq!(r.body["risk_assessment"]["require_mfa"], true);
    assert_eq!(
        r.body["risk_assessment"]["recommended_mfa_methods"],
        json!(["totp", "backup"])
    );
    // The failure counts until a sign-in completes (a right password alone, waiting for its
    // second factor, does not forget it): a known device signs in without MFA and resets it.
    let r = login_from("laptop", PW).await;
    assert_eq!(r.body["requires_mfa"], false, "{}", r.body);
    assert_eq!(r.body["risk_assessment"]["score"], 15);
    // A new device alone stays below the threshold (25 < 30).
    let r = login_from("tablet", PW).await;
    assert_eq!(r.body["requires_mfa"], false, "{}", r.body);
    assert_eq!(r.body["risk_assessment"]["score"], 25);
}

/// A signed-in user `alice` with TOTP (and an email and phone) in `app`; returns her secret.
async fn alice_with_totp(app: &TestApp) -> Vec<u8> {
    app.auth
        .create_user(
            "default",
            auth_server::auth::users::UserInput {
                username: "alice".into(),
                email: Some("alice.smith@example.com".into()),
                phone: Some("+14155550177".into()),
                password: Some(PW.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = app.token("alice", PW).await;
    let (secret, _) = enrol(app, &token).await;
    app.clock.advance(PERIOD);
    secret
}

#[tokio::test]
async fn second_factor_guesses_count_across_challenges_and_lock_the_account() {
    // Delays after 3 failures, the lock at 6; no CAPTCHA, to follow the counter alone.
    let app = TestApp::with_config(gate_config(false, 3, 6)).await;
    let secret = alice_with_totp(&app).await;
    // Someone who knows the password opens a fresh challenge for every guess, by username
    // and by email in turn: the answers count on the account, whatever the identifier.
    let mut guesses = 0;
    let mut refused = Vec::new();
    for n in 0..30 {
        let identity = if n % 2 == 0 {
            "alice"
        } else {
            "alice.smith@example.com"
        };
        let r = app.login(identity, PW).await;
        assert_eq!(r.body["requires_mfa"], true, "{}", r.body);
        let a = answer(&app, &r.body["challenge_token"], "000001", None).await;
        if a.status == 429 {
            let code = a.body["code"].as_u64().unwrap();
            refused.push(code);
            if code == 42900003 {
                break;
            }
            app.clock.advance(a.body["retry_after"].as_i64().unwrap());
            continue;
        }
        assert_problem(&a, 400, 61000402);
        guesses += 1;
    }
    assert_eq!(guesses, 6, "the sixth wrong code locks: {refused:?}");
    assert!(
        refused.contains(&42900002),
        "delays came first: {refused:?}"
    );
    assert_eq!(refused.last(), Some(&42900003), "{refused:?}");
    // Locked: even the right code is refused until the lock is served or lifted.
    let c = app.login("alice", PW).await;
    let code = totp_at(&secret, app.clock.now().unix_timestamp() / PERIOD);
    assert_problem(
        &answer(&app, &c.body["challenge_token"], &code, None).await,
        429,
        42900003,
    );
    let events = app
        .auth
        .store
        .audit_events(&auth_server::store::AuditQuery {
            tenant_id: "default".into(),
            event_type: Some("lockout".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the lockout is audited once");
    // After the lock is served, a whole sign-in (both factors) resets the count.
    app.clock.advance(901);
    let c = app.login("alice", PW).await;
    let code = totp_at(&secret, app.clock.now().unix_timestamp() / PERIOD);
    let r = answer(&app, &c.body["challenge_token"], &code, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..3 {
        let c = app.login("alice", PW).await;
        assert_eq!(
            c.status, 200,
            "no delay after a completed sign-in: {}",
            c.body
        );
        assert_problem(
            &answer(&app, &c.body["challenge_token"], "000001", None).await,
            400,
            61000402,
        );
    }
}

#[tokio::test]
async fn wrong_second_factors_past_the_threshold_need_a_captcha() {
    let mut config = gate_config(true, 50, 60);
    config.policy.captcha.after_failures = 2;
    config.policy.captcha.pow_difficulty = 2;
    let app = TestApp::with_config(config).await;
    let secret = alice_with_totp(&app).await;
    let c = app.login("alice", PW).await;
    let token = &c.body["challenge_token"];
    for _ in 0..2 {
        assert_problem(&answer(&app, token, "000001", None).await, 400, 61000402);
    }
    // Two wrong answers: the third needs a CAPTCHA, the tenant's (a Turnstile token is not it).
    assert_problem(&answer(&app, token, "000001", None).await, 400, 40000301);
    let code = totp_at(&secret, app.clock.now().unix_timestamp() / PERIOD);
    let mut body = json!({"challenge_token": token, "code": code,
        "captcha_provider": "turnstile", "captcha_token": "x"});
    let r = app
        .post("/api/v1/auth/mfa/verify-challenge", body.clone(), None)
        .await;
    assert_problem(&r, 400, 40000302);
    let p = app
        .get("/api/v1/auth/captcha/challenge?provider=pow", None)
        .await;
    let d = &p.body["data"];
    body["captcha_provider"] = json!("pow");
    body["captcha_challenge_id"] = d["id"].clone();
    body["captcha_token"] = json!(auth_server::auth::captcha::solve_pow(
        d["data"]["challenge"].as_str().unwrap(),
        d["data"]["difficulty"].as_u64().unwrap() as u32,
    ));
    let r = app
        .post("/api/v1/auth/mfa/verify-challenge", body, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn the_mfa_response_shows_only_masked_contact_details() {
    let app = loose_gate_app().await;
    alice_with_totp(&app).await;
    let r = app.login("alice.smith@example.com", PW).await;
    assert_eq!(r.body["requires_mfa"], true, "{}", r.body);
    let user = &r.body["user"];
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(user["email"], "a***h@example.com");
    assert_eq!(user["phone"], "+14*******77");
    assert_eq!(user["username"], "a***e");
    let text = r.body.to_string();
    for secret in ["alice.smith", "4155550177", "\"alice\""] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn mfa_answers_are_rate_limited_per_account() {
    let mut config = gate_config(false, 50, 60);
    config.rate_limits.rules.retain(|r| r.name != "mfa-per-ip");
    for r in &mut config.rate_limits.rules {
        if r.name == "mfa-per-identity" {
            r.limit = 4;
        }
    }
    let app = TestApp::with_config(config).await;
    alice_with_totp(&app).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let c = app.login("alice", PW).await;
        let a = answer(&app, &c.body["challenge_token"], "000001", None).await;
        codes.push(a.body["code"].as_u64().unwrap());
    }
    assert_eq!(
        codes,
        [61000402, 61000402, 61000402, 61000402, 42900001, 42900001]
    );
}
