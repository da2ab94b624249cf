//! ServiceAccount callers of `POST /auth/generate-ticket` against a real kube-apiserver:
//! tokens minted through TokenRequest, verified with the cluster's own discovery document and
//! keys (fetched with the server's own ServiceAccount token and the cluster CA), matched to
//! the grants of the runtime configuration.

use crate::common::{TestApp, assert_problem, small_hashing};
use auth_server::auth::clock::Clock;
use auth_server::auth::service_accounts::ClusterVerifier;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keygate_config::{
    RuntimeConfig, ServiceAccountGrantConfig, SigningAlgorithm, SigningKeyConfig,
};
use keygate_tests::cluster::control_plane;
use serde_json::{Value, json};

const TICKET: &str = "/api/v1/auth/generate-ticket";

fn grant(name: &str, ns: &str, sa: &str, extra: Value) -> ServiceAccountGrantConfig {
    let mut v = json!({
        "name": name, "permissions": ["tickets:create"],
        "service_account": {"namespace": ns, "name": sa},
    });
    for (k, val) in extra.as_object().into_iter().flatten() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn payload(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn es256_token(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn service_accounts_get_tickets_as_granted_and_nothing_else() {
    let cp = control_plane();
    let ns = cp.namespace("kg-sa").await;
    let other_ns = cp.namespace("kg-sa-other").await;
    let keygate_pem = keygate_config::keygen::private_key_pem(SigningAlgorithm::ES256, 0).unwrap();
    let config = RuntimeConfig {
        password_hashing: small_hashing(),
        signing_keys: vec![SigningKeyConfig {
            kid: "kg-1".into(),
            algorithm: SigningAlgorithm::ES256,
            private_key_pem: keygate_pem.clone(),
            activates_at: None,
            retires_at: None,
            signs_until: None,
        }],
        service_account_grants: vec![
            grant(
                "billing",
                &ns.name,
                "billing-api",
                json!({"rate_limit": {"limit": 6, "window_seconds": 3600}}),
            ),
            grant(
                "support",
                &ns.name,
                "support",
                json!({"allowed_roles": ["ticket-issuer"]}),
            ),
        ],
        ..Default::default()
    };
    // The server's own ServiceAccount token (the API server's audience) for discovery.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        cp.service_account_token(&ns.name, "keygate-server", None, 3600),
    )
    .unwrap();
    let ca = std::fs::read(cp.ca_file()).unwrap();
    let verifier = ClusterVerifier::new(
        keygate_oidc::Cluster {
            api_url: cp.server().to_owned(),
            token_file: Some(token_file.clone()),
        },
        keygate_oidc::Fetcher::trusting(&ca).unwrap(),
        "keygate".into(),
    );
    let app = TestApp::with_config(config.clone())
        .await
        .with_cluster(verifier);
    let alice = app.add_user("alice", "correct horse battery", &[]).await;
    let admin = app
        .add_user("root", "correct horse battery", &["admin"])
        .await;
    let agent = app
        .add_user("agent", "correct horse battery", &["ticket-issuer"])
        .await;

    let token = cp.service_account_token(&ns.name, "billing-api", Some("keygate"), 600);
    let claims = payload(&token);
    // The server's clock at the token's issue time.
    app.clock
        .advance(claims["iat"].as_i64().unwrap() - app.clock.unix());
    let ticket = async |bearer: &str, user: &str| {
        app.post(
            TICKET,
            json!({"user_id": user, "reason": "billing portal"}),
            Some(bearer),
        )
        .await
    };

    // A granted caller gets a ticket; the sign-in carries act = the ServiceAccount.
    let r = ticket(&token, &alice).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let signed_in = app
        .post(
            "/api/v1/auth/ticket/signin",
            json!({"ticket": r.body["data"]["ticket"]}),
            None,
        )
        .await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let me = app
        .get("/api/v1/auth/me", signed_in.body["access_token"].as_str())
        .await;
    let sa_name = format!("system:serviceaccount:{}:billing-api", ns.name);
    assert_eq!(
        me.body["data"]["act"]["sub"],
        sa_name.as_str(),
        "{}",
        me.body
    );
    let events = app
        .auth
        .store
        .audit_events(&auth_server::store::AuditQuery {
            tenant_id: "default".into(),
            event_type: Some("ticket_issued".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.actor_id.as_deref() == Some(sa_name.as_str())),
        "{events:?}"
    );

    // The keys are cached: with the server's own token gone (a fetch would fail), verified
    // tokens keep working.
    std::fs::remove_file(&token_file).unwrap();
    assert_eq!(ticket(&token, &alice).await.status, 200);

    // Not allowed: a user with a role the grant does not list (403).
    assert_problem(&ticket(&token, &admin).await, 403, 40300001);
    let support = cp.service_account_token(&ns.name, "support", Some("keygate"), 600);
    assert_eq!(ticket(&support, &agent).await.status, 200, "listed role");
    assert_problem(&ticket(&support, &admin).await, 403, 40300001);
    // Verified, but no grant: another ServiceAccount of the namespace, the same name in
    // another namespace (403).
    let other = cp.service_account_token(&ns.name, "reporting", Some("keygate"), 600);
    assert_problem(&ticket(&other, &alice).await, 403, 40300001);
    let elsewhere = cp.service_account_token(&other_ns.name, "billing-api", Some("keygate"), 600);
    assert_problem(&ticket(&elsewhere, &alice).await, 403, 40300001);
    // Not verified (401): another audience, a token signed by another issuer, a forgery
    // with the cluster's issuer, Keygate's own key with the same claims.
    let wrong_aud = cp.service_account_token(&ns.name, "billing-api", Some("not-keygate"), 600);
    assert_problem(&ticket(&wrong_aud, &alice).await, 401, 40100001);
    let stranger = keygate_config::keygen::private_key_pem(SigningAlgorithm::ES256, 0).unwrap();
    let mut forged = claims.clone();
    forged["iss"] = json!("https://other-cluster.example");
    assert_problem(
        &ticket(&es256_token(&stranger, "x", &forged), &alice).await,
        401,
        40100001,
    );
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    assert_problem(
        &ticket(&es256_token(&stranger, &kid, &claims), &alice).await,
        401,
        40100001,
    );
    assert_problem(
        &ticket(&es256_token(&keygate_pem, "kg-1", &claims), &alice).await,
        401,
        40100001,
    );
    let mut as_keygate = claims.clone();
    as_keygate["iss"] = json!(crate::common::ISSUER);
    assert_problem(
        &ticket(&es256_token(&keygate_pem, "kg-1", &as_keygate), &alice).await,
        401,
        40100001,
    );
    // The grant's rate limit (6 per hour; 3 used): the rest are refused with 429.
    let statuses = [
        ticket(&token, &alice).await.status,
        ticket(&token, &alice).await.status,
        ticket(&token, &alice).await.status,
        ticket(&token, &alice).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 200, 429]);
    // Expired, on the server's clock (with the 60 s leeway).
    let exp = payload(&support)["exp"].as_i64().unwrap();
    app.clock.advance(exp + 59 - app.clock.unix());
    assert_eq!(
        ticket(&support, &agent).await.status,
        200,
        "inside the leeway"
    );
    app.clock.advance(1);
    assert_problem(&ticket(&support, &agent).await, 401, 40100001);
    // A grant removed by a reload: refused at once.
    app.clock.advance(-120);
    assert_eq!(ticket(&support, &agent).await.status, 200);
    let mut without = config.clone();
    without
        .service_account_grants
        .retain(|g| g.name != "support");
    app.reload(without);
    assert_problem(&ticket(&support, &agent).await, 403, 40300001);
}
