//! One-time ticket routes: `POST /auth/generate-ticket` (holders of `tickets:create`) and
//! `POST /auth/ticket/signin`.

use super::AppState;
use super::dto::{DataResponse, LoginResponse};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Caller, ClientIp};
use crate::auth::tickets::TicketRequest;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A ticket to sign a user of the caller's tenant in.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GenerateTicketRequest {
    /// The user who will be signed in.
    #[schema(min_length = 1, pattern = r"\S")]
    pub user_id: String,
    /// The user's tenant: a user caller's own (the default); for a ServiceAccount, one of its
    /// granted tenants (the default when it has only one).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Why (up to 200 characters; in the token's `act.reason` and the audit trail).
    #[serde(default)]
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

/// A new ticket, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateTicketResponse {
    /// The ticket (`tkt_` and 256 random bits): single use.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// Issue a one-time sign-in ticket for a user. The bearer is a Keygate access token with the
/// `tickets:create` permission (roles `admin` or `ticket-issuer`), or an in-cluster caller's
/// own Kubernetes ServiceAccount token (audience `keygate` by default) that a
/// `ServiceAccountGrant` allows `tickets:create` on the tenant.
#[utoipa::path(post, path = "/auth/generate-ticket", tag = "auth", request_body = GenerateTicketRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Issued", body = DataResponse<GenerateTicketResponse>),
        (status = 400, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token (a ServiceAccount token of another audience, issuer or key, or expired, included)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No tickets:create permission, another tenant, a verified ServiceAccount without a grant, or a user with a role the caller may not act on", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such active user in the caller's tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The grant's rate limit; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The ephemeral store is down, or the cluster's keys cannot be fetched", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn generate_ticket(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(req): ApiJson<GenerateTicketRequest>,
) -> Result<Json<DataResponse<GenerateTicketResponse>>, ApiError> {
    let issued = state
        .auth
        .generate_ticket(
            &caller,
            TicketRequest {
                user_id: req.user_id,
                tenant_id: req.tenant_id,
                reason: req.reason,
            },
        )
        .await?;
    crate::metrics::record_ticket_issued();
    Ok(Json(DataResponse::new(GenerateTicketResponse {
        ticket: issued.ticket,
        expires_in: issued.expires_in,
    })))
}

/// Ticket sign-in request (`dto.TicketSigninRequest`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TicketSigninRequest {
    /// The one-time ticket.
    #[schema(min_length = 1, pattern = r"\S")]
    pub ticket: String,
}

/// Sign in with a one-time ticket; it is spent by the first attempt.
#[utoipa::path(post, path = "/auth/ticket/signin", tag = "auth", request_body = TicketSigninRequest,
    responses(
        (status = 200, description = "Signed in; amr is ticket, act names the issuer when it is not the user", body = LoginResponse),
        (status = 400, description = "Invalid, expired or used ticket (40000501)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The ephemeral store is down (tickets fail closed)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ticket_signin(
    State(state): State<AppState>,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<TicketSigninRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    state
        .auth
        .check_rate_ip("ticket_signin", client_ip.as_deref())
        .await?;
    let result = state.auth.redeem_ticket(&req.ticket).await;
    state.metrics.record_login("ticket", &result);
    Ok(Json(result?.signed_in.into()))
}
