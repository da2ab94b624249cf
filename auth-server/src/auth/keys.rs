//! JWT signing keys: loading them from the runtime configuration or generating the development
//! key in the data directory, choosing the active key by the clock, signing (with ring, whose
//! assembly P-256 is an order of magnitude faster than the portable one), and publishing the
//! JWKS (every pending, active and retiring key).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use keygate_config::{SigningAlgorithm, SigningKeyConfig};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use std::path::Path;
use std::sync::Arc;

/// The private half in ring's form.
enum Signer {
    Ecdsa(EcdsaKeyPair, SystemRandom),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair, SystemRandom),
}

impl Signer {
    fn from_pem(alg: SigningAlgorithm, pem_text: &str) -> Result<Self, String> {
        let block = pem::parse(pem_text).map_err(|e| format!("not PEM: {e}"))?;
        let der = block.contents();
        let rng = SystemRandom::new();
        match (alg, block.tag()) {
            (SigningAlgorithm::ES256, "PRIVATE KEY") => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map(|k| Self::Ecdsa(k, rng))
                    .map_err(|e| format!("not a PKCS#8 P-256 key: {e}"))
            }
            (SigningAlgorithm::EdDSA, "PRIVATE KEY") => {
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map(Self::Ed)
                    .map_err(|e| format!("not a PKCS#8 Ed25519 key: {e}"))
            }
            (SigningAlgorithm::RS256, "PRIVATE KEY") => RsaKeyPair::from_pkcs8(der)
                .map(|k| Self::Rsa(k, rng))
                .map_err(|e| format!("not a PKCS#8 RSA key: {e}")),
            (SigningAlgorithm::RS256, "RSA PRIVATE KEY") => RsaKeyPair::from_der(der)
                .map(|k| Self::Rsa(k, rng))
                .map_err(|e| format!("not a PKCS#1 RSA key: {e}")),
            (_, tag) => Err(format!(
                "unexpected PEM block {tag:?} (expected PRIVATE KEY)"
            )),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Self::Ecdsa(k, rng) => k
                .sign(rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string()),
            Self::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Self::Rsa(k, rng) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, rng, message, &mut sig)
                    .map_err(|e| e.to_string())?;
                Ok(sig)
            }
        }
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM does not hold a private key of the declared algorithm.
    #[error("signing key {kid}: {reason}")]
    Invalid {
        /// The key id.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the development key failed.
    #[error("development signing key at {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        reason: String,
    },
}

/// One usable signing key.
#[derive(Clone)]
pub struct SigningKey {
    /// `kid` in the JWT header and the JWKS.
    pub kid: String,
    /// The JOSE algorithm.
    pub algorithm: Algorithm,
    signer: Arc<Signer>,
    decoding: DecodingKey,
    jwk: Jwk,
    activates_at: Option<i64>,
    retires_at: Option<i64>,
    signs_until: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Builds a key from its configuration; fails if the PEM does not match the algorithm.
    pub fn from_config(c: &SigningKeyConfig) -> Result<Self, KeyError> {
        crate::auth::jwt_crypto::install();
        let invalid = |reason: String| KeyError::Invalid {
            kid: c.kid.clone(),
            reason,
        };
        let pem = c.private_key_pem.as_bytes();
        let (algorithm, encoding) = match c.algorithm {
            SigningAlgorithm::ES256 => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
            SigningAlgorithm::EdDSA => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
            SigningAlgorithm::RS256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
        };
        let encoding = encoding
            .map_err(|e| invalid(format!("not a {} private key: {e}", c.algorithm.as_str())))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm)
            .map_err(|e| invalid(format!("cannot derive the public key: {e}")))?;
        jwk.common.key_id = Some(c.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk)
            .map_err(|e| invalid(format!("cannot build the verification key: {e}")))?;
        let signer = Signer::from_pem(c.algorithm, &c.private_key_pem).map_err(&invalid)?;
        let key = Self {
            kid: c.kid.clone(),
            algorithm,
            signer: Arc::new(signer),
            decoding,
            jwk,
            activates_at: c.activates_at,
            retires_at: c.retires_at,
            signs_until: c.signs_until,
        };
        key.self_test().map_err(invalid)?;
        Ok(key)
    }

    /// Signs a probe token with ring and verifies it with jsonwebtoken, so that a key whose
    /// halves do not match (or that either side reads differently) never goes into service.
    fn self_test(&self) -> Result<(), String> {
        let token = self.sign_jwt(&serde_json::json!({"probe": true}), None)?;
        let mut v = jsonwebtoken::Validation::new(self.algorithm);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &self.decoding, &v)
            .map(|_| ())
            .map_err(|e| format!("signature self-test failed: {e}"))
    }

    /// Unix seconds from which it signs (absent: from when it was loaded).
    pub fn activates_at(&self) -> Option<i64> {
        self.activates_at
    }

    /// A compact JWS of `claims` with this key's `alg` and `kid` (and `typ`, if given).
    pub fn sign_jwt<T: serde::Serialize>(
        &self,
        claims: &T,
        typ: Option<&str>,
    ) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": alg_name(self.algorithm), "kid": self.kid});
        if let Some(typ) = typ {
            header["typ"] = serde_json::Value::String(typ.to_owned());
        }
        let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut jws = URL_SAFE_NO_PAD.encode(header);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let sig = self.signer.sign(jws.as_bytes())?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jws)
    }

    /// The key signs at `now`.
    fn is_active(&self, now: i64) -> bool {
        self.activates_at.is_none_or(|a| a <= now)
            && self.signs_until.is_none_or(|s| now < s)
            && self.is_published(now)
    }

    /// The key is in the JWKS at `now` (pending, active or retiring).
    fn is_published(&self, now: i64) -> bool {
        self.retires_at.is_none_or(|r| now < r)
    }
}

/// Every configured key, immutable; a configuration reload builds a new ring.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// A ring of these keys; at least one must be usable now or later.
    pub fn new(keys: Vec<SigningKey>) -> Self {
        Self { keys }
    }

    /// The key to sign with at `now`: among active keys, the one activated last.
    pub fn signing_key(&self, now: i64) -> Option<&SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.is_active(now))
            .max_by_key(|k| k.activates_at.unwrap_or(i64::MIN))
    }

    /// The verification key for a `kid`, if it is published at `now`.
    pub fn verification_key(&self, kid: &str, now: i64) -> Option<(&DecodingKey, Algorithm)> {
        self.keys
            .iter()
            .find(|k| k.kid == kid && k.is_published(now))
            .map(|k| (&k.decoding, k.algorithm))
    }

    /// The JWKS document at `now`.
    pub fn jwks(&self, now: i64) -> JwkSet {
        JwkSet {
            keys: self
                .keys
                .iter()
                .filter(|k| k.is_published(now))
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }

    /// Algorithms of the published keys, for discovery.
    pub fn algorithms(&self, now: i64) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self
            .keys
            .iter()
            .filter(|k| k.is_published(now))
            .map(|k| alg_name(k.algorithm))
            .collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::RS256 => "RS256",
        _ => "unsupported",
    }
}

/// Generates a new PKCS#8 PEM private key for `alg`.
pub fn generate_pem(alg: SigningAlgorithm) -> Result<String, String> {
    keygate_config::keygen::private_key_pem(alg, 2048)
}

/// Loads the development key for `alg` from `data_dir`, generating and persisting it (mode
/// 0600) on first start. Its `kid` is the RFC 7638 thumbprint, so it is stable across restarts.
pub fn load_or_generate_dev_key(
    data_dir: &Path,
    alg: SigningAlgorithm,
) -> Result<SigningKey, KeyError> {
    let path = data_dir.join(format!(
        "signing-key-{}.pem",
        alg.as_str().to_ascii_lowercase()
    ));
    let io = |reason: String| KeyError::Io {
        path: path.display().to_string(),
        reason,
    };
    let pem = read_or_create_private(&path, || {
        let pem = generate_pem(alg)?;
        tracing::info!(path = %path.display(), algorithm = alg.as_str(), "generated a development signing key");
        Ok(pem)
    })
    .map_err(io)?;
    SigningKey::from_config(&SigningKeyConfig {
        kid: thumbprint_kid(&pem, alg)?,
        algorithm: alg,
        private_key_pem: pem,
        activates_at: None,
        retires_at: None,
        signs_until: None,
    })
}

/// The RFC 7638 SHA-256 thumbprint of a private key's public half: a `kid` that is the same
/// wherever the key is loaded.
pub fn thumbprint_kid(pem: &str, alg: SigningAlgorithm) -> Result<String, KeyError> {
    let key = SigningKey::from_config(&SigningKeyConfig {
        kid: "probe".into(),
        algorithm: alg,
        private_key_pem: pem.to_owned(),
        activates_at: None,
        retires_at: None,
        signs_until: None,
    })?;
    key.jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyError::Invalid {
            kid: "probe".into(),
            reason: e.to_string(),
        })
}

/// A short, stable id for a key file: `k` and 16 hex characters of SHA-256 over its PEM.
pub fn short_fingerprint(pem: &str) -> String {
    use sha2::Digest;
    format!(
        "k{}",
        &hex::encode(sha2::Sha256::digest(pem.trim().as_bytes()))[..16]
    )
}

/// A new signing-key entry for the runtime configuration, `kid` from its thumbprint.
pub fn generate_config(
    alg: SigningAlgorithm,
    activates_at: Option<i64>,
    retires_at: Option<i64>,
) -> Result<SigningKeyConfig, KeyError> {
    let pem = generate_pem(alg).map_err(|reason| KeyError::Invalid {
        kid: "new".into(),
        reason,
    })?;
    Ok(SigningKeyConfig {
        kid: thumbprint_kid(&pem, alg)?,
        algorithm: alg,
        private_key_pem: pem,
        activates_at,
        retires_at,
        signs_until: None,
    })
}

/// The contents of the private file at `path` (a development key in the data directory),
/// creating it from `generate`, readable by its owner only, when there is none. A new file is
/// written aside, flushed and linked into place, so that it appears whole or not at all and
/// is never overwritten: servers starting together on one data directory all end up with the
/// first one. On a filesystem without hard links the file is created in place instead
/// (never overwritten either).
pub(crate) fn read_or_create_private(
    path: &Path,
    generate: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let describe = |e: std::io::Error| format!("{}: {e}", path.display());
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        read => return read.map_err(describe),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(describe)?;
    remove_stale_asides(path);
    let contents = generate()?;
    let aside = aside_path(path);
    write_new_private(&aside, &contents).map_err(|e| format!("{}: {e}", aside.display()))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    let placed = match linked {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            write_new_private(path, &contents)
        }
        other => other,
    };
    match placed {
        Ok(()) => {
            // The new directory entry survives a power loss too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(contents)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(path).map_err(describe)
        }
        Err(e) => Err(describe(e)),
    }
}

/// Fails unless a private file can be created beside `path` (a quick check at start for
/// what is generated later).
pub(crate) fn check_writable(path: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let describe = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(describe)?;
    let probe = aside_path(path);
    write_new_private(&probe, "").map_err(describe)?;
    std::fs::remove_file(&probe).map_err(describe)
}

/// A fresh name beside `path` for a file being written: `.NAME.RANDOM.new`.
fn aside_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    path.with_file_name(format!(".{name}.{}.new", crate::auth::random::secret(9)))
}

/// Removes files left aside for `path` by a process that died between writing and linking
/// (they hold private keys); only those older than a minute, so as not to take one another
/// process is linking right now.
fn remove_stale_asides(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if file.starts_with(&prefix) && file.ends_with(".new") && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes a new file readable by its owner only and flushes it to disk; never overwrites.
fn write_new_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, alg: SigningAlgorithm, a: Option<i64>, r: Option<i64>) -> SigningKey {
        SigningKey::from_config(&SigningKeyConfig {
            kid: kid.into(),
            algorithm: alg,
            private_key_pem: generate_pem(alg).unwrap(),
            activates_at: a,
            retires_at: r,
            signs_until: None,
        })
        .unwrap()
    }

    #[test]
    fn every_algorithm_generates_a_usable_key() {
        for alg in [
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
            SigningAlgorithm::RS256,
        ] {
            let k = key("k", alg, None, None);
            let jwk = serde_json::to_value(&k.jwk).unwrap();
            assert_eq!(jwk["kid"], "k");
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], alg.as_str());
            assert!(
                jwk.get("d").is_none(),
                "private part must never be published: {jwk}"
            );
        }
    }

    #[test]
    fn a_pem_of_the_wrong_type_is_refused() {
        let err = SigningKey::from_config(&SigningKeyConfig {
            kid: "x".into(),
            algorithm: SigningAlgorithm::RS256,
            private_key_pem: generate_pem(SigningAlgorithm::ES256).unwrap(),
            activates_at: None,
            retires_at: None,
            signs_until: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("RS256"), "{err}");
    }

    #[test]
    fn rotation_windows_choose_the_signing_key_and_the_jwks() {
        let ring = KeyRing::new(vec![
            key("old", SigningAlgorithm::ES256, Some(0), Some(2000)),
            key("new", SigningAlgorithm::ES256, Some(1000), None),
        ]);
        // Before the new key activates it is published but not used.
        assert_eq!(ring.signing_key(500).unwrap().kid, "old");
        assert_eq!(ring.jwks(500).keys.len(), 2);
        // After activation the newest active key signs; the old one is still published.
        assert_eq!(ring.signing_key(1500).unwrap().kid, "new");
        assert!(ring.verification_key("old", 1500).is_some());
        // After retirement the old key is gone.
        assert!(ring.verification_key("old", 2000).is_none());
        assert_eq!(ring.jwks(2000).keys.len(), 1);
    }

    #[test]
    fn the_development_key_persists_with_a_stable_kid() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate_dev_key(dir.path(), SigningAlgorithm::ES256).unwrap();
        let b = load_or_generate_dev_key(dir.path(), SigningAlgorithm::ES256).unwrap();
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.kid.len(), 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("signing-key-es256.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn servers_starting_together_agree_on_one_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("data-key");
        let barrier = std::sync::Barrier::new(8);
        let seen: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (path, barrier) = (&path, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        read_or_create_private(path, || Ok(format!("key {i}"))).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(on_disk.starts_with("key "), "{on_disk}");
        assert!(seen.iter().all(|s| *s == on_disk), "{seen:?} vs {on_disk}");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["data-key"], "nothing left aside");
        // A file left aside long ago by a process that died is removed by the next creation.
        let other = dir.path().join("other-key");
        let left = dir.path().join(".other-key.abc.new");
        std::fs::write(&left, "secret").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let fresh = dir.path().join(".other-key.def.new");
        std::fs::write(&fresh, "in flight").unwrap();
        assert_eq!(
            read_or_create_private(&other, || Ok("made".into())).unwrap(),
            "made"
        );
        assert!(!left.exists(), "the stale file is gone");
        assert!(fresh.exists(), "a recent one (another process's) stays");
        // An existing file is read, never regenerated.
        let again = read_or_create_private(&path, || panic!("generated again")).unwrap();
        assert_eq!(again, on_disk);
    }
}
