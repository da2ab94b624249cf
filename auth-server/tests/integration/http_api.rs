//! The HTTP API through the router: sign-in, refresh rotation and reuse detection, logout,
//! the account and admin routes, discovery and keys, and every class of bad input.

use crate::common::{ISSUER, TestApp, assert_problem, small_hashing};
use axum::body::Body;
use axum::http::Request;
use keygate_config::{RuntimeConfig, TokenPolicy};
use serde_json::{Value, json};
use std::time::Instant;

const PW: &str = "correct horse battery";

fn without_volatile(mut v: Value) -> Value {
    for k in ["timestamp", "request_id"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[tokio::test]
async fn login_returns_every_field_of_the_login_response() {
    let app = TestApp::new().await;
    let id = app.add_user("alice", PW, &[]).await;
    let r = app.login("Alice", PW).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = &r.body;
    for field in [
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "user",
        "user_id",
        "requires_mfa",
        "challenge_token",
        "required_mfa_methods",
        "mfa_check_reason",
        "risk_level",
        "risk_assessment",
        "must_change_password",
        "password_expires_in",
        "password_warning",
    ] {
        assert!(b.get(field).is_some(), "LoginResponse lacks {field}: {b}");
    }
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 1800);
    assert_eq!(b["user_id"], id.as_str());
    assert_eq!(b["user"]["id"], id.as_str());
    assert_eq!(b["user"]["username"], "alice");
    assert_eq!(b["user"]["email"], "alice@example.com");
    assert_eq!(b["user"]["status"], "active");
    assert!(b["user"]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["requires_mfa"], false);
    assert_eq!(b["risk_level"], b["risk_assessment"]["level"]);
    assert!(b["refresh_token"].as_str().unwrap().len() >= 43);
    // Email and username both identify the account.
    assert_eq!(app.login("alice@EXAMPLE.com", PW).await.status, 200);
}

#[tokio::test]
async fn access_tokens_carry_the_contract_claims() {
    let app = TestApp::new().await;
    let id = app.add_user("alice", PW, &[]).await;
    let r = app.login("alice", PW).await;
    let token = r.body["access_token"].as_str().unwrap();
    let claims = app.auth.authenticate(token).await.unwrap();
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.sub, id);
    assert_eq!(claims.aud, "keygate");
    assert_eq!(claims.tid, "default");
    assert_eq!(claims.amr, ["pwd"]);
    assert_eq!(claims.exp - claims.iat, 1800);
    assert_eq!(claims.nbf, claims.iat);
    assert!(claims.sid.starts_with("ses_"));
    assert!(!claims.jti.is_empty());
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwks = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.body["keys"][0]["kid"], header.kid.unwrap().as_str());
}

#[tokio::test]
async fn unknown_identity_answers_exactly_like_a_wrong_password() {
    // No CAPTCHA and no delays here, so that every attempt is evaluated.
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy: keygate_config::TenantPolicy {
            captcha: keygate_config::CaptchaPolicy {
                mode: keygate_config::CaptchaMode::Never,
                ..Default::default()
            },
            lockout: keygate_config::LockoutPolicy {
                delay_after: 100,
                lock_after: 200,
                ip_delay_after: 1000,
                ip_lock_after: 2000,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let wrong = app.login("alice", "not the password").await;
    let unknown = app.login("mallory", "not the password").await;
    assert_problem(&wrong, 400, 40000101);
    assert_eq!(without_volatile(wrong.body), without_volatile(unknown.body));
    // The unknown identity costs a dummy hash: its latency is of the same order.
    let mut t_wrong = Vec::new();
    let mut t_unknown = Vec::new();
    for _ in 0..7 {
        let s = Instant::now();
        app.login("alice", "not the password").await;
        t_wrong.push(s.elapsed());
        let s = Instant::now();
        app.login("nobody-here", "not the password").await;
        t_unknown.push(s.elapsed());
    }
    t_wrong.sort();
    t_unknown.sort();
    let (w, u) = (t_wrong[3].as_secs_f64(), t_unknown[3].as_secs_f64());
    assert!(
        u > w * 0.5 && u < w * 2.0,
        "median wrong {w:.4}s vs unknown {u:.4}s"
    );
}

#[tokio::test]
async fn bad_input_gets_field_level_problems() {
    let app = TestApp::new().await;
    let login = "/api/v1/auth/login";
    // Malformed JSON.
    let r = app
        .send(
            Request::post(login)
                .header("content-type", "application/json")
                .body(Body::from("{\"identity\":"))
                .unwrap(),
        )
        .await;
    assert_problem(&r, 400, 40000002);
    // Wrong type.
    let r = app
        .post(login, json!({"identity": 42, "password": "x"}), None)
        .await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "identity");
    assert_eq!(b["errors"][0]["code"], "format");
    // Missing field.
    let r = app.post(login, json!({"identity": "alice"}), None).await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "password");
    assert_eq!(b["errors"][0]["code"], "required");
    // Oversized identity and password.
    let r = app
        .post(
            login,
            json!({"identity": "a".repeat(321), "password": "p".repeat(1025)}),
            None,
        )
        .await;
    let b = assert_problem(&r, 400, 40000001);
    let fields: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["identity", "password"]);
    assert!(
        b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["code"] == "range")
    );
    // Unknown tenant, in the body and in the header.
    let r = app
        .post(
            login,
            json!({"identity": "a", "password": "b", "tenant_id": "nope"}),
            None,
        )
        .await;
    assert_problem(&r, 400, 40000102);
    let r = app
        .send(
            Request::post(login)
                .header("content-type", "application/json")
                .header("x-tenant-id", "nope")
                .body(Body::from(
                    json!({"identity": "a", "password": "b"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_problem(&r, 400, 40000102);
    // A malformed digest in hash mode; an unknown mode.
    let r = app
        .post(
            login,
            json!({"identity": "a", "password": "b", "password_transmission": "hash"}),
            None,
        )
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "password"
    );
    let r = app
        .post(
            login,
            json!({"identity": "a", "password": "b", "password_transmission": "rot13"}),
            None,
        )
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "password_transmission"
    );
    // Too large, not JSON.
    let big = json!({"identity": "a", "password": "b", "pad": "x".repeat(70 * 1024)});
    assert_problem(&app.post(login, big, None).await, 413, 41300001);
    let r = app
        .send(
            Request::post(login)
                .header("content-type", "text/plain")
                .body(Body::from("hi"))
                .unwrap(),
        )
        .await;
    assert_problem(&r, 415, 41500001);
    // Unknown route and wrong method are problems too.
    assert_problem(&app.get("/api/v1/nope", None).await, 404, 40400001);
    assert_problem(&app.get(login, None).await, 405, 40500001);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let first = app.login("alice", PW).await.body;
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let r = app
        .post("/api/v1/auth/refresh", json!({"refresh_token": rt1}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rt2 = r.body["refresh_token"].as_str().unwrap().to_owned();
    let at2 = r.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(r.body["user"]["username"], "alice");
    // A second tab replays rt1 inside the grace window: it gets its own token, no revocation.
    app.clock.advance(5);
    let r = app
        .post("/api/v1/auth/refresh", json!({"refresh_token": rt1}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Outside the window the replay is theft: the whole family dies.
    app.clock.advance(6);
    let r = app
        .post("/api/v1/auth/refresh", json!({"refresh_token": rt1}), None)
        .await;
    assert_problem(&r, 400, 40000201);
    let r = app
        .post("/api/v1/auth/refresh", json!({"refresh_token": rt2}), None)
        .await;
    assert_problem(&r, 400, 40000202);
    assert_problem(&app.get("/api/v1/auth/me", Some(&at2)).await, 401, 40100002);
    // Garbage and missing tokens.
    assert_problem(
        &app.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": "nope"}),
            None,
        )
        .await,
        400,
        40000202,
    );
    assert_problem(
        &app.post("/api/v1/auth/refresh", json!({}), None).await,
        400,
        40000001,
    );
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        tokens: TokenPolicy {
            refresh_token_ttl_seconds: 3600,
            session_max_lifetime_seconds: 7200,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let rt = app.login("alice", PW).await.body["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.clock.advance(3601);
    assert_problem(
        &app.post("/api/v1/auth/refresh", json!({"refresh_token": rt}), None)
            .await,
        400,
        40000202,
    );
}

#[tokio::test]
async fn logout_revokes_the_session_and_the_access_token() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let a = app.login("alice", PW).await.body;
    let b = app.login("alice", PW).await.body;
    let at = a["access_token"].as_str().unwrap();
    let me = app.get("/api/v1/auth/me", Some(at)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["code"], 0);
    assert_eq!(me.body["message"], "success");
    assert_eq!(me.body["data"]["username"], "alice");
    // Log out session a, and session b through its refresh token.
    let r = app
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": b["refresh_token"]}),
            Some(at),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["code"], 0);
    assert_problem(&app.get("/api/v1/auth/me", Some(at)).await, 401, 40100002);
    assert_problem(
        &app.get("/api/v1/auth/me", Some(b["access_token"].as_str().unwrap()))
            .await,
        401,
        40100002,
    );
    for rt in [&a["refresh_token"], &b["refresh_token"]] {
        assert_problem(
            &app.post("/api/v1/auth/refresh", json!({"refresh_token": rt}), None)
                .await,
            400,
            40000202,
        );
    }
    // Logging out with an empty body works too.
    let c = app.login("alice", PW).await.body;
    let r = app
        .send(
            Request::post("/api/v1/auth/logout")
                .header(
                    "authorization",
                    format!("Bearer {}", c["access_token"].as_str().unwrap()),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And with `null`, which the document allows (schema fuzzing found it refused).
    let d = app.login("alice", PW).await.body;
    let r = app
        .post(
            "/api/v1/auth/logout",
            json!(null),
            d["access_token"].as_str(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn bearer_tokens_are_checked_strictly() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let at = app.token("alice", PW).await;
    let r = app.get("/api/v1/auth/me", None).await;
    assert_problem(&r, 401, 40100001);
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    assert_problem(
        &app.get("/api/v1/auth/me", Some("not.a.jwt")).await,
        401,
        40100001,
    );
    let mut tampered = at.clone();
    tampered.pop();
    tampered.push(if at.ends_with('A') { 'B' } else { 'A' });
    assert_problem(
        &app.get("/api/v1/auth/me", Some(&tampered)).await,
        401,
        40100001,
    );
    // Expired (past the leeway).
    app.clock.advance(1800 + 31);
    assert_problem(&app.get("/api/v1/auth/me", Some(&at)).await, 401, 40100001);
}

#[tokio::test]
async fn admins_create_users_and_others_may_not() {
    let app = TestApp::new().await;
    app.add_user("root", PW, &["admin"]).await;
    app.add_user("bob", PW, &[]).await;
    let admin = app.token("root", PW).await;
    let bob = app.token("bob", PW).await;
    let new_user = json!({"username": "carol", "email": "carol@example.com", "phone": "+14155550123", "password": PW});
    assert_problem(
        &app.post("/api/v1/admin/users", new_user.clone(), None)
            .await,
        401,
        40100001,
    );
    assert_problem(
        &app.post("/api/v1/admin/users", new_user.clone(), Some(&bob))
            .await,
        403,
        40300001,
    );
    let r = app
        .post("/api/v1/admin/users", new_user.clone(), Some(&admin))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["data"]["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(r.body["data"]["phone"], "+14155550123");
    let r = app
        .post("/api/v1/admin/users", new_user, Some(&admin))
        .await;
    let b = assert_problem(&r, 409, 40900001);
    assert_eq!(b["errors"][0]["code"], "conflict");
    assert_eq!(b["errors"][0]["field"], "username");
    let r = app
        .post(
            "/api/v1/admin/users",
            json!({"username": "dave", "email": "CAROL@example.com"}),
            Some(&admin),
        )
        .await;
    assert_eq!(
        assert_problem(&r, 409, 40900001)["errors"][0]["field"],
        "email"
    );
    let r = app
        .post(
            "/api/v1/admin/users",
            json!({"username": "bad name", "phone": "12"}),
            Some(&admin),
        )
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The new user can sign in by phone.
    assert_eq!(app.login("+14155550123", PW).await.status, 200);
}

#[tokio::test]
async fn discovery_health_metrics_and_openapi() {
    let app = TestApp::new().await;
    let d = app.get("/.well-known/openid-configuration", None).await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["issuer"], ISSUER);
    assert_eq!(
        d.body["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json")
    );
    assert_eq!(
        d.body["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["checks"]["database"], "ok");
    app.login("nobody", "x").await;
    let m = app.get("/metrics", None).await;
    assert_eq!(m.status, 200);
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains(r#"route="/api/v1/auth/login",status="400",outcome="client_error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"keygate_logins_total{method="password",outcome="invalid_credentials"} 1"#),
        "{text}"
    );
    assert!(text.contains("keygate_http_request_duration_seconds_bucket"));
    // Every documented operation is routed (no fallback 404, no 405).
    let doc = app.get("/openapi.json", None).await.body;
    assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/api/v1/admin/users",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/api/v1/public/key-exchange",
        "/api/v1/public/auth-config/{tenant_id}",
    ] {
        assert!(paths.contains_key(expected), "OpenAPI lacks {expected}");
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            // Path parameters get the default tenant's id.
            let concrete = path.replace("{tenant_id}", "default");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(concrete.as_str())
                .body(Body::empty())
                .unwrap();
            let r = app.send(req).await;
            assert!(
                r.status != 404 && r.status != 405,
                "{method} {path} is documented but not routed"
            );
        }
    }
    for schema in [
        "LoginResponse",
        "UserInfo",
        "RiskAssessmentInfo",
        "Problem",
        "LoginRequest",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "OpenAPI lacks schema {schema}"
        );
    }
}

#[tokio::test]
async fn a_custom_base_path_serves_the_same_api() {
    let app = TestApp::new().await;
    let router = auth_server::http::router(auth_server::http::AppState::new(
        app.auth.clone(),
        "/identity/api/v1/",
    ));
    app.add_user("alice", PW, &[]).await;
    let res = tower::ServiceExt::oneshot(
        router,
        Request::post("/identity/api/v1/auth/login")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"identity": "alice", "password": PW}).to_string(),
            ))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn request_ids_are_echoed() {
    let app = TestApp::new().await;
    let r = app
        .send(
            Request::get("/api/v1/auth/me")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "abc-123");
    assert_eq!(r.body["request_id"], "abc-123");
    // Ill-formed ids are replaced.
    let r = app
        .send(
            Request::get("/api/v1/auth/me")
                .header("x-request-id", "a b<script>")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(r.body["request_id"].as_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn password_expiry_warns_then_demands_a_change_then_refuses() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy: keygate_config::TenantPolicy {
            password: keygate_config::PasswordPolicy {
                expiry_days: 90,
                warn_days: 14,
                grace_period_days: 7,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let day = 86_400;
    let r = app.login("alice", PW).await;
    assert_eq!(r.body["password_expires_in"], 90);
    assert_eq!(r.body["password_warning"], Value::Null);
    assert_eq!(r.body["must_change_password"], false);
    app.clock.advance(80 * day);
    let r = app.login("alice", PW).await;
    assert_eq!(r.body["password_warning"], "expiring");
    assert_eq!(r.body["password_expires_in"], 10);
    assert_eq!(r.body["user"]["password_warning"], "expiring");
    let me = app
        .get("/api/v1/auth/me", r.body["access_token"].as_str())
        .await;
    assert_eq!(me.body["data"]["password_expires_in"], 10);
    app.clock.advance(12 * day);
    let r = app.login("alice", PW).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["password_warning"], "expired_grace");
    assert_eq!(r.body["must_change_password"], true);
    app.clock.advance(6 * day);
    assert_problem(&app.login("alice", PW).await, 403, 40300003);
    // A wrong password still gets the ordinary answer: expiry is revealed only to the owner.
    assert_problem(&app.login("alice", "not the password").await, 400, 40000101);
}

#[tokio::test]
async fn tenants_have_their_own_users_and_policy() {
    use keygate_config::{PasswordPolicy, TenantPolicy, Transmission};
    let mut tenants = std::collections::BTreeMap::new();
    tenants.insert(
        "acme".to_owned(),
        TenantPolicy {
            password: PasswordPolicy {
                accepted_transmissions: vec![Transmission::Plain],
                preferred_transmission: Transmission::Plain,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        tenants,
        ..Default::default()
    })
    .await;
    app.auth.create_tenant("acme", "Acme Corp").await.unwrap();
    assert!(app.auth.create_tenant("acme", "Again").await.is_err());
    assert!(app.auth.create_tenant("Bad_Id", "x").await.is_err());
    let in_default = app.add_user("alice", PW, &["admin"]).await;
    let in_acme = app
        .auth
        .create_user(
            "acme",
            auth_server::auth::users::UserInput {
                username: "alice".into(),
                email: Some("alice@example.com".into()),
                password: Some("another password".into()),
                roles: vec!["admin".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    assert_ne!(in_default, in_acme);
    // Same identity, different tenants, different accounts.
    let r = app
        .post(
            "/api/v1/auth/login",
            json!({"identity": "alice", "password": "another password", "tenant_id": "acme"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], in_acme.as_str());
    let acme_token = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.auth.authenticate(&acme_token).await.unwrap().tid,
        "acme"
    );
    let r = app
        .send(
            Request::post("/api/v1/auth/login")
                .header("content-type", "application/json")
                .header("x-tenant-id", "acme")
                .body(Body::from(
                    json!({"identity": "alice", "password": PW}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_problem(&r, 400, 40000101);
    assert_eq!(
        app.login("alice", PW).await.body["user_id"],
        in_default.as_str()
    );
    // Each tenant's policy applies to its users only.
    let digest = |t: &str| hex::encode(sha2::Sha256::digest(format!("another password|{t}")));
    use sha2::Digest;
    let r = app
        .post("/api/v1/auth/login", json!({"identity": "alice", "password": digest("acme"), "password_transmission": "hash", "tenant_id": "acme"}), None)
        .await;
    assert_problem(&r, 400, 61000104);
    let cfg = app.get("/api/v1/public/auth-config/acme", None).await.body;
    assert_eq!(cfg["data"]["display_name"], "Acme Corp");
    assert_eq!(
        cfg["data"]["password_policy"]["accepted_transmissions"],
        json!(["plain"])
    );
    // An administrator acts in the token's tenant only, whatever the body says.
    let r = app
        .post(
            "/api/v1/admin/users",
            json!({"username": "bob", "password": PW, "tenant_id": "default"}),
            Some(&acme_token),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let bob = r.body["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.auth.store.user(&bob).await.unwrap().unwrap().tenant_id,
        "acme"
    );
    let r = app
        .post(
            &format!("/api/v1/admin/users/{in_default}/unlock"),
            json!({}),
            Some(&acme_token),
        )
        .await;
    assert_problem(&r, 404, 40400001);
}

#[tokio::test]
async fn revocations_outlive_a_shortened_lifetime_and_a_lost_deny_entry() {
    let long = RuntimeConfig {
        password_hashing: small_hashing(),
        tokens: keygate_config::TokenPolicy {
            access_token_ttl_seconds: 3600,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::with_config(long.clone()).await;
    app.add_user("alice", PW, &[]).await;
    let old = app.token("alice", PW).await;
    let current = app.token("alice", PW).await;
    // The lifetime is shortened; then the old session ends (a password change elsewhere).
    app.reload(RuntimeConfig {
        tokens: keygate_config::TokenPolicy {
            access_token_ttl_seconds: 60,
            ..long.tokens.clone()
        },
        ..long.clone()
    });
    let r = app
        .send_put(
            "/api/v1/auth/me/password",
            json!({"old_password": PW, "new_password": "a different long password"}),
            &current,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Long past the new lifetime, the old token (issued for an hour) is still refused.
    app.clock.advance(600);
    assert!(app.auth.authenticate(&old).await.is_err());
    let sid = app.auth.authenticate(&current).await.unwrap().sid;
    assert_eq!(app.get("/api/v1/auth/me", Some(&current)).await.status, 200);
    // Logged out, then the deny entries vanish (eviction, a restart of an in-process store):
    // the stored revocation still refuses the token.
    let r = app
        .post("/api/v1/auth/logout", json!({}), Some(&current))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let claims = {
        let header = current.split('.').nth(1).unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    for key in [
        auth_server::ephemeral::denied_sid_key(&sid),
        auth_server::ephemeral::denied_jti_key(claims["jti"].as_str().unwrap()),
    ] {
        assert!(app.auth.ephemeral.take(&key).await.unwrap().is_some());
    }
    assert_problem(
        &app.get("/api/v1/auth/me", Some(&current)).await,
        401,
        40100001,
    );
}
