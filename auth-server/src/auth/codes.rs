//! One-time codes by email and SMS: passwordless sign-in (send a code, then sign in, or
//! register, with it) and the email/SMS second factors. A code lives in the ephemeral store as
//! a keyed hash with its expiry on the injected clock; it is single use, dies after its
//! attempts, and is never left usable when its delivery failed.

use super::challenge::LoginOutcome;
use super::error::{AuthError, FieldViolation};
use super::limits::RateKeys;
use super::{AuthService, CaptchaAnswer, random, users};
use crate::delivery::{Channel, CodeMessage, Purpose};
use crate::store::{IdentityKind, User};
use keygate_config::LoginCodePolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A normalised email address or E.164 phone number that codes go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeTarget {
    /// Email or SMS.
    pub channel: Channel,
    /// Lowercased address, or the number as given.
    pub value: String,
}

impl CodeTarget {
    /// Exactly one of `email` and `phone`, well-formed; otherwise every violation at once.
    pub fn parse(email: Option<&str>, phone: Option<&str>) -> Result<Self, AuthError> {
        let email = email.map(str::trim).filter(|e| !e.is_empty());
        let phone = phone.map(str::trim).filter(|p| !p.is_empty());
        match (email, phone) {
            (Some(_), Some(_)) | (None, None) => {
                let (code, why) = if email.is_some() {
                    ("conflict", "send either email or phone, not both")
                } else {
                    ("required", "one of email or phone is required")
                };
                Err(AuthError::Validation(vec![
                    FieldViolation::new("email", code, why),
                    FieldViolation::new("phone", code, why),
                ]))
            }
            (Some(e), None) => Self::email(e),
            (None, Some(p)) => Self::phone(p),
        }
    }

    /// A well-formed email address.
    pub fn email(raw: &str) -> Result<Self, AuthError> {
        let value = raw.trim().to_lowercase();
        if value.is_empty() {
            return Err(required("email"));
        }
        if value.chars().count() > users::MAX_IDENTITY_CHARS || !users::is_email(&value) {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "email",
                "format",
                "must be a valid email address",
            )]));
        }
        Ok(Self {
            channel: Channel::Email,
            value,
        })
    }

    /// A phone number in E.164 form.
    pub fn phone(raw: &str) -> Result<Self, AuthError> {
        let value = raw.trim().to_owned();
        if value.is_empty() {
            return Err(required("phone"));
        }
        if !users::is_e164(&value) {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "phone",
                "format",
                "must be in E.164 form, e.g. +14155550123",
            )]));
        }
        Ok(Self {
            channel: Channel::Sms,
            value,
        })
    }

    /// The target with most of it hidden: `a***e@example.com`, `+41*******67`.
    pub fn masked(&self) -> String {
        mask(&self.value, self.channel)
    }

    fn kind(&self) -> IdentityKind {
        match self.channel {
            Channel::Email => IdentityKind::Email,
            Channel::Sms => IdentityKind::Phone,
        }
    }
}

fn required(field: &str) -> AuthError {
    AuthError::Validation(vec![FieldViolation::new(
        field,
        "required",
        format!("{field} is required"),
    )])
}

/// Hides all but the edges of an address or number.
pub fn mask(value: &str, channel: Channel) -> String {
    match channel {
        Channel::Email => {
            let (local, domain) = value.rsplit_once('@').unwrap_or((value, ""));
            let chars: Vec<char> = local.chars().collect();
            let first = chars.first().copied().unwrap_or('*');
            let last = if chars.len() > 2 {
                chars.last().map(|c| c.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            format!("{first}***{last}@{domain}")
        }
        Channel::Sms => {
            let n = value.chars().count();
            value
                .chars()
                .enumerate()
                .map(|(i, c)| if i < 3 || i + 2 >= n { c } else { '*' })
                .collect()
        }
    }
}

/// What `/auth/send-login-code` answers (the same whether or not the target has an account).
#[derive(Debug, Clone)]
pub struct CodeSent {
    /// `email` or `sms`.
    pub channel: Channel,
    /// The masked target.
    pub target: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

/// Who asks for or answers a code: what both code endpoints carry.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    /// Where the code goes (or went).
    pub target: CodeTarget,
    /// Tenant asked for.
    pub tenant_id: String,
    /// Client address, when known.
    pub client_ip: Option<String>,
    /// CAPTCHA answer (required when the tenant always demands one).
    pub captcha: CaptchaAnswer,
}

/// A request for a passwordless sign-in code.
#[derive(Debug, Clone)]
pub struct SendCode {
    /// Target, tenant, client.
    pub request: CodeRequest,
    /// The request's `Accept-Language`.
    pub accept_language: Option<String>,
}

/// A sign-in with a code.
#[derive(Debug, Clone)]
pub struct CodeLogin {
    /// Target, tenant, client.
    pub request: CodeRequest,
    /// The code.
    pub code: String,
    /// Create the account when there is none (and the tenant allows sign-up by code).
    pub register_if_new: bool,
}

/// What [`AuthService::code_gate`] found.
struct Gated {
    tenant: crate::store::Tenant,
    rt: std::sync::Arc<super::Runtime>,
    user: Option<User>,
    totp_active: bool,
}

/// A code as stored: its keyed hash, expiry, and a nonce that names its attempt counter.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCode {
    nonce: String,
    hash: String,
    expires_at: i64,
}

/// What per-target rate limits count by: the target within its tenant.
pub(super) fn target_rate_key(tenant: &str, target: &str) -> String {
    format!("{tenant}:{target}")
}

/// Key of the passwordless code for a target in a tenant.
fn login_code_key(tenant: &str, target: &CodeTarget) -> String {
    format!(
        "kg:code:login:{tenant}:{}:{}",
        target.channel.as_str(),
        random::secret_hash(&target.value)
    )
}

/// Key of the resend interval of a target in a tenant, per purpose (so that sign-in codes
/// anyone can ask for never hold back a user's MFA code).
fn resend_key(tenant: &str, target: &CodeTarget, purpose: Purpose) -> String {
    let purpose = match purpose {
        Purpose::Login => "login",
        Purpose::Mfa => "mfa",
    };
    format!(
        "kg:code:resend:{purpose}:{tenant}:{}:{}",
        target.channel.as_str(),
        random::secret_hash(&target.value)
    )
}

/// Key of an MFA code sent for a challenge over a channel.
pub(super) fn mfa_code_key(challenge_token: &str, channel: Channel) -> String {
    format!(
        "kg:code:mfa:{}:{}",
        random::secret_hash(challenge_token),
        channel.as_str()
    )
}

/// A code to send and where it is kept until used.
pub(super) struct Outgoing<'a> {
    pub key: String,
    pub target: &'a CodeTarget,
    pub purpose: Purpose,
    pub tenant_id: &'a str,
    pub service_name: &'a str,
    pub locale: String,
}

impl AuthService {
    /// Sends a passwordless sign-in code. Targets without an account get the same answer; a
    /// code is only actually sent to them when the tenant allows sign-up by code.
    #[tracing::instrument(name = "auth.code_send", skip_all)]
    pub async fn send_login_code(&self, req: SendCode) -> Result<CodeSent, AuthError> {
        // A channel that cannot be served fails alike for every target, before any lookup.
        if !self.delivery.serves(req.request.target.channel) {
            return Err(AuthError::DeliveryFailed(
                req.request.target.channel.as_str(),
            ));
        }
        let Gated {
            tenant, rt, user, ..
        } = self.code_gate("send_code", &req.request).await?;
        let policy = &rt.config.policy_for(&tenant.id).login_codes;
        self.before_send(&tenant.id, &req.request.target, policy, Purpose::Login)
            .await?;
        let sent = CodeSent {
            channel: req.request.target.channel,
            target: req.request.target.masked(),
            expires_in: policy.ttl_seconds,
        };
        if user.is_none() && !policy.signup {
            // Nothing to sign in to: answer alike. The store is touched as for a real code (so
            // that an outage answers alike too), and the answer comes after about as long as a
            // delivery takes.
            self.ephemeral
                .set(
                    &format!("kg:code:decoy:{}", random::secret(9)),
                    "",
                    Duration::from_secs(1),
                )
                .await?;
            self.delivery
                .imitate(req.request.target.channel, Purpose::Login)
                .await;
            return Ok(sent);
        }
        let outgoing = Outgoing {
            key: login_code_key(&tenant.id, &req.request.target),
            target: &req.request.target,
            purpose: Purpose::Login,
            tenant_id: &tenant.id,
            service_name: &tenant.display_name,
            locale: self
                .delivery
                .locale_for(req.accept_language.as_deref(), &policy.default_locale),
        };
        self.issue_code(&outgoing, policy).await?;
        Ok(sent)
    }

    /// Signs in with a code sent by [`send_login_code`](Self::send_login_code); returns the
    /// sign-in and whether the account was created by it.
    #[tracing::instrument(name = "auth.code_sign_in", skip_all)]
    pub async fn login_with_code(&self, req: CodeLogin) -> Result<(LoginOutcome, bool), AuthError> {
        let tenant_id = req.request.tenant_id.clone();
        let target = req.request.target.clone();
        let method = match target.channel {
            Channel::Email => "email_code",
            Channel::Sms => "sms_code",
        };
        let mut account = None;
        let result = self
            .login_with_code_unaudited(req, method, &mut account)
            .await;
        // A success is recorded in its session's statement.
        if !matches!(result, Ok((LoginOutcome::SignedIn(_), _))) {
            self.audit_sign_in(
                method,
                &tenant_id,
                Some(&target.value),
                account.as_deref(),
                &result,
                |(outcome, _)| outcome.audit_summary(),
            )
            .await;
        }
        result
    }

    /// The sign-in itself; `account` learns the account the target names, once looked up.
    async fn login_with_code_unaudited(
        &self,
        req: CodeLogin,
        method: &str,
        account: &mut Option<String>,
    ) -> Result<(LoginOutcome, bool), AuthError> {
        let code = req.code.trim();
        if code.is_empty() {
            return Err(required("code"));
        }
        let Gated {
            tenant,
            rt,
            user,
            totp_active,
        } = self.code_gate("code_login", &req.request).await?;
        account.clone_from(&user.as_ref().map(|u| u.id.clone()));
        let policy = &rt.config.policy_for(&tenant.id).login_codes;
        let existing = user;
        let key = login_code_key(&tenant.id, &req.request.target);
        // A right code for a target without an account is kept for a retry with
        // `register_if_new` (the attempt still counts).
        let may_register = req.register_if_new && policy.signup;
        let keep_if_right = existing.is_none() && !may_register;
        self.redeem_code(&key, code, policy, keep_if_right).await?;
        let (user, is_new) = match existing {
            Some(user) => (user, false),
            None if may_register => {
                self.register_by_code(&tenant.id, &req.request.target)
                    .await?
            }
            None => return Err(AuthError::NoAccountForCode),
        };
        let amr = match req.request.target.channel {
            Channel::Email => "otp_email",
            Channel::Sms => "otp_sms",
        };
        let success = (method, Some(req.request.target.value.as_str()));
        let outcome = self
            .finish_sign_in(user, amr, totp_active && !is_new, success)
            .await?;
        Ok((outcome, is_new))
    }

    /// What both code endpoints do first: the tenant, that it offers codes, the rate limits
    /// of `endpoint`, a CAPTCHA when the tenant always demands one, and the account (if any)
    /// that has the target.
    async fn code_gate(&self, endpoint: &str, req: &CodeRequest) -> Result<Gated, AuthError> {
        let tenant = self.tenant_cached(&req.tenant_id).await?;
        let rt = self.runtime();
        let tenant_policy = rt.config.policy_for(&tenant.id);
        if !tenant_policy.login_codes.enabled {
            return Err(AuthError::LoginCodesDisabled);
        }
        let client_ip = req.client_ip.as_deref();
        self.check_rate(
            endpoint,
            &RateKeys {
                ip: client_ip,
                target: Some(&target_rate_key(&tenant.id, &req.target.value)),
                tenant: Some(&tenant.id),
                ..Default::default()
            },
        )
        .await?;
        if tenant_policy.captcha.mode == keygate_config::CaptchaMode::Always {
            self.verify_captcha(&tenant_policy.captcha, &req.captcha, client_ip)
                .await?;
        }
        let user = self
            .store
            .login_lookup(&tenant.id, req.target.kind(), &req.target.value)
            .await?;
        Ok(Gated {
            tenant,
            rt,
            totp_active: user.as_ref().is_some_and(|r| r.totp_active),
            user: user.map(|r| r.user),
        })
    }

    async fn register_by_code(
        &self,
        tenant_id: &str,
        target: &CodeTarget,
    ) -> Result<(User, bool), AuthError> {
        let (email, phone) = match target.channel {
            Channel::Email => (Some(target.value.clone()), None),
            Channel::Sms => (None, Some(target.value.clone())),
        };
        let input = users::UserInput {
            username: random::id("u"),
            email,
            phone,
            ..Default::default()
        };
        match self.create_user(tenant_id, input).await {
            Ok(user) => {
                tracing::info!(user = %user.id, tenant = tenant_id, "account created by code sign-in");
                Ok((user, true))
            }
            // Created meanwhile (by an administrator): sign in to it.
            Err(AuthError::Conflict(_)) => self
                .store
                .login_lookup(tenant_id, target.kind(), &target.value)
                .await?
                .map(|r| (r.user, false))
                .ok_or(AuthError::Conflict("account")),
            Err(e) => Err(e),
        }
    }

    /// What every code send passes first, for targets with and without an account alike: the
    /// tenant's SMS prefixes, the per-target resend interval (claimed atomically, so parallel
    /// requests send one code) and, for sign-in codes (which anyone may ask for), the SMS
    /// budgets against toll fraud. MFA codes follow a proven first factor and are bounded by
    /// their own per-target rule, so exhausting the public budgets cannot block them.
    pub(super) async fn before_send(
        &self,
        tenant_id: &str,
        target: &CodeTarget,
        policy: &LoginCodePolicy,
        purpose: Purpose,
    ) -> Result<(), AuthError> {
        if target.channel == Channel::Sms
            && !policy.sms_allowed_prefixes.is_empty()
            && !policy
                .sms_allowed_prefixes
                .iter()
                .any(|p| target.value.starts_with(p.as_str()))
        {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "phone",
                "range",
                "codes are not sent to numbers of this country",
            )]));
        }
        if policy.resend_interval_seconds > 0
            && let Some(wait_ms) = self
                .ephemeral
                .claim(
                    &resend_key(tenant_id, target, purpose),
                    Duration::from_secs(policy.resend_interval_seconds),
                )
                .await?
        {
            crate::metrics::record_rate_limited("resend-interval");
            return Err(AuthError::RateLimited {
                retry_after: wait_ms.div_ceil(1000).max(1),
                rule: "resend-interval".into(),
            });
        }
        if target.channel == Channel::Sms
            && purpose == Purpose::Login
            && let Err(e) = self
                .check_rate(
                    "sms_delivery",
                    &RateKeys {
                        tenant: Some(tenant_id),
                        ..Default::default()
                    },
                )
                .await
        {
            self.ephemeral
                .take(&resend_key(tenant_id, target, purpose))
                .await?;
            return Err(e);
        }
        Ok(())
    }

    /// Generates a code, stores its hash under `out.key` (replacing an earlier one) and
    /// delivers it; a failed delivery removes it again and is a 503.
    pub(super) async fn issue_code(
        &self,
        out: &Outgoing<'_>,
        policy: &LoginCodePolicy,
    ) -> Result<(), AuthError> {
        let length = usize::try_from(policy.length).unwrap_or(6);
        let code = random::digits(length);
        let now = self.clock.unix();
        let expires_at = now + super::secs(policy.ttl_seconds);
        let stored = StoredCode {
            nonce: random::secret(12),
            hash: self.code_hash(&out.key, &code),
            expires_at,
        };
        let json =
            serde_json::to_string(&stored).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.ephemeral
            .set(&out.key, &json, Duration::from_secs(policy.ttl_seconds))
            .await?;
        let message = CodeMessage {
            channel: out.target.channel,
            target: &out.target.value,
            code: &code,
            ttl_seconds: policy.ttl_seconds,
            expires_at,
            purpose: out.purpose,
            tenant_id: out.tenant_id,
            service_name: out.service_name,
            locale: &out.locale,
        };
        if let Err(e) = self.delivery.send(&message).await {
            tracing::warn!(channel = out.target.channel.as_str(), error = %e, "code delivery failed");
            // Remove exactly this code (not one a parallel request stored since). If even that
            // fails the code must not count as issued: fail closed on the store's error.
            self.ephemeral.take_if(&out.key, &stored.nonce).await?;
            // Nothing arrived: the client may ask again at once.
            self.ephemeral
                .take(&resend_key(out.tenant_id, out.target, out.purpose))
                .await?;
            return Err(AuthError::DeliveryFailed(out.target.channel.as_str()));
        }
        Ok(())
    }

    /// Checks `code` against the one stored under `key`: every attempt is counted first (so
    /// parallel guesses cannot exceed `max_attempts`), a right code is consumed exactly once.
    /// With `keep_if_right`, a right code is confirmed but not consumed.
    pub(super) async fn redeem_code(
        &self,
        key: &str,
        code: &str,
        policy: &LoginCodePolicy,
        keep_if_right: bool,
    ) -> Result<(), AuthError> {
        let stored: StoredCode = self
            .ephemeral
            .get(key)
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or(AuthError::CodeInvalid)?;
        let now = self.clock.unix();
        if stored.expires_at <= now {
            return Err(AuthError::CodeInvalid);
        }
        let attempts = self
            .ephemeral
            .incr(
                &format!("kg:code:att:{}", stored.nonce),
                Duration::from_secs(policy.ttl_seconds + 60),
            )
            .await?;
        if attempts > i64::from(policy.max_attempts) {
            return Err(AuthError::CodeInvalid);
        }
        let candidate = self.code_hash(key, code);
        let right: bool =
            subtle::ConstantTimeEq::ct_eq(candidate.as_bytes(), stored.hash.as_bytes()).into();
        if !right {
            return Err(AuthError::CodeInvalid);
        }
        if keep_if_right {
            return Err(AuthError::NoAccountForCode);
        }
        // Consumed once: only this code (a newer one stored meanwhile stays untouched).
        self.ephemeral
            .take_if(key, &stored.nonce)
            .await?
            .map(|_| ())
            .ok_or(AuthError::CodeInvalid)
    }

    fn code_hash(&self, key: &str, code: &str) -> String {
        self.data_key.keyed_hash(&format!("code|{key}|{code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_exactly_one_and_well_formed() {
        let fields = |r: Result<CodeTarget, AuthError>| match r {
            Err(AuthError::Validation(v)) => v
                .into_iter()
                .map(|f| format!("{}:{}", f.field, f.code))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fields(CodeTarget::parse(None, None)),
            ["email:required", "phone:required"]
        );
        assert_eq!(
            fields(CodeTarget::parse(Some("a@b.co"), Some("+14155550123"))),
            ["email:conflict", "phone:conflict"]
        );
        assert_eq!(
            fields(CodeTarget::parse(Some("nope"), None)),
            ["email:format"]
        );
        assert_eq!(
            fields(CodeTarget::parse(None, Some("004155550123"))),
            ["phone:format"]
        );
        let t = CodeTarget::parse(Some(" Alice@Example.COM "), Some("")).unwrap();
        assert_eq!(t.value, "alice@example.com");
        assert_eq!(t.channel, Channel::Email);
    }

    #[test]
    fn masks_hide_the_middle() {
        assert_eq!(
            mask("alice@example.com", Channel::Email),
            "a***e@example.com"
        );
        assert_eq!(mask("al@example.com", Channel::Email), "a***@example.com");
        assert_eq!(mask("+14155550123", Channel::Sms), "+14*******23");
    }
}
