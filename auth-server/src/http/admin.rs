//! Administration routes: `POST /admin/users`.

use super::AppState;
use super::dto::{DataResponse, SimpleResponse, UserInfo};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Bearer};
use crate::auth::users::UserInput;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

/// A user to create in the administrator's tenant.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// Username: 1-64 of letters, digits, `.`, `_`, `-`; stored lowercase.
    pub username: String,
    /// Email address; stored lowercase.
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number in E.164.
    #[serde(default)]
    pub phone: Option<String>,
    /// Initial password (8-1024); absent for accounts without one.
    #[serde(default)]
    pub password: Option<String>,
    /// Roles: `admin` (everything), `ticket-issuer` (`tickets:create` only).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Require a password change at first sign-in.
    #[serde(default)]
    pub must_change_password: bool,
}

/// Create a user (administrators only); the tenant is the administrator's.
#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "admin",
    request_body = CreateUserRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = DataResponse<UserInfo>),
        (status = 400, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username, email or phone taken", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<DataResponse<UserInfo>>), ApiError> {
    let admin = state.auth.require_role(&claims, "admin").await?;
    let user = state
        .auth
        .create_user(
            &admin.tenant_id,
            UserInput {
                username: req.username,
                email: req.email,
                phone: req.phone,
                password: req.password,
                roles: req.roles,
                must_change_password: req.must_change_password,
            },
        )
        .await?;
    tracing::info!(admin = %admin.id, user = %user.id, tenant = %user.tenant_id, "user created");
    Ok((
        StatusCode::CREATED,
        Json(DataResponse::new(UserInfo::new(
            &user,
            &state.auth.password_status(&user),
        ))),
    ))
}

/// Lift a user's sign-in delay and lock (administrators of the same tenant).
#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/unlock",
    tag = "admin",
    params(("user_id" = String, Path, description = "User id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Unlocked", body = SimpleResponse),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user in the tenant", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn unlock_user(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    axum::extract::Path(user_id): axum::extract::Path<String>,
) -> Result<Json<SimpleResponse>, ApiError> {
    let admin = state.auth.require_role(&claims, "admin").await?;
    state.auth.unlock_user(&admin, &user_id).await?;
    Ok(Json(SimpleResponse::new("unlocked")))
}
