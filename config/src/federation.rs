//! External OpenID Connect providers whose id_tokens sign users in: issuer, client id,
//! accepted algorithms, claim mapping, provisioning mode, and the checks on them.

use serde::{Deserialize, Serialize};

/// Algorithms an id_token may be signed with: asymmetric only, so that a public key can never
/// be used as an HMAC secret.
pub const FEDERATION_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What happens at the first sign-in of an external account that is not linked yet.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    /// Create a local account and link it.
    Create,
    /// Link to the local account with the same email address, when the provider says the
    /// address is verified (`email_verified: true`); otherwise refuse.
    LinkVerifiedEmail,
    /// Only accounts linked already may sign in.
    #[default]
    Existing,
}

/// Which id_token claims fill a created account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimMapping {
    /// Claim for the username (a generated one when absent, malformed or taken).
    pub username: String,
    /// Claim for the email address (used only when `email_verified` is true).
    pub email: String,
    /// Claim for the phone number (used only when it is E.164 and `phone_number_verified`
    /// is true).
    pub phone: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            username: "preferred_username".into(),
            email: "email".into(),
            phone: "phone_number".into(),
        }
    }
}

/// One external OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// The name clients send as `provider` (1-64 of `a-z`, `0-9`, `-`, `_`).
    pub name: String,
    /// The provider's issuer, exactly as in its tokens' `iss`.
    pub issuer: String,
    /// Our client id at the provider: id_tokens must name it in `aud`.
    pub client_id: String,
    /// Accepted signing algorithms (from [`FEDERATION_ALGORITHMS`]).
    #[serde(default = "default_algorithms")]
    pub allowed_algorithms: Vec<String>,
    /// Tenant whose accounts this provider signs in.
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// First sign-in of an unlinked account.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Claim mapping for created accounts.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// Discovery document; default `ISSUER/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// An unknown `kid` refetches the provider's keys at most this often, in seconds.
    #[serde(default = "default_refetch_floor")]
    pub jwks_refetch_floor_seconds: u64,
    /// Keys are refetched after this long even without an unknown `kid`, in seconds.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
    /// Accept `http://` for the issuer, the discovery document and `jwks_uri` (a provider
    /// inside the cluster without TLS, or tests). Off: HTTPS only.
    #[serde(default)]
    pub allow_http: bool,
    /// Each id_token signs in once: its `jti` (or, without one, a hash of the token) is
    /// remembered until it expires, and a replay is refused. Off: a token may be presented
    /// again until it expires (for providers whose clients legitimately reuse one).
    #[serde(default = "default_true")]
    pub single_use: bool,
}

fn default_true() -> bool {
    true
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_tenant() -> String {
    "default".into()
}

fn default_skew() -> u64 {
    60
}

fn default_refetch_floor() -> u64 {
    10
}

fn default_jwks_max_age() -> u64 {
    3600
}

impl OidcProviderConfig {
    /// The discovery document's URL.
    pub fn discovery(&self) -> String {
        self.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            )
        })
    }

    /// Whether `url` may be fetched for this provider: HTTPS, or HTTP when allowed.
    pub fn url_allowed(&self, url: &str) -> bool {
        url.starts_with("https://") || (self.allow_http && url.starts_with("http://"))
    }

    /// Checks one provider.
    pub fn validate(&self) -> Result<(), String> {
        let at = format!("oidc_providers.{}", self.name);
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "oidc_providers: name {:?} must be 1-64 of a-z, 0-9, '-', '_'",
                self.name
            ));
        }
        let scheme = if self.allow_http { "http(s)" } else { "https" };
        if !self.url_allowed(&self.issuer) {
            return Err(format!("{at}.issuer must be an {scheme} URL"));
        }
        if let Some(d) = &self.discovery_url
            && !self.url_allowed(d)
        {
            return Err(format!("{at}.discovery_url must be an {scheme} URL"));
        }
        if self.client_id.trim().is_empty() {
            return Err(format!("{at}.client_id must not be empty"));
        }
        if self.allowed_algorithms.is_empty() {
            return Err(format!("{at}.allowed_algorithms must not be empty"));
        }
        if let Some(a) = self
            .allowed_algorithms
            .iter()
            .find(|a| !FEDERATION_ALGORITHMS.contains(&a.as_str()))
        {
            return Err(format!(
                "{at}.allowed_algorithms: {a:?} is not accepted (asymmetric only: {})",
                FEDERATION_ALGORITHMS.join(", ")
            ));
        }
        if self.clock_skew_seconds > 300
            || !(1..=3600).contains(&self.jwks_refetch_floor_seconds)
            || !(60..=86_400).contains(&self.jwks_max_age_seconds)
        {
            return Err(format!(
                "{at}: need clock_skew_seconds <= 300, jwks_refetch_floor_seconds within 1..=3600 and jwks_max_age_seconds within 60..=86400"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> OidcProviderConfig {
        serde_json::from_str(
            r#"{"name": "corp", "issuer": "https://idp.example.com", "client_id": "keygate"}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_checks() {
        let p = provider();
        assert_eq!(p.allowed_algorithms, ["RS256", "ES256"]);
        assert_eq!(p.provisioning, Provisioning::Existing);
        assert_eq!(
            p.discovery(),
            "https://idp.example.com/.well-known/openid-configuration"
        );
        assert!(p.validate().is_ok());
        assert!(
            OidcProviderConfig {
                issuer: "http://idp.cluster.local".into(),
                allow_http: true,
                ..provider()
            }
            .validate()
            .is_ok()
        );
        for bad in [
            OidcProviderConfig {
                allowed_algorithms: vec!["HS256".into()],
                ..provider()
            },
            OidcProviderConfig {
                allowed_algorithms: vec!["none".into()],
                ..provider()
            },
            OidcProviderConfig {
                name: "Corp!".into(),
                ..provider()
            },
            OidcProviderConfig {
                issuer: "idp.example.com".into(),
                ..provider()
            },
            OidcProviderConfig {
                issuer: "http://idp.example.com".into(),
                ..provider()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
