//! One-time sign-in tickets (SSO hand-over and impersonation): issued to holders of the
//! `tickets:create` permission for a user of their tenant, or to granted ServiceAccounts, kept only as a hash in the
//! ephemeral store, and redeemed atomically (of any number of concurrent redemptions, across
//! replicas sharing Redis, exactly one succeeds).

use super::error::{AuthError, FieldViolation};
use super::service_accounts::BearerCaller;
use super::tokens::Actor;
use super::{AuthService, SignedIn, random, secs, status};
use keygate_config::GrantPermission;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tickets carry 256 random bits (the contract asks for at least 128).
const TICKET_BYTES: usize = 32;

/// Longest `reason` kept with a ticket.
pub const MAX_REASON_CHARS: usize = 200;

/// A ticket request.
#[derive(Debug, Clone)]
pub struct TicketRequest {
    /// Who signs in with it.
    pub user_id: String,
    /// The user's tenant, if named (it must be the caller's).
    pub tenant_id: Option<String>,
    /// Why (kept in the token's `act` and the audit trail).
    pub reason: Option<String>,
}

/// A ticket as handed out.
#[derive(Debug, Clone)]
pub struct IssuedTicket {
    /// `tkt_...`: shown once.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
    /// The user it signs in.
    pub user_id: String,
    /// Who asked for it.
    pub issued_by: String,
}

/// What the store keeps under the ticket's hash.
#[derive(Debug, Serialize, Deserialize)]
struct StoredTicket {
    user_id: String,
    tenant_id: String,
    issued_by: String,
    reason: Option<String>,
    expires_at: i64,
    /// The actor chain of the issuer's own session, when someone acted for the issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer_act: Option<Actor>,
}

fn ticket_key(ticket: &str) -> String {
    format!("kg:ticket:{}", random::secret_hash(ticket))
}

/// A redeemed ticket: the sign-in and who issued it.
#[derive(Debug, Clone)]
pub struct TicketSignIn {
    /// The session.
    pub signed_in: SignedIn,
    /// Who issued the ticket.
    pub issued_by: String,
    /// Why.
    pub reason: Option<String>,
}

/// What a caller may issue tickets for.
struct Authority {
    tenant_id: String,
    /// `act.sub` of the ticket's sessions: a user id, or `system:serviceaccount:NS:NAME`.
    issued_by: String,
    issuer_act: Option<Actor>,
    /// Roles the ticket's user may hold (`None`: any, for administrators).
    allowed_roles: Option<Vec<String>>,
    /// The grant it comes from, for ServiceAccounts.
    grant: Option<String>,
}

impl AuthService {
    /// What `caller` may issue tickets for: a user's own tenant and, unless an administrator,
    /// no user with a role the caller lacks; a ServiceAccount's grant for the tenant named
    /// (or its only one), its allowed roles and its rate limit.
    async fn ticket_authority(
        &self,
        caller: &BearerCaller,
        tenant: Option<&str>,
    ) -> Result<Authority, AuthError> {
        let tenant = tenant.map(str::trim).filter(|t| !t.is_empty());
        match caller {
            BearerCaller::User(claims) => {
                let user = self.current_user(claims).await?;
                if !super::users::grants(&user.roles, GrantPermission::TicketsCreate.as_str()) {
                    return Err(AuthError::Forbidden);
                }
                // The chain a ticket would pass on must stay whole and bounded.
                if claims
                    .act
                    .as_ref()
                    .is_some_and(|a| a.depth() + 1 > super::tokens::MAX_ACTOR_DEPTH)
                {
                    tracing::warn!(caller = %user.id, "ticket refused: the actor chain is at its limit");
                    return Err(AuthError::Forbidden);
                }
                if tenant.is_some_and(|t| t != user.tenant_id) {
                    return Err(AuthError::Forbidden);
                }
                // No way up: only an administrator may sign in as someone holding a role the
                // caller lacks (a `ticket-issuer` cannot become an `admin`).
                let allowed_roles = (!user.has_role("admin")).then(|| user.roles.clone());
                Ok(Authority {
                    tenant_id: user.tenant_id,
                    issued_by: user.id,
                    issuer_act: claims.act.clone(),
                    allowed_roles,
                    grant: None,
                })
            }
            BearerCaller::ServiceAccount(sa) => {
                let rt = self.runtime();
                let grant = sa.grant(
                    &rt.config.service_account_grants,
                    GrantPermission::TicketsCreate,
                    tenant,
                )?;
                if let Some(limit) = grant.rate_limit {
                    self.rate_window(
                        &format!("grant:{}", grant.name),
                        &sa.username(),
                        limit.limit,
                        u64::from(limit.window_seconds),
                    )
                    .await?;
                }
                Ok(Authority {
                    tenant_id: grant.tenant_id.clone(),
                    issued_by: sa.username(),
                    issuer_act: None,
                    allowed_roles: Some(grant.allowed_roles.clone()),
                    grant: Some(grant.name.clone()),
                })
            }
        }
    }

    /// Issues a ticket for a user of the tenant `caller` may act on.
    #[tracing::instrument(name = "auth.ticket_issue", skip_all)]
    pub async fn generate_ticket(
        &self,
        caller: &BearerCaller,
        req: TicketRequest,
    ) -> Result<IssuedTicket, AuthError> {
        let authority = self
            .ticket_authority(caller, req.tenant_id.as_deref())
            .await?;
        let reason = req
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let mut errors = Vec::new();
        if req.user_id.trim().is_empty() {
            errors.push(FieldViolation::new(
                "user_id",
                "required",
                "user_id is required",
            ));
        }
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            errors.push(FieldViolation::new(
                "reason",
                "range",
                format!("at most {MAX_REASON_CHARS} characters"),
            ));
        }
        if !errors.is_empty() {
            return Err(AuthError::Validation(errors));
        }
        let user = self
            .store
            .user(req.user_id.trim())
            .await?
            .filter(|u| u.tenant_id == authority.tenant_id && u.status == status::ACTIVE)
            .ok_or(AuthError::NotFound("user"))?;
        if let Some(allowed) = &authority.allowed_roles
            && user.roles.iter().any(|r| !allowed.contains(r))
        {
            return Err(AuthError::Forbidden);
        }
        let ttl = self.runtime().config.tokens.ticket_ttl_seconds;
        let ticket = format!("tkt_{}", random::secret(TICKET_BYTES));
        let stored = StoredTicket {
            user_id: user.id.clone(),
            tenant_id: user.tenant_id.clone(),
            issued_by: authority.issued_by.clone(),
            reason,
            expires_at: self.clock.unix() + secs(ttl),
            issuer_act: authority.issuer_act.clone(),
        };
        let json =
            serde_json::to_string(&stored).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.ephemeral
            .set(&ticket_key(&ticket), &json, Duration::from_secs(ttl))
            .await?;
        tracing::info!(issuer = %authority.issued_by, user = %user.id, "sign-in ticket issued");
        self.audit(super::audit::Event {
            kind: super::audit::kind::TICKET_ISSUED,
            tenant_id: &user.tenant_id,
            outcome: "success",
            user_id: Some(&user.id),
            actor_id: Some(&authority.issued_by),
            reason: stored.reason.as_deref(),
            details: Some(serde_json::json!({
                "expires_in": ttl, "issuer_act": authority.issuer_act, "grant": authority.grant,
            })),
            ..Default::default()
        })
        .await;
        Ok(IssuedTicket {
            ticket,
            expires_in: ttl,
            user_id: user.id,
            issued_by: authority.issued_by,
        })
    }

    /// Redeems a ticket: consumed atomically whatever the outcome, then a session with
    /// `amr: ["ticket"]` and, when the issuer is not the user, `act`.
    #[tracing::instrument(name = "auth.ticket_redeem", skip_all)]
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<TicketSignIn, AuthError> {
        let ticket = ticket.trim();
        if ticket.is_empty() {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "ticket",
                "required",
                "ticket is required",
            )]));
        }
        if ticket.len() > 128 {
            return Err(AuthError::TicketInvalid);
        }
        let stored: StoredTicket = self
            .ephemeral
            .take(&ticket_key(ticket))
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or(AuthError::TicketInvalid)?;
        let user = self
            .store
            .user(&stored.user_id)
            .await?
            .filter(|u| u.tenant_id == stored.tenant_id && u.status == status::ACTIVE);
        let expired = stored.expires_at <= self.clock.unix();
        let (Some(user), false) = (user, expired) else {
            let refused = if expired {
                "ticket_expired"
            } else {
                "account_disabled"
            };
            // A real ticket that cannot be used: recorded under its tenant.
            self.audit(super::audit::Event {
                kind: super::audit::kind::SIGN_IN,
                tenant_id: &stored.tenant_id,
                outcome: "failure",
                method: Some("ticket"),
                user_id: Some(&stored.user_id),
                actor_id: Some(&stored.issued_by),
                reason: Some(refused),
                ..Default::default()
            })
            .await;
            return Err(AuthError::TicketInvalid);
        };
        // The issuer acts for the user; an issuer who was itself being acted for passes its
        // chain on (RFC 8693 §4.1 nests `act`), and a ticket for oneself keeps the chain as is.
        let act = if stored.issued_by != user.id {
            Some(Actor::chain(
                stored.issued_by.clone(),
                stored.reason.clone(),
                stored.issuer_act.clone(),
            ))
        } else {
            stored.issuer_act.clone()
        };
        // The sign-in (and, when another account issued the ticket, the impersonation) is
        // recorded in the session's transaction.
        let audit = |session_id: &str| {
            let event = |kind| super::audit::Event {
                kind,
                tenant_id: &user.tenant_id,
                outcome: "success",
                method: Some("ticket"),
                user_id: Some(&user.id),
                actor_id: Some(&stored.issued_by),
                reason: stored.reason.as_deref(),
                details: Some(serde_json::json!({ "session_id": session_id, "act": act })),
            };
            let mut records = vec![self.audit_record(event(super::audit::kind::SIGN_IN))];
            if act.is_some() {
                records.push(self.audit_record(event(super::audit::kind::IMPERSONATION)));
            }
            records
        };
        let tokens = self
            .open_session_recording(&user, vec!["ticket".into()], act.clone(), None, audit)
            .await?;
        Ok(TicketSignIn {
            signed_in: SignedIn {
                password: self.password_status(&user),
                risk: None,
                user,
                tokens,
            },
            issued_by: stored.issued_by,
            reason: stored.reason,
        })
    }
}
