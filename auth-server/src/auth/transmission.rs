//! Password transmission: turning what a client sent (`plain`, `hash`, `symmetric` or
//! `asymmetric`) into the canonical digest, with the single-use ECDH key exchanges and the
//! tenant's RSA transmission keys this needs.

use super::error::{AuthError, FieldViolation};
use super::password::canonical_digest;
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keygate_config::{Transmission, TransmissionKeyConfig};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;

/// The algorithm name of the `symmetric` mode; also the HKDF `info`.
pub const KEX_ALGORITHM: &str = "ECDH-P256-HKDF-SHA256-AES256GCM";
/// Seconds a key exchange stays usable.
pub const KEX_TTL_SECONDS: u64 = 120;
const P256_POINT_LEN: usize = 65;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// One RSA transmission key.
#[derive(Debug, Clone)]
pub struct TransmissionKey {
    /// Key id.
    pub kid: String,
    private: RsaPrivateKey,
    /// SPKI PEM of the public half, handed to clients.
    pub public_pem: String,
}

impl TransmissionKey {
    /// Parses a configured key.
    pub fn from_config(c: &TransmissionKeyConfig) -> Result<Self, String> {
        let private = RsaPrivateKey::from_pkcs8_pem(&c.private_key_pem)
            .or_else(|_| rsa::pkcs1::DecodeRsaPrivateKey::from_pkcs1_pem(&c.private_key_pem))
            .map_err(|e| format!("transmission key {}: not an RSA private key: {e}", c.kid))?;
        if rsa::traits::PublicKeyParts::size(&private) < 256 {
            return Err(format!(
                "transmission key {}: RSA keys must have at least 2048 bits",
                c.kid
            ));
        }
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            kid: c.kid.clone(),
            private,
            public_pem,
        })
    }
}

/// The development transmission key's file in the data directory.
const DEV_KEY_FILE: &str = "transmission-key-rsa.pem";

/// Loads the development transmission key from `data_dir`, generating it (RSA 2048, mode 0600)
/// on first start.
pub fn load_or_generate_dev_key(data_dir: &Path) -> Result<TransmissionKey, String> {
    let path = data_dir.join(DEV_KEY_FILE);
    let pem = super::keys::read_or_create_private(&path, || {
        let pem = super::keys::generate_pem(keygate_config::SigningAlgorithm::RS256)?;
        tracing::info!(path = %path.display(), "generated a development password-transmission key");
        Ok(pem)
    })?;
    let kid = super::keys::short_fingerprint(&pem);
    TransmissionKey::from_config(&TransmissionKeyConfig {
        kid,
        private_key_pem: pem,
    })
}

/// The development transmission key of a data directory. Loading an existing one is quick
/// and happens at start; generating one (a first start: RSA-2048 takes up to a second) happens
/// in one background task so that the server is ready without waiting for it, and whatever
/// needs the key first (the tenant configuration, an `asymmetric` password) waits for it then.
/// A failed generation is reported to those callers at once and retried by the same task
/// with a growing pause, so callers never start generations of their own.
#[derive(Debug, Clone)]
pub struct DevTransmissionKey {
    key: Arc<std::sync::OnceLock<TransmissionKey>>,
    status: tokio::sync::watch::Receiver<DevKeyStatus>,
}

/// Where the background generation stands.
#[derive(Debug, Clone)]
enum DevKeyStatus {
    Pending,
    /// The key is set.
    Ready,
    /// The last attempt failed (the next one is scheduled).
    Failed(String),
}

/// The longest pause between two attempts to generate the key.
const DEV_KEY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

impl DevTransmissionKey {
    /// Loads the key of `data_dir` if it has one; otherwise checks that a file can be created
    /// there (so that an unwritable directory stops the start, as it always did) and starts
    /// generating the key in the background (must be called within a Tokio runtime).
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(DEV_KEY_FILE);
        match std::fs::metadata(&path) {
            Ok(_) => return Ok(Self::ready(load_or_generate_dev_key(data_dir)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        super::keys::check_writable(&path)?;
        let (tx, status) = tokio::sync::watch::channel(DevKeyStatus::Pending);
        let this = Self {
            key: Arc::default(),
            status,
        };
        let (key, dir) = (this.key.clone(), data_dir.to_path_buf());
        tokio::spawn(async move {
            let mut pause = std::time::Duration::from_secs(1);
            loop {
                let dir = dir.clone();
                let made = tokio::task::spawn_blocking(move || load_or_generate_dev_key(&dir))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match made {
                    Ok(made) => {
                        let _ = key.set(made);
                        let _ = tx.send(DevKeyStatus::Ready);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, retry_in_s = pause.as_secs(), "cannot generate the development password-transmission key");
                        if tx.send(DevKeyStatus::Failed(e)).is_err() {
                            return; // nobody holds the key any more
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(DEV_KEY_RETRY_MAX);
                    }
                }
            }
        });
        Ok(this)
    }

    /// A key that is already there (tests, fixtures).
    pub fn ready(key: TransmissionKey) -> Self {
        let (_, status) = tokio::sync::watch::channel(DevKeyStatus::Ready);
        Self {
            key: Arc::new(std::sync::OnceLock::from(key)),
            status,
        }
    }

    /// The key, waiting for its generation if that is still under way; the error of the
    /// last attempt if it failed.
    pub async fn get(&self) -> Result<&TransmissionKey, String> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let mut status = self.status.clone();
        let outcome = status
            .wait_for(|s| !matches!(s, DevKeyStatus::Pending))
            .await
            .map(|s| s.clone());
        match (self.key.get(), outcome) {
            (Some(key), _) => Ok(key),
            (None, Ok(DevKeyStatus::Failed(e))) => {
                Err(format!("the development transmission key: {e}"))
            }
            (None, _) => Err("the development transmission key is not available".into()),
        }
    }
}

/// The transmission keys in force: the configured ones (the first is the current one), or the
/// development key when the configuration names none.
#[derive(Debug)]
pub enum TransmissionKeys {
    /// From the runtime configuration.
    Configured(Vec<TransmissionKey>),
    /// The data directory's development key.
    Development(DevTransmissionKey),
}

impl TransmissionKeys {
    /// The current key (`kid` absent) or the key with that id, if there is one.
    pub async fn find(&self, kid: Option<&str>) -> Result<Option<&TransmissionKey>, String> {
        Ok(match self {
            Self::Configured(keys) => match kid {
                None => keys.first(),
                Some(kid) => keys.iter().find(|k| k.kid == kid),
            },
            Self::Development(dev) => {
                let key = dev.get().await?;
                kid.is_none_or(|kid| key.kid == kid).then_some(key)
            }
        })
    }
}

/// What the client sent.
#[derive(Debug, Clone, Default)]
pub struct SentPassword {
    /// `password_transmission` (absent: plain).
    pub mode: Option<String>,
    /// `password` (or `old_password`/`new_password`).
    pub value: String,
    /// `key_exchange_id` (symmetric).
    pub key_exchange_id: Option<String>,
    /// `client_pub_key` (symmetric).
    pub client_pub_key: Option<String>,
    /// `key_id` (asymmetric).
    pub key_id: Option<String>,
}

/// The password as the server can use it.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// The password itself (plain, symmetric, asymmetric).
    Plain(String),
    /// Only the canonical digest (hash mode).
    Digest(String),
}

impl Recovered {
    /// The canonical digest for `tenant_id`.
    pub fn digest(&self, tenant_id: &str) -> String {
        match self {
            Self::Plain(p) => canonical_digest(p, tenant_id),
            Self::Digest(d) => d.clone(),
        }
    }
}

/// Parses the mode, refusing unknown names and modes the tenant does not accept.
pub fn mode_of(
    sent: &SentPassword,
    accepted: &[Transmission],
    field: &str,
) -> Result<Transmission, AuthError> {
    let mode = match sent
        .mode
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        None => Transmission::Plain,
        Some(name) => Transmission::parse(name).ok_or_else(|| {
            AuthError::Validation(vec![FieldViolation::new(
                field,
                "format",
                "one of plain, hash, symmetric, asymmetric",
            )])
        })?,
    };
    if accepted.contains(&mode) {
        Ok(mode)
    } else {
        Err(AuthError::TransmissionNotAccepted)
    }
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>, AuthError> {
    STANDARD
        .decode(value.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim()))
        .map_err(|_| {
            AuthError::Validation(vec![FieldViolation::new(field, "format", "must be base64")])
        })
}

/// The `hash` mode: 64 hex characters.
pub fn recover_hash(value: &str, field: &str) -> Result<Recovered, AuthError> {
    let v = value.trim().to_ascii_lowercase();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Recovered::Digest(v))
    } else {
        Err(AuthError::Validation(vec![FieldViolation::new(
            field,
            "format",
            "hash mode: lowercase hex SHA-256 of password + \"|\" + tenant_id",
        )]))
    }
}

/// The `asymmetric` mode: RSA-OAEP (SHA-256) under `key`.
pub fn recover_asymmetric(
    value: &str,
    key: &TransmissionKey,
    field: &str,
) -> Result<Recovered, AuthError> {
    let ct = b64(field, value)?;
    let pt = key
        .private
        .decrypt(Oaep::new::<Sha256>(), &ct)
        .map_err(|_| AuthError::PasswordUndecodable)?;
    utf8(pt)
}

fn utf8(bytes: Vec<u8>) -> Result<Recovered, AuthError> {
    String::from_utf8(bytes)
        .map(Recovered::Plain)
        .map_err(|_| AuthError::PasswordUndecodable)
}

/// A fresh server key pair for one key exchange: the secret scalar (to keep) and the public
/// point (base64 of the 65-byte uncompressed form, to send).
pub fn new_exchange_key() -> (Vec<u8>, String) {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let public = secret.public_key().to_encoded_point(false);
    (
        secret.to_bytes().to_vec(),
        STANDARD.encode(public.as_bytes()),
    )
}

/// The `symmetric` mode: `value` = base64(IV ‖ AES-256-GCM ciphertext+tag ‖ client point),
/// under HKDF-SHA256(ECDH secret, salt = none, info = the algorithm name) or, as deployed
/// clients do, the raw 32-byte ECDH secret; the tag tells which.
pub fn recover_symmetric(
    value: &str,
    client_pub_key: Option<&str>,
    server_secret: &[u8],
    field: &str,
) -> Result<Recovered, AuthError> {
    let blob = b64(field, value)?;
    if blob.len() < GCM_IV_LEN + GCM_TAG_LEN + P256_POINT_LEN {
        return Err(AuthError::PasswordUndecodable);
    }
    let (iv, rest) = blob.split_at(GCM_IV_LEN);
    let (ct, point_in_blob) = rest.split_at(rest.len() - P256_POINT_LEN);
    let point = match client_pub_key.map(str::trim).filter(|s| !s.is_empty()) {
        Some(given) => {
            let given = b64("client_pub_key", given)?;
            if given != point_in_blob {
                return Err(AuthError::PasswordUndecodable);
            }
            given
        }
        None => point_in_blob.to_vec(),
    };
    let client =
        p256::PublicKey::from_sec1_bytes(&point).map_err(|_| AuthError::PasswordUndecodable)?;
    let server = p256::SecretKey::from_slice(server_secret)
        .map_err(|_| AuthError::Internal("stored key-exchange secret is unusable".into()))?;
    let shared = p256::ecdh::diffie_hellman(server.to_nonzero_scalar(), client.as_affine());
    let raw = shared.raw_secret_bytes();
    let mut hkdf_key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(None, &raw[..])
        .expand(KEX_ALGORITHM.as_bytes(), &mut hkdf_key)
        .map_err(|_| AuthError::Internal("hkdf".into()))?;
    let iv: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| AuthError::PasswordUndecodable)?;
    for key in [&hkdf_key[..], &raw[..]] {
        let cipher =
            Aes256Gcm::new_from_slice(key).map_err(|_| AuthError::Internal("aes key".into()))?;
        if let Ok(pt) = cipher.decrypt(&Nonce::from(iv), ct) {
            return utf8(pt);
        }
    }
    Err(AuthError::PasswordUndecodable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::AeadCore;

    fn encrypt(key: &[u8], pt: &[u8], client_point: &[u8]) -> String {
        let cipher = Aes256Gcm::new_from_slice(key).unwrap();
        let iv = Aes256Gcm::generate_nonce(&mut rand::rngs::OsRng);
        let mut blob = iv.to_vec();
        blob.extend(cipher.encrypt(&iv, pt).unwrap());
        blob.extend_from_slice(client_point);
        STANDARD.encode(blob)
    }

    #[test]
    fn symmetric_accepts_the_hkdf_and_the_raw_key() {
        let (server_secret, server_pub) = new_exchange_key();
        let server_point = STANDARD.decode(server_pub).unwrap();
        let client = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let client_point = client
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let shared = p256::ecdh::diffie_hellman(
            client.to_nonzero_scalar(),
            p256::PublicKey::from_sec1_bytes(&server_point)
                .unwrap()
                .as_affine(),
        );
        let raw = shared.raw_secret_bytes().to_vec();
        let mut hk = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, &raw)
            .expand(KEX_ALGORITHM.as_bytes(), &mut hk)
            .unwrap();
        for key in [&hk[..], &raw[..]] {
            let blob = encrypt(key, "pässword".as_bytes(), &client_point);
            match recover_symmetric(
                &blob,
                Some(&STANDARD.encode(&client_point)),
                &server_secret,
                "password",
            )
            .unwrap()
            {
                Recovered::Plain(p) => assert_eq!(p, "pässword"),
                other => panic!("{other:?}"),
            }
        }
        // Another key, a tampered blob, a mismatching client point: refused.
        let blob = encrypt(&[7u8; 32], b"x", &client_point);
        assert!(matches!(
            recover_symmetric(&blob, None, &server_secret, "p"),
            Err(AuthError::PasswordUndecodable)
        ));
        let mut good = STANDARD.decode(encrypt(&hk, b"x", &client_point)).unwrap();
        good[14] ^= 1;
        assert!(recover_symmetric(&STANDARD.encode(&good), None, &server_secret, "p").is_err());
        let other_point = p256::SecretKey::random(&mut rand::rngs::OsRng)
            .public_key()
            .to_encoded_point(false);
        let blob = encrypt(&hk, b"x", &client_point);
        assert!(
            recover_symmetric(
                &blob,
                Some(&STANDARD.encode(other_point.as_bytes())),
                &server_secret,
                "p"
            )
            .is_err()
        );
    }

    #[test]
    fn asymmetric_round_trip() {
        use rsa::RsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        let pem = crate::auth::keys::generate_pem(keygate_config::SigningAlgorithm::RS256).unwrap();
        let key = TransmissionKey::from_config(&TransmissionKeyConfig {
            kid: "t".into(),
            private_key_pem: pem,
        })
        .unwrap();
        let public = RsaPublicKey::from_public_key_pem(&key.public_pem).unwrap();
        let ct = public
            .encrypt(&mut rand::rngs::OsRng, Oaep::new::<Sha256>(), b"secret pw")
            .unwrap();
        match recover_asymmetric(&STANDARD.encode(ct), &key, "password").unwrap() {
            Recovered::Plain(p) => assert_eq!(p, "secret pw"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recover_asymmetric(&STANDARD.encode([1u8; 256]), &key, "p"),
            Err(AuthError::PasswordUndecodable)
        ));
        assert!(matches!(
            recover_asymmetric("%%%", &key, "p"),
            Err(AuthError::Validation(_))
        ));
    }

    #[test]
    fn hash_mode_wants_a_hex_digest_and_modes_follow_the_policy() {
        assert!(recover_hash(&"A".repeat(64), "p").is_ok());
        assert!(recover_hash("abc", "p").is_err());
        let sent = |m: &str| SentPassword {
            mode: Some(m.into()),
            ..Default::default()
        };
        assert_eq!(
            mode_of(&SentPassword::default(), &[Transmission::Plain], "t").unwrap(),
            Transmission::Plain
        );
        assert!(matches!(
            mode_of(&sent("hash"), &[Transmission::Plain], "t"),
            Err(AuthError::TransmissionNotAccepted)
        ));
        assert!(matches!(
            mode_of(&sent("rot13"), &[Transmission::Plain], "t"),
            Err(AuthError::Validation(_))
        ));
    }

    #[tokio::test]
    async fn a_first_start_generates_the_key_in_the_background_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevTransmissionKey::open(dir.path()).unwrap();
        let (a, b) = tokio::join!(key.get(), key.get());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.kid, b.kid);
        assert!(dir.path().join(DEV_KEY_FILE).exists());
        // The next start loads it.
        let again = DevTransmissionKey::open(dir.path()).unwrap();
        assert!(again.key.get().is_some(), "loaded at start");
        assert_eq!(again.get().await.unwrap().kid, a.kid);
    }

    #[tokio::test]
    async fn an_unusable_data_directory_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, "x").unwrap();
        let e = DevTransmissionKey::open(&file).unwrap_err();
        assert!(e.contains("not-a-directory"), "{e}");
    }
}
