//! Access tokens: the claim set, signing with the active key, and strict verification
//! (known `kid`, the key's own algorithm, issuer, audience, time window).

use super::keys::KeyRing;
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};

/// The actor who signed in on someone's behalf (RFC 8693 §4.1); when the actor was itself
/// acting for someone else, `act` names that earlier actor, and so on down the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's subject.
    pub sub: String,
    /// Why (free text from the issuer of the ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The actor behind this actor (the chain of an impersonated session that issued a
    /// ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Longest actor chain: a session acted in by this many actors issues no further tickets (a
/// chain is never shortened, since its oldest actor is the one an audit needs most).
pub const MAX_ACTOR_DEPTH: usize = 8;

impl Actor {
    /// `sub` acting (for `reason`) in a session whose own actor chain is `behind`.
    pub fn chain(sub: String, reason: Option<String>, behind: Option<Actor>) -> Self {
        Self {
            sub,
            reason,
            act: behind.map(Box::new),
        }
    }

    /// Actors in the chain, this one included.
    pub fn depth(&self) -> usize {
        1 + self.act.as_deref().map_or(0, Actor::depth)
    }
}

/// Claims of a Keygate access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// User id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id; denied after logout until `exp`.
    pub jti: String,
    /// Tenant id.
    pub tid: String,
    /// Session id.
    pub sid: String,
    /// Authentication methods (RFC 8176 style): `pwd`, `otp`, `ticket`, `fed`, ...
    pub amr: Vec<String>,
    /// Present when someone else signed in as the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// Why a token was not accepted; all of them are a 401 to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, bad signature, wrong claims or expired.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// No key is active, so nothing can be signed.
    #[error("no signing key is active")]
    NoActiveKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Seconds of clock skew tolerated between replicas and verifiers.
pub const LEEWAY_SECONDS: u64 = 30;

/// Signs `claims` with the key active at `claims.iat`.
#[tracing::instrument(name = "token.sign", skip_all)]
pub fn sign(ring: &KeyRing, claims: &AccessClaims) -> Result<String, TokenError> {
    let key = ring
        .signing_key(claims.iat)
        .ok_or(TokenError::NoActiveKey)?;
    key.sign_jwt(claims, Some("at+jwt"))
        .map_err(TokenError::Signing)
}

/// Verifies signature, `kid`, algorithm, `iss`, `aud`, `exp` and `nbf` at `now`.
pub fn verify(
    ring: &KeyRing,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<AccessClaims, TokenError> {
    let invalid = |m: &str| TokenError::Invalid(m.to_owned());
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    let kid = header.kid.as_deref().ok_or_else(|| invalid("no kid"))?;
    let (key, alg) = ring
        .verification_key(kid, now)
        .ok_or_else(|| invalid("unknown kid"))?;
    if header.alg != alg {
        return Err(invalid("algorithm does not match the key"));
    }
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    // Time is checked below against the injected clock, not the system clock.
    v.validate_nbf = false;
    v.validate_exp = false;
    v.leeway = 0;
    let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .claims;
    // Saturating: a validly signed `exp` or `nbf` at the ends of the range must not overflow.
    let leeway = LEEWAY_SECONDS as i64;
    if claims.exp.saturating_add(leeway) <= now {
        return Err(invalid("expired"));
    }
    if claims.nbf.saturating_sub(leeway) > now {
        return Err(invalid("not yet valid"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{SigningKey, generate_pem};
    use jsonwebtoken::Header;
    use keygate_config::{SigningAlgorithm, SigningKeyConfig};

    fn ring(kid: &str) -> KeyRing {
        KeyRing::new(vec![
            SigningKey::from_config(&SigningKeyConfig {
                kid: kid.into(),
                algorithm: SigningAlgorithm::ES256,
                private_key_pem: generate_pem(SigningAlgorithm::ES256).unwrap(),
                activates_at: None,
                retires_at: None,
                signs_until: None,
            })
            .unwrap(),
        ])
    }

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://id.example".into(),
            sub: "usr_1".into(),
            aud: "keygate".into(),
            exp: now + 1800,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            tid: "default".into(),
            sid: "ses_1".into(),
            amr: vec!["pwd".into()],
            act: None,
        }
    }

    /// The process's verifier (ring for ECDSA and Ed25519, RustCrypto for RSA) accepts what
    /// the server signs and refuses one changed bit and another key under the same `kid`.
    #[test]
    fn installed_verifier_accepts_own_tokens_and_nothing_else() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = 1_800_000_000;
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            let keys_of = || {
                KeyRing::new(vec![
                    SigningKey::from_config(&SigningKeyConfig {
                        kid: "k1".into(),
                        algorithm: alg,
                        private_key_pem: generate_pem(alg).unwrap(),
                        activates_at: None,
                        retires_at: None,
                        signs_until: None,
                    })
                    .unwrap(),
                ])
            };
            let keys = keys_of();
            // Building a key put ring's verifier in force (before jsonwebtoken's first use).
            assert!(crate::auth::jwt_crypto::install());
            let token = sign(&keys, &claims(now)).unwrap();
            let check = |t: &str, k: &KeyRing| verify(k, t, "https://id.example", "keygate", now);
            assert_eq!(check(&token, &keys).unwrap().sub, "usr_1", "{alg:?}");
            let (head, sig) = token.rsplit_once('.').unwrap();
            let mut sig = b64.decode(sig).unwrap();
            sig[5] ^= 0x01;
            let forged = format!("{head}.{}", b64.encode(sig));
            assert!(check(&forged, &keys).is_err(), "{alg:?}");
            assert!(check(&token, &keys_of()).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn round_trip_and_strict_checks() {
        let r = ring("k1");
        let now = 1_800_000_000;
        let t = sign(&r, &claims(now)).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(
            verify(&r, &t, "https://id.example", "keygate", now).unwrap(),
            claims(now)
        );
        assert!(verify(&r, &t, "https://other", "keygate", now).is_err());
        assert!(verify(&r, &t, "https://id.example", "other", now).is_err());
        assert!(verify(&r, &t, "https://id.example", "keygate", now + 1800 + 31).is_err());
        assert!(verify(&r, &t, "https://id.example", "keygate", now - 31).is_err());
        // A token from another key with the same kid is refused.
        assert!(verify(&ring("k1"), &t, "https://id.example", "keygate", now).is_err());
        // Tampering is refused.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&AccessClaims {
                sub: "usr_admin".into(),
                ..claims(now)
            })
            .unwrap(),
        );
        parts[1] = &forged;
        assert!(verify(&r, &parts.join("."), "https://id.example", "keygate", now).is_err());
    }

    #[test]
    fn times_at_the_ends_of_the_range_do_not_overflow() {
        // Found by fuzzing (fuzz/corpus/access_token/regression-exp-max): `exp + leeway`
        // overflowed, a panic where overflow is checked.
        let r = ring("k1");
        let now = 1_800_000_000;
        let far = AccessClaims {
            exp: i64::MAX,
            ..claims(now)
        };
        let t = sign(&r, &far).unwrap();
        assert_eq!(
            verify(&r, &t, "https://id.example", "keygate", now).unwrap(),
            far
        );
        let early = AccessClaims {
            nbf: i64::MIN,
            ..claims(now)
        };
        let t = sign(&r, &early).unwrap();
        assert!(verify(&r, &t, "https://id.example", "keygate", now).is_err());
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_refused() {
        let r = ring("k1");
        let now = 1_800_000_000;
        let b64 = |v: &serde_json::Value| {
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                serde_json::to_vec(v).unwrap(),
            )
        };
        let body = b64(&serde_json::to_value(claims(now)).unwrap());
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","kid":"k1"})),
            body
        );
        assert!(verify(&r, &none, "https://id.example", "keygate", now).is_err());
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &claims(now),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(verify(&r, &hs, "https://id.example", "keygate", now).is_err());
    }
}
