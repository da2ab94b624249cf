//! Sign-in with id_tokens of a real, independently written OpenID provider (npm's
//! `oidc-provider`, tokens obtained through its authorization-code flow): provisioning modes,
//! every rejection OpenID Connect Core 3.1.3.7 asks for, and key rotation at the provider.

use crate::common::{TestApp, assert_problem, replies_in_parallel_over, small_hashing};
use auth_server::auth::clock::Clock;
use auth_server::auth::users::UserInput;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keygate_config::{OidcProviderConfig, Provisioning, RuntimeConfig};
use keygate_tests::oidc::OidcProvider;
use serde_json::{Value, json};

const SIGNIN: &str = "/api/v1/auth/id-token/signin";

fn provider(name: &str, issuer: &str, provisioning: Provisioning) -> OidcProviderConfig {
    OidcProviderConfig {
        provisioning,
        // The test providers listen on plain HTTP on loopback.
        allow_http: true,
        // These tests present one token several times to probe the checks;
        // `an_id_token_signs_in_once` tests single use.
        single_use: false,
        ..serde_json::from_value(json!({"name": name, "issuer": issuer, "client_id": "keygate"}))
            .unwrap()
    }
}

/// An application trusting `corp` (creates accounts) and `corp-link` (links by verified email)
/// at `first`, and `partner` (existing accounts only) at `second`; its clock is real time.
async fn app(first: &OidcProvider, second: &OidcProvider) -> TestApp {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        oidc_providers: vec![
            provider("corp", &first.issuer, Provisioning::Create),
            provider("corp-link", &first.issuer, Provisioning::LinkVerifiedEmail),
            provider("partner", &second.issuer, Provisioning::Existing),
        ],
        ..Default::default()
    })
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    app.clock.advance(now - app.clock.unix());
    app
}

async fn sign_in(app: &TestApp, provider: &str, token: &str) -> crate::common::Reply {
    app.post(
        SIGNIN,
        json!({"provider": provider, "id_token": token}),
        None,
    )
    .await
}

fn rejected(r: &crate::common::Reply, why: &str) {
    let b = assert_problem(r, 400, 40000601);
    assert!(
        b["detail"].as_str().unwrap().contains(why),
        "expected {why:?}: {b}"
    );
}

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let decode = |s: &str| -> Value { serde_json::from_slice(&B64.decode(s).unwrap()).unwrap() };
    (decode(it.next().unwrap()), decode(it.next().unwrap()))
}

#[tokio::test]
async fn real_id_tokens_sign_in_provision_and_link() {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;

    // Create: the first sign-in makes and links the account; the next finds it.
    let token = first.id_token("keygate", "alice");
    let r = sign_in(&app, "corp", &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let alice = r.body["user_id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["user"]["email"], "alice@example.com");
    assert_eq!(r.body["user"]["phone"], "+14155550170");
    let claims = app
        .auth
        .authenticate(r.body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims.amr, ["fed"]);
    let again = sign_in(&app, "corp", &first.id_token("keygate", "alice")).await;
    assert_eq!(again.body["user_id"], alice.as_str());
    // Another provider entry for the same issuer finds the same link.
    let linked = sign_in(&app, "corp-link", &first.id_token("keygate", "alice")).await;
    assert_eq!(linked.body["user_id"], alice.as_str());

    // Link by verified email: to the existing local account.
    let carol = app
        .auth
        .create_user(
            "default",
            UserInput {
                username: "carol".into(),
                email: Some("carol@example.com".into()),
                password: Some("correct horse battery".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "carol")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], carol.id.as_str());
    // An unverified address links nothing (a local bob@example.com exists), and neither does
    // a verified one link an account with a role (whoever controls the address at the
    // provider would become an administrator); "existing only" creates nothing.
    for (name, roles) in [("bob", vec![]), ("dave", vec!["admin".to_owned()])] {
        app.auth
            .create_user(
                "default",
                UserInput {
                    username: name.into(),
                    email: Some(format!("{name}@example.com")),
                    password: Some("correct horse battery".into()),
                    roles,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "bob")).await;
    assert_problem(&r, 403, 40300004);
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "dave")).await;
    assert_problem(&r, 403, 40300004);
    let r = sign_in(&app, "partner", &second.id_token("keygate", "bob")).await;
    assert_problem(&r, 403, 40300004);

    // The audit trail has the federated sign-ins.
    let trail = app
        .auth
        .store
        .audit_events(&auth_server::store::AuditQuery {
            tenant_id: "default".into(),
            event_type: Some("sign_in".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.method.as_deref() == Some("federated")
                && e.outcome == "success"
                && e.user_id.as_deref() == Some(carol.id.as_str()))
    );
    assert!(
        trail
            .iter()
            .any(|e| e.reason.as_deref() == Some("no_linked_account"))
    );
}

#[tokio::test]
async fn invalid_id_tokens_are_refused() {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;
    let good = first.id_token("keygate", "alice");
    assert_eq!(sign_in(&app, "corp", &good).await.status, 200);

    // Issued to another client.
    rejected(
        &sign_in(&app, "corp", &first.id_token("other-app", "alice")).await,
        "wrong audience",
    );
    // Signed with the right key material by another issuer: a second provider's token
    // presented as the first's.
    rejected(
        &sign_in(&app, "corp", &second.id_token("keygate", "alice")).await,
        "wrong issuer",
    );
    // alg none.
    let (header, payload) = parts(&good);
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(payload.to_string())
    );
    rejected(&sign_in(&app, "corp", &none).await, "malformed");
    // HS256 with the provider's public key as the HMAC secret (PEM and JWK forms).
    let jwks = first.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap()
        .clone();
    let n = rsa::BigUint::from_bytes_be(&B64.decode(jwk["n"].as_str().unwrap()).unwrap());
    let e = rsa::BigUint::from_bytes_be(&B64.decode(jwk["e"].as_str().unwrap()).unwrap());
    let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
        &rsa::RsaPublicKey::new(n, e).unwrap(),
        rsa::pkcs8::LineEnding::LF,
    )
    .unwrap();
    for secret in [pem.as_bytes().to_vec(), jwk.to_string().into_bytes()] {
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: header["kid"].as_str().map(str::to_owned),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        rejected(
            &sign_in(&app, "corp", &forged).await,
            "algorithm not accepted",
        );
    }
    // A tampered payload.
    let mut changed = payload.clone();
    changed["sub"] = json!("mallory");
    let sig = good.rsplit('.').next().unwrap();
    let tampered = format!(
        "{}.{}.{sig}",
        good.split('.').next().unwrap(),
        B64.encode(changed.to_string())
    );
    rejected(&sign_in(&app, "corp", &tampered).await, "bad signature");
    // Unknown provider, missing fields.
    let r = sign_in(&app, "nope", &good).await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "provider");
    assert_problem(&app.post(SIGNIN, json!({}), None).await, 400, 40000001);
    rejected(&sign_in(&app, "corp", "not.a.jwt").await, "malformed");

    // Time, on the server's clock, with the 60 s leeway: issued more than the leeway in the
    // future, accepted just inside the leeway after expiry, refused at its end.
    let at = |field: &str| payload[field].as_i64().unwrap();
    let set = |t: i64| app.clock.advance(t - app.clock.unix());
    set(at("iat") - 61);
    rejected(&sign_in(&app, "corp", &good).await, "not yet valid");
    set(at("exp") + 59);
    assert_eq!(sign_in(&app, "corp", &good).await.status, 200);
    set(at("exp") + 60);
    rejected(&sign_in(&app, "corp", &good).await, "expired");
}

#[tokio::test]
async fn sign_in_survives_key_rotation_at_the_provider() {
    let mut first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;
    let old = first.id_token("keygate", "alice");
    assert_eq!(sign_in(&app, "corp", &old).await.status, 200);

    // The provider rotates: a new ES256 key signs, the old one is still published.
    first.restart_with_keys(&[("k2", "ES256"), ("k1", "RS256")]);
    let new = first.id_token("keygate", "alice");
    assert_eq!(parts(&new).0["kid"], "k2");
    // Keys were fetched a moment ago: within the floor an unknown kid is not refetched.
    rejected(&sign_in(&app, "corp", &new).await, "unknown signing key");
    app.clock.advance(10);
    let r = sign_in(&app, "corp", &new).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Tokens signed by the old key still verify while it is published.
    assert_eq!(sign_in(&app, "corp", &old).await.status, 200);

    // A provider that is down: past their age, cached keys still verify their own tokens;
    // a key that is not cached cannot be fetched (503) until the provider is back.
    first.stop();
    app.clock.advance(3600);
    assert_eq!(sign_in(&app, "corp", &new).await.status, 200);
    let (header, payload) = parts(&new);
    let unknown_kid = format!(
        "{}.{}.{}",
        B64.encode(json!({"alg": header["alg"], "kid": "k9", "typ": "JWT"}).to_string()),
        B64.encode(payload.to_string()),
        new.rsplit('.').next().unwrap()
    );
    app.clock.advance(10);
    assert_problem(&sign_in(&app, "corp", &unknown_kid).await, 503, 50300001);
    first.restart_with_keys(&[("k2", "ES256"), ("k1", "RS256")]);
    app.clock.advance(10);
    rejected(
        &sign_in(&app, "corp", &unknown_kid).await,
        "unknown signing key",
    );
    assert_eq!(sign_in(&app, "corp", &new).await.status, 200);
}

#[tokio::test]
async fn an_id_token_signs_in_once() {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;
    let mut once = provider("corp-once", &first.issuer, Provisioning::Create);
    once.single_use = true;
    let mut config = app.auth.runtime().config.clone();
    config.oidc_providers.push(once);
    app.reload(config);
    let token = first.id_token("keygate", "alice");
    assert_eq!(sign_in(&app, "corp-once", &token).await.status, 200);
    rejected(&sign_in(&app, "corp-once", &token).await, "replayed");
    // Of parallel presentations of a fresh token, one signs in.
    let token = first.id_token("keygate", "alice");
    let statuses = app
        .post_in_parallel(
            SIGNIN,
            vec![json!({"provider": "corp-once", "id_token": token}); 8],
        )
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    // Single use is the default for a provider configured without saying.
    let default: OidcProviderConfig = serde_json::from_value(
        json!({"name": "x", "issuer": "https://id.example", "client_id": "keygate"}),
    )
    .unwrap();
    assert!(default.single_use);
}

/// A local account with a verified-looking address, as an administrator would create it.
async fn local_account(app: &TestApp, username: &str) -> String {
    app.auth
        .create_user(
            "default",
            UserInput {
                username: username.into(),
                email: Some(format!("{username}@example.com")),
                password: Some("correct horse battery".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn linking_by_email_refuses_accounts_with_totp_or_a_link_of_the_issuer() {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;
    // An account with an active second factor: its owner links through an authenticated
    // step, never by an address the provider vouches for.
    local_account(&app, "carol").await;
    let token = app.token("carol", "correct horse battery").await;
    crate::mfa::enrol(&app, &token).await;
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "carol")).await;
    assert_problem(&r, 403, 40300004);
    // An account linked to another subject of this issuer already is not linked again.
    let alice = local_account(&app, "alice").await;
    app.auth
        .store
        .link_federated(
            "default",
            &first.issuer,
            "someone-else",
            &alice,
            app.clock.unix(),
        )
        .await
        .unwrap();
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "alice")).await;
    assert_problem(&r, 403, 40300004);
    // The same step links a plain account (the refusals are not a general failure).
    let dave = local_account(&app, "dave").await;
    let r = sign_in(&app, "corp-link", &first.id_token("keygate", "dave")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], dave.as_str());
}

/// Every reply of a race of first sign-ins is a 200 for one and the same account, and `app`'s
/// audit trail shows that account created once.
async fn one_account_created_once(app: &TestApp, replies: &[crate::common::Reply]) {
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    // Every winner and loser of the race signed in to the same account.
    let accounts: std::collections::BTreeSet<_> = replies
        .iter()
        .map(|r| r.body["user"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let created = app
        .auth
        .store
        .audit_events(&auth_server::store::AuditQuery {
            tenant_id: "default".into(),
            event_type: Some("federation_link".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("created"))
        .count();
    assert_eq!(created, 1, "one external account, one local account");
}

#[tokio::test]
async fn racing_first_sign_ins_of_one_external_account_make_one_local_account() {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let second = OidcProvider::start_sharing_keys(&first, &[("k1", "RS256")]);
    let app = app(&first, &second).await;
    let bodies = (0..6)
        .map(|_| json!({"provider": "corp", "id_token": first.id_token("keygate", "alice")}))
        .collect();
    let replies = app.replies_in_parallel(SIGNIN, bodies).await;
    one_account_created_once(&app, &replies).await;
    let r = sign_in(&app, "corp", &first.id_token("keygate", "alice")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["email"], "alice@example.com");
}

/// Two replicas of one deployment on a shared Postgres database and Redis server: the first
/// sign-ins of one external account racing on both make one local account (the loser of the
/// insert finds the winner's link), and one single-use id_token presented on both at once
/// signs in once.
#[tokio::test]
async fn on_two_replicas_over_postgres_racing_first_sign_ins_make_one_account_and_a_token_signs_in_once()
 {
    let first = OidcProvider::start(&[("k1", "RS256")]);
    let mut once = provider("corp-once", &first.issuer, Provisioning::Create);
    once.single_use = true;
    let replicas = TestApp::replicas(
        2,
        RuntimeConfig {
            password_hashing: small_hashing(),
            oidc_providers: vec![provider("corp", &first.issuer, Provisioning::Create), once],
            ..Default::default()
        },
    )
    .await;
    let bodies = (0..8)
        .map(|_| json!({"provider": "corp", "id_token": first.id_token("keygate", "carol")}))
        .collect();
    // Every request is sent before any is answered, half to each replica.
    let replies = replies_in_parallel_over(&replicas, SIGNIN, bodies).await;
    one_account_created_once(&replicas[1], &replies).await;

    let token = first.id_token("keygate", "carol");
    let bodies = vec![json!({"provider": "corp-once", "id_token": token}); 8];
    let replies = replies_in_parallel_over(&replicas, SIGNIN, bodies).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        rejected(r, "replayed");
    }
}
