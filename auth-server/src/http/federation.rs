//! `POST /auth/id-token/signin`: sign-in with an id_token of a configured external OpenID
//! Connect provider.

use super::AppState;
use super::dto::LoginResponse;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ClientIp};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

/// An external id_token and the provider that issued it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IdTokenSigninRequest {
    /// The id_token (a JWT signed by the provider).
    #[serde(default)]
    #[schema(required = true, min_length = 1, pattern = r"\S")]
    pub id_token: String,
    /// The configured provider's name.
    #[serde(default)]
    #[schema(required = true, min_length = 1, pattern = r"\S")]
    pub provider: String,
}

/// Sign in with an id_token of an external OpenID Connect provider (validated as OpenID
/// Connect Core 3.1.3.7 asks); the account is found by its link, or linked or created as the
/// provider's provisioning mode says.
#[utoipa::path(post, path = "/auth/id-token/signin", tag = "auth", request_body = IdTokenSigninRequest,
    responses(
        (status = 200, description = "Signed in (amr fed), or requires_mfa with a TOTP challenge for users with TOTP when the policy asks", body = LoginResponse),
        (status = 400, description = "Missing fields or unknown provider (40000001), or an id_token that does not validate (40000601)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No linked account and none to link or create (40300004), or the account is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider's discovery document or keys cannot be fetched", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn id_token_signin(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<IdTokenSigninRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    state
        .auth
        .check_rate_ip("id_token_signin", client_ip.as_deref())
        .await?;
    let result = state
        .auth
        .id_token_sign_in(&req.provider, &req.id_token)
        .await;
    state.metrics.record_login("federated", &result);
    Ok(Json(result?.outcome.into()))
}
