//! Durable storage: tenants, users, sessions and refresh tokens in SQLite (embedded default) or
//! Postgres (production), behind one API. Both backends run the same SQL through sqlx's `Any`
//! driver (portable statements, `$n` parameters in order, integers for time and flags); the
//! schema lives in per-backend migrations. One contract test suite runs against both.

mod conns;
mod sql;

pub use sql::{Backend, SqlStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; the value names the field (`username`,
    /// `email`, `phone`).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A row the operation depends on does not exist (e.g. the tenant of a new user).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The database is unreachable or answered with an error.
    #[error("database: {0}")]
    Database(String),
    /// Migrations could not be applied.
    #[error("migration: {0}")]
    Migration(String),
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Canonical id (`default`, or `tnt_...`).
    pub id: String,
    /// Short name.
    pub name: String,
    /// Name for people.
    pub display_name: String,
}

/// Account status.
pub mod status {
    /// May sign in.
    pub const ACTIVE: &str = "active";
    /// Disabled by an administrator.
    pub const DISABLED: &str = "disabled";
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `usr_...`
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Unique within the tenant, lowercase.
    pub username: String,
    /// Unique within the tenant, lowercase.
    pub email: Option<String>,
    /// E.164, unique within the tenant.
    pub phone: Option<String>,
    /// argon2id PHC string over the canonical digest; `None` for password-less accounts.
    pub password_hash: Option<String>,
    /// `active` or `disabled`.
    pub status: String,
    /// Role names (`admin`).
    pub roles: Vec<String>,
    /// An administrator requires a password change.
    pub must_change_password: bool,
    /// When the password was last set.
    pub password_changed_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
}

impl User {
    /// The user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Pre-generated id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Normalised username.
    pub username: String,
    /// Normalised email.
    pub email: Option<String>,
    /// E.164 phone.
    pub phone: Option<String>,
    /// PHC string.
    pub password_hash: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Require a change at first login.
    pub must_change_password: bool,
    /// Now.
    pub created_at: i64,
}

/// Which column an identity is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// Username.
    Username,
    /// Email address.
    Email,
    /// Phone number.
    Phone,
}

/// A session (a refresh-token family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `ses_...`
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// User.
    pub user_id: String,
    /// Authentication methods used to open it.
    pub amr: Vec<String>,
    /// Opened at.
    pub created_at: i64,
    /// Absolute end.
    pub expires_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// Who acts for the user in it (the `act` chain as JSON), for impersonated sessions.
    pub actor: Option<String>,
}

/// A refresh token as stored (by hash) together with its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// Its session.
    pub session: Session,
    /// End of this token's validity.
    pub expires_at: i64,
    /// When it was exchanged for a successor.
    pub rotated_at: Option<i64>,
}

/// A refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefresh {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// Issued at.
    pub created_at: i64,
    /// End of validity.
    pub expires_at: i64,
    /// Expiry of the access token issued with it.
    pub access_expires_at: i64,
}

/// A user's TOTP factor as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpFactor {
    /// The secret, sealed with the data key.
    pub secret_sealed: String,
    /// Activated (verified once).
    pub confirmed: bool,
    /// The last time step a code was accepted for (codes are single use).
    pub last_used_step: i64,
}

/// A user with what a password sign-in needs besides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// The user.
    pub user: User,
    /// A TOTP factor is active.
    pub totp_active: bool,
    /// The stored risk profile (JSON), if any.
    pub risk_profile: Option<String>,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// `evt_` + ULID (time-ordered; the pagination cursor).
    pub id: String,
    /// Unix seconds.
    pub occurred_at: i64,
    /// Tenant.
    pub tenant_id: String,
    /// What happened (`sign_in`, `ticket_issued`, ...).
    pub event_type: String,
    /// `success` or `failure` (or `challenge` for a sign-in waiting for MFA).
    pub outcome: String,
    /// Sign-in method, when one applies.
    pub method: Option<String>,
    /// The account concerned.
    pub user_id: Option<String>,
    /// Who acted on it, when not the user (administrator, ticket issuer).
    pub actor_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
    /// Why it failed, or the reason given (tickets).
    pub reason: Option<String>,
    /// More facts as a JSON object (never secrets).
    pub details: Option<String>,
}

/// Which audit entries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Tenant.
    pub tenant_id: String,
    /// Only this account's.
    pub user_id: Option<String>,
    /// Only this type.
    pub event_type: Option<String>,
    /// Not before (Unix seconds).
    pub since: Option<i64>,
    /// Before (Unix seconds).
    pub until: Option<i64>,
    /// Older than this id (the cursor of the previous page).
    pub before_id: Option<String>,
    /// Entries to return.
    pub limit: u32,
}
