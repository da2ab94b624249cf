//! Callers that authenticate with their own Kubernetes ServiceAccount token: verified offline
//! (by `keygate_oidc`) against the cluster's service-account issuer, whose issuer name and keys
//! are read from the API server with the server's own credentials and kept in the key cache
//! (so a busy caller costs no API-server round trip), checked for the configured audience, and
//! matched to a `service_account_grants` entry of the runtime configuration.

use super::AuthService;
use super::error::AuthError;
use super::key_cache::{Ages, SourceKeys};
use keygate_config::{GrantPermission, OidcProviderConfig, ServiceAccountGrantConfig};
use keygate_oidc::{Cluster, Fetcher, Invalid};
use serde_json::Value;
use std::sync::Arc;

/// Algorithms a service-account issuer signs with (RSA or ECDSA keys).
const CLUSTER_ALGORITHMS: &[&str] = &["RS256", "ES256", "ES384"];

/// Leeway for `exp`, `nbf` and `iat`, in seconds.
const CLOCK_SKEW_SECONDS: u64 = 60;

/// Key ages: an unknown `kid` refetches at most every 10 s, the keys every hour anyway.
const AGES: Ages = Ages {
    max_age: 3600,
    refetch_floor: 10,
};

/// The cluster whose ServiceAccount tokens are accepted.
#[derive(Debug)]
pub struct ClusterVerifier {
    cluster: Cluster,
    audience: String,
    fetcher: Fetcher,
}

impl ClusterVerifier {
    /// Tokens of the cluster at `cluster`, reached through `fetcher` (trusting its CA), for
    /// `audience`.
    pub fn new(cluster: Cluster, fetcher: Fetcher, audience: String) -> Self {
        Self {
            cluster,
            audience,
            fetcher,
        }
    }

    /// The issuer as a provider of the validation's vocabulary.
    fn provider(&self, issuer: &str) -> OidcProviderConfig {
        OidcProviderConfig {
            name: "kubernetes".into(),
            issuer: issuer.to_owned(),
            client_id: self.audience.clone(),
            allowed_algorithms: CLUSTER_ALGORITHMS.iter().map(|a| (*a).to_owned()).collect(),
            tenant_id: String::new(),
            provisioning: keygate_config::Provisioning::Existing,
            claims: keygate_config::ClaimMapping::default(),
            discovery_url: None,
            clock_skew_seconds: CLOCK_SKEW_SECONDS,
            jwks_refetch_floor_seconds: 10,
            jwks_max_age_seconds: 3600,
            allow_http: false,
            single_use: false,
        }
    }
}

/// A verified ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountCaller {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, as the token says.
    pub uid: Option<String>,
}

impl ServiceAccountCaller {
    /// `system:serviceaccount:NS:NAME`.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The grant of this ServiceAccount for `permission` on `tenant` (on its only tenant when
    /// none is named): `Forbidden` without one, a field error when several tenants are
    /// granted and none is named.
    pub fn grant<'a>(
        &self,
        grants: &'a [ServiceAccountGrantConfig],
        permission: GrantPermission,
        tenant: Option<&str>,
    ) -> Result<&'a ServiceAccountGrantConfig, AuthError> {
        let mine: Vec<&ServiceAccountGrantConfig> = grants
            .iter()
            .filter(|g| {
                g.service_account.namespace == self.namespace
                    && g.service_account.name == self.name
                    && g.allows(permission)
            })
            .collect();
        match (tenant, mine.as_slice()) {
            (Some(t), _) => mine
                .iter()
                .find(|g| g.tenant_id == t)
                .copied()
                .ok_or(AuthError::Forbidden),
            (None, [one]) => Ok(one),
            (None, []) => Err(AuthError::Forbidden),
            (None, _) => Err(AuthError::Validation(vec![
                super::error::FieldViolation::new(
                    "tenant_id",
                    "required",
                    "this ServiceAccount is granted several tenants: name one",
                ),
            ])),
        }
    }
}

/// The caller a bearer token stands for.
#[derive(Debug, Clone)]
pub enum BearerCaller {
    /// A Keygate access token.
    User(super::tokens::AccessClaims),
    /// A ServiceAccount token of the cluster.
    ServiceAccount(ServiceAccountCaller),
}

/// The `iss` a JWT claims, unverified (only to tell which verification applies).
fn claimed_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["iss"]
        .as_str()
        .map(str::to_owned)
}

/// Why a token is not a ServiceAccount's (kept for the log; the caller sees 401 alike).
fn refused(why: &'static str) -> AuthError {
    tracing::debug!(reason = why, "ServiceAccount token refused");
    AuthError::Unauthenticated("invalid token")
}

impl AuthService {
    /// Authenticates a bearer token that may be a Keygate access token or, when a cluster is
    /// configured, a ServiceAccount token: a token claiming another issuer than Keygate's is
    /// verified as the cluster's (and refused unless it is one).
    #[tracing::instrument(name = "auth.caller", skip_all)]
    pub async fn authenticate_caller(&self, token: &str) -> Result<BearerCaller, AuthError> {
        // Without a cluster there is nothing to tell apart: no need to read the token.
        if self.cluster.is_none() || claimed_issuer(token).is_none_or(|iss| iss == self.issuer()) {
            return self.authenticate(token).await.map(BearerCaller::User);
        }
        self.verify_service_account(token)
            .await
            .map(BearerCaller::ServiceAccount)
    }

    /// Verifies a ServiceAccount token of the cluster: signature by the service-account
    /// issuer's keys, `iss` equal to that issuer, `aud` containing the configured audience,
    /// not expired, and `sub` and the `kubernetes.io` claims naming one ServiceAccount.
    /// Without a cluster configured every token is refused.
    pub async fn verify_service_account(
        &self,
        token: &str,
    ) -> Result<ServiceAccountCaller, AuthError> {
        let Some(cluster) = self.cluster.as_deref() else {
            return Err(refused("no cluster configured"));
        };
        let now = self.clock.unix();
        let fetch = async || {
            cluster
                .fetcher
                .cluster_keys(&cluster.cluster)
                .await
                .map(|(issuer, keys)| SourceKeys {
                    issuer: Arc::from(issuer),
                    keys: Arc::new(keys),
                })
        };
        let verdict = |k: &SourceKeys| {
            if k.issuer.is_empty() {
                return Err(Invalid::UnknownKey);
            }
            keygate_oidc::validate(&cluster.provider(&k.issuer), &k.keys, token, now)
        };
        let source = format!("kubernetes:{}", cluster.cluster.api_url);
        let claims = match self
            .federation_keys
            .cache
            .check(&source, now, AGES, fetch, verdict)
            .await
        {
            Ok(Ok(claims)) => claims,
            Ok(Err(Invalid::UnknownKey)) => return Err(refused("unknown_signing_key")),
            Ok(Err(Invalid::Refused(why))) => return Err(refused(why)),
            Err(e) => {
                return Err(AuthError::Unavailable(format!(
                    "the cluster's service-account issuer: {e}"
                )));
            }
        };
        let k8s = &claims["kubernetes.io"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let (Some(namespace), Some(name)) = (
            text(&k8s["namespace"]),
            text(&k8s["serviceaccount"]["name"]),
        ) else {
            return Err(refused("not_a_service_account_token"));
        };
        let caller = ServiceAccountCaller {
            namespace,
            name,
            uid: text(&k8s["serviceaccount"]["uid"]),
        };
        if claims.get("sub").and_then(Value::as_str) != Some(caller.username().as_str()) {
            return Err(refused("subject_does_not_match"));
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Vec<ServiceAccountGrantConfig> {
        let g = |name: &str, ns: &str, sa: &str, tenant: &str| {
            serde_json::from_value::<ServiceAccountGrantConfig>(serde_json::json!({
                "name": name, "tenant_id": tenant, "permissions": ["tickets:create"],
                "service_account": {"namespace": ns, "name": sa},
            }))
            .unwrap_or_else(|e| panic!("{e}"))
        };
        vec![
            g("a", "billing", "api", "default"),
            g("b", "billing", "api", "acme"),
            g("c", "shop", "api", "default"),
        ]
    }

    fn caller(ns: &str) -> ServiceAccountCaller {
        ServiceAccountCaller {
            namespace: ns.into(),
            name: "api".into(),
            uid: None,
        }
    }

    #[test]
    fn grants_are_matched_by_namespace_name_and_tenant() {
        let all = grants();
        let t = GrantPermission::TicketsCreate;
        assert_eq!(
            caller("shop")
                .grant(&all, t, None)
                .map(|g| g.name.as_str())
                .ok(),
            Some("c")
        );
        assert_eq!(
            caller("billing")
                .grant(&all, t, Some("acme"))
                .map(|g| g.name.as_str())
                .ok(),
            Some("b")
        );
        assert!(matches!(
            caller("billing").grant(&all, t, None),
            Err(AuthError::Validation(_))
        ));
        assert!(matches!(
            caller("shop").grant(&all, t, Some("acme")),
            Err(AuthError::Forbidden)
        ));
        assert!(matches!(
            caller("other").grant(&all, t, None),
            Err(AuthError::Forbidden)
        ));
        assert_eq!(caller("shop").username(), "system:serviceaccount:shop:api");
    }
}
