//! One-time codes through the router: validation, delivery through a real SMTP server
//! (aiosmtpd) and a local webhook receiver, single use, attempts, expiry and throttling on the
//! injected clock, sign-up by code, failed delivery, and email/SMS as MFA methods.

use crate::common::{Reply, Store, TestApp, assert_problem, small_hashing};
use auth_server::auth::clock::Clock;
use auth_server::auth::users::UserInput;
use auth_server::delivery::{DeliveryConfig, verify_signature};
use keygate_config::RuntimeConfig;
use keygate_tests::delivery::{SmtpServer, SmtpTls, WebhookReceiver, first_digits};
use serde_json::{Value, json};

const SEND: &str = "/api/v1/auth/send-login-code";
const EMAIL_LOGIN: &str = "/api/v1/auth/login/email-code";
const PHONE_LOGIN: &str = "/api/v1/auth/login/phone-code";
const SECRET: &str = "webhook-s3cret";

/// The default policy without the resend interval, so that tests may ask for codes back to
/// back (`a_target_waits_the_resend_interval` tests the interval).
fn config() -> RuntimeConfig {
    let mut c = RuntimeConfig {
        password_hashing: small_hashing(),
        ..Default::default()
    };
    c.policy.login_codes.resend_interval_seconds = 0;
    c
}

fn delivery(smtp: Option<&SmtpServer>, hook: Option<&WebhookReceiver>) -> Option<DeliveryConfig> {
    Some(DeliveryConfig {
        smtp_url: smtp.map(SmtpServer::url),
        smtp_from: "Keygate <no-reply@keygate.test>".into(),
        smtp_ca_file: None,
        sms_webhook_url: hook.map(|h| h.url.clone()),
        sms_webhook_secret: Some(SECRET.into()),
        templates_dir: None,
    })
}

async fn add_contact(app: &TestApp, username: &str, email: &str, phone: &str) -> String {
    app.auth
        .create_user(
            "default",
            UserInput {
                username: username.into(),
                email: Some(email.into()),
                phone: Some(phone.into()),
                password: Some("correct horse battery".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
}

async fn amr(app: &TestApp, body: &Value) -> Vec<String> {
    app.auth
        .authenticate(body["access_token"].as_str().unwrap())
        .await
        .unwrap()
        .amr
}

/// Asks for a code for `phone` and returns the one the webhook received.
async fn sms_code(app: &TestApp, hook: &WebhookReceiver, phone: &str) -> String {
    app.post(SEND, json!({"phone": phone}), None).await;
    hook.last_code_for(phone).unwrap()
}

async fn phone_login(app: &TestApp, phone: &str, code: &str, register_if_new: bool) -> Reply {
    app.post(
        PHONE_LOGIN,
        json!({"phone": phone, "code": code, "register_if_new": register_if_new}),
        None,
    )
    .await
}

#[tokio::test]
async fn send_login_code_wants_exactly_one_well_formed_target() {
    let app = TestApp::new().await;
    let fields = |b: &Value| {
        b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["field"].as_str().unwrap(),
                    e["code"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    let cases = [
        (json!({}), vec!["email:required", "phone:required"]),
        (
            json!({"email": "a@example.com", "phone": "+14155550123"}),
            vec!["email:conflict", "phone:conflict"],
        ),
        (json!({"email": "not-an-address"}), vec!["email:format"]),
        (json!({"phone": "4155550123"}), vec!["phone:format"]),
        (json!({"phone": "+0155550123"}), vec!["phone:format"]),
        (json!({"email": 7}), vec!["email:format"]),
    ];
    for (body, want) in cases {
        let r = app.post(SEND, body.clone(), None).await;
        let b = assert_problem(&r, 400, 40000001);
        assert_eq!(fields(b), want, "{body}");
    }
    let r = app
        .post(EMAIL_LOGIN, json!({"email": "a@example.com"}), None)
        .await;
    assert_eq!(fields(assert_problem(&r, 400, 40000001)), ["code:required"]);
    let r = app
        .post(
            EMAIL_LOGIN,
            json!({"email": "a@example.com", "code": 5}),
            None,
        )
        .await;
    assert_eq!(fields(assert_problem(&r, 400, 40000001)), ["code:format"]);
    let r = app
        .post(PHONE_LOGIN, json!({"phone": "555", "code": "123456"}), None)
        .await;
    assert_eq!(fields(assert_problem(&r, 400, 40000001)), ["phone:format"]);
}

#[tokio::test]
async fn an_email_code_arrives_over_smtp_and_signs_in_once() {
    let smtp = SmtpServer::start();
    let app = TestApp::with_delivery(config(), delivery(Some(&smtp), None)).await;
    let id = app.add_user("alice", "correct horse battery", &[]).await;
    let r = app
        .post(SEND, json!({"email": " Alice@Example.com "}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["code"], 0);
    assert_eq!(
        r.body["data"],
        json!({"channel": "email", "target": "a***e@example.com", "expires_in": 300})
    );
    let mail = smtp.wait_for("alice@example.com", 1).await;
    let code = mail.code(6);
    assert!(mail.subject.contains(&code), "{}", mail.subject);
    assert!(mail.html.contains(&code), "{}", mail.html);
    assert!(mail.text.contains("5 minutes"), "{}", mail.text);
    assert!(mail.from.contains("no-reply@keygate.test"));

    let r = app
        .post(
            EMAIL_LOGIN,
            json!({"email": "alice@example.com", "code": code}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["is_new_user"], false);
    assert_eq!(r.body["user_id"], id);
    assert_eq!(r.body["token_type"], "Bearer");
    assert!(r.body["refresh_token"].is_string());
    assert_eq!(amr(&app, &r.body).await, ["otp_email"]);
    // Single use.
    let again = app
        .post(
            EMAIL_LOGIN,
            json!({"email": "alice@example.com", "code": code}),
            None,
        )
        .await;
    assert_problem(&again, 400, 40000401);
}

/// A code sent over TLS (`tls`), trusting only the server's own CA, arrives and signs in; the
/// same server without its CA (the web PKI) is refused, so the certificate is checked.
async fn a_code_arrives_over_smtp_with_tls(tls: SmtpTls) {
    let smtp = SmtpServer::start_tls(tls);
    let with_ca = |ca: Option<std::path::PathBuf>| DeliveryConfig {
        smtp_ca_file: ca,
        ..delivery(Some(&smtp), None).unwrap()
    };
    let app = TestApp::with_delivery(config(), Some(with_ca(Some(smtp.ca_file())))).await;
    app.add_user("tess", "correct horse battery", &[]).await;
    let r = app
        .post(SEND, json!({"email": "tess@example.com"}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let code = smtp.wait_for("tess@example.com", 1).await.code(6);
    let r = app
        .post(
            EMAIL_LOGIN,
            json!({"email": "tess@example.com", "code": code}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let untrusting = TestApp::with_delivery(config(), Some(with_ca(None))).await;
    untrusting
        .add_user("tess", "correct horse battery", &[])
        .await;
    let r = untrusting
        .post(SEND, json!({"email": "tess@example.com"}), None)
        .await;
    assert_problem(&r, 503, 50300002);
    assert_eq!(
        smtp.messages().len(),
        1,
        "a message went over an unverified connection"
    );
}

#[tokio::test]
async fn an_email_code_arrives_over_smtps_with_a_private_ca() {
    a_code_arrives_over_smtp_with_tls(SmtpTls::Implicit).await;
}

#[tokio::test]
async fn an_email_code_arrives_over_starttls_with_a_private_ca() {
    a_code_arrives_over_smtp_with_tls(SmtpTls::StartTls).await;
}

#[test]
fn a_ca_file_needs_a_tls_url() {
    let err = auth_server::delivery::Delivery::new(&DeliveryConfig {
        smtp_url: Some("smtp://127.0.0.1:25".into()),
        smtp_from: "Keygate <k@example.com>".into(),
        smtp_ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.contains("needs a TLS URL"), "{err}");
    // A TLS URL with a CA file that is not there names the file.
    let err = auth_server::delivery::Delivery::new(&DeliveryConfig {
        smtp_url: Some("smtps://127.0.0.1:465".into()),
        smtp_from: "Keygate <k@example.com>".into(),
        smtp_ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    // Optional STARTTLS is no TLS URL when a CA is set; a file without a certificate is no CA.
    let dir = tempfile::tempdir().unwrap();
    let not_a_ca = dir.path().join("key.pem");
    std::fs::write(
        &not_a_ca,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (url, ca, expect) in [
        (
            "smtp://127.0.0.1:25?tls=opportunistic",
            "/nonexistent/ca.pem",
            "needs a TLS URL",
        ),
        (
            "smtps://127.0.0.1:465",
            not_a_ca.to_str().unwrap(),
            "no PEM CERTIFICATE",
        ),
    ] {
        let err = auth_server::delivery::Delivery::new(&DeliveryConfig {
            smtp_url: Some(url.into()),
            smtp_from: "Keygate <k@example.com>".into(),
            smtp_ca_file: Some(ca.into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains(expect), "{url}: {err}");
    }
}

#[tokio::test]
async fn messages_follow_accept_language() {
    let smtp = SmtpServer::start();
    let app = TestApp::with_delivery(config(), delivery(Some(&smtp), None)).await;
    app.add_user("dora", "correct horse battery", &[]).await;
    let req = axum::http::Request::post(SEND)
        .header("content-type", "application/json")
        .header("accept-language", "de-AT, en;q=0.5")
        .body(axum::body::Body::from(
            json!({"email": "dora@example.com"}).to_string(),
        ))
        .unwrap();
    assert_eq!(app.send(req).await.status, 200);
    let mail = smtp.wait_for("dora@example.com", 1).await;
    assert!(
        mail.subject.starts_with("Ihr Anmeldecode"),
        "{}",
        mail.subject
    );
    assert!(mail.text.contains("Minuten gültig"), "{}", mail.text);
}

#[tokio::test]
async fn unknown_targets_get_the_same_answer_and_no_code() {
    let smtp = SmtpServer::start();
    let app = TestApp::with_delivery(config(), delivery(Some(&smtp), None)).await;
    app.add_user("known", "correct horse battery", &[]).await;
    let known = app
        .post(SEND, json!({"email": "known@example.com"}), None)
        .await;
    let unknown = app
        .post(SEND, json!({"email": "nobody@example.com"}), None)
        .await;
    assert_eq!(known.status, 200);
    assert_eq!(unknown.status, 200);
    let shape = |b: &Value| {
        let mut d = b["data"].clone();
        d["target"] = json!(d["target"].as_str().unwrap().len());
        (b["code"].clone(), b["message"].clone(), d)
    };
    assert_eq!(shape(&known.body), shape(&unknown.body));
    smtp.wait_for("known@example.com", 1).await;
    assert!(smtp.messages_to("nobody@example.com").is_empty());
    let r = app
        .post(
            EMAIL_LOGIN,
            json!({"email": "nobody@example.com", "code": "123456"}),
            None,
        )
        .await;
    assert_problem(&r, 400, 40000401);
}

#[tokio::test]
async fn register_if_new_creates_the_account_when_the_tenant_allows_sign_up() {
    let hook = WebhookReceiver::start().await;
    let mut cfg = config();
    cfg.policy.login_codes.signup = true;
    let app = TestApp::with_delivery(cfg, delivery(None, Some(&hook))).await;
    let phone = "+14155550199";
    let r = app.post(SEND, json!({"phone": phone}), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["target"], "+14*******99");
    let code = hook.last_code_for(phone).unwrap();
    // A right code without register_if_new: no account, and the code stays usable.
    let r = phone_login(&app, phone, &code, false).await;
    assert_problem(&r, 400, 40000403);
    let r = phone_login(&app, phone, &code, true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["is_new_user"], true);
    assert_eq!(r.body["user"]["phone"], phone);
    assert_eq!(amr(&app, &r.body).await, ["otp_sms"]);
    // The second time it is an existing account.
    let code = sms_code(&app, &hook, phone).await;
    let r = phone_login(&app, phone, &code, true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["is_new_user"], false);
}

#[tokio::test]
async fn sign_up_by_code_is_off_unless_the_tenant_allows_it() {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::with_delivery(config(), delivery(None, Some(&hook))).await;
    let r = app.post(SEND, json!({"phone": "+14155550100"}), None).await;
    assert_eq!(r.status, 200);
    assert!(
        hook.calls().is_empty(),
        "nothing is sent without an account"
    );
    let mut cfg = config();
    cfg.policy.login_codes.enabled = false;
    let off = TestApp::with_delivery(cfg, delivery(None, Some(&hook))).await;
    let r = off.post(SEND, json!({"phone": "+14155550100"}), None).await;
    assert_problem(&r, 400, 40000402);
}

#[tokio::test]
async fn sms_codes_go_through_the_signed_webhook() {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::with_delivery(config(), delivery(None, Some(&hook))).await;
    let id = add_contact(&app, "sam", "sam@example.com", "+41791234567").await;
    let r = app.post(SEND, json!({"phone": "+41791234567"}), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let calls = hook.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = call.signature.as_deref().unwrap();
    assert!(verify_signature(SECRET, signature, &call.body, now, 300));
    assert!(!verify_signature("wrong", signature, &call.body, now, 300));
    // And as a receiver written elsewhere checks it: Python's hmac over "t.body".
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys\n\
             secret, header, body = sys.argv[1], sys.argv[2], sys.stdin.read()\n\
             parts = dict(p.split('=', 1) for p in header.split(','))\n\
             mac = hmac.new(secret.encode(), (parts['t'] + '.' + body).encode(), hashlib.sha256).hexdigest()\n\
             sys.exit(0 if hmac.compare_digest(mac, parts['v1']) else 1)",
            SECRET,
            signature,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), call.body.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(
        check.success(),
        "Python's hmac refuses the signature {signature}"
    );
    assert_eq!(call.json["target"], "+41791234567");
    assert_eq!(call.json["expires_in"], 300);
    assert!(call.json["expires_at"].as_str().unwrap().ends_with('Z'));
    let code = call.json["code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    assert!(call.json["message"].as_str().unwrap().contains(code));
    let r = phone_login(&app, "+41791234567", code, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], id);
}

#[tokio::test]
async fn codes_die_after_five_wrong_attempts_and_when_they_expire() {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::with_delivery(config(), delivery(None, Some(&hook))).await;
    add_contact(&app, "wendy", "wendy@example.com", "+14155550111").await;
    let phone = "+14155550111";
    let login = |code: String| {
        let app = &app;
        async move { phone_login(app, phone, &code, false).await }
    };
    let code = sms_code(&app, &hook, phone).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        assert_problem(&login(wrong.into()).await, 400, 40000401);
    }
    assert_problem(&login(code).await, 400, 40000401);
    // A new code replaces the dead one.
    let code = sms_code(&app, &hook, phone).await;
    assert_eq!(login(code).await.status, 200);
    // Expiry follows the clock.
    let code = sms_code(&app, &hook, phone).await;
    app.clock.advance(301);
    assert_problem(&login(code).await, 400, 40000401);
}

#[tokio::test]
async fn a_failed_delivery_is_503_and_leaves_no_usable_code() {
    let hook = WebhookReceiver::start().await;
    let dead_smtp = format!("smtp://127.0.0.1:{}", keygate_tests::free_port());
    let app = TestApp::with_delivery(
        config(),
        Some(DeliveryConfig {
            smtp_url: Some(dead_smtp),
            ..delivery(None, Some(&hook)).unwrap()
        }),
    )
    .await;
    add_contact(&app, "fay", "fay@example.com", "+14155550122").await;
    hook.answer(500);
    let r = app.post(SEND, json!({"phone": "+14155550122"}), None).await;
    assert_problem(&r, 503, 50300002);
    // The receiver saw the code, but it does not work.
    let code = hook.last_code_for("+14155550122").unwrap();
    let r = phone_login(&app, "+14155550122", &code, false).await;
    assert_problem(&r, 400, 40000401);
    let r = app
        .post(SEND, json!({"email": "fay@example.com"}), None)
        .await;
    assert_problem(&r, 503, 50300002);
    // Once the receiver works again, so do codes.
    hook.answer(204);
    assert_eq!(
        app.post(SEND, json!({"phone": "+14155550122"}), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn sending_is_throttled_per_target_on_the_injected_clock() {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::with_delivery(config(), delivery(None, Some(&hook))).await;
    add_contact(&app, "tom", "tom@example.com", "+14155550133").await;
    // Default rule: 5 per 600 s per target (a burst of 5, then one per 120 s).
    for _ in 0..5 {
        assert_eq!(
            app.post(SEND, json!({"phone": "+14155550133"}), None)
                .await
                .status,
            200
        );
    }
    let r = app.post(SEND, json!({"phone": "+14155550133"}), None).await;
    let b = assert_problem(&r, 429, 42900001);
    let wait = b["retry_after"].as_u64().unwrap();
    assert!((119..=120).contains(&wait), "{wait}");
    assert_eq!(r.headers["retry-after"], wait.to_string().as_str());
    // Another target is not affected.
    assert_eq!(
        app.post(SEND, json!({"phone": "+14155550134"}), None)
            .await
            .status,
        200
    );
    app.clock.advance(wait as i64 - 1);
    let r = app.post(SEND, json!({"phone": "+14155550133"}), None).await;
    assert_problem(&r, 429, 42900001);
    app.clock.advance(1);
    let r = app.post(SEND, json!({"phone": "+14155550133"}), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(hook.calls().len(), 6);
}

#[tokio::test]
async fn of_parallel_sign_ins_with_one_code_exactly_one_succeeds() {
    parallel_code_sign_ins(Store::Memory).await;
}

#[tokio::test]
async fn of_parallel_sign_ins_with_one_code_on_redis_exactly_one_succeeds() {
    parallel_code_sign_ins(Store::Redis).await;
}

async fn parallel_code_sign_ins(store: Store) {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::on(store, config(), delivery(None, Some(&hook))).await;
    add_contact(&app, "pam", "pam@example.com", "+14155550144").await;
    let code = sms_code(&app, &hook, "+14155550144").await;
    let statuses = app
        .post_in_parallel(
            PHONE_LOGIN,
            vec![json!({"phone": "+14155550144", "code": code}); 8],
        )
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );
}

async fn mfa_challenge(app: &TestApp) -> String {
    let r = app.login("mia", "correct horse battery").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["requires_mfa"], true);
    // No TOTP enrolled: only the sent-code methods are offered.
    assert_eq!(r.body["required_mfa_methods"], json!(["email", "sms"]));
    r.body["challenge_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn email_and_sms_codes_answer_mfa_challenges() {
    let smtp = SmtpServer::start();
    let hook = WebhookReceiver::start().await;
    let mut cfg = config();
    cfg.policy.mfa.methods = vec!["totp".into(), "email".into(), "sms".into()];
    let app = TestApp::with_delivery(cfg, delivery(Some(&smtp), Some(&hook))).await;
    add_contact(&app, "mia", "mia@example.com", "+14155550155").await;

    let send = |token: &str, method: &str| {
        app.post(
            "/api/v1/auth/mfa/send-code",
            json!({"challenge_token": token, "mfa_method": method}),
            None,
        )
    };
    let verify = |token: &str, code: &str, method: &str| {
        let (app, token) = (&app, json!(token));
        let (code, method) = (code.to_owned(), method.to_owned());
        async move { crate::mfa::answer(app, &token, &code, Some(&method)).await }
    };

    let token = mfa_challenge(&app).await;
    let r = send(&token, "email").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["channel"], "email");
    let mail = smtp.wait_for("mia@example.com", 1).await;
    assert!(
        mail.subject.contains("verification code"),
        "{}",
        mail.subject
    );
    let code = mail.code(6);
    // Methods the challenge does not offer, or that were not sent, do not answer it.
    assert_problem(&send(&token, "totp").await, 400, 40000001);
    assert_problem(&verify(&token, &code, "totp").await, 400, 40000001);
    assert_problem(&verify(&token, &code, "sms").await, 400, 61000402);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_problem(&verify(&token, wrong, "email").await, 400, 61000402);
    let r = verify(&token, &code, "email").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amr(&app, &r.body).await, ["pwd", "otp_email"]);
    assert_problem(&verify(&token, &code, "email").await, 403, 61000403);

    let token = mfa_challenge(&app).await;
    assert_eq!(send(&token, "sms").await.status, 200);
    let code = hook.last_code_for("+14155550155").unwrap();
    let r = verify(&token, &code, "sms").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amr(&app, &r.body).await, ["pwd", "otp_sms"]);
    assert!(first_digits(&code, 6).is_some());
}

#[tokio::test]
async fn users_with_totp_still_show_it_after_a_code() {
    let hook = WebhookReceiver::start().await;
    let app = TestApp::with_delivery(config(), delivery(None, Some(&hook))).await;
    add_contact(&app, "tina", "tina@example.com", "+14155550166").await;
    let token = app.token("tina", "correct horse battery").await;
    let (secret, _) = crate::mfa::enrol(&app, &token).await;
    let code = sms_code(&app, &hook, "+14155550166").await;
    let r = phone_login(&app, "+14155550166", &code, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The code was one factor; TOTP (or a backup code) is the second, never another code.
    assert_eq!(r.body["requires_mfa"], true, "{}", r.body);
    assert!(r.body["access_token"].is_null());
    assert_eq!(r.body["required_mfa_methods"], json!(["totp", "backup"]));
    assert_eq!(r.body["is_new_user"], false);
    let step = app.clock.unix() / 30;
    let totp = auth_server::auth::mfa::totp_at(&secret, step + 1);
    let r = crate::mfa::answer(&app, &r.body["challenge_token"], &totp, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(amr(&app, &r.body).await, ["otp_sms", "otp"]);
}

#[tokio::test]
async fn a_channel_without_delivery_answers_alike_for_every_target() {
    let smtp = SmtpServer::start();
    let app = TestApp::with_delivery(config(), delivery(Some(&smtp), None)).await;
    add_contact(&app, "kim", "kim@example.com", "+14155550177").await;
    // SMS is not configured: a known and an unknown number get the same 503.
    let known = app.post(SEND, json!({"phone": "+14155550177"}), None).await;
    let unknown = app.post(SEND, json!({"phone": "+14155550178"}), None).await;
    assert_problem(&known, 503, 50300002);
    assert_problem(&unknown, 503, 50300002);
    assert_eq!(known.body["detail"], unknown.body["detail"]);
}

#[tokio::test]
async fn a_target_waits_the_resend_interval() {
    let hook = WebhookReceiver::start().await;
    let mut config = config();
    config.policy.login_codes.resend_interval_seconds = 60;
    let app = TestApp::with_delivery(config, delivery(None, Some(&hook))).await;
    add_contact(&app, "una", "una@example.com", "+14155550144").await;
    for phone in ["+14155550144", "+14155550145"] {
        // Known and unknown numbers alike: one code, then a wait with retry_after.
        assert_eq!(
            app.post(SEND, json!({"phone": phone}), None).await.status,
            200
        );
        let r = app.post(SEND, json!({"phone": phone}), None).await;
        let b = assert_problem(&r, 429, 42900001);
        assert_eq!(b["retry_after"], 60, "{b}");
        assert_eq!(r.headers.get("retry-after").unwrap(), "60");
        app.clock.advance(30);
        assert_eq!(
            assert_problem(
                &app.post(SEND, json!({"phone": phone}), None).await,
                429,
                42900001
            )["retry_after"],
            30
        );
        app.clock.advance(30);
        assert_eq!(
            app.post(SEND, json!({"phone": phone}), None).await.status,
            200
        );
    }
    assert_eq!(hook.calls().len(), 2, "only the known number got codes");
    let before = hook.calls().len();
    // Parallel requests for one target send one code.
    app.clock.advance(60);
    let statuses = app
        .post_in_parallel(SEND, vec![json!({"phone": "+14155550144"}); 8])
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(hook.calls().len(), before + 1);
}

#[tokio::test]
async fn sms_go_only_to_allowed_prefixes_and_within_the_budget() {
    let hook = WebhookReceiver::start().await;
    let mut config = config();
    config.policy.login_codes.sms_allowed_prefixes = vec!["+49".into()];
    for r in &mut config.rate_limits.rules {
        if r.name == "sms-global" {
            r.limit = 2;
        }
    }
    let app = TestApp::with_delivery(config, delivery(None, Some(&hook))).await;
    let r = app
        .post(SEND, json!({"phone": "+882345678901"}), None)
        .await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "phone");
    for n in ["+4915112345670", "+4915112345671"] {
        assert_eq!(app.post(SEND, json!({"phone": n}), None).await.status, 200);
    }
    let r = app
        .post(SEND, json!({"phone": "+4915112345672"}), None)
        .await;
    assert_problem(&r, 429, 42900001);
    assert!(
        r.body["detail"].as_str().unwrap().contains("sms-global"),
        "{}",
        r.body
    );
}
