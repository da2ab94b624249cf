//! CAPTCHA: single-use proof-of-work challenges (issued, remembered per client address for
//! clients that solve silently, and checked) and Turnstile verification against the
//! provider's verify URL.

use super::error::AuthError;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A proof-of-work challenge as issued.
#[derive(Debug, Clone)]
pub struct PowChallenge {
    /// `cap_...`
    pub id: String,
    /// Random hex string to hash with the nonce.
    pub challenge: String,
    /// Leading hex zeros needed.
    pub difficulty: u32,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The wire name of a provider (`captcha_provider`).
pub fn provider_name(p: keygate_config::CaptchaProvider) -> &'static str {
    match p {
        keygate_config::CaptchaProvider::Pow => "pow",
        keygate_config::CaptchaProvider::Turnstile => "turnstile",
    }
}

/// Key of a stored challenge.
pub fn challenge_key(id: &str) -> String {
    format!("kg:pow:{id}")
}

/// Key of the newest challenge issued to a client address.
pub fn newest_for_address_key(ip: &str) -> String {
    format!("kg:pow:newest:{ip}")
}

/// Whether `token` (`pow_` + base-36 nonce) solves `challenge` at `difficulty`: lowercase hex
/// SHA-256 of `challenge + decimal nonce` starts with `difficulty` zeros.
pub fn pow_solves(challenge: &str, difficulty: u32, token: &str) -> bool {
    let Some(n) = token
        .strip_prefix("pow_")
        .and_then(|b36| u64::from_str_radix(b36, 36).ok())
    else {
        return false;
    };
    let digest = hex::encode(Sha256::digest(format!("{challenge}{n}").as_bytes()));
    digest.bytes().take(difficulty as usize).all(|b| b == b'0')
        && digest.len() >= difficulty as usize
}

/// Finds a nonce for `challenge` (what a client does); for tests and tools.
pub fn solve_pow(challenge: &str, difficulty: u32) -> String {
    let zeros = "0".repeat(difficulty as usize);
    let mut n: u64 = 0;
    loop {
        if hex::encode(Sha256::digest(format!("{challenge}{n}").as_bytes())).starts_with(&zeros) {
            return format!("pow_{}", to_base36(n));
        }
        n += 1;
    }
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Verifies a Turnstile token with the provider (fails closed: an unreachable provider is
/// `Unavailable`, an answer other than success is `CaptchaInvalid`).
pub async fn verify_turnstile(
    client: &reqwest::Client,
    verify_url: &str,
    secret: &str,
    token: &str,
    remote_ip: Option<&str>,
) -> Result<(), AuthError> {
    let mut form = vec![("secret", secret), ("response", token)];
    if let Some(ip) = remote_ip {
        form.push(("remoteip", ip));
    }
    let res = keygate_telemetry::propagation::send(
        client
            .post(verify_url)
            .form(&form)
            .timeout(Duration::from_secs(5)),
        keygate_telemetry::propagation::Url::Path,
    )
    .await
    .map_err(|e| AuthError::Unavailable(format!("turnstile verify: {e}")))?;
    if !res.status().is_success() {
        return Err(AuthError::Unavailable(format!(
            "turnstile verify answered {}",
            res.status()
        )));
    }
    let body: serde_json::Value = res
        .json()
        .await
        .map_err(|e| AuthError::Unavailable(format!("turnstile verify: {e}")))?;
    if body.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(AuthError::CaptchaInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_of_work_are_checked_exactly() {
        let token = solve_pow("abc123", 3);
        assert!(pow_solves("abc123", 3, &token));
        // The same nonce does not meet a much higher difficulty (fixed inputs: deterministic).
        assert!(!pow_solves("abc123", 8, &token));
        let t4 = solve_pow("zzz", 4);
        assert!(pow_solves("zzz", 4, &t4));
        assert!(!pow_solves("zzz", 4, "pow_"));
        assert!(!pow_solves("zzz", 4, "nonce_1"));
        assert!(!pow_solves("zzz", 4, "pow_!!"));
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }
}
