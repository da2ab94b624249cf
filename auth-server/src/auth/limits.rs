//! Request rate limits: the configured named rules (GCRA per key value: client address,
//! identity, tenant or everything) decided in the ephemeral store, and the client address
//! itself, read through trusted proxies only.

use super::AuthService;
use super::error::AuthError;
use keygate_config::{RateKey, RateLimits, cidr_contains, parse_cidr};
use std::net::IpAddr;

/// What a request can be counted by.
#[derive(Debug, Clone, Default)]
pub struct RateKeys<'a> {
    /// Client address.
    pub ip: Option<&'a str>,
    /// Identity (normalised by the caller).
    pub identity: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Where a one-time code goes (normalised email address or phone number).
    pub target: Option<&'a str>,
}

/// The configured trusted proxies, parsed (once, when a configuration is loaded).
pub fn trusted_proxies(limits: &RateLimits) -> Vec<(IpAddr, u8)> {
    limits
        .trusted_proxies
        .iter()
        .filter_map(|p| parse_cidr(p))
        .collect()
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// rightmost address in `X-Forwarded-For` that is not a trusted proxy.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    proxies: &[(IpAddr, u8)],
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| proxies.iter().any(|net| cidr_contains(*net, ip));
    let peer = peer?;
    if !trusted(peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted(ip) => last = ip,
            Ok(ip) => return Some(ip),
            // A malformed hop ends what can be believed.
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

impl AuthService {
    /// [`check_rate`](Self::check_rate) for endpoints counted by client address only.
    pub async fn check_rate_ip(
        &self,
        endpoint: &str,
        client_ip: Option<&str>,
    ) -> Result<(), AuthError> {
        self.check_rate(
            endpoint,
            &RateKeys {
                ip: client_ip,
                ..Default::default()
            },
        )
        .await
    }

    /// Counts one request to `endpoint` against every rule that names it; the first rule
    /// exceeded refuses with the wait.
    pub async fn check_rate(&self, endpoint: &str, keys: &RateKeys<'_>) -> Result<(), AuthError> {
        let rt = self.runtime();
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        for rule in rt
            .config
            .rate_limits
            .rules
            .iter()
            .filter(|r| r.endpoints.iter().any(|e| e == endpoint))
        {
            let value = match rule.key {
                RateKey::ClientIp => keys.ip,
                RateKey::Identity => keys.identity,
                RateKey::Tenant => keys.tenant,
                RateKey::Target => keys.target,
                RateKey::Global => Some("all"),
            };
            let Some(value) = value else { continue };
            let key = format!("kg:rl:{}:{}", rule.name, super::random::secret_hash(value));
            if let Err(wait_ms) = self
                .ephemeral
                .rate_check(
                    &key,
                    rule.limit,
                    rule.window_seconds.saturating_mul(1000),
                    now_ms,
                )
                .await
            {
                return Err(AuthError::RateLimited {
                    retry_after: wait_ms.div_ceil(1000).max(1),
                    rule: rule.name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = trusted_proxies(&RateLimits {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &limits),
            ip("203.0.113.9")
        );
        // Trusted peer: the rightmost untrusted hop.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.5"),
                &limits
            ),
            ip("198.51.100.7")
        );
        // Only proxies in the header: the leftmost proxy seen.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("10.1.1.1"), &limits),
            ip("10.1.1.1")
        );
        // Garbage stops the walk.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("evil, 10.0.0.9"), &limits),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), None, &limits),
            ip("10.0.0.2")
        );
        assert_eq!(client_address(None, Some("1.2.3.4"), &limits), None);
    }

    #[test]
    fn gcra_spreads_and_bursts() {
        use crate::ephemeral::gcra;
        // 3 per 3 s: three at once, then one per second.
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 3, 3000, 10_000).unwrap();
        }
        assert_eq!(gcra(tat, 3, 3000, 10_000), Err(1000));
        assert!(gcra(tat, 3, 3000, 11_000).is_ok());
    }
}
