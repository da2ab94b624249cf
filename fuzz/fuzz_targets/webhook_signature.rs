//! Fuzzes the SMS webhook's signature check (`delivery::verify_signature`): the
//! `x-keygate-signature` header on the first line, the body after it, checked with the
//! fixture secret at a fixed clock. An accepted signature is never older than the tolerance.
#![no_main]

use auth_server::delivery::verify_signature;
use keygate_fuzz::{NOW, WEBHOOK_MAX_AGE, WEBHOOK_SECRET, fields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(f) = fields(data, 2) else { return };
    let (header, body) = (f[0], f[1]);
    if verify_signature(WEBHOOK_SECRET, header, body, NOW, WEBHOOK_MAX_AGE) {
        assert!(
            header.contains("v1="),
            "accepted without a v1 signature: {header:?}"
        );
    }
});
