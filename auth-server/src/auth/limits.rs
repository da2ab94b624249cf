//! Request rate limits: the configured named rules (GCRA per key value: client address,
//! identity, tenant or everything) decided in the ephemeral store, and the client address
//! itself, read through trusted proxies only.

use super::AuthService;
use super::error::AuthError;
use keygate_config::{ForwardedHeader, RateKey, RateLimits, cidr_contains, parse_cidr};
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

/// The addresses a request passed through, oldest first, as the configured header reports
/// them: every line of it joined (a proxy may append a line of its own rather than extend the
/// client's), for `Forwarded` (RFC 7239) the `for=` parameter of each element. A hop that is
/// not an address (`unknown`, an obfuscated identifier) stays as text and ends what can be
/// believed.
pub fn forwarded_hops<'a>(
    header: ForwardedHeader,
    lines: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut hops = Vec::new();
    for line in lines {
        for element in line.split(',') {
            match header {
                ForwardedHeader::XForwardedFor => hops.push(element.trim().to_owned()),
                ForwardedHeader::Forwarded => {
                    let node = element.split(';').find_map(|pair| {
                        let (name, value) = pair.split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("for")
                            .then(|| forwarded_node(value.trim()))
                    });
                    // An element without `for=` names no client: it ends the chain.
                    hops.push(node.unwrap_or_default());
                }
            }
        }
    }
    hops
}

/// The address of an RFC 7239 node: unquoted, without brackets and port.
fn forwarded_node(value: &str) -> String {
    let v = value.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match v.split_once(':') {
        // IPv4 with a port; a bare IPv6 address is not valid here, but is accepted as one.
        Some((host, _)) if !v[host.len() + 1..].contains(':') => host.to_owned(),
        _ => v.to_owned(),
    }
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// rightmost hop that is not a trusted proxy. IPv4-mapped IPv6 addresses (a dual-stack
/// socket's view of an IPv4 peer) count as the IPv4 address they carry.
pub fn client_address(
    peer: Option<IpAddr>,
    hops: &[String],
    proxies: &[(IpAddr, u8)],
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| proxies.iter().any(|net| cidr_contains(*net, ip));
    let peer = peer?.to_canonical();
    if !trusted(peer) {
        return Some(peer);
    }
    let mut last = peer;
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if trusted(ip) => last = ip,
            Ok(ip) => return Some(ip),
            // A malformed hop ends what can be believed.
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

/// What per-address counters count by: an IPv4 address, or the /64 network of an IPv6 one
/// (one subscriber usually holds a whole /64, so single IPv6 addresses cost nothing to change).
pub fn address_key(ip: &str) -> String {
    match ip.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(net))
        }
        Err(_) => ip.to_owned(),
    }
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
            let network = keys.ip.map(address_key);
            let value = match rule.key {
                RateKey::ClientIp => network.as_deref(),
                RateKey::Identity => keys.identity,
                RateKey::Tenant => keys.tenant,
                RateKey::Target => keys.target,
                RateKey::Global => Some("all"),
            };
            let Some(value) = value else { continue };
            self.rate_window_at(&rule.name, value, rule.limit, rule.window_seconds, now_ms)
                .await?;
        }
        Ok(())
    }

    /// Counts one call of `value` against the rule `rule` (`limit` per `window_seconds`).
    pub async fn rate_window(
        &self,
        rule: &str,
        value: &str,
        limit: u32,
        window_seconds: u64,
    ) -> Result<(), AuthError> {
        let now_ms = (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
        self.rate_window_at(rule, value, limit, window_seconds, now_ms)
            .await
    }

    async fn rate_window_at(
        &self,
        rule: &str,
        value: &str,
        limit: u32,
        window_seconds: u64,
        now_ms: i64,
    ) -> Result<(), AuthError> {
        let key = format!("kg:rl:{rule}:{}", super::random::secret_hash(value));
        self.ephemeral
            .rate_check(&key, limit, window_seconds.saturating_mul(1000), now_ms)
            .await
            .map_err(|wait_ms| {
                crate::metrics::record_rate_limited(rule);
                AuthError::RateLimited {
                    retry_after: wait_ms.div_ceil(1000).max(1),
                    rule: rule.to_owned(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(lines: &[&str]) -> Vec<String> {
        forwarded_hops(ForwardedHeader::XForwardedFor, lines.iter().copied())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limits = trusted_proxies(&RateLimits {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(
            client_address(ip("203.0.113.9"), &xff(&["1.2.3.4"]), &limits),
            ip("203.0.113.9")
        );
        // Trusted peer: the rightmost untrusted hop.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                &xff(&["1.2.3.4, 198.51.100.7, 10.0.0.5"]),
                &limits
            ),
            ip("198.51.100.7")
        );
        // Only proxies in the header: the leftmost proxy seen.
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff(&["10.1.1.1"]), &limits),
            ip("10.1.1.1")
        );
        // Garbage stops the walk.
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff(&["evil, 10.0.0.9"]), &limits),
            ip("10.0.0.9")
        );
        assert_eq!(client_address(ip("10.0.0.2"), &[], &limits), ip("10.0.0.2"));
        assert_eq!(client_address(None, &xff(&["1.2.3.4"]), &limits), None);
    }

    #[test]
    fn a_proxy_that_appends_its_own_line_is_read_after_the_clients_line() {
        let limits = trusted_proxies(&RateLimits {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // The client forged the first line; the proxy appended the real address on a second.
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff(&["6.6.6.6", "198.51.100.7"]), &limits),
            ip("198.51.100.7")
        );
        // An IPv4-mapped peer is the IPv4 proxy it carries.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), &xff(&["198.51.100.7"]), &limits),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("::ffff:203.0.113.9"), &xff(&["1.2.3.4"]), &limits),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn rfc_7239_forwarded_is_read_when_configured() {
        let limits = trusted_proxies(&RateLimits {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        let hops = forwarded_hops(
            ForwardedHeader::Forwarded,
            [
                r#"for=6.6.6.6;proto=https, For="[2001:db8:cafe::17]:4711""#,
                "for=10.0.0.7:8080;by=10.0.0.2",
            ]
            .into_iter(),
        );
        assert_eq!(hops, ["6.6.6.6", "2001:db8:cafe::17", "10.0.0.7"]);
        assert_eq!(
            client_address(Some("10.0.0.2".parse().unwrap()), &hops, &limits),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        let hidden = forwarded_hops(
            ForwardedHeader::Forwarded,
            ["for=_hidden, for=10.0.0.7"].into_iter(),
        );
        assert_eq!(
            client_address(Some("10.0.0.2".parse().unwrap()), &hidden, &limits),
            Some("10.0.0.7".parse().unwrap()),
            "an obfuscated node ends the chain at the last proxy"
        );
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        assert_eq!(address_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(address_key("2001:db8:1:2::9"), "2001:db8:1:2::/64");
        assert_eq!(address_key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(address_key("192.0.2.1"), "192.0.2.1");
        assert_eq!(address_key("unknown"), "unknown");
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
