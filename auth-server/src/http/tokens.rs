//! Session routes: `POST /auth/refresh`, `POST /auth/logout` and `GET /auth/me`.

use super::AppState;
use super::dto::{DataResponse, LoginResponse, SimpleResponse, UserInfo};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Bearer};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

/// Refresh request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The current refresh token.
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
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let result = state.auth.refresh(&req.refresh_token).await;
    state
        .metrics
        .record_login("refresh", result.as_ref().map(|_| ()));
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
    let req: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        super::extract::parse_json(&body)?
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
    Ok(Json(DataResponse::new(UserInfo::new(
        &user,
        &state.auth.password_status(&user),
    ))))
}
