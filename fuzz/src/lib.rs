//! Fixed inputs of the fuzz targets: deterministic keys (so that the committed seeds, signed or
//! encrypted once, verify in every run), the key ring, transmission key, OpenID provider and
//! development keys the production decoders are called with, and the input splitting the
//! targets share. None of these keys protects anything: they exist only for fuzzing.

use auth_server::auth::DevKeys;
use auth_server::auth::keys::{KeyRing, SigningKey};
use auth_server::auth::transmission::TransmissionKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_config::{
    OidcProviderConfig, SigningAlgorithm, SigningKeyConfig, TransmissionKeyConfig,
};
use keygate_oidc::Keys;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use std::sync::OnceLock;

/// The clock of every target (Unix seconds).
pub const NOW: i64 = 1_800_000_000;
/// Keygate's own issuer (`iss` of access tokens).
pub const ISSUER: &str = "https://keygate.fuzz";
/// The access tokens' audience.
pub const AUDIENCE: &str = "keygate";
/// The external OpenID provider's issuer.
pub const PROVIDER_ISSUER: &str = "https://id.fuzz";
/// Keygate's client id at that provider.
pub const CLIENT_ID: &str = "keygate-client";
/// The SMS webhook's shared secret.
pub const WEBHOOK_SECRET: &str = "fuzz-webhook-secret";
/// How old a webhook signature may be.
pub const WEBHOOK_MAX_AGE: i64 = 300;
/// The server's secret scalar of the one `symmetric` key exchange.
pub const KEX_SECRET: [u8; 32] = [0x33; 32];
/// Kid of the transmission key.
pub const TRANSMISSION_KID: &str = "t1";

/// A 2048-bit RSA key made once with openssl (RS256 signing and `asymmetric` transmission).
pub const RSA_PEM: &str = include_str!("../fixtures/rsa-2048.pem");

/// The algorithms of the signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// P-256, kid `es256`.
    Es256,
    /// Ed25519, kid `eddsa`.
    EdDsa,
    /// RSA, kid `rs256`.
    Rs256,
}

impl Alg {
    /// Every algorithm.
    pub const ALL: [Alg; 3] = [Alg::Es256, Alg::EdDsa, Alg::Rs256];

    /// The key's `kid` (the same in Keygate's ring and the provider's JWKS).
    pub fn kid(self) -> &'static str {
        match self {
            Alg::Es256 => "es256",
            Alg::EdDsa => "eddsa",
            Alg::Rs256 => "rs256",
        }
    }

    /// The JOSE name.
    pub fn jose(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Rs256 => "RS256",
        }
    }

    fn config(self) -> SigningAlgorithm {
        match self {
            Alg::Es256 => SigningAlgorithm::ES256,
            Alg::EdDsa => SigningAlgorithm::EdDSA,
            Alg::Rs256 => SigningAlgorithm::RS256,
        }
    }
}

/// The PKCS#8 PEM of `alg`'s key: fixed scalars for P-256 and Ed25519, the fixture for RSA.
pub fn pem(alg: Alg) -> String {
    match alg {
        Alg::Es256 => {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            p256::SecretKey::from_slice(&[0x11; 32])
                .and_then(|k| {
                    k.to_pkcs8_pem(LineEnding::LF)
                        .map_err(|_| p256::elliptic_curve::Error)
                })
                .map(|p| p.to_string())
                .unwrap_or_default()
        }
        Alg::EdDsa => {
            use ed25519_dalek::pkcs8::{
                EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
            };
            KeypairBytes {
                secret_key: [0x22; 32],
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default()
        }
        Alg::Rs256 => RSA_PEM.to_owned(),
    }
}

fn config(alg: Alg, kid: &str, retires_at: Option<i64>) -> SigningKeyConfig {
    SigningKeyConfig {
        kid: kid.to_owned(),
        algorithm: alg.config(),
        private_key_pem: pem(alg),
        activates_at: None,
        retires_at,
        signs_until: None,
    }
}

fn signing_key(c: &SigningKeyConfig) -> SigningKey {
    SigningKey::from_config(c).unwrap_or_else(|e| panic!("fixture key: {e}"))
}

/// Keygate's key ring: one key of each algorithm, and a P-256 key (`retired`) retired before
/// [`NOW`].
pub fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let mut keys: Vec<SigningKey> = Alg::ALL
            .iter()
            .map(|a| signing_key(&config(*a, a.kid(), None)))
            .collect();
        keys.push(signing_key(&config(Alg::Es256, "retired", Some(NOW - 1))));
        KeyRing::new(keys)
    })
}

enum RawSigner {
    Ecdsa(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

fn raw_signer(alg: Alg) -> &'static RawSigner {
    static SIGNERS: OnceLock<Vec<RawSigner>> = OnceLock::new();
    let signers = SIGNERS.get_or_init(|| {
        Alg::ALL
            .iter()
            .map(|a| {
                let block = pem::parse(pem(*a)).unwrap_or_else(|e| panic!("fixture PEM: {e}"));
                let der = block.contents();
                let made = match a {
                    Alg::Es256 => EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        der,
                        &SystemRandom::new(),
                    )
                    .map(RawSigner::Ecdsa)
                    .map_err(|e| e.to_string()),
                    Alg::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map(RawSigner::Ed)
                        .map_err(|e| e.to_string()),
                    Alg::Rs256 => RsaKeyPair::from_pkcs8(der)
                        .map(RawSigner::Rsa)
                        .map_err(|e| e.to_string()),
                };
                made.unwrap_or_else(|e| panic!("fixture key: {e}"))
            })
            .collect()
    });
    &signers[Alg::ALL.iter().position(|a| *a == alg).unwrap_or(0)]
}

/// A compact JWS over any header and payload bytes, signed by `alg`'s key: what lets the
/// fuzzer reach the claim checks behind the signature.
pub fn sign_raw(alg: Alg, header: &[u8], payload: &[u8]) -> String {
    let mut jws = URL_SAFE_NO_PAD.encode(header);
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let rng = SystemRandom::new();
    let sig = match raw_signer(alg) {
        RawSigner::Ecdsa(k) => k
            .sign(&rng, jws.as_bytes())
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default(),
        RawSigner::Ed(k) => k.sign(jws.as_bytes()).as_ref().to_vec(),
        RawSigner::Rsa(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(&signature::RSA_PKCS1_SHA256, &rng, jws.as_bytes(), &mut sig)
                .map(|()| sig)
                .unwrap_or_default()
        }
    };
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(sig));
    jws
}

/// The JOSE header Keygate and the provider put on tokens of `alg`'s key.
pub fn header(alg: Alg, typ: Option<&str>) -> Vec<u8> {
    let mut h = serde_json::json!({"alg": alg.jose(), "kid": alg.kid()});
    if let Some(typ) = typ {
        h["typ"] = typ.into();
    }
    h.to_string().into_bytes()
}

/// What the rest of a token target's input is, after the byte that chose it.
#[derive(Debug, Clone, Copy)]
pub enum TokenInput {
    /// A token as sent.
    Sent,
    /// A payload, signed by the key under its usual header.
    Payload(Alg),
    /// A header and a payload, one line each, signed by the key.
    HeaderAndPayload(Alg),
}

impl TokenInput {
    /// The token to check (`typ` goes into the usual header); `None` for a sent token that is
    /// not UTF-8.
    pub fn token(self, rest: &[u8], typ: Option<&str>) -> Option<String> {
        match self {
            Self::Sent => std::str::from_utf8(rest).ok().map(str::to_owned),
            Self::Payload(alg) => Some(sign_raw(alg, &header(alg, typ), rest)),
            Self::HeaderAndPayload(alg) => {
                let (h, p) = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => (rest, &[][..]),
                };
                Some(sign_raw(alg, h, p))
            }
        }
    }
}

/// The `asymmetric` transmission key (the RSA fixture, kid [`TRANSMISSION_KID`]).
pub fn transmission_key() -> &'static TransmissionKey {
    static KEY: OnceLock<TransmissionKey> = OnceLock::new();
    KEY.get_or_init(|| {
        TransmissionKey::from_config(&TransmissionKeyConfig {
            kid: TRANSMISSION_KID.to_owned(),
            private_key_pem: RSA_PEM.to_owned(),
        })
        .unwrap_or_else(|e| panic!("fixture transmission key: {e}"))
    })
}

/// The external provider: RS256, ES256 and EdDSA allowed, default leeway.
pub fn provider() -> &'static OidcProviderConfig {
    static PROVIDER: OnceLock<OidcProviderConfig> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        serde_json::from_value(serde_json::json!({
            "name": "fuzz",
            "issuer": PROVIDER_ISSUER,
            "client_id": CLIENT_ID,
            "allowed_algorithms": ["RS256", "ES256", "EdDSA"],
        }))
        .unwrap_or_else(|e| panic!("fixture provider: {e}"))
    })
}

/// The provider's key set: Keygate's own JWKS of the fixture keys at [`NOW`], as the
/// provider would publish it.
pub fn provider_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let jwks = serde_json::to_value(ring().jwks(NOW)).unwrap_or_default();
        serde_json::from_value(jwks).unwrap_or_else(|e| panic!("fixture JWKS: {e}"))
    })
}

/// The development keys a configuration without keys falls back to.
pub fn dev_keys() -> &'static DevKeys {
    static DEV: OnceLock<DevKeys> = OnceLock::new();
    DEV.get_or_init(|| DevKeys {
        signing: Some(signing_key(&config(Alg::Es256, "dev", None))),
        transmission: Some(
            auth_server::auth::transmission::DevTransmissionKey::ready(transmission_key().clone()),
        ),
    })
}

/// Splits a text input into `n` fields at newlines (the last field takes the rest, newlines
/// included; missing fields are empty). Inputs that are not UTF-8 are skipped: every decoder
/// here takes a `&str` that came out of a JSON body or an HTTP header.
pub fn fields(data: &[u8], n: usize) -> Option<Vec<&str>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut out: Vec<&str> = text.splitn(n, '\n').collect();
    out.resize(n, "");
    Some(out)
}

/// `Some(s)` unless `s` is empty (an absent optional field).
pub fn optional(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}
