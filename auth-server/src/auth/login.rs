//! Password sign-in: tenant and identity lookup, password recovery from its transmission
//! mode, CAPTCHA, the attempt gate, risk context, and the hand-over to MFA or a new session;
//! the proof-of-work challenges and the administrator's unlock that belong to it.

use super::error::{AuthError, FieldViolation};
use super::gate::GateKeys;
use super::password::Verified;
use super::{
    AuthService, CaptchaAnswer, PasswordLogin, Runtime, SignedIn, captcha, challenge,
    check_password_field, password, random, risk, secs, status, transmission, users,
};
use crate::store::User;
use std::time::Duration;

impl AuthService {
    /// Signs in with identity and password; users with a second factor may be asked for it.
    /// Every attempt is recorded in the audit trail.
    #[tracing::instrument(name = "auth.password_sign_in", skip_all)]
    pub async fn login_password(
        &self,
        req: PasswordLogin,
    ) -> Result<challenge::LoginOutcome, AuthError> {
        let tenant_id = req.tenant_id.clone();
        let (_, identity) = users::classify_identity(&req.identity);
        let mut account = None;
        let result = self
            .login_password_unaudited(req, &identity, &mut account)
            .await;
        // A success is recorded in its session's transaction.
        if !matches!(result, Ok(challenge::LoginOutcome::SignedIn(_))) {
            self.audit_sign_in(
                "password",
                &tenant_id,
                Some(&identity),
                account.as_deref(),
                &result,
                challenge::LoginOutcome::audit_summary,
            )
            .await;
        }
        result
    }

    /// The sign-in itself; `account` learns the account the identity names, once looked up.
    /// A success's audit entry (naming `audit_identity`) is written with its session.
    async fn login_password_unaudited(
        &self,
        req: PasswordLogin,
        audit_identity: &str,
        account: &mut Option<String>,
    ) -> Result<challenge::LoginOutcome, AuthError> {
        let mut errors = Vec::new();
        if req.identity.trim().is_empty() {
            errors.push(FieldViolation::new(
                "identity",
                "required",
                "identity is required",
            ));
        } else if req.identity.chars().count() > users::MAX_IDENTITY_CHARS {
            errors.push(FieldViolation::new(
                "identity",
                "range",
                format!("at most {} characters", users::MAX_IDENTITY_CHARS),
            ));
        }
        check_password_field(&req.password, "password", &mut errors);
        if !errors.is_empty() {
            return Err(AuthError::Validation(errors));
        }
        let tenant = self.tenant_cached(&req.tenant_id).await?;
        let rt = self.runtime();
        let accepted = &rt
            .config
            .policy_for(&tenant.id)
            .password
            .accepted_transmissions;
        let recovered = self
            .recover_password(&rt, accepted, &req.password, "password")
            .await?;
        let (kind, identity) = users::classify_identity(&req.identity);
        let record = self.store.login_lookup(&tenant.id, kind, &identity).await?;
        let (user, totp_active, stored_profile) = match record {
            Some(r) => (Some(r.user), r.totp_active, r.risk_profile),
            None => (None, false, None),
        };
        account.clone_from(&user.as_ref().map(|u| u.id.clone()));
        let policy = rt.config.policy_for(&tenant.id);
        // Every identifier is counted under its own key, known or not, so they behave alike.
        let gate = GateKeys::new(&tenant.id, &identity, req.client_ip.as_deref());
        if self.captcha_required(&policy.captcha, &gate).await {
            self.verify_captcha(&policy.captcha, &req.captcha, req.client_ip.as_deref())
                .await?;
        }
        let recent_failures = self.gate_admit(&gate, &policy.lockout).await?;
        let digest = recovered.digest(&tenant.id);
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self.hasher.verify(digest, stored).await?;
        let user = match (verified, user) {
            (Verified::No, Some(u)) => {
                self.gate_failed(&tenant.id, &u.id, recent_failures, &policy.lockout)
                    .await;
                return Err(AuthError::InvalidCredentials);
            }
            (_, None) => {
                // The identifier is locked as a real account's would be, and counted alike
                // (the lockout metric must not tell accounts apart).
                if recent_failures + 1 == policy.lockout.lock_after {
                    crate::metrics::record_lockout();
                }
                return Err(AuthError::InvalidCredentials);
            }
            (Verified::Yes, Some(u)) => u,
            (Verified::YesRehashed(phc), Some(u)) => {
                self.store
                    .set_password_hash(&u.id, &phc, self.clock.unix())
                    .await?;
                u
            }
        };
        let outcome = self
            .after_password(
                user,
                &req,
                audit_identity,
                totp_active,
                stored_profile,
                recent_failures,
            )
            .await;
        // The failures are reset only when the whole sign-in is done: a right password that
        // leads to a second factor (or to a refusal) only gives its own attempt back.
        let finished = matches!(outcome, Ok(challenge::LoginOutcome::SignedIn(_)));
        self.gate_settle(&gate, finished, policy.lockout.lock_after)
            .await;
        outcome
    }

    /// What follows a right password: account state, expiry, risk, and MFA or the session.
    async fn after_password(
        &self,
        user: User,
        req: &PasswordLogin,
        audit_identity: &str,
        totp_active: bool,
        stored_profile: Option<String>,
        recent_failures: u32,
    ) -> Result<challenge::LoginOutcome, AuthError> {
        if user.status != status::ACTIVE {
            return Err(AuthError::AccountDisabled);
        }
        let password = self.password_status(&user);
        if password.is_expired() {
            return Err(AuthError::PasswordExpired);
        }
        let rt = self.runtime();
        let policy = rt.config.policy_for(&user.tenant_id);
        let context = self
            .sign_in_context(
                &user,
                req.client_ip.as_deref(),
                req.device.clone(),
                recent_failures,
            )
            .await?;
        let mut profile = risk::RiskProfile::from_stored(stored_profile.as_deref());
        let assessment = risk::assess(&policy.risk, &profile, &context);
        if let Some(pending) = self
            .mfa_gate(
                totp_active,
                &user,
                &policy.mfa,
                "pwd",
                &assessment,
                &context,
            )
            .await?
        {
            return Ok(challenge::LoginOutcome::MfaRequired(pending));
        }
        risk::remember(&mut profile, &context, policy.risk.remember);
        let profile_json = profile.to_stored();
        let record = self.sign_in_record(
            "password",
            &user.tenant_id,
            Some(audit_identity),
            "success",
            Some(&user.id),
            None,
        );
        let tokens = self
            .open_session_recording(&user, vec!["pwd".into()], None, Some(&profile_json), |_| {
                vec![record]
            })
            .await?;
        Ok(challenge::LoginOutcome::SignedIn(SignedIn {
            user,
            tokens,
            password,
            risk: Some(assessment),
        }))
    }

    /// A tenant by id, from a short-lived in-process cache (tenants are created rarely and
    /// never renamed, so a found tenant may be reused for a minute; misses always ask).
    pub(super) async fn tenant_cached(&self, id: &str) -> Result<crate::store::Tenant, AuthError> {
        let now = self.clock.unix();
        if let Ok(cache) = self.tenants.lock()
            && let Some((tenant, until)) = cache.get(id)
            && *until > now
        {
            return Ok(tenant.clone());
        }
        let tenant = self
            .store
            .tenant(id)
            .await?
            .ok_or(AuthError::UnknownTenant)?;
        if let Ok(mut cache) = self.tenants.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(id.to_owned(), (tenant.clone(), now + 60));
        }
        Ok(tenant)
    }

    /// The facts of this sign-in that risk scoring looks at (counts it for velocity).
    async fn sign_in_context(
        &self,
        user: &User,
        client_ip: Option<&str>,
        device: Option<String>,
        recent_failures: u32,
    ) -> Result<risk::SignInContext, AuthError> {
        let now = self.clock.now();
        let hour_bucket = now.unix_timestamp() / 3600;
        let sign_ins = self
            .ephemeral
            .incr(
                &format!("kg:risk:vel:{}:{hour_bucket}", user.id),
                Duration::from_secs(3600),
            )
            .await
            .unwrap_or(1);
        Ok(risk::SignInContext {
            device,
            ip: client_ip.and_then(|ip| ip.parse().ok()),
            hour: now.hour(),
            recent_failures,
            sign_ins_last_hour: u32::try_from(sign_ins).unwrap_or(u32::MAX),
        })
    }

    /// The user's risk profile (empty when none, or when the stored one is unreadable).
    pub(crate) async fn risk_profile(&self, user_id: &str) -> Result<risk::RiskProfile, AuthError> {
        let stored = self.store.risk_profile(user_id).await?;
        Ok(risk::RiskProfile::from_stored(stored.as_deref()))
    }

    /// Adds a completed sign-in to the user's risk profile.
    pub(crate) async fn remember_sign_in(
        &self,
        user: &User,
        policy: &keygate_config::RiskPolicy,
        mut profile: risk::RiskProfile,
        context: &risk::SignInContext,
    ) -> Result<(), AuthError> {
        risk::remember(&mut profile, context, policy.remember);
        self.store
            .put_risk_profile(&user.id, &profile.to_stored(), self.clock.unix())
            .await?;
        Ok(())
    }

    /// Whether the tenant's policy demands a CAPTCHA for an attempt on these counters.
    pub(super) async fn captcha_required(
        &self,
        policy: &keygate_config::CaptchaPolicy,
        gate: &GateKeys,
    ) -> bool {
        use keygate_config::CaptchaMode;
        match policy.mode {
            CaptchaMode::Never => false,
            CaptchaMode::Always => true,
            CaptchaMode::AfterFailures => {
                let (account, ip) = self.ephemeral.gate_failures(&gate.account, &gate.ip).await;
                account >= policy.after_failures || ip >= policy.ip_after_failures
            }
        }
    }

    /// Checks a CAPTCHA answer with the tenant's provider (never the one the client names: a
    /// client that names another provider is refused).
    #[tracing::instrument(name = "auth.captcha", skip_all)]
    pub(super) async fn verify_captcha(
        &self,
        policy: &keygate_config::CaptchaPolicy,
        answer: &CaptchaAnswer,
        client_ip: Option<&str>,
    ) -> Result<(), AuthError> {
        use keygate_config::CaptchaProvider;
        let token = answer
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::CaptchaRequired)?;
        if token.len() > 4096 {
            return Err(AuthError::CaptchaInvalid);
        }
        let named = answer
            .provider
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty());
        if named.is_some_and(|p| p != captcha::provider_name(policy.provider)) {
            return Err(AuthError::CaptchaInvalid);
        }
        match policy.provider {
            CaptchaProvider::Pow => {
                self.redeem_pow(answer.challenge_id.as_deref(), token, client_ip, policy)
                    .await
            }
            CaptchaProvider::Turnstile => {
                let secret = policy
                    .turnstile_secret
                    .as_deref()
                    .ok_or(AuthError::CaptchaInvalid)?;
                captcha::verify_turnstile(
                    &self.http,
                    &policy.turnstile_verify_url,
                    secret,
                    token,
                    client_ip,
                )
                .await
            }
        }
    }

    /// Issues a single-use proof-of-work challenge to a client address.
    pub async fn issue_pow(
        &self,
        tenant_id: &str,
        client_ip: Option<&str>,
        requested_difficulty: Option<u32>,
    ) -> Result<captcha::PowChallenge, AuthError> {
        let rt = self.runtime();
        let policy = &rt.config.policy_for(tenant_id).captcha;
        if policy.provider != keygate_config::CaptchaProvider::Pow {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "provider",
                "range",
                "this tenant's CAPTCHA is turnstile: solve the provider's widget instead",
            )]));
        }
        // The policy's difficulty is a floor; clients may ask for more, up to 8.
        let difficulty = requested_difficulty
            .unwrap_or(0)
            .clamp(policy.pow_difficulty, 8);
        let challenge = captcha::PowChallenge {
            id: random::id("cap"),
            challenge: hex::encode(random::bytes(16)),
            difficulty,
            expires_at: self.clock.unix() + secs(policy.pow_ttl_seconds),
        };
        let ttl = Duration::from_secs(policy.pow_ttl_seconds);
        self.ephemeral
            .set(
                &captcha::challenge_key(&challenge.id),
                &format!("{}|{}", challenge.challenge, challenge.difficulty),
                ttl,
            )
            .await?;
        if let Some(ip) = client_ip {
            self.ephemeral
                .set(&captcha::newest_for_address_key(ip), &challenge.id, ttl)
                .await?;
        }
        Ok(challenge)
    }

    async fn redeem_pow(
        &self,
        challenge_id: Option<&str>,
        token: &str,
        client_ip: Option<&str>,
        policy: &keygate_config::CaptchaPolicy,
    ) -> Result<(), AuthError> {
        let id = match challenge_id.filter(|c| !c.is_empty()) {
            Some(id) => id.to_owned(),
            None => {
                let ip = client_ip.ok_or(AuthError::CaptchaInvalid)?;
                self.ephemeral
                    .take(&captcha::newest_for_address_key(ip))
                    .await?
                    .ok_or(AuthError::CaptchaInvalid)?
            }
        };
        if id.len() > 64 {
            return Err(AuthError::CaptchaInvalid);
        }
        // Single use: whoever takes it first is the only one to check it.
        let stored = self
            .ephemeral
            .take(&captcha::challenge_key(&id))
            .await?
            .ok_or(AuthError::CaptchaInvalid)?;
        let (challenge, difficulty) = stored.split_once('|').ok_or(AuthError::CaptchaInvalid)?;
        let difficulty: u32 = difficulty.parse().map_err(|_| AuthError::CaptchaInvalid)?;
        if difficulty >= policy.pow_difficulty && captcha::pow_solves(challenge, difficulty, token)
        {
            Ok(())
        } else {
            Err(AuthError::CaptchaInvalid)
        }
    }

    /// Lifts the sign-in lock and delay of a user (administrators).
    pub async fn unlock_user(&self, admin: &User, user_id: &str) -> Result<(), AuthError> {
        let user = self
            .store
            .user(user_id)
            .await?
            .filter(|u| u.tenant_id == admin.tenant_id)
            .ok_or(AuthError::NotFound("user"))?;
        self.ephemeral
            .gate_clear(&super::gate::account_gate_keys(&user))
            .await?;
        tracing::info!(admin = %admin.id, user = %user.id, "sign-in lock lifted");
        self.audit(super::audit::Event {
            kind: super::audit::kind::UNLOCK,
            tenant_id: &user.tenant_id,
            outcome: "success",
            user_id: Some(&user.id),
            actor_id: Some(&admin.id),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    /// Starts a `symmetric` key exchange: single use, valid for a short time.
    pub async fn new_key_exchange(&self) -> Result<(String, String, u64), AuthError> {
        let id = random::id("kex");
        let (secret, public) = transmission::new_exchange_key();
        self.ephemeral
            .set(
                &format!("kg:kex:{id}"),
                &hex::encode(secret),
                Duration::from_secs(transmission::KEX_TTL_SECONDS),
            )
            .await?;
        Ok((id, public, transmission::KEX_TTL_SECONDS))
    }

    /// Turns a password as sent into something to verify, per its transmission mode.
    #[tracing::instrument(name = "auth.password_transmission", skip_all)]
    pub async fn recover_password(
        &self,
        rt: &Runtime,
        accepted: &[keygate_config::Transmission],
        sent: &transmission::SentPassword,
        field: &str,
    ) -> Result<transmission::Recovered, AuthError> {
        let mut recovered = self
            .recover_passwords(rt, accepted, sent, &[(&sent.value, field)])
            .await?;
        recovered
            .pop()
            .ok_or_else(|| AuthError::Internal("nothing recovered".into()))
    }

    /// Recovers several passwords sent in one request under the same mode (a password change
    /// sends the old and the new one; in `symmetric` mode both use the one key exchange).
    pub async fn recover_passwords(
        &self,
        rt: &Runtime,
        accepted: &[keygate_config::Transmission],
        sent: &transmission::SentPassword,
        values: &[(&str, &str)],
    ) -> Result<Vec<transmission::Recovered>, AuthError> {
        use keygate_config::Transmission as T;
        let mode = transmission::mode_of(sent, accepted, "password_transmission")?;
        let kex_secret = if mode == T::Symmetric {
            let id = sent
                .key_exchange_id
                .as_deref()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    AuthError::Validation(vec![FieldViolation::new(
                        "key_exchange_id",
                        "required",
                        "symmetric mode needs the key_exchange_id from /public/key-exchange",
                    )])
                })?;
            if id.len() > 64 {
                return Err(AuthError::KeyExchangeExpired);
            }
            self.ephemeral
                .take(&format!("kg:kex:{id}"))
                .await?
                .and_then(|h| hex::decode(h).ok())
                .ok_or(AuthError::KeyExchangeExpired)?
        } else {
            Vec::new()
        };
        let mut out = Vec::with_capacity(values.len());
        for (value, field) in values {
            let recovered = match mode {
                T::Plain => transmission::Recovered::Plain((*value).to_owned()),
                T::Hash => transmission::recover_hash(value, field)?,
                T::Asymmetric => {
                    let key = rt
                        .transmission
                        .find(sent.key_id.as_deref().filter(|k| !k.is_empty()))
                        .await
                        .map_err(AuthError::Internal)?
                        .ok_or_else(|| {
                            AuthError::Validation(vec![FieldViolation::new(
                                "key_id",
                                "format",
                                "unknown transmission key",
                            )])
                        })?;
                    transmission::recover_asymmetric(value, key, field)?
                }
                T::Symmetric => transmission::recover_symmetric(
                    value,
                    sent.client_pub_key.as_deref(),
                    &kex_secret,
                    field,
                )?,
            };
            if let transmission::Recovered::Plain(p) = &recovered
                && p.len() > password::MAX_PASSWORD_BYTES
            {
                return Err(AuthError::Validation(vec![FieldViolation::new(
                    *field,
                    "range",
                    format!("at most {} bytes", password::MAX_PASSWORD_BYTES),
                )]));
            }
            out.push(recovered);
        }
        Ok(out)
    }
}
