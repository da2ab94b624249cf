//! Private-key generation for the key types the configuration holds (PKCS#8 PEM), shared by
//! the server (its development keys) and the operator (the keys of `SigningKey` resources).

use crate::SigningAlgorithm;
use rand::rngs::OsRng;

/// A new private key for `alg` as PKCS#8 PEM; `rsa_bits` sizes RS256 keys (and RSA keys for
/// the `asymmetric` transmission, which are RS256 keys too).
pub fn private_key_pem(alg: SigningAlgorithm, rsa_bits: usize) -> Result<String, String> {
    let pem = match alg {
        SigningAlgorithm::ES256 => {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            p256::SecretKey::random(&mut OsRng)
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| e.to_string())?
                .to_string()
        }
        SigningAlgorithm::EdDSA => {
            use ed25519_dalek::pkcs8::{
                EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
            };
            let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
            KeypairBytes {
                secret_key: sk.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?
            .to_string()
        }
        SigningAlgorithm::RS256 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            if !(2048..=8192).contains(&rsa_bits) {
                return Err(format!("RSA keys need 2048..=8192 bits, not {rsa_bits}"));
            }
            rsa::RsaPrivateKey::new(&mut OsRng, rsa_bits)
                .map_err(|e| e.to_string())?
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| e.to_string())?
                .to_string()
        }
    };
    Ok(pem)
}
