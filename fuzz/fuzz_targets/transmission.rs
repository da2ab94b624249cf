//! Fuzzes the password-transmission decoders (`auth::transmission`) with what a sign-in body
//! carries: `password_transmission`, `password`, `client_pub_key` and `key_id`, one per line.
//! The mode decides the decoder as sign-in does; every failure must be a client error.
#![no_main]

use auth_server::auth::error::AuthError;
use auth_server::auth::transmission::{
    Recovered, SentPassword, mode_of, recover_asymmetric, recover_hash, recover_symmetric,
};
use keygate_config::Transmission;
use keygate_fuzz::{KEX_SECRET, fields, optional, transmission_key};
use libfuzzer_sys::fuzz_target;

const EVERY_MODE: [Transmission; 4] = [
    Transmission::Plain,
    Transmission::Hash,
    Transmission::Symmetric,
    Transmission::Asymmetric,
];

fn recover(sent: &SentPassword) -> Result<Recovered, AuthError> {
    let field = "password";
    match mode_of(sent, &EVERY_MODE, "password_transmission")? {
        Transmission::Plain => Ok(Recovered::Plain(sent.value.clone())),
        Transmission::Hash => recover_hash(&sent.value, field),
        Transmission::Asymmetric => {
            let key = transmission_key();
            match sent.key_id.as_deref() {
                Some(kid) if kid != key.kid => Err(AuthError::Validation(Vec::new())),
                _ => recover_asymmetric(&sent.value, key, field),
            }
        }
        Transmission::Symmetric => recover_symmetric(
            &sent.value,
            sent.client_pub_key.as_deref(),
            &KEX_SECRET,
            field,
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(f) = fields(data, 4) else { return };
    let sent = SentPassword {
        mode: optional(f[0]).map(str::to_owned),
        value: f[3].to_owned(),
        key_exchange_id: Some("kex_fuzz".into()),
        client_pub_key: optional(f[1]).map(str::to_owned),
        key_id: optional(f[2]).map(str::to_owned),
    };
    match recover(&sent) {
        Ok(recovered) => {
            let digest = recovered.digest("default");
            assert_eq!(digest.len(), 64, "a canonical digest is 64 hex characters");
        }
        // A 500 for what a client sent would be a bug: the key and the exchange are sound.
        Err(AuthError::Internal(e)) => panic!("internal error from client input: {e}"),
        Err(_) => {}
    }
});
