//! Unauthenticated client bootstrap: `GET /public/key-exchange` (the server half of a
//! `symmetric` password transmission) and `GET /public/auth-config/{tenant_id}` (the tenant's
//! sign-in policy and transmission key).

use super::AppState;
use super::dto::DataResponse;
use super::error::{ApiError, Problem, ProblemKind};
use super::extract::ClientIp;
use crate::auth::transmission::KEX_ALGORITHM;
use axum::Json;
use axum::extract::{Path, State};
use keygate_config::{CaptchaMode, CaptchaProvider};
use serde::Serialize;
use utoipa::ToSchema;

/// A single-use ECDH key exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyExchange {
    /// Send back as `key_exchange_id` (once).
    pub key_exchange_id: String,
    /// Base64 of the server's 65-byte uncompressed P-256 point.
    pub server_pub_key: String,
    /// `ECDH-P256-HKDF-SHA256-AES256GCM`.
    pub algorithm: String,
    /// Seconds it stays usable.
    pub expires_in: u64,
}

/// Start a key exchange for the `symmetric` password transmission.
#[utoipa::path(get, path = "/public/key-exchange", tag = "public",
    responses(
        (status = 200, description = "Key exchange", body = DataResponse<KeyExchange>),
        (status = 503, description = "Ephemeral store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn key_exchange(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
) -> Result<Json<DataResponse<KeyExchange>>, ApiError> {
    state
        .auth
        .check_rate_ip("key_exchange", client_ip.as_deref())
        .await?;
    let (key_exchange_id, server_pub_key, expires_in) = state.auth.new_key_exchange().await?;
    Ok(Json(DataResponse::new(KeyExchange {
        key_exchange_id,
        server_pub_key,
        algorithm: KEX_ALGORITHM.into(),
        expires_in,
    })))
}

/// Password rules and transmission as clients read them.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordPolicyInfo {
    /// The mode clients should use.
    pub password_transmission: String,
    /// Every mode the tenant accepts.
    pub accepted_transmissions: Vec<String>,
    /// Minimum length.
    pub min_length: usize,
    /// Maximum length.
    pub max_length: usize,
    /// Needs an uppercase letter.
    pub require_upper: bool,
    /// Needs a lowercase letter.
    pub require_lower: bool,
    /// Needs a digit.
    pub require_digit: bool,
    /// Needs a special character.
    pub require_special: bool,
}

/// A tenant's sign-in configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthConfig {
    /// Canonical tenant id (the one the `hash` mode uses).
    pub tenant_id: String,
    /// Short name.
    pub tenant_name: String,
    /// Name for people.
    pub display_name: String,
    /// Sign-in methods offered.
    pub login_methods: Vec<String>,
    /// Password rules and transmission.
    pub password_policy: PasswordPolicyInfo,
    /// SPKI PEM of the RSA key for the `asymmetric` mode.
    pub transmission_public_key: String,
    /// Its id (`key_id`).
    pub transmission_public_key_id: String,
    /// CAPTCHA may be demanded.
    pub captcha_enabled: bool,
    /// `pow` or `turnstile`.
    pub captcha_provider: String,
    /// Clients should solve a proof of work before signing in.
    pub silent_challenge_enabled: bool,
}

/// The sign-in configuration of a tenant (`default` names the default tenant).
#[utoipa::path(get, path = "/public/auth-config/{tenant_id}", tag = "public",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "Configuration", body = DataResponse<AuthConfig>),
        (status = 404, description = "Unknown tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn auth_config(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<DataResponse<AuthConfig>>, ApiError> {
    let tenant = state
        .auth
        .store
        .tenant(&tenant_id)
        .await
        .map_err(crate::auth::error::AuthError::from)?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such tenant"))?;
    let rt = state.auth.runtime();
    let policy = rt.config.policy_for(&tenant.id);
    let p = &policy.password;
    let key = rt
        .transmission
        .find(None)
        .await
        .map_err(|e| ApiError::from(crate::auth::error::AuthError::Internal(e)))?
        .ok_or_else(|| ApiError::new(ProblemKind::Internal, "no transmission key"))?;
    let captcha_enabled = policy.captcha.mode != CaptchaMode::Never;
    let provider = crate::auth::captcha::provider_name(policy.captcha.provider);
    Ok(Json(DataResponse::new(AuthConfig {
        tenant_id: tenant.id,
        tenant_name: tenant.name,
        display_name: tenant.display_name,
        login_methods: vec!["password".into()],
        password_policy: PasswordPolicyInfo {
            password_transmission: p.preferred_transmission.as_str().into(),
            accepted_transmissions: p
                .accepted_transmissions
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            min_length: p.min_length,
            max_length: p.max_length,
            require_upper: p.require_upper,
            require_lower: p.require_lower,
            require_digit: p.require_digit,
            require_special: p.require_special,
        },
        transmission_public_key: key.public_pem.clone(),
        transmission_public_key_id: key.kid.clone(),
        captcha_enabled,
        captcha_provider: provider.into(),
        silent_challenge_enabled: captcha_enabled
            && policy.captcha.provider == CaptchaProvider::Pow,
    })))
}
