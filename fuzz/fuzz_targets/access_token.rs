//! Fuzzes access-token verification (`auth::tokens::verify` over the key ring of
//! `auth::keys`), which every bearer token reaches. The first byte chooses what the rest is:
//! a token as sent; a payload signed by one of the ring's keys under Keygate's own header;
//! or a header and a payload (one line each) signed by the P-256 key. Signing inside the
//! target lets the fuzzer past the signature to the claim checks; whatever verifies must
//! hold Keygate's issuer, audience and a time window around the clock.
#![no_main]

use auth_server::auth::tokens::{LEEWAY_SECONDS, TokenError, verify};
use keygate_fuzz::{AUDIENCE, Alg, ISSUER, NOW, TokenInput, ring};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = match mode % 4 {
        0 => TokenInput::Sent,
        1 => TokenInput::Payload(Alg::Es256),
        2 => TokenInput::Payload(Alg::EdDsa),
        _ => TokenInput::HeaderAndPayload(Alg::Es256),
    };
    let Some(token) = input.token(rest, Some("at+jwt")) else {
        return;
    };
    match verify(ring(), &token, ISSUER, AUDIENCE, NOW) {
        Ok(claims) => {
            let leeway = LEEWAY_SECONDS as i64;
            assert_eq!(claims.iss, ISSUER);
            assert_eq!(claims.aud, AUDIENCE);
            assert!(
                claims.exp.saturating_add(leeway) > NOW,
                "expired token accepted"
            );
            assert!(
                claims.nbf.saturating_sub(leeway) <= NOW,
                "future token accepted"
            );
        }
        Err(TokenError::Invalid(_)) => {}
        // Verification never signs: these would be a 500 for a bad token.
        Err(e) => panic!("verification failed with {e:?}"),
    }
});
