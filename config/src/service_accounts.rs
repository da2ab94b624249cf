//! Grants to Kubernetes ServiceAccounts: which ServiceAccount may call which Keygate
//! operations with its own projected token, for which tenant, on which users and how often.

use serde::{Deserialize, Serialize};

/// What a grant may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum GrantPermission {
    /// `POST /auth/generate-ticket`: one-time sign-in tickets for the tenant's users.
    #[serde(rename = "tickets:create")]
    TicketsCreate,
}

impl GrantPermission {
    /// The permission's name, as in the user roles' permission vocabulary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TicketsCreate => "tickets:create",
        }
    }
}

/// A ServiceAccount of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// Its namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Its name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

impl ServiceAccountRef {
    /// The Kubernetes user name of its tokens: `system:serviceaccount:NS:NAME` (the `sub`
    /// of its tokens, and the `act.sub` of what it does in Keygate).
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// A rate limit of one grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRateLimit {
    /// Calls allowed per window.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub limit: u32,
    /// The window, in seconds.
    #[schemars(range(min = 1, max = 86_400))]
    pub window_seconds: u32,
}

/// Permissions of one ServiceAccount on one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountGrantConfig {
    /// The grant's name (in audit records).
    pub name: String,
    /// The ServiceAccount granted.
    pub service_account: ServiceAccountRef,
    /// The tenant whose users it acts on.
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// The operations the ServiceAccount may call with its token: `tickets:create` (`POST
    /// /auth/generate-ticket` for the tenant's users).
    #[schemars(length(min = 1))]
    pub permissions: Vec<GrantPermission>,
    /// Roles a user it acts on may hold: a user holding any role not listed is refused.
    /// Empty (the default): only users without roles.
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    /// At most this many calls per window under this grant; absent: only the endpoint's
    /// rate rules apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<GrantRateLimit>,
}

fn default_tenant() -> String {
    "default".into()
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ServiceAccountGrantConfig {
    /// Whether the grant allows `permission`.
    pub fn allows(&self, permission: GrantPermission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Checks one grant.
    pub fn validate(&self) -> Result<(), String> {
        let at = format!("service_account_grants.{}", self.name);
        if self.name.is_empty() || self.name.len() > 253 {
            return Err("service_account_grants: name must be 1-253 characters".into());
        }
        let sa = &self.service_account;
        if !dns_label(&sa.namespace) {
            return Err(format!(
                "{at}.service_account.namespace {:?} is not a namespace name",
                sa.namespace
            ));
        }
        if sa.name.len() > 253 || !sa.name.split('.').all(dns_label) {
            return Err(format!(
                "{at}.service_account.name {:?} is not a ServiceAccount name",
                sa.name
            ));
        }
        let tenant_ok = (1..=63).contains(&self.tenant_id.len())
            && self.tenant_id.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .tenant_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !tenant_ok {
            return Err(format!(
                "{at}.tenant_id {:?} must be 1-63 of a-z, 0-9 and '-', starting with a letter",
                self.tenant_id
            ));
        }
        if self.permissions.is_empty() {
            return Err(format!("{at}.permissions must not be empty"));
        }
        if self.allowed_roles.iter().any(|r| r.trim().is_empty()) {
            return Err(format!("{at}.allowed_roles must not hold an empty role"));
        }
        if let Some(r) = self.rate_limit
            && (!(1..=1_000_000).contains(&r.limit) || !(1..=86_400).contains(&r.window_seconds))
        {
            return Err(format!(
                "{at}.rate_limit: need limit within 1..=1000000 and window_seconds within 1..=86400"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> ServiceAccountGrantConfig {
        serde_json::from_value(serde_json::json!({
            "name": "billing",
            "service_account": {"namespace": "billing", "name": "api"},
            "permissions": ["tickets:create"],
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_and_checks() {
        let g = grant();
        assert_eq!(g.tenant_id, "default");
        assert!(g.allowed_roles.is_empty());
        assert!(g.allows(GrantPermission::TicketsCreate));
        assert_eq!(
            g.service_account.username(),
            "system:serviceaccount:billing:api"
        );
        assert!(g.validate().is_ok());
        for bad in [
            serde_json::json!({"service_account": {"namespace": "Billing", "name": "api"}}),
            serde_json::json!({"service_account": {"namespace": "billing", "name": "-api"}}),
            serde_json::json!({"tenant_id": "9lives"}),
            serde_json::json!({"permissions": []}),
            serde_json::json!({"allowed_roles": [" "]}),
            serde_json::json!({"rate_limit": {"limit": 0, "window_seconds": 60}}),
        ] {
            let mut v = serde_json::to_value(grant()).unwrap_or_default();
            for (k, val) in bad.as_object().into_iter().flatten() {
                v[k] = val.clone();
            }
            let g: ServiceAccountGrantConfig =
                serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
            assert!(g.validate().is_err(), "{bad}");
        }
        let unknown = serde_json::from_value::<ServiceAccountGrantConfig>(serde_json::json!({
            "name": "x", "service_account": {"namespace": "a", "name": "b"},
            "permissions": ["users:delete"],
        }));
        assert!(unknown.is_err());
    }
}
