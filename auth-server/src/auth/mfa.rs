//! Second factors: RFC 6238 TOTP (SHA-1, 6 digits, 30 s, one step of skew, each step usable
//! once), one-time backup codes (stored as keyed hashes), the encryption of TOTP secrets at
//! rest, and the single-use MFA challenge that stands between a password and the tokens.

use super::error::AuthError;
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use std::path::Path;

/// TOTP period in seconds.
pub const PERIOD: i64 = 30;
/// TOTP digits.
pub const DIGITS: u32 = 6;
/// Backup codes handed out when TOTP is activated.
pub const BACKUP_CODES: usize = 10;

/// The key that encrypts stored TOTP secrets and keys backup-code hashes.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; 32],
    /// Short id stored with each ciphertext, to tell a wrong key from a damaged secret.
    pub id: String,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A key from 32 bytes.
    pub fn new(key: [u8; 32]) -> Self {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &key),
            b"keygate data key id",
        );
        Self {
            key,
            id: hex::encode(&tag.as_ref()[..4]),
        }
    }

    /// A key from base64 text (32 bytes).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "the data key must be base64".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the data key must be 32 bytes".to_owned())?;
        Ok(Self::new(key))
    }

    /// Loads the data key from `data_dir`, generating it (mode 0600) on first start.
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join("data-key");
        let text = super::keys::read_or_create_private(&path, || {
            Ok(STANDARD.encode(super::random::bytes(32)))
        })?;
        Self::from_base64(&text)
    }

    /// `id:base64(nonce ‖ ciphertext)`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, AuthError> {
        let cipher = Aes256Gcm::new_from_slice(&self.key)
            .map_err(|_| AuthError::Internal("data key".into()))?;
        let nonce: [u8; 12] = super::random::bytes(12)
            .try_into()
            .map_err(|_| AuthError::Internal("nonce".into()))?;
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt(&Nonce::from(nonce), plaintext)
                .map_err(|_| AuthError::Internal("seal".into()))?,
        );
        Ok(format!("{}:{}", self.id, STANDARD.encode(out)))
    }

    /// Opens what `seal` made.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, AuthError> {
        let (id, b64) = sealed
            .split_once(':')
            .ok_or_else(|| AuthError::Internal("sealed secret is malformed".into()))?;
        if id != self.id {
            return Err(AuthError::Internal(format!(
                "sealed with data key {id}, but the server has {}",
                self.id
            )));
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| AuthError::Internal("sealed secret is malformed".into()))?;
        if blob.len() < 12 {
            return Err(AuthError::Internal("sealed secret is malformed".into()));
        }
        let (nonce, ct) = blob.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| AuthError::Internal("nonce".into()))?;
        Aes256Gcm::new_from_slice(&self.key)
            .map_err(|_| AuthError::Internal("data key".into()))?
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| AuthError::Internal("sealed secret does not open".into()))
    }

    /// Keyed hash of a backup code (normalised: lowercase, no separators).
    pub fn backup_code_hash(&self, user_id: &str, code: &str) -> String {
        let normalised: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        self.keyed_hash(&format!("backup|{user_id}|{normalised}"))
    }

    /// HMAC-SHA256 under the data key, lowercase hex: the at-rest form of short secrets
    /// (backup codes, one-time codes) that a plain hash would not protect.
    pub fn keyed_hash(&self, input: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        hex::encode(hmac::sign(&key, input.as_bytes()))
    }
}

/// RFC 4648 base32 without padding (what authenticator apps read).
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(ALPHABET[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The TOTP code of `secret` for time step `step`.
pub fn totp_at(secret: &[u8], step: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let offset = (mac[mac.len() - 1] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The time step a code matches at `now` (one step of skew either way), if any.
pub fn totp_match(secret: &[u8], code: &str, now: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now.div_euclid(PERIOD);
    [current, current - 1, current + 1]
        .into_iter()
        .find(|step| {
            let expected = totp_at(secret, *step);
            bool::from(subtle::ConstantTimeEq::ct_eq(
                expected.as_bytes(),
                code.as_bytes(),
            ))
        })
}

/// An `otpauth://` URI for authenticator apps.
pub fn otpauth_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// Fresh backup codes: `xxxxx-xxxxx`, 50 random bits each.
pub fn new_backup_codes() -> Vec<String> {
    (0..BACKUP_CODES)
        .map(|_| {
            let s = base32(&super::random::bytes(7)).to_ascii_lowercase();
            format!("{}-{}", &s[..5], &s[5..10])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1 seed, truncated to 6 digits.
        let seed = b"12345678901234567890";
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(totp_at(seed, t / PERIOD), code, "t={t}");
        }
    }

    #[test]
    fn skew_is_one_step() {
        let seed = b"12345678901234567890";
        let now = 1_234_567_890;
        let code = totp_at(seed, now / PERIOD - 1);
        assert_eq!(totp_match(seed, &code, now), Some(now / PERIOD - 1));
        let old = totp_at(seed, now / PERIOD - 2);
        assert_eq!(totp_match(seed, &old, now), None);
        assert_eq!(totp_match(seed, "12345", now), None);
        assert_eq!(totp_match(seed, "abcdef", now), None);
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn sealing_round_trips_and_detects_the_wrong_key() {
        let k = DataKey::new([7u8; 32]);
        let sealed = k.seal(b"secret").unwrap();
        assert_eq!(k.open(&sealed).unwrap(), b"secret");
        assert!(DataKey::new([8u8; 32]).open(&sealed).is_err());
        assert_ne!(
            k.backup_code_hash("u", "abcde-fghij"),
            k.backup_code_hash("v", "abcde-fghij")
        );
        assert_eq!(
            k.backup_code_hash("u", "ABCDE FGHIJ"),
            k.backup_code_hash("u", "abcde-fghij")
        );
    }
}
