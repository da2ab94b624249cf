//! External OpenID Connect issuers, shared by the server and the operator: discovery and JWKS
//! fetched through the `openidconnect` crate over a bounded HTTP client, the count of keys a
//! provider's allowed algorithms can use, and id_token validation (OpenID Connect Core
//! 3.1.3.7): the crate's verifier for signature, algorithm, key selection, `typ`, issuer,
//! audience, `exp` and `iat`, and our own checks for what it leaves out (`azp`, `nbf`, the
//! clock-skew leeway on `exp`, `sub` bounds). The same validation serves Kubernetes
//! ServiceAccount tokens, whose issuer and keys come from the API server itself.

use keygate_config::OidcProviderConfig;
use openidconnect::core::{
    CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, DiscoveryError, HttpRequest, HttpResponse,
    IdToken, IssuerUrl, JsonWebKey, JsonWebKeyUse, JwsSigningAlgorithm, Nonce,
    SignatureVerificationError,
};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The keys an issuer publishes, as the crate models them.
pub type Keys = CoreJsonWebKeySet;

/// Claims of a verified id_token, every claim as it was signed.
pub type Claims = Map<String, Value>;

/// Largest discovery document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Largest id_token accepted.
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// Why fetching a provider's discovery document or keys failed. `reason()` is the
/// CamelCase word a Kubernetes condition carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The discovery document could not be fetched or read.
    #[error("discovery document: {0}")]
    Discovery(String),
    /// The discovery document names another issuer (OpenID Connect Discovery 4.3).
    #[error("{0}")]
    IssuerMismatch(String),
    /// The key set at the document's `jwks_uri` could not be fetched or read.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// The key set has no key that an allowed algorithm can use.
    #[error("JWKS: no key for the allowed algorithms ({0})")]
    NoUsableKey(String),
}

impl FetchError {
    /// The condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Discovery(_) => "DiscoveryFailed",
            Self::IssuerMismatch(_) => "IssuerMismatch",
            Self::Jwks(_) => "JwksFailed",
            Self::NoUsableKey(_) => "NoUsableKey",
        }
    }
}

/// Why an id_token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// No published key matches the token's `kid` and algorithm: the keys may have rotated
    /// since they were fetched.
    UnknownKey,
    /// Refused for the reason named (snake_case, stable: clients and tests read it).
    Refused(&'static str),
}

/// An HTTP failure below the crate (connection, timeout, size, scheme).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// Fetches discovery documents and key sets: bounded in time and size, no redirects (a
/// document elsewhere is configured, not followed), no idle connections (fetches are rare,
/// and a pooled connection to a provider that restarted since would fail the next one).
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
}

/// The bounds of every fetch.
fn bounded_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
}

impl Default for Fetcher {
    fn default() -> Self {
        Self {
            http: bounded_client().build().unwrap_or_default(),
        }
    }
}

/// Reads a response body of at most [`MAX_DOCUMENT_BYTES`].
async fn read_limited(mut res: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let too_large = || HttpError(format!("document larger than {MAX_DOCUMENT_BYTES} bytes"));
    if res
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| HttpError(plain(&e)))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
    }
    Ok(body)
}

/// What went wrong below a request, on one line: the causes of reqwest's error (its own
/// message only repeats the URL), or the message when it has none.
fn plain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    }
}

/// The crate's HTTP client for one discovery: the crate asks for the well-known document
/// first (sent to the configured `discovery_url` when there is one) and the key set second.
struct Client<'a> {
    fetcher: &'a Fetcher,
    p: &'a OidcProviderConfig,
    requests: AtomicUsize,
}

type Pending<'c> =
    std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Client<'_> {
    type Error = HttpError;
    type Future = Pending<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        let first = self.requests.fetch_add(1, Ordering::SeqCst) == 0;
        let url = match (&self.p.discovery_url, first) {
            (Some(configured), true) => configured.clone(),
            _ => request.uri().to_string(),
        };
        Box::pin(self.fetcher.call(self.p, request, url))
    }
}

/// A Kubernetes API server, whose service-account issuer signs ServiceAccount tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `https://HOST:PORT` of the API server.
    pub api_url: String,
    /// A bearer token for its discovery endpoints (the server's own ServiceAccount token),
    /// read again at every fetch: the kubelet rotates projected tokens.
    pub token_file: Option<std::path::PathBuf>,
}

impl Fetcher {
    /// A fetcher that trusts only the CA certificates of `ca_pem` (a PEM bundle): the
    /// cluster's CA, for its API server.
    pub fn trusting(ca_pem: &[u8]) -> Result<Self, String> {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| format!("unreadable CA bundle: {}", plain(&e)))?;
        if certs.is_empty() {
            return Err("the CA bundle holds no certificate".into());
        }
        let mut builder = bounded_client().tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder.build().map_err(|e| plain(&e))?,
        })
    }

    async fn get(&self, url: &str, token: Option<&str>) -> Result<Vec<u8>, String> {
        let mut request = self
            .http
            .get(url)
            // The API server answers its key set only to a client that accepts its type.
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let res = keygate_telemetry::propagation::send(
            request,
            keygate_telemetry::propagation::Url::Path,
        )
        .await
        .map_err(|e| format!("{url}: {}", plain(&e)))?;
        if !res.status().is_success() {
            return Err(format!("{url}: HTTP {}", res.status()));
        }
        read_limited(res).await.map_err(|e| format!("{url}: {e}"))
    }

    /// The cluster's service-account issuer and its keys, from the API server's own
    /// discovery document and key set (`/.well-known/openid-configuration` and
    /// `/openid/v1/jwks`, which every API server serves, whatever `jwks_uri` says: the
    /// token is sent to the API server and nowhere else). The crate's discovery is not used
    /// here: its provider metadata requires an `authorization_endpoint`, which a
    /// service-account issuer does not have.
    pub async fn cluster_keys(&self, cluster: &Cluster) -> Result<(String, Keys), FetchError> {
        let token = match &cluster.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        FetchError::Discovery(format!("token file {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let base = cluster.api_url.trim_end_matches('/');
        let doc = self
            .get(
                &format!("{base}/.well-known/openid-configuration"),
                token.as_deref(),
            )
            .await
            .map_err(FetchError::Discovery)?;
        let issuer = serde_json::from_slice::<Value>(&doc)
            .ok()
            .and_then(|d| d["issuer"].as_str().map(str::to_owned))
            .filter(|i| !i.is_empty())
            .ok_or_else(|| FetchError::Discovery("the document names no issuer".into()))?;
        let set = self
            .get(&format!("{base}/openid/v1/jwks"), token.as_deref())
            .await
            .map_err(FetchError::Jwks)?;
        let keys: Keys = serde_json::from_slice(&set)
            .map_err(|e| FetchError::Jwks(format!("unreadable key set: {e}")))?;
        Ok((issuer, keys))
    }

    /// One request for the crate: the provider's URL rules, our bounds.
    async fn call(
        &self,
        p: &OidcProviderConfig,
        request: HttpRequest,
        url: String,
    ) -> Result<HttpResponse, HttpError> {
        if !p.url_allowed(&url) {
            let scheme = if p.allow_http { "http(s)" } else { "https" };
            return Err(HttpError(format!("{url} is not an {scheme} URL")));
        }
        let res = keygate_telemetry::propagation::send(
            self.http
                .request(request.method().clone(), &url)
                .headers(request.headers().clone()),
            keygate_telemetry::propagation::Url::Path,
        )
        .await
        .map_err(|e| HttpError(format!("{url}: {}", plain(&e))))?;
        let status = res.status();
        let headers = res.headers().clone();
        let mut response = http::Response::new(read_limited(res).await?);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// The provider's discovery document (from its `discovery_url` when one is configured,
    /// else the issuer's well-known address) and the key set it points to. The crate checks
    /// that the document names the configured issuer; every key with an allowed algorithm
    /// counts, and a set without one is an error.
    pub async fn discover(&self, p: &OidcProviderConfig) -> Result<Keys, FetchError> {
        let issuer =
            IssuerUrl::new(p.issuer.clone()).map_err(|e| FetchError::Discovery(e.to_string()))?;
        let client = Client {
            fetcher: self,
            p,
            requests: AtomicUsize::new(0),
        };
        let metadata = CoreProviderMetadata::discover_async(issuer, &client)
            .await
            .map_err(|e| {
                let in_jwks = client.requests.load(Ordering::SeqCst) > 1;
                let message = match &e {
                    DiscoveryError::Request(inner) => inner.to_string(),
                    DiscoveryError::Response(_, _, message) => message.clone(),
                    DiscoveryError::Parse(inner) => format!("unreadable document: {inner}"),
                    other => other.to_string(),
                };
                match e {
                    DiscoveryError::Validation(_) => FetchError::IssuerMismatch(format!(
                        "the discovery document names another issuer than {}",
                        p.issuer
                    )),
                    _ if in_jwks => FetchError::Jwks(message),
                    _ => FetchError::Discovery(message),
                }
            })?;
        let keys = metadata.jwks().clone();
        if usable_keys(p, &keys) == 0 {
            return Err(FetchError::NoUsableKey(p.allowed_algorithms.join(", ")));
        }
        Ok(keys)
    }
}

/// The provider's allowed algorithms in the crate's vocabulary (names it does not know are
/// left out; configuration validation admits only known ones).
fn allowed_algorithms(p: &OidcProviderConfig) -> Vec<CoreJwsSigningAlgorithm> {
    p.allowed_algorithms
        .iter()
        .filter_map(|name| serde_json::from_value(Value::String(name.clone())).ok())
        .filter(|alg: &CoreJwsSigningAlgorithm| !alg.uses_shared_secret())
        .collect()
}

/// Whether `key` can verify signatures of `alg` (the crate's rule, which it keeps private):
/// a signing key of the algorithm's type whose own `alg`, if any, is the same.
fn key_fits(key: &CoreJsonWebKey, alg: &CoreJwsSigningAlgorithm) -> bool {
    key.key_use().is_none_or(|u| u.allows_signature())
        && alg.key_type().as_ref() == Some(key.key_type())
        && match key.signing_alg() {
            openidconnect::JsonWebKeyAlgorithm::Unspecified => true,
            openidconnect::JsonWebKeyAlgorithm::Algorithm(a) => a == alg,
            openidconnect::JsonWebKeyAlgorithm::Unsupported => false,
        }
}

/// How many of the keys an allowed algorithm can use.
pub fn usable_keys(p: &OidcProviderConfig, keys: &Keys) -> usize {
    let algs = allowed_algorithms(p);
    keys.keys()
        .iter()
        .filter(|k| algs.iter().any(|a| key_fits(k, a)))
        .count()
}

/// Every claim the token carries beyond the crate's standard ones.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
struct Extra(Map<String, Value>);

impl AdditionalClaims for Extra {}

type Token =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// The `iat` check's message, to tell "issued in the future" from "expired" (the crate
/// reports both as expiry).
const NOT_YET_VALID: &str = "issued in the future";

/// Validates an id_token of provider `p` against `keys` at unix time `now`.
pub fn validate(
    p: &OidcProviderConfig,
    keys: &Keys,
    token: &str,
    now: i64,
) -> Result<Claims, Invalid> {
    use Invalid::Refused;
    if token.len() > MAX_ID_TOKEN_BYTES {
        return Err(Refused("too_large"));
    }
    let parsed: Token = token.parse().map_err(|e: serde_json::Error| {
        if e.to_string().contains("missing field") {
            Refused("missing_claim")
        } else {
            Refused("malformed")
        }
    })?;
    let issuer = IssuerUrl::new(p.issuer.clone()).map_err(|_| Refused("wrong_issuer"))?;
    let skew = i64::try_from(p.clock_skew_seconds).unwrap_or(i64::MAX);
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(p.client_id.clone()),
        issuer,
        keys.clone(),
    )
    .set_allowed_algs(allowed_algorithms(p))
    // Other audiences are decided by the `azp` rule below, as Core 3.1.3.7 steps 4-5 say.
    .set_other_audience_verifier_fn(|_| true)
    // Expired when `exp + skew <= now`.
    .set_time_fn(move || chrono_time(now.saturating_sub(skew)))
    .set_issue_time_verifier_fn(move |iat| {
        if iat.timestamp().saturating_sub(skew) > now {
            Err(NOT_YET_VALID.to_owned())
        } else {
            Ok(())
        }
    });
    let verified = parsed
        .claims(&verifier, |_: Option<&Nonce>| Ok::<(), String>(()))
        .map_err(|e| match e {
            ClaimsVerificationError::InvalidIssuer(_) => Refused("wrong_issuer"),
            ClaimsVerificationError::InvalidAudience(_) => Refused("wrong_audience"),
            ClaimsVerificationError::Expired(m) if m == NOT_YET_VALID => Refused("not_yet_valid"),
            ClaimsVerificationError::Expired(_) => Refused("expired"),
            ClaimsVerificationError::Unsupported(_) => Refused("not_an_id_token"),
            ClaimsVerificationError::SignatureVerification(s) => match s {
                SignatureVerificationError::NoMatchingKey => Invalid::UnknownKey,
                SignatureVerificationError::NoSignature => Refused("malformed"),
                SignatureVerificationError::DisallowedAlg(_)
                | SignatureVerificationError::UnsupportedAlg(_) => {
                    Refused("algorithm_not_accepted")
                }
                SignatureVerificationError::AmbiguousKeyId(_) => Refused("ambiguous_signing_key"),
                SignatureVerificationError::InvalidKey(_) => Refused("unusable_key"),
                SignatureVerificationError::CryptoError(_) => Refused("bad_signature"),
                _ => Refused("does_not_verify"),
            },
            _ => Refused("does_not_verify"),
        })?;
    let claims = match serde_json::to_value(verified) {
        Ok(Value::Object(map)) => map,
        _ => return Err(Refused("malformed")),
    };
    // Several audiences: `azp` must be present and be us; `azp` present: it must be us (the
    // crate leaves this check out).
    let several = verified.audiences().len() > 1;
    match verified.authorized_party() {
        Some(azp) if azp.as_str() != p.client_id => return Err(Refused("wrong_authorized_party")),
        None if several => return Err(Refused("wrong_authorized_party")),
        _ => {}
    }
    // `nbf` is not an id_token claim of Core, but a token that carries one means it.
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf.saturating_sub(skew) > now)
    {
        return Err(Refused("not_yet_valid"));
    }
    let sub = verified.subject().as_str();
    if sub.is_empty() || sub.len() > 255 {
        return Err(Refused("missing_claim"));
    }
    Ok(claims)
}

/// Unix seconds as the crate's time type (out of range: the epoch, which is long expired).
fn chrono_time(t: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use p256::pkcs8::EncodePrivateKey;
    use serde_json::json;

    const ISSUER: &str = "https://id.example";
    const NOW: i64 = 1_800_000_000;

    struct Signer {
        pem: String,
        jwk: Value,
    }

    fn signer(kid: &str) -> Signer {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap()),
        });
        let pem = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
        Signer { pem, jwk }
    }

    fn keys(signers: &[&Signer]) -> Keys {
        serde_json::from_value(
            json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}),
        )
        .unwrap()
    }

    fn provider() -> OidcProviderConfig {
        serde_json::from_value(json!({"name": "corp", "issuer": ISSUER, "client_id": "keygate"}))
            .unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "aud": "keygate", "sub": "alice", "iat": NOW - 10, "exp": NOW + 300,
               "email": "alice@example.com", "email_verified": true, "mail": "custom"})
    }

    fn sign_with(s: &Signer, header: jsonwebtoken::Header, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(s.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn sign(s: &Signer, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = s.jwk["kid"].as_str().map(str::to_owned);
        sign_with(s, header, claims)
    }

    fn check(claims: &Value, at: i64) -> Result<Claims, Invalid> {
        let s = signer("k1");
        validate(&provider(), &keys(&[&s]), &sign(&s, claims), at)
    }

    fn with(change: &[(&str, Value)]) -> Value {
        let mut c = claims();
        for (k, v) in change {
            c[*k] = v.clone();
        }
        c
    }

    #[test]
    fn a_valid_token_yields_every_claim() {
        let c = check(&claims(), NOW).unwrap();
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["email_verified"], true);
        assert_eq!(c["mail"], "custom");
        assert_eq!(c["exp"].as_i64(), Some(NOW + 300));
    }

    #[test]
    fn issuer_audience_and_authorized_party() {
        use Invalid::Refused;
        assert_eq!(
            check(&with(&[("iss", json!("https://other.example"))]), NOW).unwrap_err(),
            Refused("wrong_issuer")
        );
        assert_eq!(
            check(&with(&[("iss", json!([ISSUER]))]), NOW).unwrap_err(),
            Refused("malformed")
        );
        assert_eq!(
            check(&with(&[("aud", json!("other-app"))]), NOW).unwrap_err(),
            Refused("wrong_audience")
        );
        let two = json!(["keygate", "other-app"]);
        assert_eq!(
            check(&with(&[("aud", two.clone())]), NOW).unwrap_err(),
            Refused("wrong_authorized_party")
        );
        assert!(
            check(
                &with(&[("aud", two.clone()), ("azp", json!("keygate"))]),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            check(&with(&[("azp", json!("other-app"))]), NOW).unwrap_err(),
            Refused("wrong_authorized_party")
        );
        assert_eq!(
            check(&with(&[("sub", json!(""))]), NOW).unwrap_err(),
            Refused("missing_claim")
        );
        let mut no_sub = claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(check(&no_sub, NOW).unwrap_err(), Refused("missing_claim"));
    }

    #[test]
    fn time_with_the_leeway() {
        use Invalid::Refused;
        let (iat, exp) = (NOW - 10, NOW + 300);
        assert!(check(&claims(), exp + 59).is_ok());
        assert_eq!(check(&claims(), exp + 60).unwrap_err(), Refused("expired"));
        assert!(check(&claims(), iat - 60).is_ok());
        assert_eq!(
            check(&claims(), iat - 61).unwrap_err(),
            Refused("not_yet_valid")
        );
        let nbf = with(&[("nbf", json!(NOW + 100))]);
        assert!(check(&nbf, NOW + 40).is_ok());
        assert_eq!(check(&nbf, NOW + 39).unwrap_err(), Refused("not_yet_valid"));
    }

    #[test]
    fn headers_keys_and_algorithms() {
        use Invalid::Refused;
        let (s1, s2) = (signer("k1"), signer("k2"));
        let p = provider();
        let only_first = keys(&[&s1]);
        // A key that has rotated in since the keys were fetched.
        assert_eq!(
            validate(&p, &only_first, &sign(&s2, &claims()), NOW).unwrap_err(),
            Invalid::UnknownKey
        );
        // Signed by another key under a published kid.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        assert_eq!(
            validate(
                &p,
                &only_first,
                &sign_with(&s2, header.clone(), &claims()),
                NOW
            )
            .unwrap_err(),
            Refused("bad_signature")
        );
        // An access token of the provider.
        header.typ = Some("at+jwt".into());
        assert_eq!(
            validate(&p, &only_first, &sign_with(&s1, header, &claims()), NOW).unwrap_err(),
            Refused("not_an_id_token")
        );
        // No kid: the only key; with two keys, ambiguous.
        let no_kid = sign_with(
            &s1,
            jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims(),
        );
        assert!(validate(&p, &only_first, &no_kid, NOW).is_ok());
        assert_eq!(
            validate(&p, &keys(&[&s1, &s2]), &no_kid, NOW).unwrap_err(),
            Refused("ambiguous_signing_key")
        );
        // ES256 not allowed; HS256 never.
        let mut rsa_only = provider();
        rsa_only.allowed_algorithms = vec!["RS256".into()];
        assert_eq!(
            validate(&rsa_only, &only_first, &sign(&s1, &claims()), NOW).unwrap_err(),
            Refused("algorithm_not_accepted")
        );
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(s1.jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            validate(&p, &only_first, &hs, NOW).unwrap_err(),
            Refused("algorithm_not_accepted")
        );
        // alg none, garbage, too large.
        let good = sign(&s1, &claims());
        let (signed, _) = good.rsplit_once('.').unwrap();
        let payload = signed.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", B64.encode(br#"{"alg":"none"}"#));
        assert_eq!(
            validate(&p, &only_first, &none, NOW).unwrap_err(),
            Refused("malformed")
        );
        assert_eq!(
            validate(&p, &only_first, "not.a.jwt", NOW).unwrap_err(),
            Refused("malformed")
        );
        let huge = "a".repeat(MAX_ID_TOKEN_BYTES + 1);
        assert_eq!(
            validate(&p, &only_first, &huge, NOW).unwrap_err(),
            Refused("too_large")
        );
    }

    #[test]
    fn usable_keys_follow_the_allowed_algorithms() {
        let s = signer("k1");
        let mut set = keys(&[&s]);
        assert_eq!(usable_keys(&provider(), &set), 1);
        let mut rsa_only = provider();
        rsa_only.allowed_algorithms = vec!["RS256".into()];
        assert_eq!(usable_keys(&rsa_only, &set), 0);
        let mut enc = s.jwk.clone();
        enc["use"] = json!("enc");
        set = serde_json::from_value(
            json!({"keys": [enc, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "weird"}]}),
        )
        .unwrap();
        assert_eq!(usable_keys(&provider(), &set), 0);
    }

    /// Serves canned responses: `/.well-known/openid-configuration` and `/jwks`.
    async fn serve(discovery: Value, jwks: Option<Value>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let doc = serde_json::to_string(&discovery)
            .unwrap()
            .replace("BASE", &base);
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let (status, body) =
                    if request.starts_with("GET /.well-known/openid-configuration ") {
                        ("200 OK", doc.clone())
                    } else if let (true, Some(j)) = (request.starts_with("GET /jwks "), &jwks) {
                        ("200 OK", j.to_string())
                    } else {
                        ("404 Not Found", "{}".to_owned())
                    };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        base
    }

    fn metadata(issuer: &str) -> Value {
        json!({
            "issuer": issuer, "authorization_endpoint": "BASE/auth", "jwks_uri": "BASE/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn at(base: &str) -> OidcProviderConfig {
        serde_json::from_value(
            json!({"name": "corp", "issuer": base, "client_id": "keygate", "allow_http": true}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn discovery_failures_have_their_reasons() {
        let s = signer("k1");
        let f = Fetcher::default();
        let jwks = json!({"keys": [s.jwk.clone()]});
        let base = serve(metadata("BASE"), Some(jwks.clone())).await;
        assert_eq!(f.discover(&at(&base)).await.unwrap().keys().len(), 1);
        // A configured discovery URL is where the document is read.
        let mut elsewhere = at("http://127.0.0.1:9");
        elsewhere.issuer = base.clone();
        elsewhere.discovery_url = Some(format!("{base}/.well-known/openid-configuration"));
        assert!(f.discover(&elsewhere).await.is_ok());
        let reason = |r: Result<Keys, FetchError>| r.unwrap_err().reason();
        let other = serve(metadata("https://other.example"), Some(jwks.clone())).await;
        assert_eq!(reason(f.discover(&at(&other)).await), "IssuerMismatch");
        let no_jwks = serve(metadata("BASE"), None).await;
        assert_eq!(reason(f.discover(&at(&no_jwks)).await), "JwksFailed");
        let no_key = serve(
            metadata("BASE"),
            Some(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})),
        )
        .await;
        assert_eq!(reason(f.discover(&at(&no_key)).await), "NoUsableKey");
        let dead = f.discover(&at("http://127.0.0.1:9")).await.unwrap_err();
        assert_eq!(dead.reason(), "DiscoveryFailed");
        assert!(dead.to_string().contains("refused"), "{dead}");
        // http is refused unless the provider allows it.
        let mut strict = at(&base);
        strict.allow_http = false;
        assert_eq!(reason(f.discover(&strict).await), "DiscoveryFailed");
    }
}
