//! Wire shapes shared by several routes: `LoginResponse` and its parts, `UserInfo`, and the
//! `DataResponse`/`SimpleResponse` envelopes, with field names exactly as the contract has them.

use crate::auth::SignedIn;
use crate::auth::challenge::LoginOutcome;
use crate::auth::clock::rfc3339;
use crate::auth::risk::RiskAssessment;
use crate::auth::tokens::Actor;
use crate::auth::users::PasswordStatus;
use crate::store::User;
use keygate_config::RiskLevel;
use serde::Serialize;
use utoipa::ToSchema;

/// Basic account information.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserInfo {
    /// User id (`usr_...`).
    pub id: String,
    /// Username.
    pub username: String,
    /// Email address.
    pub email: Option<String>,
    /// Phone number (E.164).
    pub phone: Option<String>,
    /// `active` or `disabled`.
    pub status: String,
    /// Account creation time (RFC 3339).
    pub created_at: String,
    /// A password change is required.
    pub must_change_password: bool,
    /// Days until the password expires; null when passwords do not expire.
    pub password_expires_in: Option<i64>,
    /// `expiring`, `expired_grace` or `expired`; null when none applies.
    pub password_warning: Option<String>,
    /// Who acts for the user in this session (RFC 8693 `act`, nested for a chain); absent in
    /// the user's own sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActorInfo>,
}

/// An actor (RFC 8693 §4.1): who signed in as the user, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorInfo {
    /// The actor's subject (`usr_...`).
    pub sub: String,
    /// The reason given with the ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The actor who was acting for this actor, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub act: Option<Box<ActorInfo>>,
}

impl From<&Actor> for ActorInfo {
    fn from(a: &Actor) -> Self {
        Self {
            sub: a.sub.clone(),
            reason: a.reason.clone(),
            act: a.act.as_deref().map(|inner| Box::new(inner.into())),
        }
    }
}

impl UserInfo {
    /// The account with its password status.
    pub fn new(u: &User, password: &PasswordStatus) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            phone: u.phone.clone(),
            status: u.status.clone(),
            created_at: rfc3339(u.created_at),
            must_change_password: password.must_change,
            password_expires_in: password.expires_in_days,
            password_warning: password.warning.map(str::to_owned),
            act: None,
        }
    }

    /// The account as someone who has shown only a first factor may see it: its id, and its
    /// username, email and phone masked (enough to choose where a code goes).
    pub fn pending(u: &User, password: &PasswordStatus) -> Self {
        use crate::auth::codes::mask;
        use crate::delivery::Channel;
        Self {
            username: mask(&format!("{}@", u.username), Channel::Email)
                .trim_end_matches('@')
                .to_owned(),
            email: u.email.as_deref().map(|e| mask(e, Channel::Email)),
            phone: u.phone.as_deref().map(|p| mask(p, Channel::Sms)),
            created_at: String::new(),
            ..Self::new(u, password)
        }
    }

    /// The same with the session's actor chain.
    pub fn acting(mut self, act: Option<&Actor>) -> Self {
        self.act = act.map(ActorInfo::from);
        self
    }
}

/// Risk assessment of a sign-in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskAssessmentInfo {
    /// Score 0-100.
    pub score: i64,
    /// `low`, `medium` or `high`.
    pub level: String,
    /// Whether the score alone demands MFA.
    pub require_mfa: bool,
    /// MFA methods recommended at this level.
    pub recommended_mfa_methods: Vec<String>,
}

/// Result of a sign-in or refresh.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Access token (JWT); null while MFA is pending.
    pub access_token: Option<String>,
    /// Refresh token; null while MFA is pending.
    pub refresh_token: Option<String>,
    /// `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// The account.
    pub user: UserInfo,
    /// Same as `user.id`.
    pub user_id: String,
    /// Adaptive MFA: another factor is required before tokens are issued.
    pub requires_mfa: bool,
    /// MFA challenge token when `requires_mfa`.
    pub challenge_token: Option<String>,
    /// Acceptable MFA methods when `requires_mfa`.
    pub required_mfa_methods: Vec<String>,
    /// Why MFA was required.
    pub mfa_check_reason: Option<String>,
    /// Risk level: `low`, `medium` or `high`.
    pub risk_level: String,
    /// Risk assessment.
    pub risk_assessment: RiskAssessmentInfo,
    /// A password change is required.
    pub must_change_password: bool,
    /// Days until the password expires; null when passwords do not expire.
    pub password_expires_in: Option<i64>,
    /// `expiring`, `expired_grace` or `expired`; null when none applies.
    pub password_warning: Option<String>,
}

impl RiskAssessmentInfo {
    fn new(risk: Option<&RiskAssessment>, require_mfa: bool, methods: Vec<String>) -> Self {
        let risk = risk.cloned().unwrap_or_default();
        Self {
            score: i64::from(risk.score),
            level: risk.level.as_str().into(),
            require_mfa,
            recommended_mfa_methods: if risk.level > RiskLevel::Low || require_mfa {
                methods
            } else {
                Vec::new()
            },
        }
    }
}

impl From<SignedIn> for LoginResponse {
    fn from(s: SignedIn) -> Self {
        let user = UserInfo::new(&s.user, &s.password);
        let risk = RiskAssessmentInfo::new(s.risk.as_ref(), false, vec!["totp".into()]);
        Self {
            access_token: Some(s.tokens.access_token),
            refresh_token: Some(s.tokens.refresh_token),
            token_type: "Bearer".into(),
            expires_in: s.tokens.expires_in,
            user_id: user.id.clone(),
            must_change_password: user.must_change_password,
            password_expires_in: user.password_expires_in,
            password_warning: user.password_warning.clone(),
            user,
            requires_mfa: false,
            challenge_token: None,
            required_mfa_methods: Vec::new(),
            mfa_check_reason: None,
            risk_level: risk.level.clone(),
            risk_assessment: risk,
        }
    }
}

/// Success envelope with data.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DataResponse<T> {
    /// Always 0.
    pub code: i64,
    /// `success`.
    pub message: String,
    /// The payload.
    pub data: T,
    /// RFC 3339 time of the response.
    pub timestamp: String,
}

impl<T> DataResponse<T> {
    /// Wraps `data`.
    pub fn new(data: T) -> Self {
        Self {
            code: 0,
            message: "success".into(),
            data,
            timestamp: rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        }
    }
}

/// Success envelope without data.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SimpleResponse {
    /// Always 0.
    pub code: i64,
    /// What happened.
    pub message: String,
    /// RFC 3339 time of the response.
    pub timestamp: String,
}

impl SimpleResponse {
    /// A success with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: 0,
            message: message.into(),
            timestamp: rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        }
    }
}

impl From<LoginOutcome> for LoginResponse {
    fn from(outcome: LoginOutcome) -> Self {
        match outcome {
            LoginOutcome::SignedIn(s) => s.into(),
            LoginOutcome::MfaRequired(p) => {
                let user = UserInfo::pending(&p.user, &p.password);
                let risk = RiskAssessmentInfo::new(Some(&p.risk), true, p.methods.clone());
                Self {
                    access_token: None,
                    refresh_token: None,
                    token_type: "Bearer".into(),
                    expires_in: 0,
                    user_id: user.id.clone(),
                    must_change_password: user.must_change_password,
                    password_expires_in: user.password_expires_in,
                    password_warning: user.password_warning.clone(),
                    user,
                    requires_mfa: true,
                    challenge_token: Some(p.challenge_token),
                    required_mfa_methods: p.methods.clone(),
                    mfa_check_reason: Some(p.reason),
                    risk_level: risk.level.clone(),
                    risk_assessment: risk,
                }
            }
        }
    }
}
