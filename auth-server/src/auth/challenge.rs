//! Adaptive MFA in the sign-in flow: deciding whether a password sign-in needs a second
//! factor, the single-use challenge with limited attempts that stands in for the tokens until
//! the factor is verified, and TOTP enrolment (setup, activation with backup codes).

use super::error::AuthError;
use super::tokens::AccessClaims;
use super::users::PasswordStatus;
use super::{AuthService, SignedIn, mfa, random};
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
}

impl MfaMethod {
    /// Parses `mfa_method` (absent: TOTP).
    pub fn parse(s: Option<&str>) -> Result<Self, AuthError> {
        match s.map(str::trim).filter(|m| !m.is_empty()).unwrap_or("totp") {
            "totp" => Ok(Self::Totp),
            "backup" | "backup_code" => Ok(Self::Backup),
            other => Err(AuthError::Validation(vec![
                super::error::FieldViolation::new(
                    "mfa_method",
                    "format",
                    format!("{other:?} is not available: use totp or backup"),
                ),
            ])),
        }
    }
}

impl AuthService {
    /// Whether this sign-in must show a second factor; if so, the challenge for it.
    pub(super) async fn mfa_gate(
        &self,
        enrolled: bool,
        user: &User,
        policy: &MfaPolicy,
        password: &PasswordStatus,
        risk: &super::risk::RiskAssessment,
        context: &super::risk::SignInContext,
    ) -> Result<Option<MfaPending>, AuthError> {
        if !enrolled || policy.mode == MfaMode::Off {
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
        let methods = vec!["totp".to_owned(), "backup".to_owned()];
        let token = format!("chg_{}", random::secret(32));
        let state = ChallengeState {
            user_id: user.id.clone(),
            amr: vec!["pwd".into()],
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
            password: password.clone(),
            risk: risk.clone(),
        }))
    }

    /// Answers an MFA challenge. A wrong code is a 400 and uses up one attempt; an expired,
    /// used-up or already answered challenge is a 403. The right code spends the challenge
    /// (once, whatever the concurrency) and opens the session.
    pub async fn verify_challenge(
        &self,
        token: &str,
        code: &str,
        method: MfaMethod,
    ) -> Result<SignedIn, AuthError> {
        if token.is_empty() || token.len() > 128 {
            return Err(AuthError::MfaChallengeInvalid);
        }
        let state: ChallengeState = self
            .ephemeral
            .get(&challenge_key(token))
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or(AuthError::MfaChallengeInvalid)?;
        let attempts = self
            .ephemeral
            .incr(&attempts_key(token), Duration::from_secs(3600))
            .await?;
        // Every attempt is counted before its code is checked, so parallel guesses cannot
        // exceed the limit; past it the challenge answers nothing.
        if attempts > i64::from(state.max_attempts) {
            return Err(AuthError::MfaChallengeInvalid);
        }
        let user = self
            .store
            .user(&state.user_id)
            .await?
            .filter(|u| u.status == crate::store::status::ACTIVE)
            .ok_or(AuthError::MfaChallengeInvalid)?;
        let factor = match method {
            MfaMethod::Totp => self.check_totp(&user, code).await?.then_some("otp"),
            MfaMethod::Backup => self
                .check_backup_code(&user, code)
                .await?
                .then_some("backup"),
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
        Ok(codes)
    }
}
