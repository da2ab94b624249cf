//! The runtime configuration model (signing keys, token and password-hashing policy, tenants,
//! rate limits, OIDC providers, ServiceAccount grants) and its validation, shared by the server
//! (which loads and hot-swaps it) and the operator (which renders it from custom resources),
//! and the generation of the private keys it holds. No kube, no axum, no I/O beyond parsing.

mod federation;
pub mod keygen;
mod policy;
mod service_accounts;

pub use federation::{ClaimMapping, FEDERATION_ALGORITHMS, OidcProviderConfig, Provisioning};

pub use policy::{
    CaptchaMode, CaptchaPolicy, CaptchaProvider, ForwardedHeader, LockoutPolicy, LoginCodePolicy,
    MFA_METHODS, MfaMode, MfaPolicy, PasswordPolicy, RATE_LIMITED_ENDPOINTS, RateKey,
    RateLimitRule, RateLimits, RiskLevel, RiskPolicy, RiskWeights, TenantPolicy, Transmission,
    cidr_contains, parse_cidr,
};
use serde::{Deserialize, Serialize};
pub use service_accounts::{
    GrantPermission, GrantRateLimit, ServiceAccountGrantConfig, ServiceAccountRef,
};
use std::collections::{BTreeMap, BTreeSet};

/// Everything the server may change without a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Token lifetimes and audience.
    pub tokens: TokenPolicy,
    /// JWT signing keys. Empty: the server uses (and on first start generates) a key in its
    /// data directory.
    pub signing_keys: Vec<SigningKeyConfig>,
    /// argon2id parameters for new hashes; existing hashes keep the parameters they were made
    /// with and are upgraded on the next successful login.
    pub password_hashing: PasswordHashing,
    /// Sign-in policy of every tenant that has no entry in `tenants`.
    pub policy: TenantPolicy,
    /// Sign-in policy per tenant id (replaces `policy` as a whole for that tenant).
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// Rate limits and trusted proxies.
    pub rate_limits: RateLimits,
    /// RSA keys for the `asymmetric` password transmission. Empty: the server uses (and on
    /// first start generates) a key in its data directory.
    pub transmission_keys: Vec<TransmissionKeyConfig>,
    /// The audit trail.
    pub audit: AuditPolicy,
    /// External OpenID Connect providers for `/auth/id-token/signin`.
    pub oidc_providers: Vec<OidcProviderConfig>,
    /// Kubernetes ServiceAccounts allowed to call Keygate with their own tokens.
    pub service_account_grants: Vec<ServiceAccountGrantConfig>,
}

/// An RSA key that clients encrypt passwords to (RSA-OAEP, SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransmissionKeyConfig {
    /// Key id (`transmission_public_key_id`, `key_id` in requests).
    pub kid: String,
    /// PKCS#8 (or PKCS#1) PEM RSA private key, 2048 bits or more.
    pub private_key_pem: String,
}

/// How long the audit trail is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuditPolicy {
    /// Days an audit event is kept before the hourly purge removes it.
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: u32,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            retention_days: 365,
        }
    }
}

/// Token lifetimes, audience and refresh-rotation policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TokenPolicy {
    /// `aud` of every access token.
    pub audience: String,
    /// Access-token lifetime in seconds.
    #[schemars(range(min = 30, max = 86400))]
    pub access_token_ttl_seconds: u64,
    /// Lifetime of each refresh token in seconds (sliding: every rotation starts a new one).
    pub refresh_token_ttl_seconds: u64,
    /// Absolute lifetime of a session (a refresh-token family) in seconds.
    pub session_max_lifetime_seconds: u64,
    /// A rotated refresh token presented again within this many seconds gets a fresh token in
    /// the same session (two tabs refreshing at once); later, the whole session is revoked.
    #[schemars(range(max = 300))]
    pub refresh_reuse_grace_seconds: u64,
    /// Lifetime of a one-time sign-in ticket in seconds.
    #[schemars(range(min = 10, max = 3600))]
    pub ticket_ttl_seconds: u64,
    /// How long verifiers may cache the JWKS (`Cache-Control: max-age`), in seconds. A
    /// `SigningKey`'s `prePublish` must exceed the propagation bound plus this, so that every
    /// verifier has a new key before it signs.
    #[schemars(range(max = 3600))]
    pub jwks_max_age_seconds: u64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            audience: "keygate".to_owned(),
            access_token_ttl_seconds: 1800,
            refresh_token_ttl_seconds: 30 * 24 * 3600,
            session_max_lifetime_seconds: 90 * 24 * 3600,
            refresh_reuse_grace_seconds: 10,
            ticket_ttl_seconds: 300,
            jwks_max_age_seconds: 60,
        }
    }
}

/// JWS algorithms the server signs with.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum SigningAlgorithm {
    /// ECDSA over P-256 with SHA-256 (the default).
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl SigningAlgorithm {
    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }
}

impl std::str::FromStr for SigningAlgorithm {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" | "es256" => Ok(Self::ES256),
            "EdDSA" | "eddsa" | "EDDSA" => Ok(Self::EdDSA),
            "RS256" | "rs256" => Ok(Self::RS256),
            other => Err(ConfigError::Invalid(format!(
                "unknown signing algorithm {other:?} (expected ES256, EdDSA or RS256)"
            ))),
        }
    }
}

/// One signing key and its publication window (see the key-rotation design).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Key id, published as `kid`.
    pub kid: String,
    /// Signing algorithm; must match the key type.
    pub algorithm: SigningAlgorithm,
    /// PKCS#8 PEM private key (PKCS#1 is accepted for RSA).
    pub private_key_pem: String,
    /// Unix seconds from which replicas sign with this key. Before it the key is only
    /// published. Absent: active at once.
    #[serde(default)]
    pub activates_at: Option<i64>,
    /// Unix seconds after which the key is neither used nor published. Absent: never.
    #[serde(default)]
    pub retires_at: Option<i64>,
    /// Unix seconds after which replicas no longer sign with this key (it still verifies
    /// until `retires_at`): a key being retired early, its `SigningKey` deleted. Absent: it
    /// signs until a newer key takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_until: Option<i64>,
}

/// argon2id parameters and the hashing concurrency cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordHashing {
    /// Memory cost in KiB (OWASP: 19456).
    #[schemars(range(min = 8192, max = 1048576))]
    pub memory_kib: u32,
    /// Time cost (passes).
    #[schemars(range(min = 1, max = 16))]
    pub iterations: u32,
    /// Lanes.
    #[schemars(range(min = 1, max = 16))]
    pub parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU. Bounds memory to
    /// `max_concurrent * memory_kib`.
    pub max_concurrent: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        Self {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid JSON/TOML for this model.
    #[error("cannot parse configuration: {0}")]
    Parse(String),
    /// The values contradict each other or are out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// File formats the configuration is accepted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (what the operator renders).
    Json,
    /// TOML (convenient by hand).
    Toml,
}

impl Format {
    /// Chooses the format from a file name (`.toml` is TOML, anything else JSON).
    pub fn from_path(path: &str) -> Self {
        if path.ends_with(".toml") {
            Self::Toml
        } else {
            Self::Json
        }
    }
}

impl RuntimeConfig {
    /// The policy of `tenant`.
    pub fn policy_for(&self, tenant: &str) -> &TenantPolicy {
        self.tenants.get(tenant).unwrap_or(&self.policy)
    }

    /// Parses and validates.
    pub fn parse(text: &str, format: Format) -> Result<Self, ConfigError> {
        let config: Self = match format {
            Format::Json => {
                serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
            }
            Format::Toml => toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules; the server refuses (and keeps its last good
    /// configuration) when this fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let t = &self.tokens;
        if t.audience.trim().is_empty() {
            return invalid("tokens.audience must not be empty");
        }
        if !(30..=86_400).contains(&t.access_token_ttl_seconds) {
            return invalid("tokens.access_token_ttl_seconds must be within 30..=86400");
        }
        if t.refresh_token_ttl_seconds < t.access_token_ttl_seconds {
            return invalid(
                "tokens.refresh_token_ttl_seconds must not be shorter than the access-token lifetime",
            );
        }
        if t.session_max_lifetime_seconds < t.refresh_token_ttl_seconds {
            return invalid(
                "tokens.session_max_lifetime_seconds must not be shorter than the refresh-token lifetime",
            );
        }
        if t.refresh_reuse_grace_seconds > 300 {
            return invalid("tokens.refresh_reuse_grace_seconds must be at most 300");
        }
        if !(1..=3650).contains(&self.audit.retention_days) {
            return invalid("audit.retention_days must be within 1..=3650");
        }
        if !(10..=3600).contains(&t.ticket_ttl_seconds) {
            return invalid("tokens.ticket_ttl_seconds must be within 10..=3600");
        }
        if t.jwks_max_age_seconds > 3600 {
            return invalid("tokens.jwks_max_age_seconds must be at most 3600");
        }
        let h = &self.password_hashing;
        if !(8 * 1024..=1024 * 1024).contains(&h.memory_kib) {
            return invalid("password_hashing.memory_kib must be within 8192..=1048576");
        }
        if !(1..=16).contains(&h.iterations) {
            return invalid("password_hashing.iterations must be within 1..=16");
        }
        if !(1..=16).contains(&h.parallelism) {
            return invalid("password_hashing.parallelism must be within 1..=16");
        }
        self.policy.validate("*").map_err(ConfigError::Invalid)?;
        self.rate_limits.validate().map_err(ConfigError::Invalid)?;
        for (tenant, policy) in &self.tenants {
            policy.validate(tenant).map_err(ConfigError::Invalid)?;
        }
        let mut providers = BTreeSet::new();
        for p in &self.oidc_providers {
            p.validate().map_err(ConfigError::Invalid)?;
            if !providers.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "oidc_providers: duplicate name {:?}",
                    p.name
                )));
            }
        }
        let mut grants = BTreeSet::new();
        let mut granted = BTreeSet::new();
        for g in &self.service_account_grants {
            g.validate().map_err(ConfigError::Invalid)?;
            if !grants.insert(g.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "service_account_grants: duplicate name {:?}",
                    g.name
                )));
            }
            if !granted.insert((g.service_account.username(), g.tenant_id.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "service_account_grants: {} has two grants for tenant {:?}",
                    g.service_account.username(),
                    g.tenant_id
                )));
            }
        }
        let mut transmission_kids = BTreeSet::new();
        for key in &self.transmission_keys {
            if key.kid.is_empty() || !transmission_kids.insert(key.kid.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "transmission_keys: empty or duplicate kid {:?}",
                    key.kid
                )));
            }
        }
        let mut kids = BTreeSet::new();
        for key in &self.signing_keys {
            if key.kid.is_empty() || key.kid.len() > 128 {
                return invalid("signing_keys[].kid must be 1..=128 characters");
            }
            if !kids.insert(key.kid.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "signing_keys: duplicate kid {:?}",
                    key.kid
                )));
            }
            if let (Some(a), Some(r)) = (key.activates_at, key.retires_at)
                && r <= a
            {
                return Err(ConfigError::Invalid(format!(
                    "signing_keys[{}]: retires_at must be after activates_at",
                    key.kid
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_the_default() {
        let c = RuntimeConfig::parse("{}", Format::Json).unwrap();
        assert_eq!(c, RuntimeConfig::default());
        let c = RuntimeConfig::parse("", Format::Toml).unwrap();
        assert_eq!(c, RuntimeConfig::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = RuntimeConfig::parse(r#"{"tokenz": {}}"#, Format::Json).unwrap_err();
        assert!(err.to_string().contains("tokenz"), "{err}");
    }

    #[test]
    fn ranges_are_checked() {
        let err = RuntimeConfig::parse("[tokens]\naccess_token_ttl_seconds = 5\n", Format::Toml)
            .unwrap_err();
        assert!(
            err.to_string().contains("access_token_ttl_seconds"),
            "{err}"
        );
        let err = RuntimeConfig::parse(r#"{"password_hashing": {"memory_kib": 16}}"#, Format::Json)
            .unwrap_err();
        assert!(err.to_string().contains("memory_kib"), "{err}");
    }

    #[test]
    fn duplicate_kids_and_inverted_windows_are_refused() {
        let key = |kid: &str, a: Option<i64>, r: Option<i64>| SigningKeyConfig {
            kid: kid.into(),
            algorithm: SigningAlgorithm::ES256,
            private_key_pem: String::new(),
            activates_at: a,
            retires_at: r,
            signs_until: None,
        };
        let mut c = RuntimeConfig {
            signing_keys: vec![key("a", None, None), key("a", None, None)],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("duplicate"));
        c.signing_keys = vec![key("a", Some(10), Some(5))];
        assert!(c.validate().unwrap_err().to_string().contains("retires_at"));
        c.signing_keys = vec![key("a", Some(10), Some(50)), key("b", None, None)];
        c.validate().unwrap();
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(cidr_contains(net, "10.1.200.3".parse().unwrap()));
        assert!(!cidr_contains(net, "10.2.0.1".parse().unwrap()));
        assert!(!cidr_contains(net, "::1".parse().unwrap()));
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(cidr_contains(v6, "2001:db8:1::5".parse().unwrap()));
        assert!(cidr_contains(
            parse_cidr("192.0.2.7").unwrap(),
            "192.0.2.7".parse().unwrap()
        ));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nope/8").is_none());
        let bad = RuntimeConfig::parse(
            r#"{"policy": {"risk": {"deny_list": ["x"]}}}"#,
            Format::Json,
        );
        assert!(bad.unwrap_err().to_string().contains("deny_list"));
    }

    #[test]
    fn policy_cross_field_rules() {
        for bad in [
            r#"{"policy": {"password": {"accepted_transmissions": []}}}"#,
            r#"{"policy": {"password": {"accepted_transmissions": ["plain"], "preferred_transmission": "hash"}}}"#,
            r#"{"policy": {"lockout": {"delay_after": 5, "lock_after": 5}}}"#,
            r#"{"policy": {"captcha": {"provider": "turnstile"}}}"#,
            r#"{"policy": {"risk": {"medium_threshold": 50, "high_threshold": 40}}}"#,
            r#"{"tenants": {"acme": {"mfa": {"max_attempts": 0}}}}"#,
        ] {
            assert!(
                RuntimeConfig::parse(bad, Format::Json).is_err(),
                "{bad} should be refused"
            );
        }
        let ok = RuntimeConfig::parse(
            r#"{"tenants": {"acme": {"mfa": {"mode": "risk"}}}}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(ok.policy_for("acme").mfa.mode, MfaMode::Risk);
        assert_eq!(ok.policy_for("other").mfa.mode, MfaMode::Always);
    }

    #[test]
    fn algorithm_names_parse() {
        assert_eq!(
            "ES256".parse::<SigningAlgorithm>().unwrap(),
            SigningAlgorithm::ES256
        );
        assert_eq!(
            "EdDSA".parse::<SigningAlgorithm>().unwrap(),
            SigningAlgorithm::EdDSA
        );
        assert_eq!(
            "RS256".parse::<SigningAlgorithm>().unwrap(),
            SigningAlgorithm::RS256
        );
        assert!("HS256".parse::<SigningAlgorithm>().is_err());
    }
}
