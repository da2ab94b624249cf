//! Risk assessment of a sign-in: signals (new device, new network, recent failures, unusual
//! hour, deny-listed address, velocity) weighted by policy into a score and a level, and the
//! bounded per-user profile (known devices and networks, sign-ins per hour of day) that the
//! signals are judged against.

use keygate_config::{RiskLevel, RiskPolicy, cidr_contains, parse_cidr};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What the server remembers about a user's sign-ins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskProfile {
    /// Device fingerprints, most recently seen last.
    pub devices: Vec<String>,
    /// Networks, most recently seen last.
    pub networks: Vec<String>,
    /// Successful sign-ins per UTC hour of day.
    pub hours: Vec<u32>,
}

impl RiskProfile {
    /// The profile as stored (JSON); empty when there is none or it is unreadable.
    pub fn from_stored(json: Option<&str>) -> Self {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    /// The stored form (JSON).
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Facts about one sign-in.
#[derive(Debug, Clone, Default)]
pub struct SignInContext {
    /// Device fingerprint (client-provided id, or a hash of the user agent).
    pub device: Option<String>,
    /// Client address.
    pub ip: Option<IpAddr>,
    /// UTC hour of day.
    pub hour: u8,
    /// Failed attempts on the account before this one.
    pub recent_failures: u32,
    /// Sign-ins of the account in the last hour, this one included.
    pub sign_ins_last_hour: u32,
}

/// The assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskAssessment {
    /// 0-100.
    pub score: u32,
    /// Level by the policy's thresholds.
    pub level: RiskLevel,
    /// Signals that fired, heaviest first.
    pub signals: Vec<&'static str>,
}

impl Default for RiskAssessment {
    fn default() -> Self {
        Self {
            score: 0,
            level: RiskLevel::Low,
            signals: Vec::new(),
        }
    }
}

/// The network of an address: IPv4 /24 or IPv6 /48.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// Scores a sign-in against the profile. A user without history has no baseline, so the
/// device, network and hour signals stay quiet until there is one.
#[tracing::instrument(name = "auth.risk", skip_all)]
pub fn assess(policy: &RiskPolicy, profile: &RiskProfile, ctx: &SignInContext) -> RiskAssessment {
    let w = &policy.weights;
    let has_history = profile.hours.iter().any(|h| *h > 0);
    let mut fired: Vec<(&'static str, u32)> = Vec::new();
    if has_history
        && let Some(device) = &ctx.device
        && !profile.devices.contains(device)
    {
        fired.push(("new_device", w.new_device));
    }
    if has_history
        && let Some(ip) = ctx.ip
        && !profile.networks.contains(&network_of(ip))
    {
        fired.push(("new_network", w.new_network));
    }
    if ctx.recent_failures > 0 {
        fired.push(("recent_failures", w.recent_failures));
    }
    let total: u32 = profile.hours.iter().sum();
    if total >= 10 {
        let at_hour = profile
            .hours
            .get(usize::from(ctx.hour))
            .copied()
            .unwrap_or(0);
        // Fewer than 5 % of the user's sign-ins happened at this hour.
        if at_hour * 20 < total {
            fired.push(("unusual_hour", w.unusual_hour));
        }
    }
    if let Some(ip) = ctx.ip
        && policy
            .deny_list
            .iter()
            .filter_map(|c| parse_cidr(c))
            .any(|net| cidr_contains(net, ip))
    {
        fired.push(("deny_listed_ip", w.deny_listed_ip));
    }
    if ctx.sign_ins_last_hour > policy.velocity_per_hour {
        fired.push(("velocity", w.velocity));
    }
    fired.sort_by_key(|(_, weight)| std::cmp::Reverse(*weight));
    let score = fired.iter().map(|(_, w)| *w).sum::<u32>().min(100);
    let level = if score >= policy.high_threshold {
        RiskLevel::High
    } else if score >= policy.medium_threshold {
        RiskLevel::Medium
    } else {
        RiskLevel::Low
    };
    RiskAssessment {
        score,
        level,
        signals: fired.into_iter().map(|(name, _)| name).collect(),
    }
}

/// Records a successful sign-in in the profile, keeping at most `remember` devices and
/// networks (the least recently seen go first).
pub fn remember(profile: &mut RiskProfile, ctx: &SignInContext, remember: usize) {
    fn touch(list: &mut Vec<String>, item: String, cap: usize) {
        list.retain(|x| *x != item);
        list.push(item);
        if list.len() > cap {
            let excess = list.len() - cap;
            list.drain(..excess);
        }
    }
    if let Some(d) = &ctx.device {
        touch(&mut profile.devices, d.clone(), remember);
    }
    if let Some(ip) = ctx.ip {
        touch(&mut profile.networks, network_of(ip), remember);
    }
    if profile.hours.len() != 24 {
        profile.hours = vec![0; 24];
    }
    let hour = usize::from(ctx.hour % 24);
    profile.hours[hour] = profile.hours[hour].saturating_add(1);
    // Keep the histogram's weight bounded so old habits fade.
    if profile.hours.iter().sum::<u32>() > 1000 {
        for h in &mut profile.hours {
            *h /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(device: &str, ip: &str, hour: u8) -> SignInContext {
        SignInContext {
            device: Some(device.into()),
            ip: Some(ip.parse().unwrap()),
            hour,
            recent_failures: 0,
            sign_ins_last_hour: 1,
        }
    }

    #[test]
    fn a_familiar_sign_in_is_low_and_a_strange_one_is_not() {
        let policy = RiskPolicy::default();
        let mut profile = RiskProfile::default();
        // No history: no baseline, nothing fires.
        assert_eq!(
            assess(&policy, &profile, &ctx("d1", "192.0.2.10", 9)),
            RiskAssessment::default()
        );
        for _ in 0..12 {
            remember(&mut profile, &ctx("d1", "192.0.2.10", 9), 10);
        }
        assert_eq!(
            assess(&policy, &profile, &ctx("d1", "192.0.2.99", 9)).score,
            0
        );
        let strange = assess(&policy, &profile, &ctx("d2", "198.51.100.1", 3));
        assert_eq!(
            strange.signals,
            ["new_device", "new_network", "unusual_hour"]
        );
        assert_eq!(strange.score, 55);
        assert_eq!(strange.level, RiskLevel::Medium);
        let mut worse = ctx("d2", "198.51.100.1", 3);
        worse.recent_failures = 2;
        assert_eq!(assess(&policy, &profile, &worse).level, RiskLevel::High);
    }

    #[test]
    fn deny_list_and_velocity_fire_without_history() {
        let policy = RiskPolicy {
            deny_list: vec!["203.0.113.0/24".into()],
            ..Default::default()
        };
        let mut c = ctx("d", "203.0.113.5", 12);
        c.sign_ins_last_hour = 11;
        let a = assess(&policy, &RiskProfile::default(), &c);
        assert_eq!(a.signals, ["deny_listed_ip", "velocity"]);
        assert_eq!(a.score, 90);
        assert_eq!(a.level, RiskLevel::High);
    }

    #[test]
    fn the_profile_stays_bounded() {
        let mut p = RiskProfile::default();
        for i in 0..50 {
            remember(
                &mut p,
                &ctx(&format!("d{i}"), &format!("10.0.{i}.1"), (i % 24) as u8),
                10,
            );
        }
        assert_eq!(p.devices.len(), 10);
        assert_eq!(p.networks.len(), 10);
        assert_eq!(p.devices.last().unwrap(), "d49");
        assert_eq!(
            network_of("2001:db8:aa:bb::1".parse().unwrap()),
            "2001:db8:aa::/48"
        );
        for _ in 0..2000 {
            remember(&mut p, &ctx("d", "10.0.0.1", 1), 10);
        }
        assert!(p.hours.iter().sum::<u32>() <= 1000);
    }
}
