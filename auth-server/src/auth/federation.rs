//! Sign-in with id_tokens of external OpenID Connect providers: discovery and JWKS fetched
//! with a bounded HTTP client and cached (refetched on an unknown `kid`, at most once per
//! floor), validation as OpenID Connect Core 3.1.3.7 asks, and the account found by its
//! (issuer, subject) link or provisioned as the provider's configuration says.

use super::challenge::LoginOutcome;
use super::error::{AuthError, FieldViolation};
use super::{AuthService, random, users};
use crate::store::{IdentityKind, User};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};
use keygate_config::{OidcProviderConfig, Provisioning};
use serde_json::Value;
use std::collections::HashMap;

/// Largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Largest id_token accepted.
const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// Keys of one provider as last fetched.
#[derive(Debug, Clone, Default)]
struct ProviderKeys {
    keys: Vec<Jwk>,
    /// Injected-clock time of the last successful fetch (0: never).
    fetched_at: i64,
    /// Injected-clock time of the last attempt, successful or not (the refetch floor).
    attempted_at: i64,
}

/// One provider's slot: its own lock, held while its keys are fetched, so that a slow or
/// unreachable provider delays only its own sign-ins.
type Slot = std::sync::Arc<tokio::sync::Mutex<ProviderKeys>>;

/// The provider key cache, keyed by discovery URL, and the client that fills it.
#[derive(Debug)]
pub struct KeyCache {
    entries: std::sync::Mutex<HashMap<String, Slot>>,
    /// Bounded in time, no redirects (a document elsewhere is configured, not followed), no
    /// idle connections: fetches are rare, and a
    /// pooled connection to a provider that restarted since would fail the next one.
    http: reqwest::Client,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::default(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .timeout(std::time::Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
        }
    }
}

/// A successful federated sign-in.
#[derive(Debug, Clone)]
pub struct FederatedSignIn {
    /// The session, or the TOTP challenge that stands before it.
    pub outcome: LoginOutcome,
    /// The account was created by this sign-in.
    pub created: bool,
    /// The account was linked by this sign-in (verified email).
    pub linked: bool,
}

fn invalid(why: &'static str) -> AuthError {
    AuthError::IdTokenInvalid(why)
}

/// Reads a response body of at most `MAX_DOCUMENT_BYTES`.
async fn read_limited(mut res: reqwest::Response) -> Result<Vec<u8>, String> {
    if !res.status().is_success() {
        return Err(format!("HTTP {}", res.status()));
    }
    if res
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err("document too large".into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err("document too large".into());
        }
    }
    Ok(body)
}

impl AuthService {
    /// Fetches a provider's signing keys through its discovery document.
    async fn fetch_keys(&self, p: &OidcProviderConfig) -> Result<Vec<Jwk>, AuthError> {
        let unavailable = |what: &str, e: String| {
            AuthError::Unavailable(format!("provider {}: {what}: {e}", p.name))
        };
        let http = &self.federation_keys.http;
        let res = http
            .get(p.discovery())
            .send()
            .await
            .map_err(|e| unavailable("discovery", e.to_string()))?;
        let doc: Value = serde_json::from_slice(
            &read_limited(res)
                .await
                .map_err(|e| unavailable("discovery", e))?,
        )
        .map_err(|e| unavailable("discovery", e.to_string()))?;
        // OpenID Connect Discovery 4.3: the document must name the configured issuer.
        if doc["issuer"].as_str() != Some(p.issuer.as_str()) {
            return Err(unavailable(
                "discovery",
                "the document names another issuer".into(),
            ));
        }
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .filter(|u| p.url_allowed(u))
            .ok_or_else(|| unavailable("discovery", "no usable jwks_uri".into()))?;
        let res = http
            .get(jwks_uri)
            .send()
            .await
            .map_err(|e| unavailable("jwks", e.to_string()))?;
        let set: Value = serde_json::from_slice(
            &read_limited(res)
                .await
                .map_err(|e| unavailable("jwks", e))?,
        )
        .map_err(|e| unavailable("jwks", e.to_string()))?;
        // Keys of unknown types, encryption keys and symmetric keys are skipped, not fatal.
        let keys = set["keys"]
            .as_array()
            .ok_or_else(|| unavailable("jwks", "no keys".into()))?
            .iter()
            .filter(|k| k["use"].as_str().is_none_or(|u| u == "sig") && k["kty"] != "oct")
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect();
        Ok(keys)
    }

    /// The key for `kid` (or the only key, when the token names none): from the cache, or
    /// fetched when the cache is old, or refetched on an unknown `kid` at most once per floor.
    async fn provider_key(
        &self,
        p: &OidcProviderConfig,
        kid: Option<&str>,
    ) -> Result<Jwk, AuthError> {
        let pick = |keys: &[Jwk]| -> Option<Jwk> {
            match kid {
                Some(kid) => keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .cloned(),
                None if keys.len() == 1 => keys.first().cloned(),
                None => None,
            }
        };
        let slot: Slot = {
            let mut map = self
                .federation_keys
                .entries
                .lock()
                .map_err(|_| AuthError::Internal("key cache poisoned".into()))?;
            if map.len() > 1000 {
                map.clear();
            }
            map.entry(p.discovery()).or_default().clone()
        };
        let mut entry = slot.lock().await;
        let now = self.clock.unix();
        let fresh =
            entry.fetched_at > 0 && now - entry.fetched_at < super::secs(p.jwks_max_age_seconds);
        let cached = pick(&entry.keys);
        if fresh && let Some(key) = cached {
            return Ok(key);
        }
        if entry.attempted_at > 0
            && now - entry.attempted_at < super::secs(p.jwks_refetch_floor_seconds)
        {
            // Fetched (or tried) a moment ago: no new request for this token.
            return cached.ok_or(invalid("unknown_signing_key"));
        }
        entry.attempted_at = now;
        match self.fetch_keys(p).await {
            Ok(keys) => {
                entry.keys = keys;
                entry.fetched_at = now;
                pick(&entry.keys).ok_or(invalid("unknown_signing_key"))
            }
            // Keys past their age still verify their own tokens while the provider is away.
            Err(e) => match cached {
                Some(key) => {
                    tracing::warn!(provider = %p.name, error = %e, "provider keys could not be refreshed; using the cached ones");
                    Ok(key)
                }
                None => Err(e),
            },
        }
    }

    /// Validates an id_token of provider `p` (OpenID Connect Core 3.1.3.7) and returns its
    /// claims.
    async fn validate_id_token(
        &self,
        p: &OidcProviderConfig,
        token: &str,
    ) -> Result<serde_json::Map<String, Value>, AuthError> {
        if token.len() > MAX_ID_TOKEN_BYTES {
            return Err(invalid("too_large"));
        }
        // `alg: none` and unknown algorithms do not even parse.
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let alg_name = format!("{:?}", header.alg);
        if !p.allowed_algorithms.contains(&alg_name) {
            return Err(invalid("algorithm_not_accepted"));
        }
        // An access token of the provider is not an id_token (RFC 9068 `typ`).
        if header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(invalid("not_an_id_token"));
        }
        let jwk = self.provider_key(p, header.kid.as_deref()).await?;
        if let Some(key_alg) = &jwk.common.key_algorithm
            && format!("{key_alg:?}") != alg_name
        {
            return Err(invalid("algorithm_does_not_match_the_key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| invalid("unusable_key"))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&p.issuer]);
        v.set_audience(&[&p.client_id]);
        v.set_required_spec_claims(&["iss", "aud", "exp", "iat", "sub"]);
        // Time is checked below against the injected clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidIssuer => invalid("wrong_issuer"),
                    K::InvalidAudience => invalid("wrong_audience"),
                    K::InvalidSignature => invalid("bad_signature"),
                    K::MissingRequiredClaim(_) => invalid("missing_claim"),
                    _ => invalid("does_not_verify"),
                }
            })?
            .claims;
        // One issuer, as a string (a list of issuers would pass a set-membership check).
        if claims.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
            return Err(invalid("wrong_issuer"));
        }
        let now = self.clock.unix();
        let skew = super::secs(p.clock_skew_seconds);
        let number = |name: &str| claims.get(name).and_then(Value::as_i64);
        let exp = number("exp").ok_or(invalid("missing_claim"))?;
        let iat = number("iat").ok_or(invalid("missing_claim"))?;
        if exp + skew <= now {
            return Err(invalid("expired"));
        }
        if iat - skew > now || number("nbf").is_some_and(|nbf| nbf - skew > now) {
            return Err(invalid("not_yet_valid"));
        }
        // Several audiences: `azp` must be present and be us; `azp` present: it must be us.
        let several = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != p.client_id => return Err(invalid("wrong_authorized_party")),
            None if several => return Err(invalid("wrong_authorized_party")),
            _ => {}
        }
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(|s| s.is_empty() || s.len() > 255)
        {
            return Err(invalid("missing_claim"));
        }
        Ok(claims)
    }

    /// Signs in with an id_token of the configured provider `provider`.
    pub async fn id_token_sign_in(
        &self,
        provider: &str,
        id_token: &str,
    ) -> Result<FederatedSignIn, AuthError> {
        let mut errors = Vec::new();
        if provider.trim().is_empty() {
            errors.push(FieldViolation::new(
                "provider",
                "required",
                "provider is required",
            ));
        }
        if id_token.trim().is_empty() {
            errors.push(FieldViolation::new(
                "id_token",
                "required",
                "id_token is required",
            ));
        }
        if !errors.is_empty() {
            return Err(AuthError::Validation(errors));
        }
        let rt = self.runtime();
        let p = rt
            .config
            .oidc_providers
            .iter()
            .find(|p| p.name == provider)
            .ok_or_else(|| {
                AuthError::Validation(vec![FieldViolation::new(
                    "provider",
                    "format",
                    "no such provider is configured",
                )])
            })?;
        let result = self.federated_account(p, id_token.trim()).await;
        self.audit_sign_in("federated", &p.tenant_id, None, None, &result, |s| {
            s.outcome.audit_summary()
        })
        .await;
        result
    }

    async fn federated_account(
        &self,
        p: &OidcProviderConfig,
        id_token: &str,
    ) -> Result<FederatedSignIn, AuthError> {
        let claims = self.validate_id_token(p, id_token).await?;
        if p.single_use {
            self.spend_id_token(p, id_token, &claims).await?;
        }
        let claim = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = claim("sub").ok_or(invalid("missing_claim"))?;
        let verified = |flag: &str| claims.get(flag).and_then(Value::as_bool) == Some(true);
        let email = claim(&p.claims.email)
            .filter(|_| verified("email_verified"))
            .map(|e| e.trim().to_lowercase())
            .filter(|e| users::is_email(e));
        let (user, created, linked) = match self
            .store
            .federated_user(&p.tenant_id, &p.issuer, &subject)
            .await?
        {
            Some(user) => (user, false, false),
            None => match p.provisioning {
                Provisioning::Existing => return Err(AuthError::FederationNoAccount),
                Provisioning::LinkVerifiedEmail => {
                    let email = email.ok_or(AuthError::FederationNoAccount)?;
                    self.link_by_email(p, &subject, &email).await?
                }
                Provisioning::Create => {
                    let phone = claim(&p.claims.phone)
                        .filter(|_| verified("phone_number_verified"))
                        .filter(|ph| users::is_e164(ph));
                    self.provision(p, &subject, claim(&p.claims.username), email, phone)
                        .await?
                }
            },
        };
        if created || linked {
            self.audit(super::audit::Event {
                kind: super::audit::kind::FEDERATION_LINK,
                tenant_id: &user.tenant_id,
                outcome: "success",
                method: Some("federated"),
                user_id: Some(&user.id),
                reason: Some(if created {
                    "created"
                } else {
                    "linked_by_email"
                }),
                details: Some(serde_json::json!({
                    "provider": p.name, "issuer": p.issuer, "sub": subject,
                    "created": created, "linked": linked,
                })),
                ..Default::default()
            })
            .await;
        }
        let totp_active = self
            .store
            .totp(&user.id)
            .await?
            .is_some_and(|f| f.confirmed);
        let outcome = self.finish_sign_in(user, "fed", totp_active).await?;
        Ok(FederatedSignIn {
            outcome,
            created,
            linked,
        })
    }

    /// Remembers a valid id_token until it expires (atomically across replicas): of any number
    /// of presentations, one signs in. Keyed by issuer and `jti`, or by the token's hash when
    /// it has no `jti` (of its signed part: signatures are malleable).
    async fn spend_id_token(
        &self,
        p: &OidcProviderConfig,
        id_token: &str,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<(), AuthError> {
        let now = self.clock.unix();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let until = exp.saturating_add(super::secs(p.clock_skew_seconds));
        let id = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) => random::secret_hash(&format!("{}|{jti}", p.issuer)),
            // The signed part only: an ECDSA signature can be rewritten into another valid
            // one, so the whole token string is no identity.
            None => random::secret_hash(
                id_token
                    .rsplit_once('.')
                    .map_or(id_token, |(signed, _)| signed),
            ),
        };
        let ttl = std::time::Duration::from_secs(u64::try_from(until - now).unwrap_or(0).max(1));
        match self
            .ephemeral
            .claim(&format!("kg:idt:{}:{id}", p.name), ttl)
            .await?
        {
            None => Ok(()),
            Some(_) => Err(invalid("replayed")),
        }
    }

    /// Links the external account to the local account with the same address. Refused for
    /// accounts with roles or an active second factor (their owners link through an
    /// authenticated step, not by an address), and for accounts that have another link of
    /// this issuer already.
    async fn link_by_email(
        &self,
        p: &OidcProviderConfig,
        subject: &str,
        email: &str,
    ) -> Result<(User, bool, bool), AuthError> {
        let user = self
            .store
            .user_by_identity(&p.tenant_id, IdentityKind::Email, email)
            .await?
            .ok_or(AuthError::FederationNoAccount)?;
        let protected = !user.roles.is_empty()
            || self
                .store
                .totp(&user.id)
                .await?
                .is_some_and(|f| f.confirmed)
            || self
                .store
                .has_federated_link(&p.tenant_id, &p.issuer, &user.id)
                .await?;
        if protected {
            tracing::warn!(user = %user.id, provider = %p.name, "link by email refused: the account is protected");
            return Err(AuthError::FederationNoAccount);
        }
        match self
            .store
            .link_federated(
                &p.tenant_id,
                &p.issuer,
                subject,
                &user.id,
                self.clock.unix(),
            )
            .await
        {
            Ok(()) => Ok((user, false, true)),
            Err(crate::store::StoreError::Conflict(_)) => {
                Ok((self.linked_user(p, subject).await?, false, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn linked_user(&self, p: &OidcProviderConfig, subject: &str) -> Result<User, AuthError> {
        self.store
            .federated_user(&p.tenant_id, &p.issuer, subject)
            .await?
            .ok_or(AuthError::FederationNoAccount)
    }

    /// Creates and links an account for an external one; returns (user, created, linked).
    async fn provision(
        &self,
        p: &OidcProviderConfig,
        subject: &str,
        username: Option<String>,
        email: Option<String>,
        phone: Option<String>,
    ) -> Result<(User, bool, bool), AuthError> {
        // The claimed username if it is usable and free, else a generated one; an address or
        // number that another account has is left out rather than failing the sign-in.
        let mut input = users::UserInput {
            username: username
                .map(|u| u.trim().to_lowercase())
                .filter(|u| {
                    users::validate_user(users::UserInput {
                        username: u.clone(),
                        ..Default::default()
                    })
                    .is_ok()
                })
                .unwrap_or_else(|| random::id("u")),
            email,
            phone,
            ..Default::default()
        };
        for _ in 0..4 {
            match self
                .create_user_linked(&p.tenant_id, input.clone(), Some((&p.issuer, subject)))
                .await
            {
                Ok(user) => {
                    tracing::info!(user = %user.id, provider = %p.name, "account created by federated sign-in");
                    return Ok((user, true, false));
                }
                Err(AuthError::Conflict("link")) => {
                    return Ok((self.linked_user(p, subject).await?, false, false));
                }
                Err(AuthError::Conflict("username")) => input.username = random::id("u"),
                Err(AuthError::Conflict("email")) => input.email = None,
                Err(AuthError::Conflict("phone")) => input.phone = None,
                Err(e) => return Err(e),
            }
        }
        Err(AuthError::Conflict("account"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn algorithm_names_match_the_configuration_vocabulary() {
        for name in keygate_config::FEDERATION_ALGORITHMS {
            let alg: jsonwebtoken::Algorithm = name.parse().unwrap();
            assert_eq!(format!("{alg:?}"), *name);
        }
    }
}
