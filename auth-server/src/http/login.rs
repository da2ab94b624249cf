//! `POST /auth/login`: password sign-in.

use super::AppState;
use super::dto::LoginResponse;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ClientIp, tenant_of};
use crate::auth::limits::RateKeys;
use crate::auth::transmission::SentPassword;
use crate::auth::{CaptchaAnswer, PasswordLogin};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;

/// Password sign-in request (`dto.LoginRequest`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Username, email or phone (not blank, at most 320 characters).
    #[schema(min_length = 1, max_length = 320, pattern = r"\S")]
    pub identity: String,
    /// The password, or its digest or ciphertext depending on `password_transmission`
    /// (`plain`: at most 1024 bytes; the other modes: at most 4096).
    #[schema(min_length = 1, max_length = 4096)]
    pub password: String,
    /// `plain` (default, also when empty), `hash`, `symmetric` or `asymmetric`.
    #[serde(default)]
    #[schema(pattern = r"^\s*(plain|hash|symmetric|asymmetric)?\s*$")]
    pub password_transmission: Option<String>,
    /// Tenant; else `X-Tenant-ID`; else `default`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// CAPTCHA challenge id.
    #[serde(default)]
    pub captcha_challenge_id: Option<String>,
    /// CAPTCHA provider (`pow` or `turnstile`).
    #[serde(default)]
    pub captcha_provider: Option<String>,
    /// CAPTCHA solution.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// hash mode: client nonce.
    #[serde(default)]
    pub client_nonce: Option<String>,
    /// symmetric mode: the client's ephemeral ECDH public key.
    #[serde(default)]
    pub client_pub_key: Option<String>,
    /// symmetric mode: the key-exchange id.
    #[serde(default)]
    pub key_exchange_id: Option<String>,
    /// asymmetric mode: the transmission key id.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// Sign in with identity and password.
#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    params(("X-Tenant-ID" = Option<String>, Header, description = "Tenant when the body has none")),
    responses(
        (status = 200, description = "Signed in", body = LoginResponse),
        (status = 400, description = "Invalid input, credentials, tenant, transmission mode (61000104), undecryptable password (61000105) or spent key exchange (61000106)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled, or password expired past its grace period", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failures (delayed or locked) or too many requests (rate limit); retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let tenant_id = tenant_of(req.tenant_id.as_deref(), &headers);
    let (_, identity) = crate::auth::users::classify_identity(&req.identity);
    state
        .auth
        .check_rate(
            "login",
            &RateKeys {
                ip: client_ip.as_deref(),
                identity: Some(&identity),
                tenant: Some(&tenant_id),
                ..Default::default()
            },
        )
        .await?;
    let result = state
        .auth
        .login_password(PasswordLogin {
            identity: req.identity,
            password: SentPassword {
                mode: req.password_transmission,
                value: req.password,
                key_exchange_id: req.key_exchange_id,
                client_pub_key: req.client_pub_key,
                key_id: req.key_id,
            },
            tenant_id,
            client_ip,
            device: device_of(&headers),
            captcha: CaptchaAnswer {
                provider: req.captcha_provider,
                token: req.captcha_token,
                challenge_id: req.captcha_challenge_id,
            },
        })
        .await;
    state.metrics.record_login("password", &result);
    Ok(Json(result?.into()))
}

/// A device fingerprint: the client's `X-Device-ID` (up to 128 characters), else a hash of its
/// `User-Agent`.
fn device_of(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(id) = header("x-device-id").filter(|id| id.len() <= 128) {
        return Some(format!("id:{id}"));
    }
    header("user-agent").map(|ua| {
        use sha2::Digest;
        format!(
            "ua:{}",
            &hex::encode(sha2::Sha256::digest(ua.as_bytes()))[..16]
        )
    })
}
