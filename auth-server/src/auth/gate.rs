//! The sign-in attempt gate as every factor uses it: which counters an attempt is decided on
//! (one per identifier as typed, so that known and unknown identities behave alike; one per
//! account for second-factor answers; and one per client network), admission with progressive delay and lock, the lockout's audit event,
//! and what a right answer does to the counters (a finished sign-in resets them; a right first
//! factor that leads to a second one only gives its own attempt back).

use super::error::AuthError;
use super::{AuthService, limits, random};
use crate::ephemeral;
use keygate_config::LockoutPolicy;

/// The two counters an attempt is decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateKeys {
    /// The identifier signed in with (username, email or phone, normalised), in its tenant.
    pub account: String,
    /// The client's network (the address; IPv6 by /64).
    pub ip: String,
}

impl GateKeys {
    /// The counters of `identity` (normalised) in `tenant`, tried from `client_ip`.
    pub fn new(tenant_id: &str, identity: &str, client_ip: Option<&str>) -> Self {
        Self {
            account: identity_gate_key(tenant_id, identity),
            ip: ip_gate_key(client_ip),
        }
    }

    /// The counters of second-factor answers: the account's own (its first factor is proven,
    /// so counting by account tells nothing new), tried from `client_ip`.
    pub fn for_account(user: &crate::store::User, client_ip: Option<&str>) -> Self {
        Self {
            account: account_gate_key(user),
            ip: ip_gate_key(client_ip),
        }
    }
}

fn ip_gate_key(client_ip: Option<&str>) -> String {
    format!(
        "kg:gate:ip:{}",
        client_ip.map_or_else(|| "unknown".to_owned(), limits::address_key)
    )
}

/// The counter of an account's second-factor answers, whatever identifier signed in.
pub fn account_gate_key(user: &crate::store::User) -> String {
    format!("kg:gate:acct:{}:{}", user.tenant_id, user.id)
}

/// The counter of one identifier. Every identifier has its own, whether or not it names an
/// account, so that the gate cannot tell which identifiers belong together.
pub fn identity_gate_key(tenant_id: &str, identity: &str) -> String {
    format!("kg:gate:id:{tenant_id}:{}", random::secret_hash(identity))
}

/// The counters of every identifier of an account and its second-factor counter (an
/// administrator's unlock clears them all).
pub fn account_gate_keys(user: &crate::store::User) -> Vec<String> {
    [
        Some(&user.username),
        user.email.as_ref(),
        user.phone.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|id| identity_gate_key(&user.tenant_id, &super::users::classify_identity(id).1))
    .chain([account_gate_key(user)])
    .collect()
}

/// The attempt-gate rules of a lockout policy: (account, client address).
fn gate_rules(p: &LockoutPolicy) -> (ephemeral::GateRule, ephemeral::GateRule) {
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

impl AuthService {
    /// Admits one attempt (counted before it is evaluated) or refuses it with the wait;
    /// returns the identifier's failures before this attempt.
    #[tracing::instrument(name = "auth.attempt_gate", skip_all)]
    pub(super) async fn gate_admit(
        &self,
        keys: &GateKeys,
        policy: &LockoutPolicy,
    ) -> Result<u32, AuthError> {
        let (account_rule, ip_rule) = gate_rules(policy);
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        match self
            .ephemeral
            .gate_attempt(&keys.account, &keys.ip, (&account_rule, &ip_rule), now_ms)
            .await
        {
            ephemeral::Gate::Refused {
                retry_after_ms,
                locked,
            } => Err(AuthError::LoginThrottled {
                retry_after: retry_after_ms.div_ceil(1000).max(1),
                locked,
            }),
            ephemeral::Gate::Admitted {
                account_failures, ..
            } => Ok(account_failures),
        }
    }

    /// A wrong answer of an account's (the attempt already counts): when it is the one that
    /// locks the identifier, the lockout goes into the audit trail, once.
    pub(super) async fn gate_failed(
        &self,
        tenant_id: &str,
        user_id: &str,
        failures_before: u32,
        policy: &LockoutPolicy,
    ) {
        if failures_before + 1 != policy.lock_after {
            return;
        }
        crate::metrics::record_lockout();
        self.audit(super::audit::Event {
            kind: super::audit::kind::LOCKOUT,
            tenant_id,
            outcome: "success",
            user_id: Some(user_id),
            reason: Some("too_many_failures"),
            details: Some(serde_json::json!({
                "failures": policy.lock_after,
                "lock_seconds": policy.lock_seconds,
            })),
            ..Default::default()
        })
        .await;
    }

    /// Settles the counters after a right answer: a finished sign-in resets the identifier
    /// (and gives the address its attempt back); anything short of that (a second factor
    /// still to come, or an error after the right answer) only gives this attempt back.
    pub(super) async fn gate_settle(&self, keys: &GateKeys, finished: bool, lock_after: u32) {
        if finished {
            self.ephemeral.gate_success(&keys.account, &keys.ip).await;
        } else {
            self.ephemeral
                .gate_refund(&keys.account, &keys.ip, lock_after)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_have_their_own_counters_and_networks_share_one() {
        let a = GateKeys::new("t", "alice", Some("2001:db8:1:2::5"));
        let b = GateKeys::new("t", "alice@example.com", Some("2001:db8:1:2:ffff::9"));
        assert_ne!(a.account, b.account);
        assert_eq!(a.ip, b.ip, "one /64 is one client network");
        assert_ne!(
            GateKeys::new("t", "alice", Some("2001:db8:1:3::5")).ip,
            a.ip
        );
        assert_ne!(GateKeys::new("u", "alice", None).account, a.account);
        assert!(!a.account.contains("alice"), "identifiers are hashed");
    }
}
