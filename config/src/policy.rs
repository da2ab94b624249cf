//! Per-tenant sign-in policy: accepted password transmissions and password rules, CAPTCHA,
//! progressive delay and lockout, risk scoring and adaptive MFA. Every field has a safe
//! default; the defaults are what the embedded tenant `default` uses.

use serde::{Deserialize, Serialize};

/// How a password travels from the client.
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
#[serde(rename_all = "snake_case")]
pub enum Transmission {
    /// The password itself (inside TLS).
    Plain,
    /// The canonical digest `sha256_hex(password + "|" + tenant_id)`.
    Hash,
    /// AES-256-GCM under an ECDH (P-256) key agreed through `/public/key-exchange`.
    Symmetric,
    /// RSA-OAEP (SHA-256) under the tenant's transmission key.
    Asymmetric,
}

impl Transmission {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Hash => "hash",
            Self::Symmetric => "symmetric",
            Self::Asymmetric => "asymmetric",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(Self::Plain),
            "hash" => Some(Self::Hash),
            "symmetric" => Some(Self::Symmetric),
            "asymmetric" => Some(Self::Asymmetric),
            _ => None,
        }
    }
}

/// The policy of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TenantPolicy {
    /// Name of the tenant for people (in messages), used when a server creates the tenant
    /// because the configuration names it; the tenant id when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Password transmission and rules.
    pub password: PasswordPolicy,
    /// CAPTCHA.
    pub captcha: CaptchaPolicy,
    /// Progressive delay and lockout.
    pub lockout: LockoutPolicy,
    /// Adaptive MFA.
    pub mfa: MfaPolicy,
    /// Risk scoring.
    pub risk: RiskPolicy,
    /// One-time codes by email and SMS (passwordless sign-in and MFA).
    pub login_codes: LoginCodePolicy,
}

/// One-time codes sent by email or SMS, for passwordless sign-in and as MFA methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LoginCodePolicy {
    /// Whether `/auth/send-login-code` and the code sign-ins are open for the tenant.
    pub enabled: bool,
    /// Whether a code sign-in with `register_if_new` may create an account (and so whether a
    /// code is actually sent to an address or number that has no account).
    pub signup: bool,
    /// Digits per code.
    #[schemars(range(min = 4, max = 10))]
    pub length: u32,
    /// Seconds a code stays valid.
    #[schemars(range(min = 30, max = 3600))]
    pub ttl_seconds: u64,
    /// Wrong codes a code survives before it is dead.
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Locale of the message when the request's `Accept-Language` names none we have.
    pub default_locale: String,
    /// Seconds before another code may be sent to the same address or number (sign-in and
    /// MFA codes alike); 0 turns the interval off.
    #[schemars(range(max = 3600))]
    pub resend_interval_seconds: u64,
    /// E.164 prefixes (`+1`, `+49`, ...) that SMS codes may go to; empty: every number.
    pub sms_allowed_prefixes: Vec<String>,
}

impl Default for LoginCodePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            signup: false,
            length: 6,
            ttl_seconds: 300,
            max_attempts: 5,
            default_locale: "en".into(),
            resend_interval_seconds: 60,
            sms_allowed_prefixes: Vec::new(),
        }
    }
}

/// Signal weights (points added to the score when a signal fires).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RiskWeights {
    /// A device the user has not signed in from.
    pub new_device: u32,
    /// A network (IPv4 /24, IPv6 /48) the user has not signed in from.
    pub new_network: u32,
    /// Failed attempts on the account before this one.
    pub recent_failures: u32,
    /// An hour of the day (UTC) the user rarely signs in at.
    pub unusual_hour: u32,
    /// The client address is on the deny list.
    pub deny_listed_ip: u32,
    /// More sign-ins for the account in the last hour than `velocity_per_hour`.
    pub velocity: u32,
}

impl Default for RiskWeights {
    fn default() -> Self {
        Self {
            new_device: 25,
            new_network: 20,
            recent_failures: 15,
            unusual_hour: 10,
            deny_listed_ip: 70,
            velocity: 20,
        }
    }
}

/// Risk scoring policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RiskPolicy {
    /// Points per signal.
    pub weights: RiskWeights,
    /// Score from which the level is `medium`.
    pub medium_threshold: u32,
    /// Score from which the level is `high`.
    pub high_threshold: u32,
    /// Client networks (CIDR, IPv4 or IPv6) that always add `deny_listed_ip`.
    pub deny_list: Vec<String>,
    /// Sign-ins per account per hour above which `velocity` fires.
    pub velocity_per_hour: u32,
    /// Devices and networks remembered per user (least recently seen dropped first).
    #[schemars(range(min = 1, max = 100))]
    pub remember: usize,
}

impl Default for RiskPolicy {
    fn default() -> Self {
        Self {
            weights: RiskWeights::default(),
            medium_threshold: 30,
            high_threshold: 60,
            deny_list: Vec::new(),
            velocity_per_hour: 10,
            remember: 10,
        }
    }
}

/// When users with a second factor are challenged for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MfaMode {
    /// At every password sign-in.
    Always,
    /// When the sign-in's risk level reaches `risk_level`.
    Risk,
    /// Never (the factor is kept but not asked for).
    Off,
}

/// Risk levels, lowest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Nothing unusual.
    Low,
    /// Something unusual.
    Medium,
    /// Several unusual things, or a denied address.
    High,
}

impl RiskLevel {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// Adaptive MFA policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MfaPolicy {
    /// When enrolled users are challenged.
    pub mode: MfaMode,
    /// The level from which `risk` mode challenges.
    pub risk_level: RiskLevel,
    /// Seconds a challenge stays valid.
    #[schemars(range(min = 30, max = 3600))]
    pub challenge_ttl_seconds: u64,
    /// Wrong codes a challenge survives before it is spent.
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Second factors offered, in order: `totp` and `backup` (for users with TOTP), `email`
    /// and `sms` (one-time codes to the account's address or number).
    pub methods: Vec<String>,
}

/// Every MFA method there is.
pub const MFA_METHODS: &[&str] = &["totp", "backup", "email", "sms"];

impl Default for MfaPolicy {
    fn default() -> Self {
        Self {
            mode: MfaMode::Always,
            risk_level: RiskLevel::Medium,
            challenge_ttl_seconds: 300,
            max_attempts: 5,
            methods: vec!["totp".into(), "backup".into()],
        }
    }
}

/// Password transmission, composition, history and expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Modes accepted at login and password change.
    pub accepted_transmissions: Vec<Transmission>,
    /// The mode clients are told to use (must be accepted).
    pub preferred_transmission: Transmission,
    /// Minimum length in characters.
    #[schemars(range(min = 1, max = 1024))]
    pub min_length: usize,
    /// Maximum length in characters.
    #[schemars(range(min = 1, max = 1024))]
    pub max_length: usize,
    /// At least one uppercase letter.
    pub require_upper: bool,
    /// At least one lowercase letter.
    pub require_lower: bool,
    /// At least one digit.
    pub require_digit: bool,
    /// At least one character that is neither letter nor digit.
    pub require_special: bool,
    /// A new password may not equal any of the last N (0: only the current one is refused).
    pub history: usize,
    /// Passwords expire this many days after being set (0: never).
    pub expiry_days: i64,
    /// Warn (`expiring`) this many days before expiry.
    pub warn_days: i64,
    /// After expiry, sign-in still works (with `must_change_password`) for this many days.
    pub grace_period_days: i64,
    /// Users created with a password must change it at their first sign-in.
    pub force_change_on_first_login: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            accepted_transmissions: vec![
                Transmission::Plain,
                Transmission::Hash,
                Transmission::Symmetric,
                Transmission::Asymmetric,
            ],
            preferred_transmission: Transmission::Symmetric,
            min_length: 8,
            max_length: 1024,
            require_upper: false,
            require_lower: false,
            require_digit: false,
            require_special: false,
            history: 3,
            expiry_days: 0,
            warn_days: 14,
            grace_period_days: 7,
            force_change_on_first_login: false,
        }
    }
}

/// When CAPTCHA is demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptchaMode {
    /// Never.
    Never,
    /// At every password sign-in.
    Always,
    /// After `after_failures` failures of the account or the client address.
    AfterFailures,
}

/// CAPTCHA providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptchaProvider {
    /// Proof of work solved by the client.
    Pow,
    /// Cloudflare Turnstile, verified server-side.
    Turnstile,
}

/// CAPTCHA policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CaptchaPolicy {
    /// When to demand it.
    pub mode: CaptchaMode,
    /// Failures of the account before it is demanded (`after_failures` mode).
    pub after_failures: u32,
    /// Failures from the client address (any account) before it is demanded.
    pub ip_after_failures: u32,
    /// The provider clients are told to use.
    pub provider: CaptchaProvider,
    /// Leading hex zeros a proof of work needs (the server's floor, whatever clients ask).
    #[schemars(range(min = 1, max = 8))]
    pub pow_difficulty: u32,
    /// Seconds a proof-of-work challenge stays valid.
    pub pow_ttl_seconds: u64,
    /// Turnstile secret key (server side).
    pub turnstile_secret: Option<String>,
    /// Turnstile site key (given to clients).
    pub turnstile_site_key: Option<String>,
    /// Turnstile verification endpoint.
    pub turnstile_verify_url: String,
}

impl Default for CaptchaPolicy {
    fn default() -> Self {
        Self {
            mode: CaptchaMode::AfterFailures,
            after_failures: 3,
            ip_after_failures: 10,
            provider: CaptchaProvider::Pow,
            pow_difficulty: 4,
            pow_ttl_seconds: 300,
            turnstile_secret: None,
            turnstile_site_key: None,
            turnstile_verify_url: "https://challenges.cloudflare.com/turnstile/v0/siteverify"
                .into(),
        }
    }
}

/// Progressive delay and lockout (NIST SP 800-63B §5.2.2), per account and per client address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutPolicy {
    /// Failures of an account after which each attempt must wait.
    pub delay_after: u32,
    /// Wait after the first delayed failure, in seconds; doubles with each further failure.
    pub base_delay_seconds: u64,
    /// Longest wait between attempts, in seconds.
    pub max_delay_seconds: u64,
    /// Failures after which the account is locked.
    pub lock_after: u32,
    /// How long a lock lasts, in seconds.
    pub lock_seconds: u64,
    /// Failures from one client address (any account) after which it must wait too.
    pub ip_delay_after: u32,
    /// Failures from one client address after which it is locked out.
    pub ip_lock_after: u32,
    /// Failure counters are forgotten after this many seconds without a failure.
    pub window_seconds: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            delay_after: 3,
            base_delay_seconds: 1,
            max_delay_seconds: 60,
            lock_after: 10,
            lock_seconds: 900,
            ip_delay_after: 20,
            ip_lock_after: 100,
            window_seconds: 3600,
        }
    }
}

impl TenantPolicy {
    /// Checks ranges and cross-field rules.
    pub fn validate(&self, tenant: &str) -> Result<(), String> {
        let p = &self.password;
        if p.accepted_transmissions.is_empty() {
            return Err(format!(
                "tenants.{tenant}.password.accepted_transmissions must not be empty"
            ));
        }
        if !p.accepted_transmissions.contains(&p.preferred_transmission) {
            return Err(format!(
                "tenants.{tenant}.password.preferred_transmission must be one of accepted_transmissions"
            ));
        }
        if p.min_length < 1 || p.max_length < p.min_length || p.max_length > 1024 {
            return Err(format!(
                "tenants.{tenant}.password: need 1 <= min_length <= max_length <= 1024"
            ));
        }
        if p.expiry_days < 0 || p.warn_days < 0 || p.grace_period_days < 0 {
            return Err(format!(
                "tenants.{tenant}.password: day counts must not be negative"
            ));
        }
        let c = &self.captcha;
        if !(1..=8).contains(&c.pow_difficulty) {
            return Err(format!(
                "tenants.{tenant}.captcha.pow_difficulty must be within 1..=8"
            ));
        }
        if c.provider == CaptchaProvider::Turnstile && c.turnstile_secret.is_none() {
            return Err(format!(
                "tenants.{tenant}.captcha: turnstile needs turnstile_secret"
            ));
        }
        if !(30..=3600).contains(&self.mfa.challenge_ttl_seconds)
            || !(1..=20).contains(&self.mfa.max_attempts)
        {
            return Err(format!(
                "tenants.{tenant}.mfa: need challenge_ttl_seconds within 30..=3600 and max_attempts within 1..=20"
            ));
        }
        if let Some(m) = self
            .mfa
            .methods
            .iter()
            .find(|m| !MFA_METHODS.contains(&m.as_str()))
        {
            return Err(format!(
                "tenants.{tenant}.mfa.methods: unknown method {m:?} (known: {})",
                MFA_METHODS.join(", ")
            ));
        }
        let c = &self.login_codes;
        if !(4..=10).contains(&c.length)
            || !(30..=3600).contains(&c.ttl_seconds)
            || !(1..=20).contains(&c.max_attempts)
        {
            return Err(format!(
                "tenants.{tenant}.login_codes: need length within 4..=10, ttl_seconds within 30..=3600 and max_attempts within 1..=20"
            ));
        }
        if c.resend_interval_seconds > 3600 {
            return Err(format!(
                "tenants.{tenant}.login_codes.resend_interval_seconds must be at most 3600"
            ));
        }
        if let Some(p) = c.sms_allowed_prefixes.iter().find(|p| {
            !(p.len() >= 2
                && p.len() <= 8
                && p.starts_with('+')
                && p[1..].bytes().all(|b| b.is_ascii_digit()))
        }) {
            return Err(format!(
                "tenants.{tenant}.login_codes.sms_allowed_prefixes: {p:?} is not an E.164 prefix such as \"+49\""
            ));
        }
        let r = &self.risk;
        if r.medium_threshold == 0
            || r.high_threshold <= r.medium_threshold
            || !(1..=100).contains(&r.remember)
        {
            return Err(format!(
                "tenants.{tenant}.risk: need 0 < medium_threshold < high_threshold and remember within 1..=100"
            ));
        }
        for cidr in &r.deny_list {
            if parse_cidr(cidr).is_none() {
                return Err(format!(
                    "tenants.{tenant}.risk.deny_list: {cidr:?} is not a CIDR network"
                ));
            }
        }
        let l = &self.lockout;
        if l.lock_after <= l.delay_after || l.lock_after == 0 {
            return Err(format!(
                "tenants.{tenant}.lockout: lock_after must exceed delay_after"
            ));
        }
        if l.ip_lock_after <= l.ip_delay_after {
            return Err(format!(
                "tenants.{tenant}.lockout: ip_lock_after must exceed ip_delay_after"
            ));
        }
        if l.max_delay_seconds < l.base_delay_seconds || l.window_seconds == 0 {
            return Err(format!(
                "tenants.{tenant}.lockout: need base_delay_seconds <= max_delay_seconds and window_seconds > 0"
            ));
        }
        Ok(())
    }
}

/// Parses `a.b.c.d/n` or `v6::/n` (a bare address is a single host) into (address, prefix).
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim().parse::<u8>().ok()?)),
        None => (text.trim(), None),
    };
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

/// Whether `ip` lies in the network `(net, prefix)`.
pub fn cidr_contains(net: (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (a, b, bits) = match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            (u128::from(u32::from(n)), u128::from(u32::from(i)), 32u32)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128u32),
        _ => return false,
    };
    let prefix = u32::from(net.1);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

/// What a rate-limit rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The client address (from the socket, or `X-Forwarded-For` through trusted proxies).
    ClientIp,
    /// The identity signed in as (username, email or phone).
    Identity,
    /// The tenant.
    Tenant,
    /// Where a one-time code is sent (email address or phone number).
    Target,
    /// Everything together.
    Global,
}

/// One named limit: at most `limit` requests per `window_seconds` for each value of `key`
/// on the listed endpoints (GCRA: spread evenly, bursts up to `limit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Name (metrics, problem detail).
    pub name: String,
    /// Endpoints, from [`RATE_LIMITED_ENDPOINTS`].
    pub endpoints: Vec<String>,
    /// What is counted.
    pub key: RateKey,
    /// Requests per window.
    #[schemars(range(min = 1))]
    pub limit: u32,
    /// Window in seconds.
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: u64,
}

/// Which header the trusted proxies record the client's address in.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (every line joined, read from the right).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters read from the right.
    Forwarded,
}

/// Rate limiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Proxies (CIDR) whose forwarding header is believed; the client is the rightmost address
    /// that is not one of them.
    pub trusted_proxies: Vec<String>,
    /// The header those proxies write (only that one is read: a header the proxies do not
    /// write comes from the client and proves nothing).
    pub forwarded_header: ForwardedHeader,
    /// The rules.
    pub rules: Vec<RateLimitRule>,
}

/// Endpoints a rule may name.
pub const RATE_LIMITED_ENDPOINTS: &[&str] = &[
    "login",
    "refresh",
    "mfa_verify",
    "captcha_challenge",
    "key_exchange",
    "send_code",
    "mfa_send_code",
    "code_login",
    "ticket_signin",
    "id_token_signin",
    "password_change",
    "sms_delivery",
];

impl Default for RateLimits {
    fn default() -> Self {
        let rule = |name: &str, endpoints: &[&str], key, limit, window_seconds| RateLimitRule {
            name: name.into(),
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            key,
            limit,
            window_seconds,
        };
        Self {
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            rules: vec![
                rule("login-per-ip", &["login"], RateKey::ClientIp, 60, 60),
                rule("login-per-identity", &["login"], RateKey::Identity, 20, 60),
                rule("refresh-per-ip", &["refresh"], RateKey::ClientIp, 300, 60),
                rule("mfa-per-ip", &["mfa_verify"], RateKey::ClientIp, 30, 60),
                // Answers per account, whatever the address and however many challenges: the
                // attempt gate delays and locks, this bounds the rate in between.
                rule(
                    "mfa-per-identity",
                    &["mfa_verify"],
                    RateKey::Identity,
                    20,
                    3600,
                ),
                rule(
                    "password-change-per-identity",
                    &["password_change"],
                    RateKey::Identity,
                    10,
                    3600,
                ),
                rule(
                    "bootstrap-per-ip",
                    &["captcha_challenge", "key_exchange"],
                    RateKey::ClientIp,
                    120,
                    60,
                ),
                rule(
                    "send-code-per-target",
                    &["send_code"],
                    RateKey::Target,
                    5,
                    600,
                ),
                rule(
                    "send-code-per-ip",
                    &["send_code"],
                    RateKey::ClientIp,
                    20,
                    600,
                ),
                rule(
                    "send-code-per-tenant",
                    &["send_code"],
                    RateKey::Tenant,
                    600,
                    60,
                ),
                rule(
                    "code-login-per-ip",
                    &["code_login"],
                    RateKey::ClientIp,
                    30,
                    60,
                ),
                // A day's budget per address or number, whatever the number of codes sent:
                // guessing a code by asking for new ones stays hopeless.
                rule(
                    "code-login-per-target",
                    &["code_login"],
                    RateKey::Target,
                    20,
                    86_400,
                ),
                rule(
                    "mfa-send-code-per-target",
                    &["mfa_send_code"],
                    RateKey::Target,
                    5,
                    600,
                ),
                // Toll fraud: SMS cost money wherever they go, so every tenant together has a
                // budget, and each tenant its own share.
                rule(
                    "sms-per-tenant",
                    &["sms_delivery"],
                    RateKey::Tenant,
                    300,
                    3600,
                ),
                rule("sms-global", &["sms_delivery"], RateKey::Global, 1000, 3600),
                rule(
                    "ticket-per-ip",
                    &["ticket_signin"],
                    RateKey::ClientIp,
                    60,
                    60,
                ),
                rule(
                    "id-token-per-ip",
                    &["id_token_signin"],
                    RateKey::ClientIp,
                    60,
                    60,
                ),
            ],
        }
    }
}

impl RateLimits {
    /// Checks names, endpoints, ranges and proxy networks.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for r in &self.rules {
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return Err(format!(
                    "rate_limits.rules: empty or duplicate name {:?}",
                    r.name
                ));
            }
            if r.limit == 0 || !(1..=86_400).contains(&r.window_seconds) {
                return Err(format!(
                    "rate_limits.rules.{}: need limit > 0 and window_seconds within 1..=86400",
                    r.name
                ));
            }
            if r.endpoints.is_empty() {
                return Err(format!(
                    "rate_limits.rules.{}: endpoints must not be empty",
                    r.name
                ));
            }
            for e in &r.endpoints {
                if !RATE_LIMITED_ENDPOINTS.contains(&e.as_str()) {
                    return Err(format!(
                        "rate_limits.rules.{}: unknown endpoint {e:?} (known: {})",
                        r.name,
                        RATE_LIMITED_ENDPOINTS.join(", ")
                    ));
                }
            }
        }
        for p in &self.trusted_proxies {
            if parse_cidr(p).is_none() {
                return Err(format!(
                    "rate_limits.trusted_proxies: {p:?} is not a CIDR network"
                ));
            }
        }
        Ok(())
    }
}
