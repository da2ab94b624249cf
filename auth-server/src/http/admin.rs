//! Administration routes: `POST /admin/users`, `POST /admin/users/{user_id}/unlock` and
//! `GET /admin/audit-events`.

use super::AppState;
use super::dto::{DataResponse, SimpleResponse, UserInfo};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Bearer};
use crate::auth::error::{AuthError, FieldViolation};
use crate::auth::users::UserInput;
use crate::store::AuditQuery;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user to create in the administrator's tenant.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// Username: 1-64 of letters, digits, `.`, `_`, `-`, starting with a letter or digit;
    /// stored lowercase.
    #[schema(pattern = r"^\s*[A-Za-z0-9][A-Za-z0-9._-]{0,63}\s*$")]
    pub username: String,
    /// Email address; stored lowercase (empty counts as absent).
    #[serde(default)]
    #[schema(
        max_length = 254,
        pattern = r"^\s*([^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+)?\s*$"
    )]
    pub email: Option<String>,
    /// Phone number in E.164 (empty counts as absent).
    #[serde(default)]
    #[schema(pattern = r"^\s*(\+[1-9][0-9]{6,14})?\s*$")]
    pub phone: Option<String>,
    /// Initial password (8 characters to 1024 bytes); absent for accounts without one.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
    /// Roles: `admin` (everything), `ticket-issuer` (`tickets:create` only).
    #[serde(default)]
    #[schema(inline)]
    pub roles: Vec<Role>,
    /// Require a password change at first sign-in.
    #[serde(default)]
    pub must_change_password: bool,
}

/// A role a user can hold.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum Role {
    /// Everything.
    #[serde(rename = "admin")]
    Admin,
    /// `tickets:create` only.
    #[serde(rename = "ticket-issuer")]
    TicketIssuer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::TicketIssuer => "ticket-issuer",
        }
    }
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
                roles: req.roles.into_iter().map(|r| r.name().to_owned()).collect(),
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

/// Filters of the audit listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditEventsQuery {
    /// Only events of this account.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Only events of this type: `sign_in`, `ticket_issued`, `impersonation`, `lockout`,
    /// `unlock`, `mfa_change`, `password_change`, `federation_link`.
    #[serde(default, rename = "type")]
    #[param(
        pattern = r"^(sign_in|ticket_issued|impersonation|lockout|unlock|mfa_change|password_change|federation_link)?$"
    )]
    pub event_type: Option<String>,
    /// Not before this time (RFC 3339).
    #[serde(default)]
    #[param(schema_with = rfc3339_or_empty)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[serde(default)]
    #[param(schema_with = rfc3339_or_empty)]
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Events per page, 1-500 (default 50, also when empty).
    #[serde(default)]
    #[param(pattern = r"^(\+?0*([1-9][0-9]?|[1-4][0-9][0-9]|500))?$")]
    pub limit: Option<String>,
}

/// An RFC 3339 time, or empty (no bound).
fn rfc3339_or_empty() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0)),
        )
        .build()
        .into()
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventInfo {
    /// `evt_...`, time-ordered.
    pub id: String,
    /// RFC 3339.
    pub occurred_at: String,
    /// Tenant.
    pub tenant_id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `success`, `failure`, or `challenge` (a sign-in waiting for its second factor).
    pub outcome: String,
    /// Sign-in method: `password`, `mfa`, `email_code`, `sms_code`, `ticket`, `federated`.
    pub method: Option<String>,
    /// The account concerned.
    pub user_id: Option<String>,
    /// Who acted on it (administrator, ticket issuer), when not the user.
    pub actor_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Why it failed, or the reason the actor gave.
    pub reason: Option<String>,
    /// More facts.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventsPage {
    /// The events.
    pub events: Vec<AuditEventInfo>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, FieldViolation> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| FieldViolation::new(field, "format", "an RFC 3339 time"))
        })
        .transpose()
}

/// The audit trail of the administrator's tenant: sign-ins, tickets, impersonation, lockouts,
/// unlocks, MFA and password changes; filtered by user, type and time, newest first, with
/// cursor pagination.
#[utoipa::path(
    get,
    path = "/admin/audit-events",
    tag = "admin",
    params(AuditEventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = DataResponse<AuditEventsPage>),
        (status = 400, description = "Bad filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn audit_events(
    State(state): State<AppState>,
    Bearer(claims): Bearer,
    axum::extract::Query(q): axum::extract::Query<AuditEventsQuery>,
) -> Result<Json<DataResponse<AuditEventsPage>>, ApiError> {
    let mut errors = Vec::new();
    let mut time = |field, value: &Option<String>| {
        parse_time(field, value.as_deref()).unwrap_or_else(|v| {
            errors.push(v);
            None
        })
    };
    let since = time("since", &q.since);
    let until = time("until", &q.until);
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 50,
        Some(l) => l.parse::<u32>().unwrap_or_else(|_| {
            errors.push(FieldViolation::new("limit", "format", "an integer"));
            50
        }),
    };
    if !errors.is_empty() {
        return Err(AuthError::Validation(errors).into());
    }
    let page = state
        .auth
        .audit_events(
            &claims,
            AuditQuery {
                tenant_id: String::new(),
                user_id: q.user_id.filter(|u| !u.is_empty()),
                event_type: q.event_type.filter(|t| !t.is_empty()),
                since,
                until,
                before_id: q.cursor.filter(|c| !c.is_empty()),
                limit,
            },
        )
        .await?;
    Ok(Json(DataResponse::new(AuditEventsPage {
        events: page
            .events
            .into_iter()
            .map(|e| AuditEventInfo {
                id: e.id,
                occurred_at: crate::auth::clock::rfc3339(e.occurred_at),
                tenant_id: e.tenant_id,
                event_type: e.event_type,
                outcome: e.outcome,
                method: e.method,
                user_id: e.user_id,
                actor_id: e.actor_id,
                client_ip: e.client_ip,
                user_agent: e.user_agent,
                reason: e.reason,
                details: e.details.and_then(|d| serde_json::from_str(&d).ok()),
            })
            .collect(),
        next_cursor: page.next_cursor,
    })))
}
