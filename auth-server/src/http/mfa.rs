//! MFA routes: `POST /auth/mfa/verify-challenge` (finish a sign-in with a second factor),
//! `POST /auth/mfa/send-code` (an email or SMS code for a challenge),
//! `POST /auth/mfa/totp/setup` and `POST /auth/mfa/totp/verify` (enrol TOTP).

use super::AppState;
use super::codes::{SendLoginCodeResponse, accept_language};
use super::dto::{DataResponse, LoginResponse};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Bearer, ClientIp};
use crate::auth::challenge::MfaMethod;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer to an MFA challenge.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyChallengeRequest {
    /// `challenge_token` from the sign-in response.
    #[schema(min_length = 1, pattern = r"\S")]
    pub challenge_token: String,
    /// The code.
    #[schema(min_length = 1, pattern = r"\S")]
    pub code: String,
    /// `totp` (default, also when empty), `backup` (or `backup_code`), `email` or `sms` (from
    /// `required_mfa_methods`).
    #[serde(default)]
    #[schema(pattern = r"^\s*(totp|backup|backup_code|email|sms)?\s*$")]
    pub mfa_method: Option<String>,
    /// CAPTCHA provider; only the tenant's own is accepted.
    #[serde(default)]
    pub captcha_provider: Option<String>,
    /// CAPTCHA solution: asked for (as at sign-in) once wrong answers have taken the
    /// account's failures past the tenant's CAPTCHA threshold.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// Proof-of-work challenge id.
    #[serde(default)]
    pub captcha_challenge_id: Option<String>,
}

/// Finish a sign-in that requires MFA.
#[utoipa::path(post, path = "/auth/mfa/verify-challenge", tag = "mfa", request_body = VerifyChallengeRequest,
    responses(
        (status = 200, description = "Signed in; amr records both factors", body = LoginResponse),
        (status = 400, description = "Wrong code (61000402)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Challenge expired, used up or already answered (61000403)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong answers for this account (delayed or locked, as after wrong passwords) or too many requests; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_challenge(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<VerifyChallengeRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let method = MfaMethod::parse(req.mfa_method.as_deref())?;
    let captcha = crate::auth::CaptchaAnswer {
        provider: req.captcha_provider,
        token: req.captcha_token,
        challenge_id: req.captcha_challenge_id,
    };
    let result = state
        .auth
        .verify_challenge(
            &req.challenge_token,
            &req.code,
            method,
            client_ip.as_deref(),
            &captcha,
        )
        .await;
    crate::metrics::record_mfa_answer(method.as_str(), result.as_ref().map(|_| ()));
    state.metrics.record_login("mfa", &result);
    Ok(Json(result?.into()))
}

/// Which sent code an MFA challenge should be answered with.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendChallengeCodeRequest {
    /// `challenge_token` from the sign-in response.
    #[schema(min_length = 1, pattern = r"\S")]
    pub challenge_token: String,
    /// `email` or `sms` (one of the challenge's `required_mfa_methods`).
    #[schema(pattern = r"^\s*(email|sms)\s*$")]
    pub mfa_method: String,
}

/// Send a one-time code for an MFA challenge to the account's email address or phone
/// number; answer with `/auth/mfa/verify-challenge` and the same `mfa_method`.
#[utoipa::path(post, path = "/auth/mfa/send-code", tag = "mfa", request_body = SendChallengeCodeRequest,
    responses(
        (status = 200, description = "Sent", body = DataResponse<SendLoginCodeResponse>),
        (status = 400, description = "Not a sent-code method, or not offered by this challenge", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Challenge expired, used up or already answered (61000403)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many codes for this target or address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Delivery failed (50300002) or the ephemeral store is down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn send_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<SendChallengeCodeRequest>,
) -> Result<Json<DataResponse<SendLoginCodeResponse>>, ApiError> {
    let method = MfaMethod::parse(Some(&req.mfa_method))?;
    let sent = state
        .auth
        .send_challenge_code(
            &req.challenge_token,
            method,
            accept_language(&headers).as_deref(),
            client_ip.as_deref(),
        )
        .await?;
    Ok(Json(DataResponse::new(sent.into())))
}

/// A TOTP secret to enrol.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpSetup {
    /// Base32 secret (for manual entry).
    pub secret: String,
    /// `otpauth://` URI (for a QR code).
    pub otpauth_uri: String,
    /// `SHA1`.
    pub algorithm: String,
    /// 6.
    pub digits: u32,
    /// 30.
    pub period: i64,
}

/// Start TOTP enrolment; the factor is inactive until verified.
#[utoipa::path(post, path = "/auth/mfa/totp/setup", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, description = "Secret", body = DataResponse<TotpSetup>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "TOTP is already active", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn totp_setup(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<DataResponse<TotpSetup>>, ApiError> {
    let (secret, otpauth_uri) = state.auth.setup_totp(&claims).await?;
    Ok(Json(DataResponse::new(TotpSetup {
        secret,
        otpauth_uri,
        algorithm: "SHA1".into(),
        digits: crate::auth::mfa::DIGITS,
        period: crate::auth::mfa::PERIOD,
    })))
}

/// A code from the authenticator.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpVerifyRequest {
    /// Six digits.
    #[schema(min_length = 1, pattern = r"\S")]
    pub code: String,
}

/// Backup codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupCodes {
    /// Each works once, in place of a TOTP code.
    pub backup_codes: Vec<String>,
}

/// Activate TOTP with a current code; returns one-time backup codes.
#[utoipa::path(post, path = "/auth/mfa/totp/verify", tag = "mfa", request_body = TotpVerifyRequest, security(("bearer" = [])),
    responses(
        (status = 200, description = "Active", body = DataResponse<BackupCodes>),
        (status = 400, description = "Wrong code (61000402)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No pending setup", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already active", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn totp_verify(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    ApiJson(req): ApiJson<TotpVerifyRequest>,
) -> Result<Json<DataResponse<BackupCodes>>, ApiError> {
    let backup_codes = state.auth.activate_totp(&claims, &req.code).await?;
    Ok(Json(DataResponse::new(BackupCodes { backup_codes })))
}
