//! The audit trail: what is recorded (sign-ins with their method and outcome, tickets,
//! impersonation, lockouts and unlocks, MFA and password changes), the request origin it is
//! stamped with, and the administrator's filtered, cursor-paginated listing. Secrets (passwords,
//! codes, tickets, tokens) never reach it.

use super::error::{AuthError, FieldViolation};
use super::tokens::AccessClaims;
use super::{AuthService, random};
use crate::store::{AuditQuery, AuditRecord};

/// Event types.
pub mod kind {
    /// A sign-in attempt (any method).
    pub const SIGN_IN: &str = "sign_in";
    /// A ticket was issued.
    pub const TICKET_ISSUED: &str = "ticket_issued";
    /// Someone signed in as another user (a ticket issued by someone else).
    pub const IMPERSONATION: &str = "impersonation";
    /// An account was locked after too many failures.
    pub const LOCKOUT: &str = "lockout";
    /// An administrator lifted a lock.
    pub const UNLOCK: &str = "unlock";
    /// A second factor was enrolled.
    pub const MFA_CHANGE: &str = "mfa_change";
    /// A password was changed.
    pub const PASSWORD_CHANGE: &str = "password_change";
    /// An external account was linked to a local one (created, or matched by verified email).
    pub const FEDERATION_LINK: &str = "federation_link";
    /// Every type, for validating filters.
    pub const ALL: &[&str] = &[
        SIGN_IN,
        TICKET_ISSUED,
        IMPERSONATION,
        LOCKOUT,
        UNLOCK,
        MFA_CHANGE,
        PASSWORD_CHANGE,
        FEDERATION_LINK,
    ];
}

/// Where the request came from; set per request by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Client address (through trusted proxies only).
    pub client_ip: Option<String>,
    /// `User-Agent`, at most 256 characters.
    pub user_agent: Option<String>,
}

tokio::task_local! {
    /// The origin of the request being served.
    pub static ORIGIN: Origin;
}

/// An event to record.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    /// From [`kind`].
    pub kind: &'a str,
    /// Tenant.
    pub tenant_id: &'a str,
    /// `success`, `failure` or `challenge`.
    pub outcome: &'a str,
    /// Sign-in method.
    pub method: Option<&'a str>,
    /// The account concerned.
    pub user_id: Option<&'a str>,
    /// Who acted, when not the user.
    pub actor_id: Option<&'a str>,
    /// Why it failed, or the reason given.
    pub reason: Option<&'a str>,
    /// More facts (a JSON object, never secrets).
    pub details: Option<serde_json::Value>,
}

/// A page of the trail.
#[derive(Debug, Clone)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditRecord>,
    /// Pass as `cursor` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Most entries per page.
pub const MAX_PAGE: u32 = 500;

impl AuthService {
    /// Records an event. The trail must not take sign-in down with it: a failed write is
    /// logged as an error and counted, and the request goes on.
    pub async fn audit(&self, event: Event<'_>) {
        let record = self.audit_record(event);
        self.write_audit(&record).await;
    }

    /// Writes an entry on its own; a failure is logged and counted, never the request's.
    async fn write_audit(&self, record: &AuditRecord) {
        if let Err(e) = self.store.insert_audit(record).await {
            crate::metrics::AUDIT_WRITE_FAILURES.inc();
            tracing::error!(error = %e, kind = %record.event_type, "audit event could not be written");
        }
    }

    /// The entry an event makes, with the request's origin (written by `audit`, or in the
    /// transaction of the session it records).
    pub(super) fn audit_record(&self, event: Event<'_>) -> AuditRecord {
        let origin = ORIGIN.try_with(Origin::clone).unwrap_or_default();
        AuditRecord {
            id: random::id("evt"),
            occurred_at: self.clock.unix(),
            tenant_id: event.tenant_id.to_owned(),
            event_type: event.kind.to_owned(),
            outcome: event.outcome.to_owned(),
            method: event.method.map(str::to_owned),
            user_id: event.user_id.map(str::to_owned),
            actor_id: event.actor_id.map(str::to_owned),
            client_ip: origin.client_ip,
            user_agent: origin.user_agent,
            reason: event.reason.map(str::to_owned),
            details: event.details.map(|d| d.to_string()),
        }
    }

    /// Records a sign-in attempt's result: the account (for failures, `account`: the one the
    /// sign-in itself resolved, if it got that far), the outcome and why it failed. Malformed
    /// requests and unknown tenants are not recorded (there is no tenant to file them under).
    pub(super) async fn audit_sign_in<T>(
        &self,
        method: &str,
        tenant_id: &str,
        identity: Option<&str>,
        account: Option<&str>,
        result: &Result<T, AuthError>,
        user_of: impl Fn(&T) -> (String, &'static str),
    ) {
        let (outcome, user_id, reason) = match result {
            Ok(v) => {
                let (user, outcome) = user_of(v);
                (outcome, Some(user), None)
            }
            Err(AuthError::Validation(_) | AuthError::UnknownTenant) => return,
            Err(e) => ("failure", account.map(str::to_owned), Some(e.reason())),
        };
        let record = self.sign_in_record(
            method,
            tenant_id,
            identity,
            outcome,
            user_id.as_deref(),
            reason,
        );
        self.write_audit(&record).await;
    }

    /// The `sign_in` entry of an attempt with `outcome` (written by `audit_sign_in`, or, for a
    /// success that opens a session, in the session's transaction).
    pub(super) fn sign_in_record(
        &self,
        method: &str,
        tenant_id: &str,
        identity: Option<&str>,
        outcome: &str,
        user_id: Option<&str>,
        reason: Option<&str>,
    ) -> AuditRecord {
        // An identity that names no account is kept only as a hash: people type passwords
        // into the identity field.
        let details = identity.map(|value| {
            if user_id.is_some() {
                serde_json::json!({ "identity": value })
            } else {
                serde_json::json!({ "identity_sha256": &random::secret_hash(value)[..16] })
            }
        });
        self.audit_record(Event {
            kind: kind::SIGN_IN,
            tenant_id,
            outcome,
            method: Some(method),
            user_id,
            reason,
            details,
            ..Default::default()
        })
    }

    /// Lists the caller's tenant's trail (administrators only).
    pub async fn audit_events(
        &self,
        claims: &AccessClaims,
        mut query: AuditQuery,
    ) -> Result<AuditPage, AuthError> {
        let admin = self.require_role(claims, "admin").await?;
        if let Some(t) = query.event_type.as_deref()
            && !kind::ALL.contains(&t)
        {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "type",
                "format",
                format!("one of {}", kind::ALL.join(", ")),
            )]));
        }
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "limit",
                "range",
                format!("1..={MAX_PAGE}"),
            )]));
        }
        query.tenant_id = admin.tenant_id;
        let limit = query.limit;
        query.limit = limit + 1;
        let mut events = self.store.audit_events(&query).await?;
        let next_cursor = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }
}
