//! `GET /auth/captcha/challenge`: proof-of-work challenges for clients to solve before
//! signing in.

use super::AppState;
use super::dto::DataResponse;
use super::error::{ApiError, Problem};
use super::extract::{ClientIp, tenant_of};
use crate::auth::clock::rfc3339;
use crate::auth::error::{AuthError, FieldViolation};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of a challenge request.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ChallengeQuery {
    /// `pow` (the only provider that issues challenges; the default).
    #[param(pattern = "^pow$")]
    pub provider: Option<String>,
    /// Tenant (else `X-Tenant-ID`, else `default`).
    pub tenant_id: Option<String>,
    /// Leading hex zeros wanted; never below the tenant's floor.
    #[param(format = Int64, maximum = 4294967295_f64)]
    pub difficulty: Option<u32>,
}

/// The puzzle.
#[derive(Debug, Serialize, ToSchema)]
pub struct PowData {
    /// Hash `challenge + decimal n` for n = 0, 1, ... until the lowercase hex SHA-256 starts
    /// with `difficulty` zeros; answer `pow_` + n in base 36.
    pub challenge: String,
    /// Leading hex zeros needed.
    pub difficulty: u32,
}

/// A challenge.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaptchaChallenge {
    /// Send back as `captcha_challenge_id` (optional: the newest one issued to the client
    /// address is used otherwise).
    pub id: String,
    /// `pow`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The puzzle.
    pub data: PowData,
    /// RFC 3339 expiry; single use.
    pub expires_at: String,
}

/// Issue a proof-of-work CAPTCHA challenge.
#[utoipa::path(get, path = "/auth/captcha/challenge", tag = "auth", params(ChallengeQuery),
    responses(
        (status = 200, description = "Challenge", body = DataResponse<CaptchaChallenge>),
        (status = 400, description = "Unknown provider or tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    Query(q): Query<ChallengeQuery>,
) -> Result<Json<DataResponse<CaptchaChallenge>>, ApiError> {
    state
        .auth
        .check_rate_ip("captcha_challenge", client_ip.as_deref())
        .await?;
    if q.provider.as_deref().unwrap_or("pow") != "pow" {
        return Err(ApiError::invalid(vec![FieldViolation::new(
            "provider",
            "format",
            "only pow issues challenges; turnstile tokens come from the provider's widget",
        )]));
    }
    let tenant_id = tenant_of(q.tenant_id.as_deref(), &headers);
    if state
        .auth
        .store
        .tenant(&tenant_id)
        .await
        .map_err(AuthError::from)?
        .is_none()
    {
        return Err(AuthError::UnknownTenant.into());
    }
    let c = state
        .auth
        .issue_pow(&tenant_id, client_ip.as_deref(), q.difficulty)
        .await?;
    Ok(Json(DataResponse::new(CaptchaChallenge {
        id: c.id,
        type_: "pow".into(),
        data: PowData {
            challenge: c.challenge,
            difficulty: c.difficulty,
        },
        expires_at: rfc3339(c.expires_at),
    })))
}
