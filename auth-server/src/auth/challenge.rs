//! Adaptive MFA in the sign-in flow: deciding whether a password sign-in needs a second
//! factor, the single-use challenge with limited attempts that stands in for the tokens until
//! the factor is verified, and TOTP enrolment (setup, activation with backup codes).

use super::codes::{CodeSent, CodeTarget, Outgoing, mfa_code_key, target_rate_key};
use super::error::AuthError;
use super::gate::GateKeys;
use super::limits::RateKeys;
use super::tokens::AccessClaims;
use super::users::PasswordStatus;
use super::{AuthService, SignedIn, mfa, random};
use crate::delivery::{Channel, Purpose};
use crate::store::User;
use keygate_config::{MfaMode, MfaPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a password sign-in produced.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Tokens.
    SignedIn(SignedIn),
    /// A second factor is needed first.
    MfaRequired(MfaPending),
}

impl LoginOutcome {
    /// The account and the audit outcome (`success`, or `challenge` while MFA is pending).
    pub fn audit_summary(&self) -> (String, &'static str) {
        match self {
            Self::SignedIn(s) => (s.user.id.clone(), "success"),
            Self::MfaRequired(p) => (p.user.id.clone(), "challenge"),
        }
    }
}

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone)]
pub struct MfaPending {
    /// The account.
    pub user: User,
    /// `chg_...`: send it to `/auth/mfa/verify-challenge`.
    pub challenge_token: String,
    /// Methods that can answer it.
    pub methods: Vec<String>,
    /// Why the factor is asked for.
    pub reason: String,
    /// The password's expiry status.
    pub password: PasswordStatus,
    /// The sign-in's risk assessment.
    pub risk: super::risk::RiskAssessment,
}

/// What a challenge remembers (in the ephemeral store, under the hash of its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChallengeState {
    user_id: String,
    amr: Vec<String>,
    methods: Vec<String>,
    max_attempts: u32,
    /// Remembered in the risk profile once the challenge is answered.
    device: Option<String>,
    ip: Option<String>,
    hour: u8,
}

fn challenge_key(token: &str) -> String {
    format!("kg:mfa:chg:{}", random::secret_hash(token))
}

fn attempts_key(token: &str) -> String {
    format!("kg:mfa:att:{}", random::secret_hash(token))
}

/// A second factor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaMethod {
    /// A TOTP code.
    Totp,
    /// A backup code.
    Backup,
    /// A code sent to the account's email address.
    Email,
    /// A code sent to the account's phone number.
    Sms,
}

impl MfaMethod {
    /// Parses `mfa_method` (absent: TOTP).
    pub fn parse(s: Option<&str>) -> Result<Self, AuthError> {
        match s.map(str::trim).filter(|m| !m.is_empty()).unwrap_or("totp") {
            "totp" => Ok(Self::Totp),
            "backup" | "backup_code" => Ok(Self::Backup),
            "email" => Ok(Self::Email),
            "sms" => Ok(Self::Sms),
            other => Err(AuthError::Validation(vec![
                super::error::FieldViolation::new(
                    "mfa_method",
                    "format",
                    format!("{other:?} is not a method: use totp, backup, email or sms"),
                ),
            ])),
        }
    }

    /// The method's name in challenges.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Backup => "backup",
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    /// The delivery channel of a sent-code method.
    fn channel(self) -> Option<Channel> {
        match self {
            Self::Email => Some(Channel::Email),
            Self::Sms => Some(Channel::Sms),
            Self::Totp | Self::Backup => None,
        }
    }
}

/// The second factors `user` can answer with under `policy`, in the policy's order.
fn offered_methods(policy: &MfaPolicy, user: &User, totp_active: bool) -> Vec<String> {
    policy
        .methods
        .iter()
        .filter(|m| match m.as_str() {
            "totp" | "backup" => totp_active,
            "email" => user.email.is_some(),
            "sms" => user.phone.is_some(),
            _ => false,
        })
        .cloned()
        .collect()
}

fn method_not_offered(method: MfaMethod) -> AuthError {
    AuthError::Validation(vec![super::error::FieldViolation::new(
        "mfa_method",
        "range",
        format!("{} is not offered for this challenge", method.as_str()),
    )])
}

impl AuthService {
    /// Whether this sign-in must show a second factor; if so, the challenge for it.
    /// `first_factor` is the `amr` of what the user has shown: after a sent code (`otp_email`,
    /// `otp_sms`) or a federated sign-in only TOTP and backup codes can be the second factor.
    #[tracing::instrument(name = "auth.mfa_decision", skip_all)]
    pub(super) async fn mfa_gate(
        &self,
        totp_active: bool,
        user: &User,
        policy: &MfaPolicy,
        first_factor: &str,
        risk: &super::risk::RiskAssessment,
        context: &super::risk::SignInContext,
    ) -> Result<Option<MfaPending>, AuthError> {
        let mut methods = offered_methods(policy, user, totp_active);
        if first_factor != "pwd" {
            methods.retain(|m| m == "totp" || m == "backup");
        }
        if methods.is_empty() || policy.mode == MfaMode::Off {
            return Ok(None);
        }
        let reason = match policy.mode {
            MfaMode::Always => risk
                .signals
                .first()
                .copied()
                .unwrap_or("mfa_enrolled")
                .to_owned(),
            MfaMode::Risk if risk.level >= policy.risk_level => {
                risk.signals.first().copied().unwrap_or("risk").to_owned()
            }
            MfaMode::Risk | MfaMode::Off => return Ok(None),
        };
        let token = format!("chg_{}", random::secret(32));
        let state = ChallengeState {
            user_id: user.id.clone(),
            amr: vec![first_factor.into()],
            methods: methods.clone(),
            max_attempts: policy.max_attempts,
            device: context.device.clone(),
            ip: context.ip.map(|ip| ip.to_string()),
            hour: context.hour,
        };
        let json = serde_json::to_string(&state).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.ephemeral
            .set(
                &challenge_key(&token),
                &json,
                Duration::from_secs(policy.challenge_ttl_seconds),
            )
            .await?;
        Ok(Some(MfaPending {
            user: user.clone(),
            challenge_token: token,
            methods,
            reason,
            password: self.password_status(user),
            risk: risk.clone(),
        }))
    }

    /// Ends a sign-in whose first factor was not the password (a sent code, a federated
    /// id_token): users with TOTP are asked for it when the policy says so; otherwise the
    /// session opens, its `sign_in` audit entry (`method`, naming `identity`) written in the
    /// session's statement. The caller records every other outcome (`audit_sign_in`).
    pub(super) async fn finish_sign_in(
        &self,
        user: User,
        first_factor: &str,
        totp_active: bool,
        (method, identity): (&str, Option<&str>),
    ) -> Result<LoginOutcome, AuthError> {
        if user.status != crate::store::status::ACTIVE {
            return Err(AuthError::AccountDisabled);
        }
        let rt = self.runtime();
        let policy = &rt.config.policy_for(&user.tenant_id).mfa;
        let risk = super::risk::RiskAssessment::default();
        let context = super::risk::SignInContext::default();
        if let Some(pending) = self
            .mfa_gate(totp_active, &user, policy, first_factor, &risk, &context)
            .await?
        {
            return Ok(LoginOutcome::MfaRequired(pending));
        }
        let record = self.sign_in_record(
            method,
            &user.tenant_id,
            identity,
            "success",
            Some(&user.id),
            None,
        );
        let tokens = self
            .open_session_recording(&user, vec![first_factor.into()], None, None, |_| {
                vec![record]
            })
            .await?;
        Ok(LoginOutcome::SignedIn(SignedIn {
            password: self.password_status(&user),
            risk: None,
            user,
            tokens,
        }))
    }

    /// Answers an MFA challenge. A wrong code is a 400 and uses up one attempt; an expired,
    /// used-up or already answered challenge is a 403. The right code spends the challenge
    /// (once, whatever the concurrency) and opens the session. Every answer is also an
    /// attempt on the account's own counter, with the same progressive delay, lock and
    /// CAPTCHA as passwords, so fresh challenges (by any identifier or first factor) give no
    /// fresh guesses.
    #[tracing::instrument(name = "auth.mfa_verify", skip_all)]
    pub async fn verify_challenge(
        &self,
        token: &str,
        code: &str,
        method: MfaMethod,
        client_ip: Option<&str>,
        captcha: &super::CaptchaAnswer,
    ) -> Result<SignedIn, AuthError> {
        let state = self.open_challenge(token, method).await?;
        let user = self.challenge_user(&state).await?;
        self.check_rate(
            "mfa_verify",
            &RateKeys {
                ip: client_ip,
                identity: Some(&user.id),
                tenant: Some(&user.tenant_id),
                ..Default::default()
            },
        )
        .await?;
        let result = self
            .verify_gated(token, code, method, state, &user, client_ip, captcha)
            .await;
        self.audit_sign_in("mfa", &user.tenant_id, None, Some(&user.id), &result, |s| {
            (s.user.id.clone(), "success")
        })
        .await;
        result
    }

    /// The answer through the attempt gate: CAPTCHA when due, admission, the challenge's own
    /// attempt count, the check, and the counters settled by the outcome.
    #[allow(clippy::too_many_arguments)]
    async fn verify_gated(
        &self,
        token: &str,
        code: &str,
        method: MfaMethod,
        state: ChallengeState,
        user: &User,
        client_ip: Option<&str>,
        captcha: &super::CaptchaAnswer,
    ) -> Result<SignedIn, AuthError> {
        let rt = self.runtime();
        let policy = rt.config.policy_for(&user.tenant_id);
        let gate = GateKeys::for_account(user, client_ip);
        if policy.captcha.mode == keygate_config::CaptchaMode::AfterFailures {
            let (failures, _) = self.ephemeral.gate_failures(&gate.account, &gate.ip).await;
            if failures >= policy.captcha.after_failures {
                self.verify_captcha(&policy.captcha, captcha, client_ip)
                    .await?;
            }
        }
        let failures_before = self.gate_admit(&gate, &policy.lockout).await?;
        let attempts = self
            .ephemeral
            .incr(&attempts_key(token), Duration::from_secs(3600))
            .await?;
        // Every attempt is counted before its code is checked, so parallel guesses cannot
        // exceed the limit; past it the challenge answers nothing.
        let result = if attempts > i64::from(state.max_attempts) {
            Err(AuthError::MfaChallengeInvalid)
        } else {
            self.answer_challenge(token, code, method, state, user, attempts)
                .await
        };
        match &result {
            Err(AuthError::MfaCodeInvalid) => {
                self.gate_failed(&user.tenant_id, &user.id, failures_before, &policy.lockout)
                    .await;
            }
            other => {
                self.gate_settle(&gate, other.is_ok(), policy.lockout.lock_after)
                    .await;
            }
        }
        result
    }

    async fn answer_challenge(
        &self,
        token: &str,
        code: &str,
        method: MfaMethod,
        state: ChallengeState,
        user: &User,
        attempts: i64,
    ) -> Result<SignedIn, AuthError> {
        let user = user.clone();
        let factor = match method {
            MfaMethod::Totp => self.check_totp(&user, code).await?.then_some("otp"),
            MfaMethod::Backup => self
                .check_backup_code(&user, code)
                .await?
                .then_some("backup"),
            MfaMethod::Email | MfaMethod::Sms => {
                let channel = method.channel().ok_or(AuthError::MfaCodeInvalid)?;
                let rt = self.runtime();
                let policy = &rt.config.policy_for(&user.tenant_id).login_codes;
                match self
                    .redeem_code(&mfa_code_key(token, channel), code, policy, false)
                    .await
                {
                    Ok(()) if channel == Channel::Email => Some("otp_email"),
                    Ok(()) => Some("otp_sms"),
                    Err(AuthError::CodeInvalid) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let Some(factor) = factor else {
            if attempts == i64::from(state.max_attempts) {
                self.ephemeral.take(&challenge_key(token)).await?;
            }
            return Err(AuthError::MfaCodeInvalid);
        };
        // Exactly one right answer opens a session.
        self.ephemeral
            .take(&challenge_key(token))
            .await?
            .ok_or(AuthError::MfaChallengeInvalid)?;
        let mut amr = state.amr;
        amr.push(factor.to_owned());
        let tokens = self.open_session(&user, amr, None).await?;
        let context = super::risk::SignInContext {
            device: state.device,
            ip: state.ip.and_then(|ip| ip.parse().ok()),
            hour: state.hour,
            ..Default::default()
        };
        let rt = self.runtime();
        let profile = self.risk_profile(&user.id).await?;
        self.remember_sign_in(
            &user,
            &rt.config.policy_for(&user.tenant_id).risk,
            profile,
            &context,
        )
        .await?;
        Ok(SignedIn {
            password: self.password_status(&user),
            risk: None,
            user,
            tokens,
        })
    }

    /// The open challenge behind `token`, which must offer `method`.
    async fn open_challenge(
        &self,
        token: &str,
        method: MfaMethod,
    ) -> Result<ChallengeState, AuthError> {
        if token.is_empty() || token.len() > 128 {
            return Err(AuthError::MfaChallengeInvalid);
        }
        let state: ChallengeState = self
            .ephemeral
            .get(&challenge_key(token))
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or(AuthError::MfaChallengeInvalid)?;
        if state.methods.iter().any(|m| m == method.as_str()) {
            Ok(state)
        } else {
            Err(method_not_offered(method))
        }
    }

    /// The account a challenge belongs to, while it is active.
    async fn challenge_user(&self, state: &ChallengeState) -> Result<User, AuthError> {
        self.store
            .user(&state.user_id)
            .await?
            .filter(|u| u.status == crate::store::status::ACTIVE)
            .ok_or(AuthError::MfaChallengeInvalid)
    }

    /// Sends a one-time code for an open challenge to the account's email address or phone
    /// number (`method` `email` or `sms`, offered by the challenge); a new one replaces the
    /// last.
    #[tracing::instrument(name = "auth.mfa_send_code", skip_all)]
    pub async fn send_challenge_code(
        &self,
        token: &str,
        method: MfaMethod,
        accept_language: Option<&str>,
        client_ip: Option<&str>,
    ) -> Result<CodeSent, AuthError> {
        let state = self.open_challenge(token, method).await?;
        let channel = method.channel().ok_or_else(|| {
            AuthError::Validation(vec![super::error::FieldViolation::new(
                "mfa_method",
                "format",
                "codes are sent for email or sms only",
            )])
        })?;
        let user = self.challenge_user(&state).await?;
        let value = match channel {
            Channel::Email => user.email.clone(),
            Channel::Sms => user.phone.clone(),
        }
        .ok_or_else(|| method_not_offered(method))?;
        let target = CodeTarget { channel, value };
        self.check_rate(
            "mfa_send_code",
            &RateKeys {
                ip: client_ip,
                target: Some(&target_rate_key(&user.tenant_id, &target.value)),
                tenant: Some(&user.tenant_id),
                ..Default::default()
            },
        )
        .await?;
        let tenant = self.tenant_cached(&user.tenant_id).await?;
        let rt = self.runtime();
        let policy = &rt.config.policy_for(&user.tenant_id).login_codes;
        self.before_send(&tenant.id, &target, policy, Purpose::Mfa)
            .await?;
        let outgoing = Outgoing {
            key: mfa_code_key(token, channel),
            target: &target,
            purpose: Purpose::Mfa,
            tenant_id: &tenant.id,
            service_name: &tenant.display_name,
            locale: self
                .delivery
                .locale_for(accept_language, &policy.default_locale),
        };
        self.issue_code(&outgoing, policy).await?;
        Ok(CodeSent {
            channel,
            target: target.masked(),
            expires_in: policy.ttl_seconds,
        })
    }

    async fn check_totp(&self, user: &User, code: &str) -> Result<bool, AuthError> {
        let Some(factor) = self.store.totp(&user.id).await?.filter(|f| f.confirmed) else {
            return Ok(false);
        };
        let secret = self.data_key.open(&factor.secret_sealed)?;
        match mfa::totp_match(&secret, code, self.clock.unix()) {
            Some(step) => Ok(self.store.use_totp_step(&user.id, step).await?),
            None => Ok(false),
        }
    }

    async fn check_backup_code(&self, user: &User, code: &str) -> Result<bool, AuthError> {
        if code.is_empty() || code.len() > 64 {
            return Ok(false);
        }
        let hash = self.data_key.backup_code_hash(&user.id, code);
        Ok(self
            .store
            .use_backup_code(&user.id, &hash, self.clock.unix())
            .await?)
    }

    /// Starts TOTP enrolment: a new secret, inactive until `activate_totp`.
    /// Returns (base32 secret, otpauth URI).
    pub async fn setup_totp(&self, claims: &AccessClaims) -> Result<(String, String), AuthError> {
        let user = self.current_user(claims).await?;
        let secret = random::bytes(20);
        let sealed = self.data_key.seal(&secret)?;
        if !self
            .store
            .put_unconfirmed_totp(&user.id, &sealed, self.clock.unix())
            .await?
        {
            return Err(AuthError::Conflict("totp"));
        }
        let b32 = mfa::base32(&secret);
        let account = user.email.clone().unwrap_or_else(|| user.username.clone());
        let issuer = self
            .issuer()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        let uri = mfa::otpauth_uri(&format!("Keygate ({issuer})"), &account, &b32);
        Ok((b32, uri))
    }

    /// Activates the pending TOTP factor with a current code; returns fresh backup codes
    /// (shown once, stored as keyed hashes).
    pub async fn activate_totp(
        &self,
        claims: &AccessClaims,
        code: &str,
    ) -> Result<Vec<String>, AuthError> {
        let user = self.current_user(claims).await?;
        let factor = self
            .store
            .totp(&user.id)
            .await?
            .ok_or(AuthError::NotFound("pending totp setup"))?;
        if factor.confirmed {
            return Err(AuthError::Conflict("totp"));
        }
        let secret = self.data_key.open(&factor.secret_sealed)?;
        let step =
            mfa::totp_match(&secret, code, self.clock.unix()).ok_or(AuthError::MfaCodeInvalid)?;
        let codes = mfa::new_backup_codes();
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| self.data_key.backup_code_hash(&user.id, c))
            .collect();
        if !self
            .store
            .confirm_totp(&user.id, step, self.clock.unix(), &hashes)
            .await?
        {
            return Err(AuthError::MfaCodeInvalid);
        }
        tracing::info!(user = %user.id, "totp activated");
        self.audit(super::audit::Event {
            kind: super::audit::kind::MFA_CHANGE,
            tenant_id: &user.tenant_id,
            outcome: "success",
            user_id: Some(&user.id),
            details: Some(serde_json::json!({
                "factor": "totp",
                "action": "activated",
                "backup_codes": codes.len(),
            })),
            ..Default::default()
        })
        .await;
        Ok(codes)
    }
}
