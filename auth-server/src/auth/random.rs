//! The one source of randomness: identifiers, opaque secrets and salts all come from the
//! operating system's CSPRNG through here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

/// `n` random bytes.
pub fn bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    buf
}

/// An opaque secret of `n` random bytes, base64url without padding.
pub fn secret(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(bytes(n))
}

/// `n` uniformly random decimal digits (one-time codes).
pub fn digits(n: usize) -> String {
    use rand::Rng;
    (0..n)
        .map(|_| char::from(b'0' + OsRng.gen_range(0..10u8)))
        .collect()
}

/// A sortable identifier with a type prefix (`usr_`, `ses_`, `req_`, ...): the prefix and a
/// lowercase ULID (48-bit millisecond time, 80 random bits).
pub fn id(prefix: &str) -> String {
    let ulid = ulid::Ulid::from_parts(
        u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0),
        u128::from_le_bytes({
            let mut b = [0u8; 16];
            OsRng.fill_bytes(&mut b);
            b
        }),
    );
    format!("{prefix}_{}", ulid.to_string().to_ascii_lowercase())
}

/// The at-rest form of an opaque secret (refresh token, later tickets and codes): lowercase
/// hex SHA-256. Secrets carry at least 128 bits of entropy, so a fast hash is enough.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_sortable() {
        let a = id("usr");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = id("usr");
        assert!(a.starts_with("usr_") && a.len() == 30, "{a}");
        assert_ne!(a, b);
        assert!(a < b);
    }

    #[test]
    fn secrets_have_the_requested_entropy() {
        let s = secret(32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s).unwrap().len(), 32);
        assert_ne!(secret(32), s);
        assert_eq!(secret_hash("abc").len(), 64);
        let d = digits(6);
        assert!(d.len() == 6 && d.bytes().all(|b| b.is_ascii_digit()));
    }
}
