//! Password transmission modes through the HTTP API: plain, hash, symmetric (HKDF and raw
//! key), asymmetric; the tenant policy deciding which are accepted; key exchanges being single
//! use; and the tenant's auth-config.

use crate::common::{TestApp, assert_problem, small_hashing};
use aes_gcm::aead::{Aead, AeadCore};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keygate_config::{PasswordPolicy, RuntimeConfig, TenantPolicy, Transmission};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PW: &str = "correct horse battery";

/// Encrypts each password under one fresh key exchange, as a client would; returns the
/// ciphertexts and the exchange's fields.
async fn symmetric_seal(app: &TestApp, passwords: &[&str], use_hkdf: bool) -> (Vec<String>, Value) {
    let kex = app.get("/api/v1/public/key-exchange", None).await.body["data"].clone();
    assert_eq!(kex["algorithm"], "ECDH-P256-HKDF-SHA256-AES256GCM");
    let server = p256::PublicKey::from_sec1_bytes(
        &STANDARD
            .decode(kex["server_pub_key"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let client = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = client
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let shared = p256::ecdh::diffie_hellman(client.to_nonzero_scalar(), server.as_affine());
    let mut key = [0u8; 32];
    if use_hkdf {
        hkdf::Hkdf::<Sha256>::new(None, &shared.raw_secret_bytes()[..])
            .expand(b"ECDH-P256-HKDF-SHA256-AES256GCM", &mut key)
            .unwrap();
    } else {
        key.copy_from_slice(&shared.raw_secret_bytes()[..]);
    }
    let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
    let sealed = passwords
        .iter()
        .map(|p| {
            let iv = Aes256Gcm::generate_nonce(&mut rand::rngs::OsRng);
            let mut blob = iv.to_vec();
            blob.extend(cipher.encrypt(&iv, p.as_bytes()).unwrap());
            blob.extend_from_slice(&point);
            STANDARD.encode(blob)
        })
        .collect();
    let fields = json!({
        "password_transmission": "symmetric",
        "key_exchange_id": kex["key_exchange_id"],
        "client_pub_key": STANDARD.encode(&point),
    });
    (sealed, fields)
}

async fn symmetric_body(app: &TestApp, password: &str, use_hkdf: bool) -> Value {
    let (sealed, mut body) = symmetric_seal(app, &[password], use_hkdf).await;
    body["identity"] = json!("alice");
    body["password"] = json!(sealed[0]);
    body
}

/// The default tenant's auth-config and its `asymmetric` transmission key.
async fn transmission_key(app: &TestApp) -> (Value, rsa::RsaPublicKey) {
    let cfg = app
        .get("/api/v1/public/auth-config/default", None)
        .await
        .body["data"]
        .clone();
    let public =
        rsa::RsaPublicKey::from_public_key_pem(cfg["transmission_public_key"].as_str().unwrap())
            .unwrap();
    (cfg, public)
}

#[tokio::test]
async fn every_mode_signs_in_against_the_same_stored_hash() {
    let app = TestApp::new().await;
    app.add_user("alice", PW, &[]).await;
    let login = "/api/v1/auth/login";
    // hash
    let digest = hex::encode(Sha256::digest(format!("{PW}|default")));
    let r = app
        .post(
            login,
            json!({"identity": "alice", "password": digest, "password_transmission": "hash"}),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let wrong = hex::encode(Sha256::digest("nope|default"));
    let r = app
        .post(
            login,
            json!({"identity": "alice", "password": wrong, "password_transmission": "hash"}),
            None,
        )
        .await;
    assert_problem(&r, 400, 40000101);
    // symmetric, both key derivations
    for hkdf in [true, false] {
        let body = symmetric_body(&app, PW, hkdf).await;
        let r = app.post(login, body.clone(), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        // The key exchange was single use.
        assert_problem(&app.post(login, body, None).await, 400, 61000106);
    }
    let r = app
        .post(
            login,
            symmetric_body(&app, "wrong password", true).await,
            None,
        )
        .await;
    assert_problem(&r, 400, 40000101);
    // asymmetric, with and without key_id
    let (cfg, public) = transmission_key(&app).await;
    for key_id in [Value::Null, cfg["transmission_public_key_id"].clone()] {
        let ct = public
            .encrypt(
                &mut rand::rngs::OsRng,
                rsa::Oaep::new::<Sha256>(),
                PW.as_bytes(),
            )
            .unwrap();
        let r = app
            .post(login, json!({"identity": "alice", "password": STANDARD.encode(ct), "password_transmission": "asymmetric", "key_id": key_id}), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = app
        .post(login, json!({"identity": "alice", "password": STANDARD.encode([0u8; 256]), "password_transmission": "asymmetric"}), None)
        .await;
    assert_problem(&r, 400, 61000105);
    let r = app
        .post(login, json!({"identity": "alice", "password": "AAAA", "password_transmission": "asymmetric", "key_id": "nope"}), None)
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "key_id"
    );
    let r = app
        .post(
            login,
            json!({"identity": "alice", "password": "AAAA", "password_transmission": "symmetric"}),
            None,
        )
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "key_exchange_id"
    );
}

#[tokio::test]
async fn the_tenant_policy_decides_which_modes_are_accepted() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy: TenantPolicy {
            password: PasswordPolicy {
                accepted_transmissions: vec![Transmission::Plain],
                preferred_transmission: Transmission::Plain,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.add_user("alice", PW, &[]).await;
    let digest = hex::encode(Sha256::digest(format!("{PW}|default")));
    let r = app
        .post(
            "/api/v1/auth/login",
            json!({"identity": "alice", "password": digest, "password_transmission": "hash"}),
            None,
        )
        .await;
    assert_problem(&r, 400, 61000104);
    assert_eq!(app.login("alice", PW).await.status, 200);
    let cfg = app
        .get("/api/v1/public/auth-config/default", None)
        .await
        .body["data"]
        .clone();
    assert_eq!(
        cfg["password_policy"]["accepted_transmissions"],
        json!(["plain"])
    );
    assert_eq!(cfg["password_policy"]["password_transmission"], "plain");
}

#[tokio::test]
async fn auth_config_describes_the_tenant() {
    let app = TestApp::new().await;
    let r = app.get("/api/v1/public/auth-config/default", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["data"];
    assert_eq!(d["tenant_id"], "default");
    assert_eq!(d["display_name"], "Default");
    assert_eq!(
        d["password_policy"]["accepted_transmissions"],
        json!(["plain", "hash", "symmetric", "asymmetric"])
    );
    assert!(
        d["transmission_public_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(d["captcha_enabled"], true);
    assert_eq!(d["silent_challenge_enabled"], true);
    assert_problem(
        &app.get("/api/v1/public/auth-config/nope", None).await,
        404,
        40400001,
    );
}

#[tokio::test]
async fn password_change_applies_rules_history_and_ends_other_sessions() {
    let app = TestApp::with_config(RuntimeConfig {
        password_hashing: small_hashing(),
        policy: TenantPolicy {
            password: PasswordPolicy {
                require_digit: true,
                require_upper: true,
                history: 2,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let first = "First password 1";
    app.add_user("alice", first, &[]).await;
    let mine = app.login("alice", first).await.body;
    let other = app.login("alice", first).await.body;
    let at = mine["access_token"].as_str().unwrap().to_owned();
    let change = |old: &str, new: &str| json!({"old_password": old, "new_password": new});
    let path = "/api/v1/auth/me/password";
    // Wrong current password; rules; the current password again.
    let r = app
        .send_put(path, change("nope", "Second password 2"), &at)
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["field"],
        "old_password"
    );
    let r = app
        .send_put(path, change(first, "no digits or caps"), &at)
        .await;
    let b = assert_problem(&r, 400, 40000001);
    assert_eq!(b["errors"][0]["field"], "new_password");
    assert!(
        b["errors"][0]["description"]
            .as_str()
            .unwrap()
            .contains("digit")
    );
    let r = app.send_put(path, change(first, first), &at).await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["code"],
        "conflict"
    );
    // Hash mode cannot carry a new password the server must check.
    let digest = hex::encode(Sha256::digest(format!("{first}|default")));
    let r = app
        .send_put(path, json!({"old_password": digest, "new_password": digest, "password_transmission": "hash"}), &at)
        .await;
    assert_problem(&r, 400, 61000104);
    // A good change (asymmetric): the other session ends, this one stays.
    let (_, public) = transmission_key(&app).await;
    let enc = |p: &str| {
        STANDARD.encode(
            public
                .encrypt(
                    &mut rand::rngs::OsRng,
                    rsa::Oaep::new::<Sha256>(),
                    p.as_bytes(),
                )
                .unwrap(),
        )
    };
    let r = app
        .send_put(path, json!({"old_password": enc(first), "new_password": enc("Second password 2"), "password_transmission": "asymmetric"}), &at)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.get("/api/v1/auth/me", Some(&at)).await.status, 200);
    assert_problem(
        &app.get("/api/v1/auth/me", other["access_token"].as_str())
            .await,
        401,
        40100002,
    );
    assert_problem(
        &app.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": other["refresh_token"]}),
            None,
        )
        .await,
        400,
        40000202,
    );
    assert_problem(&app.login("alice", first).await, 400, 40000101);
    assert_eq!(app.login("alice", "Second password 2").await.status, 200);
    // History of 2: the first password comes back only after two more changes.
    assert_eq!(
        app.send_put(path, change("Second password 2", "Third password 3"), &at)
            .await
            .status,
        200
    );
    let r = app
        .send_put(path, change("Third password 3", first), &at)
        .await;
    assert_eq!(
        assert_problem(&r, 400, 40000001)["errors"][0]["code"],
        "conflict"
    );
    assert_eq!(
        app.send_put(path, change("Third password 3", "Fourth password 4"), &at)
            .await
            .status,
        200
    );
    assert_eq!(
        app.send_put(path, change("Fourth password 4", first), &at)
            .await
            .status,
        200
    );
}
