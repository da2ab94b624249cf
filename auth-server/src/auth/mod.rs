//! The authentication domain: password sign-in, sessions with rotating refresh tokens,
//! access-token issue and verification, and account creation. No HTTP and no SQL types here;
//! time comes from the injected clock and randomness from `random`.

pub mod captcha;
pub mod challenge;
pub mod clock;
pub mod error;
pub mod keys;
pub mod mfa;
pub mod password;
pub mod random;
pub mod risk;
pub mod tokens;
pub mod transmission;
pub mod users;

use crate::ephemeral::{self, Ephemeral, denied_jti_key, denied_sid_key};
use crate::store::{NewRefresh, NewUser, Session, SqlStore, User, status};
use arc_swap::ArcSwap;
use clock::SharedClock;
use error::{AuthError, FieldViolation};
use keygate_config::RuntimeConfig;
use keys::{KeyRing, SigningKey};
use password::{PasswordHasher, Verified, canonical_digest};

use std::sync::Arc;
use std::time::Duration;
use tokens::{AccessClaims, Actor};

/// The runtime configuration together with what is derived from it.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration as loaded.
    pub config: RuntimeConfig,
    /// Signing keys built from it (or the development key).
    pub keys: KeyRing,
    /// Password-transmission keys; the first is the current one.
    pub transmission: Vec<transmission::TransmissionKey>,
}

impl Runtime {
    /// Builds the key rings; the development keys stand in where the configuration has none.
    pub fn build(config: RuntimeConfig, dev: &DevKeys) -> Result<Self, String> {
        let dev_key = dev.signing.as_ref();
        let transmission = if config.transmission_keys.is_empty() {
            match &dev.transmission {
                Some(k) => vec![k.clone()],
                None => return Err("the configuration has no transmission keys".into()),
            }
        } else {
            config
                .transmission_keys
                .iter()
                .map(transmission::TransmissionKey::from_config)
                .collect::<Result<_, _>>()?
        };
        let keys = if config.signing_keys.is_empty() {
            match dev_key {
                Some(k) => vec![k.clone()],
                None => return Err("the configuration has no signing keys".into()),
            }
        } else {
            config
                .signing_keys
                .iter()
                .map(SigningKey::from_config)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        };
        Ok(Self {
            config,
            keys: KeyRing::new(keys),
            transmission,
        })
    }
}

/// Keys kept in the data directory for when the runtime configuration names none.
#[derive(Debug, Clone, Default)]
pub struct DevKeys {
    /// JWT signing key.
    pub signing: Option<SigningKey>,
    /// Password-transmission key.
    pub transmission: Option<transmission::TransmissionKey>,
}

/// Refresh tokens carry 256 bits.
const REFRESH_TOKEN_BYTES: usize = 32;

/// Tokens handed out at sign-in or refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// Signed JWT.
    pub access_token: String,
    /// Opaque refresh token.
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// Session id.
    pub session_id: String,
}

/// A successful sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The account.
    pub user: User,
    /// Its tokens.
    pub tokens: IssuedTokens,
    /// Where its password stands against the expiry policy.
    pub password: users::PasswordStatus,
    /// The risk assessment, for sign-ins that made one.
    pub risk: Option<risk::RiskAssessment>,
}

/// A password sign-in request.
#[derive(Debug, Clone)]
pub struct PasswordLogin {
    /// Username, email or phone.
    pub identity: String,
    /// The password as sent, in its transmission mode.
    pub password: transmission::SentPassword,
    /// Tenant asked for (body, header or the default).
    pub tenant_id: String,
    /// The client's address, when known.
    pub client_ip: Option<String>,
    /// Device fingerprint: the client's `X-Device-ID`, or a hash of its user agent.
    pub device: Option<String>,
    /// The CAPTCHA answer, if any.
    pub captcha: CaptchaAnswer,
}

/// A CAPTCHA answer as sent with a sign-in.
#[derive(Debug, Clone, Default)]
pub struct CaptchaAnswer {
    /// `pow` or `turnstile`.
    pub provider: Option<String>,
    /// The solution.
    pub token: Option<String>,
    /// The proof-of-work challenge id (absent: the newest issued to the client address).
    pub challenge_id: Option<String>,
}

/// The authentication service shared by every handler.
#[derive(Debug, Clone)]
pub struct AuthService {
    /// Durable storage.
    pub store: SqlStore,
    /// Ephemeral state.
    pub ephemeral: Ephemeral,
    /// Time.
    pub clock: SharedClock,
    /// Password hashing.
    pub hasher: PasswordHasher,
    runtime: Arc<ArcSwap<Runtime>>,
    issuer: Arc<str>,
    http: reqwest::Client,
    data_key: Arc<mfa::DataKey>,
    tenants: Arc<std::sync::Mutex<std::collections::HashMap<String, (crate::store::Tenant, i64)>>>,
}

impl AuthService {
    /// Assembles the service.
    pub fn new(
        store: SqlStore,
        ephemeral: Ephemeral,
        clock: SharedClock,
        hasher: PasswordHasher,
        runtime: Runtime,
        issuer: String,
        data_key: mfa::DataKey,
    ) -> Self {
        Self {
            data_key: Arc::new(data_key),
            tenants: Arc::default(),
            store,
            ephemeral,
            clock,
            hasher,
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            issuer: issuer.into(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The runtime configuration in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swaps in a new runtime configuration (hot reload).
    pub fn replace_runtime(&self, runtime: Runtime) -> Result<(), AuthError> {
        self.hasher
            .update_params(&runtime.config.password_hashing)?;
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }

    /// Token issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs in with identity and password; users with a second factor may be asked for it.
    pub async fn login_password(
        &self,
        req: PasswordLogin,
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
        let policy = rt.config.policy_for(&tenant.id);
        // Unknown identities are counted under their own key, so they behave exactly alike.
        let account_key = match &user {
            Some(u) => account_gate_key(&tenant.id, &u.id),
            None => format!("kg:gate:acct:{}:?{identity}", tenant.id),
        };
        let ip_key = format!(
            "kg:gate:ip:{}",
            req.client_ip.as_deref().unwrap_or("unknown")
        );
        self.check_captcha(
            &policy.captcha,
            &req.captcha,
            req.client_ip.as_deref(),
            &account_key,
            &ip_key,
        )
        .await?;
        let (account_rule, ip_rule) = gate_rules(&policy.lockout);
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        let recent_failures = match self
            .ephemeral
            .gate_attempt(&account_key, &ip_key, (&account_rule, &ip_rule), now_ms)
            .await
        {
            ephemeral::Gate::Refused {
                retry_after_ms,
                locked,
            } => {
                return Err(AuthError::LoginThrottled {
                    retry_after: retry_after_ms.div_ceil(1000).max(1),
                    locked,
                });
            }
            ephemeral::Gate::Admitted {
                account_failures, ..
            } => account_failures,
        };
        let digest = recovered.digest(&tenant.id);
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self.hasher.verify(digest, stored).await?;
        if verified != Verified::No && user.is_some() {
            self.ephemeral.gate_success(&account_key, &ip_key).await;
        }
        let user = match (verified, user) {
            (Verified::No, _) | (_, None) => return Err(AuthError::InvalidCredentials),
            (Verified::Yes, Some(u)) => u,
            (Verified::YesRehashed(phc), Some(u)) => {
                self.store
                    .set_password_hash(&u.id, &phc, self.clock.unix())
                    .await?;
                u
            }
        };
        if user.status != status::ACTIVE {
            return Err(AuthError::AccountDisabled);
        }
        let password = self.password_status(&user);
        if password.is_expired() {
            return Err(AuthError::PasswordExpired);
        }
        let context = self
            .sign_in_context(
                &user,
                req.client_ip.as_deref(),
                req.device.clone(),
                recent_failures,
            )
            .await?;
        let mut profile: risk::RiskProfile = stored_profile
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        let assessment = risk::assess(&policy.risk, &profile, &context);
        if let Some(pending) = self
            .mfa_gate(
                totp_active,
                &user,
                &policy.mfa,
                &password,
                &assessment,
                &context,
            )
            .await?
        {
            return Ok(challenge::LoginOutcome::MfaRequired(pending));
        }
        risk::remember(&mut profile, &context, policy.risk.remember);
        let profile_json =
            serde_json::to_string(&profile).map_err(|e| AuthError::Internal(e.to_string()))?;
        let tokens = self
            .open_session_recording(&user, vec!["pwd".into()], None, Some(&profile_json))
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
    async fn tenant_cached(&self, id: &str) -> Result<crate::store::Tenant, AuthError> {
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
        Ok(self
            .store
            .risk_profile(user_id)
            .await?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default())
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
        let json =
            serde_json::to_string(&profile).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.store
            .put_risk_profile(&user.id, &json, self.clock.unix())
            .await?;
        Ok(())
    }

    /// Demands and checks a CAPTCHA when the tenant's policy says so for this attempt.
    async fn check_captcha(
        &self,
        policy: &keygate_config::CaptchaPolicy,
        answer: &CaptchaAnswer,
        client_ip: Option<&str>,
        account_key: &str,
        ip_key: &str,
    ) -> Result<(), AuthError> {
        use keygate_config::CaptchaMode;
        let required = match policy.mode {
            CaptchaMode::Never => false,
            CaptchaMode::Always => true,
            CaptchaMode::AfterFailures => {
                let (account, ip) = self.ephemeral.gate_failures(account_key, ip_key).await;
                account >= policy.after_failures || ip >= policy.ip_after_failures
            }
        };
        if !required {
            return Ok(());
        }
        let token = answer
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::CaptchaRequired)?;
        if token.len() > 4096 {
            return Err(AuthError::CaptchaInvalid);
        }
        match answer.provider.as_deref().unwrap_or("pow") {
            "pow" => {
                self.redeem_pow(answer.challenge_id.as_deref(), token, client_ip, policy)
                    .await
            }
            "turnstile" => {
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
            _ => Err(AuthError::CaptchaInvalid),
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
            .gate_clear(&[account_gate_key(&user.tenant_id, &user.id)])
            .await?;
        tracing::info!(admin = %admin.id, user = %user.id, "sign-in lock lifted");
        Ok(())
    }

    /// Where `user`'s password stands now under its tenant's policy.
    pub fn password_status(&self, user: &User) -> users::PasswordStatus {
        let rt = self.runtime();
        users::password_status(
            user,
            &rt.config.policy_for(&user.tenant_id).password,
            self.clock.unix(),
        )
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
                    let key = match sent.key_id.as_deref().filter(|k| !k.is_empty()) {
                        None => rt.transmission.first(),
                        Some(kid) => rt.transmission.iter().find(|k| k.kid == kid),
                    }
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

    /// Changes the caller's password: the old one must verify, the new one must meet the
    /// tenant's rules and differ from the recent ones; every other session is ended.
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        sent: &transmission::SentPassword,
        old_password: &str,
        new_password: &str,
    ) -> Result<(), AuthError> {
        let mut errors = Vec::new();
        for (value, field) in [
            (old_password, "old_password"),
            (new_password, "new_password"),
        ] {
            let probe = transmission::SentPassword {
                value: value.to_owned(),
                ..sent.clone()
            };
            check_password_field(&probe, field, &mut errors);
        }
        if !errors.is_empty() {
            return Err(AuthError::Validation(errors));
        }
        let user = self.current_user(claims).await?;
        let rt = self.runtime();
        let policy = &rt.config.policy_for(&user.tenant_id).password;
        // The server must see the new password to apply the rules: not in hash mode.
        let accepted: Vec<_> = policy
            .accepted_transmissions
            .iter()
            .copied()
            .filter(|t| *t != keygate_config::Transmission::Hash)
            .collect();
        let recovered = self
            .recover_passwords(
                &rt,
                &accepted,
                sent,
                &[
                    (old_password, "old_password"),
                    (new_password, "new_password"),
                ],
            )
            .await?;
        let [old, new] = <[transmission::Recovered; 2]>::try_from(recovered)
            .map_err(|_| AuthError::Internal("two passwords expected".into()))?;
        let transmission::Recovered::Plain(new_plain) = &new else {
            return Err(AuthError::TransmissionNotAccepted);
        };
        users::check_password_rules(new_plain, policy, "new_password")?;
        let verified = self
            .hasher
            .verify(old.digest(&user.tenant_id), user.password_hash.clone())
            .await?;
        if verified == Verified::No {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "old_password",
                "format",
                "the current password is wrong",
            )]));
        }
        let new_digest = new.digest(&user.tenant_id);
        let mut previous = self
            .store
            .password_history(&user.id, policy.history)
            .await?;
        previous.extend(user.password_hash.clone());
        for old_hash in previous {
            if self
                .hasher
                .verify(new_digest.clone(), Some(old_hash))
                .await?
                != Verified::No
            {
                return Err(AuthError::Validation(vec![FieldViolation::new(
                    "new_password",
                    "conflict",
                    format!(
                        "must differ from the current and the last {} passwords",
                        policy.history
                    ),
                )]));
            }
        }
        let new_hash = self.hasher.hash(new_digest).await?;
        let now = self.clock.unix();
        self.store
            .change_password(
                &user.id,
                user.password_hash.as_deref(),
                &new_hash,
                now,
                policy.history,
            )
            .await?;
        let ended = self
            .store
            .revoke_other_sessions(&user.id, &claims.sid, now, "password_change")
            .await?;
        let ttl =
            Duration::from_secs(rt.config.tokens.access_token_ttl_seconds + tokens::LEEWAY_SECONDS);
        for sid in &ended {
            self.ephemeral
                .set(&denied_sid_key(sid), "password_change", ttl)
                .await?;
        }
        tracing::info!(user = %user.id, sessions_ended = ended.len(), "password changed");
        Ok(())
    }

    /// Opens a session for `user` and issues its first tokens.
    pub async fn open_session(
        &self,
        user: &User,
        amr: Vec<String>,
        act: Option<Actor>,
    ) -> Result<IssuedTokens, AuthError> {
        self.open_session_recording(user, amr, act, None).await
    }

    /// Opens a session and, in the same transaction, stores the user's updated risk profile.
    async fn open_session_recording(
        &self,
        user: &User,
        amr: Vec<String>,
        act: Option<Actor>,
        risk_profile: Option<&str>,
    ) -> Result<IssuedTokens, AuthError> {
        let rt = self.runtime();
        let policy = &rt.config.tokens;
        let now = self.clock.unix();
        let session = Session {
            id: random::id("ses"),
            tenant_id: user.tenant_id.clone(),
            user_id: user.id.clone(),
            amr,
            created_at: now,
            expires_at: now + secs(policy.session_max_lifetime_seconds),
            revoked_at: None,
        };
        let refresh_token = random::secret(REFRESH_TOKEN_BYTES);
        let first = NewRefresh {
            token_hash: random::secret_hash(&refresh_token),
            created_at: now,
            expires_at: (now + secs(policy.refresh_token_ttl_seconds)).min(session.expires_at),
        };
        self.store
            .create_session_with_profile(&session, &first, risk_profile)
            .await?;
        let access_token = self.sign_access(&rt, &session, now, act)?;
        Ok(IssuedTokens {
            access_token,
            refresh_token,
            expires_in: policy.access_token_ttl_seconds,
            session_id: session.id,
        })
    }

    fn sign_access(
        &self,
        rt: &Runtime,
        session: &Session,
        now: i64,
        act: Option<Actor>,
    ) -> Result<String, AuthError> {
        let claims = AccessClaims {
            iss: self.issuer.to_string(),
            sub: session.user_id.clone(),
            aud: rt.config.tokens.audience.clone(),
            exp: now + secs(rt.config.tokens.access_token_ttl_seconds),
            iat: now,
            nbf: now,
            jti: random::secret(16),
            tid: session.tenant_id.clone(),
            sid: session.id.clone(),
            amr: session.amr.clone(),
            act,
        };
        Ok(tokens::sign(&rt.keys, &claims)?)
    }

    /// Exchanges a refresh token for new tokens. The presented token is rotated; presenting
    /// it again within the grace window yields another token of the same session, later
    /// revokes the whole session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<SignedIn, AuthError> {
        if refresh_token.is_empty() || refresh_token.len() > 512 {
            return Err(AuthError::InvalidRefreshToken);
        }
        let rt = self.runtime();
        let policy = &rt.config.tokens;
        let now = self.clock.unix();
        let hash = random::secret_hash(refresh_token);
        let record = self
            .store
            .refresh_token(&hash)
            .await?
            .ok_or(AuthError::InvalidRefreshToken)?;
        let session = record.session;
        if session.revoked_at.is_some() || session.expires_at <= now || record.expires_at <= now {
            return Err(AuthError::InvalidRefreshToken);
        }
        let user = self
            .store
            .user(&session.user_id)
            .await?
            .filter(|u| u.status == status::ACTIVE)
            .ok_or(AuthError::InvalidRefreshToken)?;
        let next_token = random::secret(REFRESH_TOKEN_BYTES);
        let next = NewRefresh {
            token_hash: random::secret_hash(&next_token),
            created_at: now,
            expires_at: (now + secs(policy.refresh_token_ttl_seconds)).min(session.expires_at),
        };
        let rotated_now = record.rotated_at.is_none()
            && self
                .store
                .rotate_refresh(&session.id, &hash, now, &next)
                .await?;
        if !rotated_now {
            // Rotated before: by a concurrent request (just now) or earlier.
            let rotated_at = record.rotated_at.unwrap_or(now);
            if now - rotated_at > secs(policy.refresh_reuse_grace_seconds) {
                self.revoke_session(&session.id, "refresh_token_reuse")
                    .await?;
                tracing::warn!(session = %session.id, user = %user.id, "refresh token reuse: session revoked");
                return Err(AuthError::RefreshTokenReused);
            }
            self.store.add_refresh(&session.id, &next).await?;
        }
        let access_token = self.sign_access(&rt, &session, now, None)?;
        Ok(SignedIn {
            password: self.password_status(&user),
            risk: None,
            user,
            tokens: IssuedTokens {
                access_token,
                refresh_token: next_token,
                expires_in: policy.access_token_ttl_seconds,
                session_id: session.id,
            },
        })
    }

    /// Revokes a session in storage and denies its access tokens until they expire.
    async fn revoke_session(&self, session_id: &str, reason: &str) -> Result<(), AuthError> {
        let rt = self.runtime();
        self.store
            .revoke_session(session_id, self.clock.unix(), reason)
            .await?;
        let ttl = rt.config.tokens.access_token_ttl_seconds + tokens::LEEWAY_SECONDS;
        self.ephemeral
            .set(
                &denied_sid_key(session_id),
                reason,
                Duration::from_secs(ttl),
            )
            .await?;
        Ok(())
    }

    /// Ends the caller's session (and, if given, the session of `refresh_token` when it
    /// belongs to the same user); the access token is refused from now on.
    pub async fn logout(
        &self,
        claims: &AccessClaims,
        refresh_token: Option<&str>,
    ) -> Result<(), AuthError> {
        let now = self.clock.unix();
        let ttl = u64::try_from(claims.exp - now).unwrap_or(0) + tokens::LEEWAY_SECONDS;
        self.ephemeral
            .set(
                &denied_jti_key(&claims.jti),
                "logout",
                Duration::from_secs(ttl),
            )
            .await?;
        self.revoke_session(&claims.sid, "logout").await?;
        if let Some(token) = refresh_token.filter(|t| !t.is_empty() && t.len() <= 512)
            && let Some(record) = self
                .store
                .refresh_token(&random::secret_hash(token))
                .await?
            && record.session.user_id == claims.sub
            && record.session.id != claims.sid
        {
            self.revoke_session(&record.session.id, "logout").await?;
        }
        Ok(())
    }

    /// Verifies a bearer token and that it was not revoked.
    pub async fn authenticate(&self, bearer: &str) -> Result<AccessClaims, AuthError> {
        let rt = self.runtime();
        let claims = tokens::verify(
            &rt.keys,
            bearer,
            &self.issuer,
            &rt.config.tokens.audience,
            self.clock.unix(),
        )?;
        if self
            .ephemeral
            .exists_any(&[denied_jti_key(&claims.jti), denied_sid_key(&claims.sid)])
            .await?
        {
            return Err(AuthError::TokenRevoked);
        }
        Ok(claims)
    }

    /// The active account behind verified claims.
    pub async fn current_user(&self, claims: &AccessClaims) -> Result<User, AuthError> {
        self.store
            .user(&claims.sub)
            .await?
            .filter(|u| u.tenant_id == claims.tid && u.status == status::ACTIVE)
            .ok_or(AuthError::Unauthenticated("account no longer active"))
    }

    /// The current user, who must hold `role`.
    pub async fn require_role(&self, claims: &AccessClaims, role: &str) -> Result<User, AuthError> {
        let user = self.current_user(claims).await?;
        if user.has_role(role) {
            Ok(user)
        } else {
            Err(AuthError::Forbidden)
        }
    }

    /// Creates a tenant; its id is 1-63 of `a-z`, `0-9`, `-`, starting with a letter.
    pub async fn create_tenant(
        &self,
        id: &str,
        display_name: &str,
    ) -> Result<crate::store::Tenant, AuthError> {
        let ok = (1..=63).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "id",
                "format",
                "1-63 of a-z, 0-9 and '-', starting with a letter",
            )]));
        }
        let display = display_name.trim();
        if display.is_empty() || display.chars().count() > 200 {
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "display_name",
                "range",
                "1-200 characters",
            )]));
        }
        if self.store.tenant(id).await?.is_some() {
            return Err(AuthError::Conflict("id"));
        }
        let tenant = crate::store::Tenant {
            id: id.to_owned(),
            name: id.to_owned(),
            display_name: display.to_owned(),
        };
        self.store.create_tenant(&tenant, self.clock.unix()).await?;
        Ok(tenant)
    }

    /// Creates a user in `tenant_id` after validation.
    pub async fn create_user(
        &self,
        tenant_id: &str,
        input: users::UserInput,
    ) -> Result<User, AuthError> {
        let mut valid = users::validate_user(input)?;
        if self.store.tenant(tenant_id).await?.is_none() {
            return Err(AuthError::UnknownTenant);
        }
        let rt = self.runtime();
        let policy = &rt.config.policy_for(tenant_id).password;
        if let Some(pw) = &valid.password {
            users::check_password_rules(pw, policy, "password")?;
            valid.must_change_password |= policy.force_change_on_first_login;
        }
        let password_hash = match &valid.password {
            Some(pw) => Some(self.hasher.hash(canonical_digest(pw, tenant_id)).await?),
            None => None,
        };
        let new = NewUser {
            id: random::id("usr"),
            tenant_id: tenant_id.to_owned(),
            username: valid.username,
            email: valid.email,
            phone: valid.phone,
            password_hash,
            roles: valid.roles,
            must_change_password: valid.must_change_password,
            created_at: self.clock.unix(),
        };
        self.store.create_user(&new).await.map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => AuthError::UnknownTenant,
            other => other.into(),
        })
    }
}

/// Presence and size of a password field as sent: at most `MAX_PASSWORD_BYTES` for a plain
/// password; ciphertexts may be longer (the recovered password is checked again).
fn check_password_field(
    sent: &transmission::SentPassword,
    field: &str,
    errors: &mut Vec<FieldViolation>,
) {
    let plain = sent
        .mode
        .as_deref()
        .is_none_or(|m| m.trim().is_empty() || m == "plain");
    let max = if plain {
        password::MAX_PASSWORD_BYTES
    } else {
        password::MAX_PASSWORD_BYTES * 4
    };
    if sent.value.is_empty() {
        errors.push(FieldViolation::new(
            field,
            "required",
            format!("{field} is required"),
        ));
    } else if sent.value.len() > max {
        errors.push(FieldViolation::new(
            field,
            "range",
            format!("at most {max} bytes"),
        ));
    }
}

fn account_gate_key(tenant_id: &str, user_id: &str) -> String {
    format!("kg:gate:acct:{tenant_id}:{user_id}")
}

/// The attempt-gate rules of a lockout policy: (account, client address).
fn gate_rules(p: &keygate_config::LockoutPolicy) -> (ephemeral::GateRule, ephemeral::GateRule) {
    let account = ephemeral::GateRule {
        delay_after: p.delay_after,
        base_delay_ms: p.base_delay_seconds.saturating_mul(1000),
        max_delay_ms: p.max_delay_seconds.saturating_mul(1000),
        lock_after: p.lock_after,
        lock_ms: p.lock_seconds.saturating_mul(1000),
        window_ms: p.window_seconds.saturating_mul(1000),
    };
    let ip = ephemeral::GateRule {
        delay_after: p.ip_delay_after,
        lock_after: p.ip_lock_after,
        ..account
    };
    (account, ip)
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 4)
}
