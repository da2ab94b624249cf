//! The benchmark's OpenID issuer: a discovery document and a JWKS served over HTTP on
//! 127.0.0.1, and RS256 id_tokens signed in process, so that id-token sign-in is measured
//! with tokens made beforehand (a provider's login flow per token would bound the run, not
//! Keygate). The federation tests use a real provider; here only Keygate's side is timed.

use anyhow::{Context, Result};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The client id Keygate is registered under at this issuer.
pub const CLIENT_ID: &str = "keygate-bench";

/// An issuer on a free port; stops when dropped.
pub struct Issuer {
    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub url: String,
    key: Arc<EncodingKey>,
    next: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

const KID: &str = "bench-rs256";

impl Issuer {
    /// Generates a 2048-bit RSA key and serves its discovery document and keys.
    pub async fn start() -> Result<Self> {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": b64(private.n().to_bytes_be()), "e": b64(private.e().to_bytes_be()),
        }]});
        let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)?;
        let key = Arc::new(EncodingKey::from_rsa_pem(pem.as_bytes())?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let discovery = json!({
            "issuer": url,
            "authorization_endpoint": format!("{url}/authorize"),
            "token_endpoint": format!("{url}/token"),
            "jwks_uri": format!("{url}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || async move { axum::Json(jwks) }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            key,
            next: AtomicU64::new(0),
            task,
        })
    }

    /// Keygate's `oidc_providers` entry for this issuer: accounts linked on first sign-in
    /// by creation, every token single use.
    pub fn provider_config(&self, name: &str) -> Value {
        json!({
            "name": name,
            "issuer": self.url,
            "client_id": CLIENT_ID,
            "allowed_algorithms": ["RS256"],
            "provisioning": "create",
            "allow_http": true,
        })
    }

    /// `n` id_tokens for subject `sub(i)` (`i` in `0..n`), each with its own `jti`, valid
    /// for ten minutes; signed on every CPU.
    pub async fn id_tokens(&self, n: usize, sub: impl Fn(usize) -> String) -> Result<Vec<String>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        let subjects: Vec<String> = (0..n).map(sub).collect();
        let mut parts = Vec::new();
        let per_thread = n.div_ceil(threads).max(1);
        for (t, chunk) in subjects.chunks(per_thread).enumerate() {
            let (key, iss, chunk) = (self.key.clone(), self.url.clone(), chunk.to_vec());
            let offset = first + (t * per_thread) as u64;
            parts.push(tokio::task::spawn_blocking(move || {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(KID.into());
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, sub)| {
                        let claims = json!({
                            "iss": iss, "aud": CLIENT_ID, "sub": sub,
                            "iat": now, "exp": now + 600,
                            "jti": format!("bench-{}", offset + i as u64),
                        });
                        jsonwebtoken::encode(&header, &claims, &key).context("signing an id_token")
                    })
                    .collect::<Result<Vec<_>>>()
            }));
        }
        let mut tokens = Vec::with_capacity(n);
        for p in parts {
            tokens.extend(p.await??);
        }
        Ok(tokens)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
