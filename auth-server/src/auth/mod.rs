//! The authentication domain: the service every handler calls (its state, runtime
//! configuration and account creation here; sign-in in `login`, sessions in `sessions`, MFA in
//! `challenge`) and the pieces it is built from. No HTTP and no SQL types here; time comes from
//! the injected clock and randomness from `random`.

pub mod audit;
pub mod captcha;
pub mod challenge;
pub mod clock;
pub mod codes;
pub mod error;
pub mod federation;
pub mod gate;
pub mod jwt_crypto;
pub mod key_cache;
pub mod keys;
pub mod limits;
mod login;
pub mod mfa;
pub mod password;
pub mod random;
pub mod risk;
pub mod service_accounts;
mod sessions;
pub mod tickets;
pub mod tokens;
pub mod transmission;
pub mod users;

use crate::ephemeral::Ephemeral;
use crate::store::{NewUser, SqlStore, User, status};
use arc_swap::ArcSwap;
use clock::SharedClock;
use error::{AuthError, FieldViolation};
use keygate_config::RuntimeConfig;
use keys::{KeyRing, SigningKey};
use password::{PasswordHasher, canonical_digest};

use std::sync::Arc;
use std::time::Duration;
use tokens::AccessClaims;

/// The runtime configuration together with what is derived from it.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration as loaded.
    pub config: RuntimeConfig,
    /// Signing keys built from it (or the development key).
    pub keys: KeyRing,
    /// Password-transmission keys.
    pub transmission: transmission::TransmissionKeys,
    /// `rate_limits.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
}

impl Runtime {
    /// Builds the key rings; the development keys stand in where the configuration has none.
    pub fn build(config: RuntimeConfig, dev: &DevKeys) -> Result<Self, String> {
        let dev_key = dev.signing.as_ref();
        let transmission = if config.transmission_keys.is_empty() {
            match &dev.transmission {
                Some(k) => transmission::TransmissionKeys::Development(k.clone()),
                None => return Err("the configuration has no transmission keys".into()),
            }
        } else {
            transmission::TransmissionKeys::Configured(
                config
                    .transmission_keys
                    .iter()
                    .map(transmission::TransmissionKey::from_config)
                    .collect::<Result<_, _>>()?,
            )
        };
        let keys = if config.signing_keys.is_empty() {
            match dev_key {
                Some(k) => vec![k.clone()],
                None => return Err("the configuration has no signing keys".into()),
            }
        } else {
            config
                .signing_keys
                .iter()
                .map(SigningKey::from_config)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        };
        Ok(Self {
            trusted_proxies: limits::trusted_proxies(&config.rate_limits),
            config,
            keys: KeyRing::new(keys),
            transmission,
        })
    }
}

/// Keys kept in the data directory for when the runtime configuration names none.
#[derive(Debug, Clone, Default)]
pub struct DevKeys {
    /// JWT signing key.
    pub signing: Option<SigningKey>,
    /// Password-transmission key (generated in the background on a first start).
    pub transmission: Option<transmission::DevTransmissionKey>,
}

/// Refresh tokens carry 256 bits.
const REFRESH_TOKEN_BYTES: usize = 32;

/// Tokens handed out at sign-in or refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// Signed JWT.
    pub access_token: String,
    /// Opaque refresh token.
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// Session id.
    pub session_id: String,
}

/// A successful sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The account.
    pub user: User,
    /// Its tokens.
    pub tokens: IssuedTokens,
    /// Where its password stands against the expiry policy.
    pub password: users::PasswordStatus,
    /// The risk assessment, for sign-ins that made one.
    pub risk: Option<risk::RiskAssessment>,
}

/// A password sign-in request.
#[derive(Debug, Clone)]
pub struct PasswordLogin {
    /// Username, email or phone.
    pub identity: String,
    /// The password as sent, in its transmission mode.
    pub password: transmission::SentPassword,
    /// Tenant asked for (body, header or the default).
    pub tenant_id: String,
    /// The client's address, when known.
    pub client_ip: Option<String>,
    /// Device fingerprint: the client's `X-Device-ID`, or a hash of its user agent.
    pub device: Option<String>,
    /// The CAPTCHA answer, if any.
    pub captcha: CaptchaAnswer,
}

/// A CAPTCHA answer as sent with a sign-in.
#[derive(Debug, Clone, Default)]
pub struct CaptchaAnswer {
    /// `pow` or `turnstile`.
    pub provider: Option<String>,
    /// The solution.
    pub token: Option<String>,
    /// The proof-of-work challenge id (absent: the newest issued to the client address).
    pub challenge_id: Option<String>,
}

/// The authentication service shared by every handler.
#[derive(Debug, Clone)]
pub struct AuthService {
    /// Durable storage.
    pub store: SqlStore,
    /// Ephemeral state.
    pub ephemeral: Ephemeral,
    /// Time.
    pub clock: SharedClock,
    /// Password hashing.
    pub hasher: PasswordHasher,
    runtime: Arc<ArcSwap<Runtime>>,
    issuer: Arc<str>,
    http: reqwest::Client,
    data_key: Arc<mfa::DataKey>,
    delivery: Arc<crate::delivery::Delivery>,
    federation_keys: Arc<federation::ProviderKeys>,
    cluster: Option<Arc<service_accounts::ClusterVerifier>>,
    tenants: Arc<std::sync::Mutex<std::collections::HashMap<String, (crate::store::Tenant, i64)>>>,
    config_rejected_at: Arc<std::sync::Mutex<Option<i64>>>,
}

impl AuthService {
    /// Assembles the service.
    pub fn new(
        store: SqlStore,
        ephemeral: Ephemeral,
        clock: SharedClock,
        hasher: PasswordHasher,
        runtime: Runtime,
        issuer: String,
        data_key: mfa::DataKey,
    ) -> Self {
        Self {
            data_key: Arc::new(data_key),
            delivery: Arc::new(crate::delivery::Delivery::development()),
            federation_keys: Arc::default(),
            cluster: None,
            tenants: Arc::default(),
            config_rejected_at: Arc::default(),
            store,
            ephemeral,
            clock,
            hasher,
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            issuer: issuer.into(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Sends codes through `delivery` (instead of the development mode's log).
    pub fn with_delivery(mut self, delivery: crate::delivery::Delivery) -> Self {
        self.delivery = Arc::new(delivery);
        self
    }

    /// Accepts the ServiceAccount tokens of `cluster` (for `POST /auth/generate-ticket`).
    pub fn with_cluster(mut self, cluster: service_accounts::ClusterVerifier) -> Self {
        self.cluster = Some(Arc::new(cluster));
        self
    }

    /// Whether codes are only logged (no SMTP server or SMS webhook configured).
    pub fn delivery_is_development(&self) -> bool {
        self.delivery.is_development()
    }

    /// The runtime configuration in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in a new runtime configuration (hot reload).
    pub fn replace_runtime(&self, runtime: Runtime) -> Result<(), AuthError> {
        self.hasher
            .update_params(&runtime.config.password_hashing)?;
        self.runtime.store(Arc::new(runtime));
        self.set_config_rejection(None);
        Ok(())
    }

    /// Records that the newest configuration file was rejected at `unix` (or, with `None`,
    /// that the one in force is the newest).
    pub fn set_config_rejection(&self, unix: Option<i64>) {
        if let Ok(mut r) = self.config_rejected_at.lock() {
            *r = unix;
        }
    }

    /// When the newest configuration file was rejected, if it was.
    pub fn config_rejected_at(&self) -> Option<i64> {
        self.config_rejected_at.lock().ok().and_then(|r| *r)
    }

    /// Token issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where `user`'s password stands now under its tenant's policy.
    pub fn password_status(&self, user: &User) -> users::PasswordStatus {
        let rt = self.runtime();
        users::password_status(
            user,
            &rt.config.policy_for(&user.tenant_id).password,
            self.clock.unix(),
        )
    }

    /// The active account behind verified claims, in a session that is not revoked (checked
    /// in storage too, so a revocation holds even when its deny entry is gone).
    pub async fn current_user(&self, claims: &AccessClaims) -> Result<User, AuthError> {
        self.store
            .user_in_session(&claims.sub, &claims.sid)
            .await?
            .filter(|u| u.tenant_id == claims.tid && u.status == status::ACTIVE)
            .ok_or(AuthError::Unauthenticated(
                "account no longer active or session ended",
            ))
    }

    /// The current user, who must hold `role`.
    pub async fn require_role(&self, claims: &AccessClaims, role: &str) -> Result<User, AuthError> {
        let user = self.current_user(claims).await?;
        if user.has_role(role) {
            Ok(user)
        } else {
            Err(AuthError::Forbidden)
        }
    }

    /// Creates a tenant; its id is 1-63 of `a-z`, `0-9`, `-`, starting with a letter.
    pub async fn create_tenant(
        &self,
        id: &str,
        display_name: &str,
    ) -> Result<crate::store::Tenant, AuthError> {
        let ok = (1..=63).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "id",
                "format",
                "1-63 of a-z, 0-9 and '-', starting with a letter",
            )]));
        }
        let display = display_name.trim();
        if display.is_empty() || display.chars().count() > 200 {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "display_name",
                "range",
                "1-200 characters",
            )]));
        }
        if self.store.tenant(id).await?.is_some() {
            return Err(AuthError::Conflict("id"));
        }
        let tenant = crate::store::Tenant {
            id: id.to_owned(),
            name: id.to_owned(),
            display_name: display.to_owned(),
        };
        self.store.create_tenant(&tenant, self.clock.unix()).await?;
        Ok(tenant)
    }

    /// Creates every tenant the runtime configuration names (a policy of its own, or an OIDC
    /// provider's tenant) that does not exist yet, so that declaring a tenant is enough. Never
    /// deletes one: tenants own users. Failures are logged and retried at the next reload.
    pub async fn ensure_configured_tenants(&self) {
        let rt = self.runtime();
        let mut wanted: std::collections::BTreeMap<&str, Option<&str>> = rt
            .config
            .tenants
            .iter()
            .map(|(id, p)| (id.as_str(), p.display_name.as_deref()))
            .collect();
        for p in &rt.config.oidc_providers {
            wanted.entry(p.tenant_id.as_str()).or_insert(None);
        }
        for (id, display) in wanted {
            match self.store.tenant(id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tenant = id, error = %e, "cannot look up a configured tenant");
                    continue;
                }
            }
            match self.create_tenant(id, display.unwrap_or(id)).await {
                Ok(_) => tracing::info!(tenant = id, "created a tenant the configuration names"),
                // Another replica was quicker.
                Err(AuthError::Conflict(_)) => {}
                Err(e) => {
                    tracing::error!(tenant = id, error = %e, "cannot create a configured tenant")
                }
            }
        }
    }

    /// Creates a user in `tenant_id` after validation.
    pub async fn create_user(
        &self,
        tenant_id: &str,
        input: users::UserInput,
    ) -> Result<User, AuthError> {
        self.create_user_linked(tenant_id, input, None).await
    }

    /// Creates a user after validation and, atomically with it, links it to an external
    /// account `(issuer, subject)` (a link taken meanwhile is `Conflict("link")`).
    pub async fn create_user_linked(
        &self,
        tenant_id: &str,
        input: users::UserInput,
        link: Option<(&str, &str)>,
    ) -> Result<User, AuthError> {
        let mut valid = users::validate_user(input)?;
        if self.store.tenant(tenant_id).await?.is_none() {
            return Err(AuthError::UnknownTenant);
        }
        let rt = self.runtime();
        let policy = &rt.config.policy_for(tenant_id).password;
        if let Some(pw) = &valid.password {
            users::check_password_rules(pw, policy, "password")?;
            valid.must_change_password |= policy.force_change_on_first_login;
        }
        let password_hash = match &valid.password {
            Some(pw) => Some(self.hasher.hash(canonical_digest(pw, tenant_id)).await?),
            None => None,
        };
        let new = NewUser {
            id: random::id("usr"),
            tenant_id: tenant_id.to_owned(),
            username: valid.username,
            email: valid.email,
            phone: valid.phone,
            password_hash,
            roles: valid.roles,
            must_change_password: valid.must_change_password,
            created_at: self.clock.unix(),
        };
        self.store
            .create_user_linked(&new, link)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(_) => AuthError::UnknownTenant,
                other => other.into(),
            })
    }
}

/// Presence and size of a password field as sent: at most `MAX_PASSWORD_BYTES` for a plain
/// password; ciphertexts may be longer (the recovered password is checked again).
fn check_password_field(
    sent: &transmission::SentPassword,
    field: &str,
    errors: &mut Vec<FieldViolation>,
) {
    let plain = sent
        .mode
        .as_deref()
        .is_none_or(|m| m.trim().is_empty() || m == "plain");
    let max = if plain {
        password::MAX_PASSWORD_BYTES
    } else {
        password::MAX_PASSWORD_BYTES * 4
    };
    if sent.value.is_empty() {
        errors.push(FieldViolation::new(
            field,
            "required",
            format!("{field} is required"),
        ));
    } else if sent.value.len() > max {
        errors.push(FieldViolation::new(
            field,
            "range",
            format!("at most {max} bytes"),
        ));
    }
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 4)
}
