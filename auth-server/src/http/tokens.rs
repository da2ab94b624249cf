//! Session routes: `POST /auth/refresh`, `POST /auth/logout` and `GET /auth/me`.

use super::AppState;
use super::dto::{DataResponse, LoginResponse, SimpleResponse, UserInfo};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Bearer, ClientIp};
use crate::auth::transmission::SentPassword;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

/// Refresh request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The current refresh token.
    #[schema(min_length = 1, max_length = 512)]
    pub refresh_token: String,
}

/// Exchange a refresh token for new tokens (rotation with reuse detection).
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens; the presented refresh token is spent", body = LoginResponse),
        (status = 400, description = "Invalid refresh token, or reuse detected (code 40000201: the session is revoked)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    state
        .auth
        .check_rate_ip("refresh", client_ip.as_deref())
        .await?;
    let result = state.auth.refresh(&req.refresh_token).await;
    state.metrics.record_login("refresh", &result);
    Ok(Json(result?.into()))
}

/// Logout request.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// A refresh token of another session of the same user to end as well.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// End the session of the bearer token; the token is refused from now on.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional; may be empty"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Signed out", body = SimpleResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    body: axum::body::Bytes,
) -> Result<Json<SimpleResponse>, ApiError> {
    // No body, an empty one and `null` all mean no other session.
    let req: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        super::extract::parse_json::<Option<LogoutRequest>>(&body)?.unwrap_or_default()
    };
    state
        .auth
        .logout(&claims, req.refresh_token.as_deref())
        .await?;
    Ok(Json(SimpleResponse::new("signed out")))
}

/// The signed-in account.
#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = DataResponse<UserInfo>),
        (status = 401, description = "Missing, invalid or revoked token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn me(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
) -> Result<Json<DataResponse<UserInfo>>, ApiError> {
    let user = state.auth.current_user(&claims).await?;
    Ok(Json(DataResponse::new(
        UserInfo::new(&user, &state.auth.password_status(&user)).acting(claims.act.as_ref()),
    )))
}

/// Password change request: both passwords in the same transmission mode (`hash` is not
/// accepted here: the server must see the new password to apply the rules).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The current password (or its ciphertext).
    pub old_password: String,
    /// The new password (or its ciphertext).
    pub new_password: String,
    /// `plain` (default), `symmetric` or `asymmetric`.
    #[serde(default)]
    pub password_transmission: Option<String>,
    /// symmetric mode: one key exchange for both passwords.
    #[serde(default)]
    pub key_exchange_id: Option<String>,
    /// symmetric mode: the client's ephemeral public key.
    #[serde(default)]
    pub client_pub_key: Option<String>,
    /// asymmetric mode: the transmission key id.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// Change the caller's password; every other session of the account is ended.
#[utoipa::path(
    put,
    path = "/auth/me/password",
    tag = "auth",
    request_body = ChangePasswordRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; other sessions ended", body = SimpleResponse),
        (status = 400, description = "Wrong current password, rules not met, or a recent password (errors[] names the field)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords (delayed or locked, as at sign-in) or too many requests; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<Json<SimpleResponse>, ApiError> {
    let sent = SentPassword {
        mode: req.password_transmission,
        value: String::new(),
        key_exchange_id: req.key_exchange_id,
        client_pub_key: req.client_pub_key,
        key_id: req.key_id,
    };
    state
        .auth
        .change_password(
            &claims,
            &sent,
            &req.old_password,
            &req.new_password,
            client_ip.as_deref(),
        )
        .await?;
    Ok(Json(SimpleResponse::new("password changed")))
}
