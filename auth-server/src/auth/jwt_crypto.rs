//! The signature verification behind `jsonwebtoken` for the whole process: ECDSA (ES256,
//! ES384) and Ed25519 through `ring`, everything else (RSA, HMAC, signing, key utilities)
//! through the crate's RustCrypto provider. Verifying a bearer token is the hot path of every
//! authenticated request, and ring's P-256 verification costs a fraction of the portable one's.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use std::sync::OnceLock;

/// A public key with the ring algorithm that checks signatures under it.
struct RingVerifier {
    algorithm: Algorithm,
    verification: &'static dyn VerificationAlgorithm,
    public_key: Vec<u8>,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        UnparsedPublicKey::new(self.verification, &self.public_key)
            .verify(message, signature)
            .map_err(|_| Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// The ring algorithm for `algorithm` and a key of `family`, when ring verifies it here.
/// ECDSA signatures in a JWS are the fixed-width `r || s`; the keys are SEC1 points and raw
/// Ed25519 keys, as `DecodingKey` holds them.
fn ring_algorithm(
    algorithm: Algorithm,
    family: AlgorithmFamily,
) -> Option<&'static dyn VerificationAlgorithm> {
    match (algorithm, family) {
        (Algorithm::ES256, AlgorithmFamily::Ec) => Some(&signature::ECDSA_P256_SHA256_FIXED),
        (Algorithm::ES384, AlgorithmFamily::Ec) => Some(&signature::ECDSA_P384_SHA384_FIXED),
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => Some(&signature::ED25519),
        _ => None,
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match ring_algorithm(*algorithm, key.family()) {
        Some(verification) => Ok(Box::new(RingVerifier {
            algorithm: *algorithm,
            verification,
            public_key: key.try_get_as_bytes()?.to_vec(),
        })),
        None if key.family() == AlgorithmFamily::Ec || key.family() == AlgorithmFamily::Ed => {
            // A key of one of ring's families under another algorithm: refused, as the
            // RustCrypto provider would.
            Err(ErrorKind::InvalidAlgorithm.into())
        }
        None => (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    }
}

/// Makes this the process's provider; whether it is. It must run before the first use of
/// `jsonwebtoken`, which otherwise settles on the crate's default for good: the server calls
/// it first thing, and so does building a signing key (the library's first use).
pub fn install() -> bool {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        verifier_factory: verifier,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    match provider.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, provider),
    }
}
