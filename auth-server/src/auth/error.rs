//! The domain's error type: every way a sign-in, token or account operation can fail, without
//! any notion of HTTP (the http layer maps each to a status and a problem body).

use crate::ephemeral::EphemeralError;
use crate::store::StoreError;

/// One rejected input field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dot/array path of the field.
    pub field: String,
    /// `required`, `format`, `range` or `conflict`.
    pub code: &'static str,
    /// What rule was broken, for people.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(
        field: impl Into<String>,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code,
            description: description.into(),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Input fields break the rules.
    #[error("invalid request")]
    Validation(Vec<FieldViolation>),
    /// The tenant does not exist.
    #[error("unknown tenant")]
    UnknownTenant,
    /// Wrong identity or password (indistinguishable by design).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The password was right but the account may not sign in.
    #[error("account disabled")]
    AccountDisabled,
    /// The password expired past its grace period; it must be reset.
    #[error("password expired")]
    PasswordExpired,
    /// The password was sent in a mode the tenant does not accept.
    #[error("password transmission mode not accepted")]
    TransmissionNotAccepted,
    /// An encrypted password could not be decrypted (wrong key, tampered, not UTF-8).
    #[error("password could not be decrypted")]
    PasswordUndecodable,
    /// The key exchange of a `symmetric` password is unknown, expired or already used.
    #[error("key exchange expired or used")]
    KeyExchangeExpired,
    /// The policy demands a CAPTCHA and none was sent.
    #[error("captcha required")]
    CaptchaRequired,
    /// The CAPTCHA answer is wrong, expired or already used.
    #[error("captcha invalid")]
    CaptchaInvalid,
    /// Too many failed sign-ins: wait (a growing delay) or, when `locked`, the lock's end.
    #[error("sign-in throttled")]
    LoginThrottled {
        /// Seconds to wait.
        retry_after: u64,
        /// A lock rather than a delay.
        locked: bool,
    },
    /// The MFA code is wrong (the challenge survives until its attempts are used up).
    #[error("wrong mfa code")]
    MfaCodeInvalid,
    /// The MFA challenge is unknown, expired, used up or already answered.
    #[error("mfa challenge expired or used")]
    MfaChallengeInvalid,
    /// An external id_token does not validate (the reason is for the log and the audit).
    #[error("invalid id_token: {0}")]
    IdTokenInvalid(&'static str),
    /// The external account is not linked and the provider's provisioning does not link or
    /// create one.
    #[error("no account for this external identity")]
    FederationNoAccount,
    /// The ticket is unknown, expired or already used, or its user can no longer sign in.
    #[error("invalid ticket")]
    TicketInvalid,
    /// The one-time code is wrong, expired, used up or already used.
    #[error("invalid code")]
    CodeInvalid,
    /// The tenant does not offer sign-in by code.
    #[error("sign-in by code is not enabled")]
    LoginCodesDisabled,
    /// The code was right but no account has this target and none was to be created.
    #[error("no account for this target")]
    NoAccountForCode,
    /// A code could not be delivered over the named channel (none is left usable).
    #[error("{0} delivery failed")]
    DeliveryFailed(&'static str),
    /// A rate-limit rule refused the request.
    #[error("rate limited by {rule}")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
        /// The rule's name.
        rule: String,
    },
    /// Unknown, expired or revoked refresh token.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// A rotated refresh token was replayed; its whole session is now revoked.
    #[error("refresh token reuse detected")]
    RefreshTokenReused,
    /// No bearer token, or one that does not verify.
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    /// The bearer token was revoked (logout).
    #[error("token revoked")]
    TokenRevoked,
    /// Authenticated, but not allowed.
    #[error("forbidden")]
    Forbidden,
    /// A unique value is taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A resource does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A backing service needed for this operation is down.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// A short, stable name of the failure (the audit trail's `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Validation(_) => "invalid_request",
            Self::UnknownTenant => "unknown_tenant",
            Self::InvalidCredentials => "invalid_credentials",
            Self::AccountDisabled => "account_disabled",
            Self::PasswordExpired => "password_expired",
            Self::TransmissionNotAccepted => "transmission_not_accepted",
            Self::PasswordUndecodable => "password_undecodable",
            Self::KeyExchangeExpired => "key_exchange_expired",
            Self::CaptchaRequired => "captcha_required",
            Self::CaptchaInvalid => "captcha_invalid",
            Self::LoginThrottled { locked: true, .. } => "locked",
            Self::LoginThrottled { locked: false, .. } => "delayed",
            Self::MfaCodeInvalid => "mfa_code_invalid",
            Self::MfaChallengeInvalid => "mfa_challenge_invalid",
            Self::TicketInvalid => "ticket_invalid",
            Self::IdTokenInvalid(why) => why,
            Self::FederationNoAccount => "no_linked_account",
            Self::CodeInvalid => "code_invalid",
            Self::LoginCodesDisabled => "login_codes_disabled",
            Self::NoAccountForCode => "no_account",
            Self::DeliveryFailed(_) => "delivery_failed",
            Self::RateLimited { .. } => "rate_limited",
            Self::InvalidRefreshToken => "invalid_refresh_token",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::TokenRevoked => "token_revoked",
            Self::Forbidden => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(f) => Self::Conflict(f),
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Database(m) | StoreError::Migration(m) => Self::Unavailable(m),
        }
    }
}

impl From<EphemeralError> for AuthError {
    fn from(e: EphemeralError) -> Self {
        Self::Unavailable(e.0)
    }
}

impl From<super::password::HashError> for AuthError {
    fn from(e: super::password::HashError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<super::tokens::TokenError> for AuthError {
    fn from(e: super::tokens::TokenError) -> Self {
        match e {
            super::tokens::TokenError::Invalid(_) => Self::Unauthenticated("invalid token"),
            other => Self::Internal(other.to_string()),
        }
    }
}
