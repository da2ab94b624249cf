//! Fuzzes the proof-of-work check (`auth::captcha::pow_solves`) with the token a client
//! sends, against a challenge and difficulty (first and second line; the rest is the token).
//! A token that solves a difficulty solves every lower one, and is a `pow_` token.
#![no_main]

use auth_server::auth::captcha::pow_solves;
use keygate_fuzz::fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(f) = fields(data, 3) else { return };
    let (challenge, token) = (f[0], f[2]);
    // The server's difficulties are 1..=8; the check must hold for any stored number.
    let difficulty = f[1].parse::<u32>().unwrap_or(0);
    if pow_solves(challenge, difficulty, token) {
        assert!(token.starts_with("pow_"));
        if difficulty > 0 {
            assert!(pow_solves(challenge, difficulty - 1, token));
        }
    }
});
