//! Sessions: opening them with their first tokens, refresh rotation with reuse detection,
//! logout and revocation, verification of bearer tokens, and password changes (which end the
//! other sessions).

use super::error::{AuthError, FieldViolation};
use super::gate::GateKeys;
use super::password::Verified;
use super::tokens::{self, AccessClaims, Actor};
use super::{
    AuthService, IssuedTokens, REFRESH_TOKEN_BYTES, Runtime, SignedIn, check_password_field,
    random, secs, status, transmission, users,
};
use crate::ephemeral::{denied_jti_key, denied_sid_key};
use crate::store::{NewRefresh, Session, User};
use std::time::Duration;

impl AuthService {
    /// Changes the caller's password: the old one must verify, the new one must meet the
    /// tenant's rules and differ from the recent ones; every other session is ended.
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        sent: &transmission::SentPassword,
        old_password: &str,
        new_password: &str,
        client_ip: Option<&str>,
    ) -> Result<(), AuthError> {
        let result = self
            .change_password_unaudited(claims, sent, old_password, new_password, client_ip)
            .await;
        let reason = match &result {
            Ok(_) => None,
            Err(AuthError::Validation(v))
                if v.iter()
                    .any(|f| f.field == "old_password" && f.code == "format") =>
            {
                Some("wrong_old_password")
            }
            Err(e) => Some(e.reason()),
        };
        self.audit(super::audit::Event {
            kind: super::audit::kind::PASSWORD_CHANGE,
            tenant_id: &claims.tid,
            outcome: if result.is_ok() { "success" } else { "failure" },
            user_id: Some(&claims.sub),
            actor_id: claims.act.as_ref().map(|a| a.sub.as_str()),
            reason,
            details: result
                .as_ref()
                .ok()
                .map(|ended| serde_json::json!({ "sessions_ended": ended })),
            ..Default::default()
        })
        .await;
        result.map(|_| ())
    }

    async fn change_password_unaudited(
        &self,
        claims: &AccessClaims,
        sent: &transmission::SentPassword,
        old_password: &str,
        new_password: &str,
        client_ip: Option<&str>,
    ) -> Result<usize, AuthError> {
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
        self.check_rate(
            "password_change",
            &super::limits::RateKeys {
                ip: client_ip,
                identity: Some(&user.id),
                tenant: Some(&user.tenant_id),
                ..Default::default()
            },
        )
        .await?;
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
        // The old password is guessed against the same counter as at sign-in (the username's),
        // with its delays and lock: a stolen access token is no way around them.
        let lockout = &rt.config.policy_for(&user.tenant_id).lockout;
        let gate = GateKeys::new(&user.tenant_id, &user.username, client_ip);
        let failures_before = self.gate_admit(&gate, lockout).await?;
        let verified = self
            .hasher
            .verify(old.digest(&user.tenant_id), user.password_hash.clone())
            .await?;
        if verified == Verified::No {
            self.gate_failed(&user.tenant_id, &user.id, failures_before, lockout)
                .await;
            return Err(AuthError::Validation(vec![FieldViolation::new(
                "old_password",
                "format",
                "the current password is wrong",
            )]));
        }
        self.gate_settle(&gate, true, lockout.lock_after).await;
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
        for sid in &ended {
            self.deny_session(sid, "password_change").await?;
        }
        tracing::info!(user = %user.id, sessions_ended = ended.len(), "password changed");
        Ok(ended.len())
    }

    /// Opens a session for `user` and issues its first tokens.
    pub async fn open_session(
        &self,
        user: &User,
        amr: Vec<String>,
        act: Option<Actor>,
    ) -> Result<IssuedTokens, AuthError> {
        self.open_session_recording(user, amr, act, None, |_| Vec::new())
            .await
    }

    /// Opens a session and, in the same transaction, stores the user's updated risk profile
    /// and the audit entries `audit` makes for the new session's id (one commit for the
    /// sign-in and its record: neither is stored without the other).
    #[tracing::instrument(name = "auth.session_open", skip_all)]
    pub(super) async fn open_session_recording(
        &self,
        user: &User,
        amr: Vec<String>,
        act: Option<Actor>,
        risk_profile: Option<&str>,
        audit: impl FnOnce(&str) -> Vec<crate::store::AuditRecord>,
    ) -> Result<IssuedTokens, AuthError> {
        let rt = self.runtime();
        let policy = &rt.config.tokens;
        let now = self.clock.unix();
        let actor = act
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let session = Session {
            id: random::id("ses"),
            tenant_id: user.tenant_id.clone(),
            user_id: user.id.clone(),
            amr,
            created_at: now,
            expires_at: now + secs(policy.session_max_lifetime_seconds),
            revoked_at: None,
            actor,
        };
        let refresh_token = random::secret(REFRESH_TOKEN_BYTES);
        let first = NewRefresh {
            token_hash: random::secret_hash(&refresh_token),
            created_at: now,
            expires_at: (now + secs(policy.refresh_token_ttl_seconds)).min(session.expires_at),
            access_expires_at: now + secs(policy.access_token_ttl_seconds),
        };
        let records = audit(&session.id);
        self.store
            .create_session_with_profile(&session, &first, risk_profile, &records)
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
    #[tracing::instrument(name = "auth.refresh", skip_all)]
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
            access_expires_at: now + secs(policy.access_token_ttl_seconds),
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
        // Every token of an impersonated session names its actor, not only the first.
        let act = session_actor(&session)?;
        let access_token = self.sign_access(&rt, &session, now, act)?;
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
        self.store
            .revoke_session(session_id, self.clock.unix(), reason)
            .await?;
        self.deny_session(session_id, reason).await
    }

    /// Denies every access token of a revoked session for as long as the longest-lived of them
    /// can be valid (the lifetime may have been shortened since it was issued). Should the
    /// entry go (eviction, an in-process restart), the bearer check still finds the stored
    /// revocation.
    async fn deny_session(&self, session_id: &str, reason: &str) -> Result<(), AuthError> {
        let now = self.clock.unix();
        let current = now + secs(self.runtime().config.tokens.access_token_ttl_seconds);
        let latest = self
            .store
            .session_access_expiry(session_id)
            .await?
            .map_or(current, |issued| issued.max(current));
        let ttl = u64::try_from(latest - now).unwrap_or(0) + tokens::LEEWAY_SECONDS;
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
    #[tracing::instrument(name = "auth.bearer", skip_all)]
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
}

/// The actor chain stored with a session (none for the user's own sessions). An unreadable
/// one fails the refresh: a token of an impersonated session must never look like the user's
/// own.
pub(crate) fn session_actor(session: &Session) -> Result<Option<Actor>, AuthError> {
    let Some(json) = session.actor.as_deref() else {
        return Ok(None);
    };
    serde_json::from_str(json).map(Some).map_err(|e| {
        tracing::error!(session = %session.id, error = %e, "stored actor chain is unreadable");
        AuthError::Internal("unreadable actor chain".into())
    })
}
