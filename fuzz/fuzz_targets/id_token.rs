//! Fuzzes id_token validation (`keygate_oidc::validate`, which federated sign-in and
//! ServiceAccount callers go through) against a provider whose JWKS holds the fixture keys.
//! The first byte chooses what the rest is: a token as sent; claims signed by the P-256 key
//! under a plain header; or a header and claims (one line each) signed by the P-256 key.
//! Whatever validates must name the provider, our client and a live time window.
#![no_main]

use keygate_fuzz::{Alg, CLIENT_ID, NOW, PROVIDER_ISSUER, TokenInput, provider, provider_keys};
use keygate_oidc::{Invalid, validate};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = match mode % 3 {
        0 => TokenInput::Sent,
        1 => TokenInput::Payload(Alg::Es256),
        _ => TokenInput::HeaderAndPayload(Alg::Es256),
    };
    let Some(token) = input.token(rest, None) else {
        return;
    };
    let p = provider();
    match validate(p, provider_keys(), &token, NOW) {
        Ok(claims) => {
            let skew = p.clock_skew_seconds as i64;
            assert_eq!(claims["iss"], PROVIDER_ISSUER);
            let aud_ok = match &claims["aud"] {
                Value::String(a) => a == CLIENT_ID,
                Value::Array(a) => a.iter().any(|a| a == CLIENT_ID),
                _ => false,
            };
            assert!(aud_ok, "audience without our client: {}", claims["aud"]);
            let exp = claims["exp"].as_i64().unwrap_or(i64::MIN);
            assert!(exp.saturating_add(skew) > NOW, "expired id_token accepted");
            let sub = claims["sub"].as_str().unwrap_or_default();
            assert!(!sub.is_empty() && sub.len() <= 255);
        }
        Err(Invalid::UnknownKey | Invalid::Refused(_)) => {}
    }
});
