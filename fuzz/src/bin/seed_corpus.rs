//! Writes the committed seed corpora (`fuzz/corpus/<target>/`): valid inputs made by the
//! production encoders where there is one (access tokens, proofs of work, configuration) or
//! by a client's side of the protocol (transmission blobs, id_tokens, webhook signatures),
//! and a few edge cases beside each. Run from the repository root:
//! `scripts/fuzz seeds` (it runs the binary built with the fuzz targets).

#![allow(clippy::unwrap_used)] // a generator run by hand: a failure should stop it loudly

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use auth_server::auth::captcha::solve_pow;
use auth_server::auth::tokens::{AccessClaims, Actor, sign};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keygate_config::RuntimeConfig;
use keygate_fuzz::*;
// Linked for its coverage callbacks only: everything in this build is instrumented.
use libfuzzer_sys as _;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs8::DecodePublicKey;
use serde_json::json;
use std::path::Path;

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, rest: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest.as_ref());
    v
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: "usr_1".into(),
        aud: AUDIENCE.into(),
        exp: NOW + 900,
        iat: NOW,
        nbf: NOW,
        jti: "jti_1".into(),
        tid: "default".into(),
        sid: "ses_1".into(),
        amr: vec!["pwd".into()],
        act: None,
    }
}

fn access_tokens() {
    let t = "access_token";
    // Every key of the ring signs (the newest active one is chosen by `sign`), then each
    // algorithm by hand with Keygate's header.
    write(
        t,
        "signed",
        with_mode(b'0', sign(ring(), &claims()).unwrap()),
    );
    let c = serde_json::to_vec(&claims()).unwrap();
    for alg in Alg::ALL {
        let token = sign_raw(alg, &header(alg, Some("at+jwt")), &c);
        write(t, &format!("signed-{}", alg.kid()), with_mode(b'0', token));
    }
    let acting = AccessClaims {
        act: Some(Actor::chain(
            "usr_admin".into(),
            Some("support".into()),
            Some(Actor::chain("usr_root".into(), None, None)),
        )),
        amr: vec!["ticket".into()],
        ..claims()
    };
    write(
        t,
        "payload-act",
        with_mode(b'1', serde_json::to_vec(&acting).unwrap()),
    );
    write(t, "payload-eddsa", with_mode(b'2', &c));
    let expired = AccessClaims {
        exp: NOW - 31,
        ..claims()
    };
    write(
        t,
        "payload-expired",
        with_mode(b'1', serde_json::to_vec(&expired).unwrap()),
    );
    let edge = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": i64::MAX,
                      "nbf": i64::MIN, "iat": 0, "jti": "", "tid": "", "sid": "", "amr": []});
    write(
        t,
        "payload-extreme-times",
        with_mode(b'1', edge.to_string()),
    );
    let max = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": i64::MAX, "nbf": 0,
                     "iat": 0, "jti": "", "tid": "", "sid": "", "amr": []});
    write(t, "regression-exp-max", with_mode(b'1', max.to_string()));
    let retired = br#"{"alg":"ES256","kid":"retired","typ":"at+jwt"}"#;
    write(
        t,
        "header-retired-kid",
        with_mode(b'3', [&retired[..], b"\n", &c].concat()),
    );
    let none = br#"{"alg":"none","kid":"es256"}"#;
    write(
        t,
        "header-alg-none",
        with_mode(b'3', [&none[..], b"\n", &c].concat()),
    );
    let wrong_alg = br#"{"alg":"RS256","kid":"es256"}"#;
    write(
        t,
        "header-wrong-alg",
        with_mode(b'3', [&wrong_alg[..], b"\n", &c].concat()),
    );
    write(t, "malformed", with_mode(b'0', "a.b.c"));
}

fn id_tokens() {
    let t = "id_token";
    let claims = json!({"iss": PROVIDER_ISSUER, "aud": CLIENT_ID, "sub": "alice",
        "iat": NOW - 10, "exp": NOW + 300, "email": "alice@example.com", "email_verified": true});
    let c = claims.to_string();
    for alg in Alg::ALL {
        let token = sign_raw(alg, &header(alg, Some("JWT")), c.as_bytes());
        write(t, &format!("signed-{}", alg.kid()), with_mode(b'0', token));
    }
    write(t, "payload", with_mode(b'1', &c));
    let mut two = claims.clone();
    two["aud"] = json!([CLIENT_ID, "other"]);
    two["azp"] = json!(CLIENT_ID);
    two["nbf"] = json!(NOW - 5);
    two["nonce"] = json!("n");
    write(t, "payload-azp", with_mode(b'1', two.to_string()));
    let mut far = claims.clone();
    far["exp"] = json!(i64::MAX);
    far["iat"] = json!(i64::MIN);
    far["nbf"] = json!(1e300);
    write(t, "payload-extreme-times", with_mode(b'1', far.to_string()));
    let hs = br#"{"alg":"HS256","kid":"es256"}"#;
    write(
        t,
        "header-hmac",
        with_mode(b'2', [&hs[..], b"\n", c.as_bytes()].concat()),
    );
    let unknown = br#"{"alg":"ES256","kid":"nope","typ":"at+jwt"}"#;
    write(
        t,
        "header-unknown-kid",
        with_mode(b'2', [&unknown[..], b"\n", c.as_bytes()].concat()),
    );
    write(t, "malformed", with_mode(b'0', "eyJhbGciOiJub25lIn0.e30."));
}

fn transmission() {
    let t = "transmission";
    let line = |mode: &str, client: &str, kid: &str, value: &str| {
        format!("{mode}\n{client}\n{kid}\n{value}")
    };
    write(t, "plain", line("", "", "", "correct horse battery"));
    let digest = auth_server::auth::password::canonical_digest("pw", "default");
    write(t, "hash", line("hash", "", "", &digest));
    write(t, "unknown-mode", line("rot13", "", "", "x"));

    let public = rsa::RsaPublicKey::from_public_key_pem(&transmission_key().public_pem).unwrap();
    let ct = public
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            "pässword".as_bytes(),
        )
        .unwrap();
    write(
        t,
        "asymmetric",
        line("asymmetric", "", TRANSMISSION_KID, &STANDARD.encode(&ct)),
    );
    write(
        t,
        "asymmetric-url-safe",
        line("asymmetric", "", "", &URL_SAFE_NO_PAD.encode(&ct)),
    );

    // A client's side of the `symmetric` mode against the fixed server key.
    let server = p256::SecretKey::from_slice(&KEX_SECRET)
        .unwrap()
        .public_key();
    let client = p256::SecretKey::from_slice(&[0x44; 32]).unwrap();
    let point = client
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let shared = p256::ecdh::diffie_hellman(client.to_nonzero_scalar(), server.as_affine());
    let raw = shared.raw_secret_bytes().to_vec();
    let mut hk = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, &raw)
        .expand(
            auth_server::auth::transmission::KEX_ALGORITHM.as_bytes(),
            &mut hk,
        )
        .unwrap();
    for (name, key) in [("hkdf", &hk[..]), ("raw", &raw[..])] {
        let iv = [0x55u8; 12];
        let cipher = Aes256Gcm::new_from_slice(key).unwrap();
        let mut blob = iv.to_vec();
        blob.extend(
            cipher
                .encrypt(&Nonce::from(iv), "pässword".as_bytes())
                .unwrap(),
        );
        blob.extend_from_slice(&point);
        let blob = STANDARD.encode(blob);
        write(
            t,
            &format!("symmetric-{name}"),
            line("symmetric", "", "", &blob),
        );
        if name == "hkdf" {
            let given = STANDARD.encode(&point);
            write(
                t,
                "symmetric-client-key",
                line("symmetric", &given, "", &blob),
            );
        }
    }
    let short = STANDARD.encode([0u8; 92]);
    write(t, "symmetric-short", line("symmetric", "", "", &short));
}

fn pow() {
    let t = "pow";
    for d in 1..=4 {
        let challenge = format!("{:032x}", 0xc0ffee_u128 * d as u128);
        let token = solve_pow(&challenge, d);
        write(
            t,
            &format!("solved-{d}"),
            format!("{challenge}\n{d}\n{token}"),
        );
    }
    write(t, "empty-nonce", "abc\n4\npow_");
    write(t, "signed-nonce", "abc\n1\npow_+1");
    write(t, "overflowing-nonce", "abc\n1\npow_zzzzzzzzzzzzzzzzzzzzz");
    write(t, "huge-difficulty", "abc\n4294967295\npow_1");
}

fn webhook() {
    let t = "webhook_signature";
    let body = r#"{"channel":"sms","target":"+14155550123","code":"482913","expires_in":300}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{NOW}.{body}").as_bytes());
    let valid = format!("t={NOW},v1={}", hex::encode(tag.as_ref()));
    write(t, "valid", format!("{valid}\n{body}"));
    write(
        t,
        "valid-spaced",
        format!(" v1={}, t={NOW} \n{body}", hex::encode(tag.as_ref())),
    );
    write(
        t,
        "old",
        format!("t={},v1={}\n{body}", NOW - 301, hex::encode(tag.as_ref())),
    );
    write(t, "no-v1", format!("t={NOW}\n{body}"));
    write(t, "odd-hex", format!("t={NOW},v1=abc\n{body}"));
    write(t, "regression-t-min", format!("t={},v1=00\nx", i64::MIN));
}

fn config() {
    let t = "config";
    write(t, "empty-json", with_mode(b'0', "{}"));
    write(t, "empty-toml", with_mode(b'1', ""));
    let full = RuntimeConfig::default();
    write(
        t,
        "defaults-json",
        with_mode(b'0', serde_json::to_string(&full).unwrap()),
    );
    let policy = r#"{"policy":{"password":{"accepted_transmissions":["plain","hash","symmetric","asymmetric"]},
 "captcha":{"mode":"after_failures","after_failures":3},"lockout":{"delay_after":3,"lock_after":10},
 "risk":{"deny_list":["10.0.0.0/8","2001:db8::/32"]}},
 "tenants":{"acme":{"password":{"accepted_transmissions":["asymmetric"],"preferred_transmission":"asymmetric"}}},
 "rate_limits":{"trusted_proxies":["10.0.0.0/8","::ffff:0:0/96"],"forwarded_header":"forwarded",
  "rules":[{"name":"login-per-ip","endpoints":["login"],"key":"client_ip","limit":5,"window_seconds":60}]},
 "oidc_providers":[{"name":"corp","issuer":"https://id.example","client_id":"keygate","provisioning":"create"}]}"#;
    write(t, "policy-json", with_mode(b'0', policy));
    let keys = json!({"signing_keys": [{"kid": "es", "algorithm": "ES256",
        "private_key_pem": pem(Alg::Es256), "activates_at": NOW, "retires_at": NOW + 60}]});
    write(t, "signing-key-json", with_mode(b'0', keys.to_string()));
    let toml = r#"[tokens]
audience = "keygate"
access_token_ttl_seconds = 900

[policy.captcha]
mode = "always"
provider = "pow"
pow_difficulty = 4

[policy.risk.weights]
new_device = 25

[[rate_limits.rules]]
name = "login-per-ip"
endpoints = ["login"]
key = "client_ip"
limit = 60
window_seconds = 60
"#;
    write(t, "policy-toml", with_mode(b'1', toml));
}

fn main() {
    access_tokens();
    id_tokens();
    transmission();
    pow();
    webhook();
    config();
}
