//! Sign-in with id_tokens of external OpenID Connect providers: validated by `keygate_oidc`
//! with the provider's keys from the key cache, single use, and the account found by its
//! (issuer, subject) link or provisioned as the provider's configuration says.

use super::challenge::LoginOutcome;
use super::error::{AuthError, FieldViolation};
use super::key_cache::{Ages, KeyCache, SourceKeys};
use super::{AuthService, random, users};
use crate::store::{IdentityKind, User};
use keygate_config::{OidcProviderConfig, Provisioning};
use keygate_oidc::{Fetcher, Invalid};
use serde_json::Value;
use std::sync::Arc;

/// The provider keys' cache and the client that fills it.
#[derive(Debug, Default)]
pub struct ProviderKeys {
    pub(super) cache: KeyCache,
    fetcher: Fetcher,
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

impl AuthService {
    /// Validates an id_token of provider `p` (OpenID Connect Core 3.1.3.7, by
    /// `keygate_oidc`) and returns its claims, with the provider's keys from the cache
    /// (`jwks_max_age_seconds`, `jwks_refetch_floor_seconds`).
    async fn validate_id_token(
        &self,
        p: &OidcProviderConfig,
        token: &str,
    ) -> Result<serde_json::Map<String, Value>, AuthError> {
        let now = self.clock.unix();
        let fed = &self.federation_keys;
        let ages = Ages {
            max_age: super::secs(p.jwks_max_age_seconds),
            refetch_floor: super::secs(p.jwks_refetch_floor_seconds),
        };
        let fetch = async || {
            fed.fetcher.discover(p).await.map(|keys| SourceKeys {
                issuer: Arc::from(p.issuer.as_str()),
                keys: Arc::new(keys),
            })
        };
        let verdict = |k: &SourceKeys| keygate_oidc::validate(p, &k.keys, token, now);
        match fed
            .cache
            .check(&p.discovery(), now, ages, fetch, verdict)
            .await
        {
            Ok(Ok(claims)) => Ok(claims),
            Ok(Err(Invalid::UnknownKey)) => Err(invalid("unknown_signing_key")),
            Ok(Err(Invalid::Refused(why))) => Err(invalid(why)),
            Err(e) => Err(AuthError::Unavailable(format!("provider {}: {e}", p.name))),
        }
    }

    /// Signs in with an id_token of the configured provider `provider`.
    #[tracing::instrument(name = "auth.id_token_sign_in", skip_all)]
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
        // A success is recorded in its session's statement.
        let signed_in = |s: &FederatedSignIn| matches!(s.outcome, LoginOutcome::SignedIn(_));
        if !result.as_ref().is_ok_and(signed_in) {
            self.audit_sign_in("federated", &p.tenant_id, None, None, &result, |s| {
                s.outcome.audit_summary()
            })
            .await;
        }
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
        let outcome = self
            .finish_sign_in(user, "fed", totp_active, ("federated", None))
            .await?;
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
