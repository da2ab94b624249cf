//! The pure heart of the operator: Keygate resources (and the key material found for the
//! `SigningKey`s) in, the runtime configuration and a verdict per resource out. No I/O: the
//! same inputs give the same bytes, so the Secret is written only when something changed.
//!
//! What an invalid resource does, per kind (leaving it out must never weaken sign-in):
//! - `OidcProvider`, `ServiceAccountGrant`, `SigningKey`: left out; the rest is published (a
//!   missing provider only refuses its own sign-ins, a missing grant only its own
//!   ServiceAccount's calls; other keys keep signing). With no usable token key at all the
//!   whole configuration is held back (each replica would otherwise sign with a key of its own).
//! - `AuthPolicy`, `RateLimitPolicy`, `ServerPolicy`: the whole configuration is held back and
//!   the last published one stays, since leaving one out would fall back to looser defaults.
//!
//! Conflicts (two `AuthPolicy` for one tenant, two `OidcProvider` with one provider name, a
//! rate rule name in two `RateLimitPolicy`, two `ServerPolicy`, two `ServiceAccountGrant` for
//! one ServiceAccount and tenant) are reported on each resource involved, naming the others,
//! and count as invalid for both.

use keygate_config::{
    OidcProviderConfig, RateLimitRule, RateLimits, RuntimeConfig, ServiceAccountGrantConfig,
    SigningAlgorithm, SigningKeyConfig, TenantPolicy, TransmissionKeyConfig,
};
use keygate_crds::status::reason;
use keygate_crds::{
    AuthPolicy, KeyUse, OidcProvider, RateLimitPolicy, ServerPolicy, ServiceAccountGrant,
    SigningKey,
};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A private key the operator made for a `SigningKey` (read back from its Secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Key id.
    pub kid: String,
    /// PKCS#8 PEM.
    pub private_key_pem: String,
    /// Unix seconds from which it signs (absent: at once).
    pub activates_at: Option<i64>,
    /// Unix seconds after which it is gone (absent: never).
    pub retires_at: Option<i64>,
    /// Unix seconds after which it no longer signs (its resource is being deleted).
    pub signs_until: Option<i64>,
}

/// Everything `render` looks at.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Tenant policies.
    pub auth_policies: Vec<AuthPolicy>,
    /// Rate limits.
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// External issuers.
    pub oidc_providers: Vec<OidcProvider>,
    /// Server-wide settings.
    pub server_policies: Vec<ServerPolicy>,
    /// What ServiceAccounts may do.
    pub service_account_grants: Vec<ServiceAccountGrant>,
    /// Keys with their material.
    pub signing_keys: Vec<KeyInput>,
}

/// A `SigningKey` with what the operator found for it.
#[derive(Debug, Clone)]
pub struct KeyInput {
    /// The resource.
    pub key: SigningKey,
    /// Its keys' material (`Err`: why there is none usable).
    pub material: Result<Vec<KeyMaterial>, String>,
    /// Why its spec is refused (its existing keys stay published, unchanged).
    pub refused: Option<String>,
}

/// What became of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `AuthPolicy`, `RateLimitPolicy`, ...
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// Its generation.
    pub generation: Option<i64>,
    /// Accepted.
    pub ok: bool,
    /// A `status::reason`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The outcome of a render.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The configuration to publish; `None` when held back.
    pub config: Option<RuntimeConfig>,
    /// Its serialised form (what the Secret holds).
    pub json: Option<String>,
    /// Its SHA-256 (hex).
    pub hash: Option<String>,
    /// Why the configuration is held back.
    pub held_back: Option<String>,
    /// One per resource, sorted by kind and name.
    pub verdicts: Vec<Verdict>,
    /// Every `OidcProvider` whose spec is valid (rendered, conflicting or held back alike),
    /// by resource name: what the issuer checks look at.
    pub valid_providers: Vec<(String, OidcProviderConfig)>,
}

struct Judge {
    verdicts: Vec<Verdict>,
    hold: Vec<String>,
}

impl Judge {
    fn verdict(
        &mut self,
        kind: &'static str,
        r: &impl ResourceExt,
        result: Result<(), (&'static str, String)>,
        holds: bool,
    ) -> bool {
        let (ok, reason, message) = match result {
            Ok(()) => (
                true,
                reason::RENDERED,
                "in the published configuration".to_owned(),
            ),
            Err((reason, message)) => {
                if holds {
                    self.hold
                        .push(format!("{kind}/{}: {message}", r.name_any()));
                }
                (false, reason, message)
            }
        };
        self.verdicts.push(Verdict {
            kind,
            name: r.name_any(),
            generation: r.meta().generation,
            ok,
            reason,
            message,
        });
        ok
    }
}

fn invalid(e: impl std::fmt::Display) -> (&'static str, String) {
    (reason::INVALID_SPEC, e.to_string())
}

/// Names that occur in more than one resource: name → the resources claiming it.
fn conflicts<'a>(
    claims: impl Iterator<Item = (String, &'a str)>,
) -> BTreeMap<String, Vec<&'a str>> {
    let mut by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (claim, resource) in claims {
        by.entry(claim).or_default().push(resource);
    }
    by.retain(|_, v| {
        v.sort_unstable();
        v.dedup();
        v.len() > 1
    });
    by
}

fn conflict_message(what: &str, others: &[&str], me: &str) -> (&'static str, String) {
    let others: Vec<&str> = others.iter().copied().filter(|o| *o != me).collect();
    (
        reason::CONFLICT,
        format!("{what} is also claimed by {}", others.join(", ")),
    )
}

fn sorted<T: ResourceExt + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort_by_key(|r| r.name_any());
    v
}

/// The configuration's name of a resource's algorithm.
pub fn algorithm(a: keygate_crds::KeyAlgorithm) -> SigningAlgorithm {
    match a {
        keygate_crds::KeyAlgorithm::ES256 => SigningAlgorithm::ES256,
        keygate_crds::KeyAlgorithm::EdDSA => SigningAlgorithm::EdDSA,
        keygate_crds::KeyAlgorithm::RS256 => SigningAlgorithm::RS256,
    }
}

/// Renders the runtime configuration from `inputs`.
pub fn render(inputs: &Inputs) -> Rendered {
    let mut judge = Judge {
        verdicts: Vec::new(),
        hold: Vec::new(),
    };
    let mut config = RuntimeConfig::default();

    // ServerPolicy: at most one.
    let servers = sorted(&inputs.server_policies);
    let server_names: Vec<String> = servers.iter().map(|s| s.name_any()).collect();
    for s in &servers {
        let result = if servers.len() > 1 {
            let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
            Err(conflict_message(
                "the namespace's server settings",
                &names,
                &s.name_any(),
            ))
        } else {
            s.spec.to_settings().map_err(invalid).and_then(|settings| {
                let candidate = RuntimeConfig {
                    tokens: settings.tokens,
                    password_hashing: settings.password_hashing,
                    audit: settings.audit,
                    rate_limits: RateLimits {
                        trusted_proxies: settings.trusted_proxies,
                        forwarded_header: settings.forwarded_header,
                        ..RateLimits::default()
                    },
                    ..RuntimeConfig::default()
                };
                candidate.validate().map_err(invalid)?;
                config = candidate;
                Ok(())
            })
        };
        judge.verdict("ServerPolicy", s, result, true);
    }

    // AuthPolicy: one per tenant (or the default).
    let policies = sorted(&inputs.auth_policies);
    let names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    let tenant_of = |p: &AuthPolicy| p.spec.tenant.clone().unwrap_or_default();
    let clash = conflicts(
        policies
            .iter()
            .zip(&names)
            .map(|(p, n)| (tenant_of(p), n.as_str())),
    );
    for (p, name) in policies.iter().zip(&names) {
        let tenant = tenant_of(p);
        let result =
            if let Some(others) = clash.get(&tenant) {
                let what = if tenant.is_empty() {
                    "the default policy".to_owned()
                } else {
                    format!("tenant {tenant:?}")
                };
                Err(conflict_message(&what, others, name))
            } else {
                p.spec.to_policy().map_err(invalid).and_then(|policy: TenantPolicy| {
                if !tenant.is_empty() && !valid_tenant(&tenant) {
                    return Err(invalid(format!(
                        "tenant {tenant:?}: 1-63 of a-z, 0-9 and '-', starting with a letter"
                    )));
                }
                let label = if tenant.is_empty() { "*" } else { tenant.as_str() };
                policy.validate(label).map_err(invalid)?;
                if tenant.is_empty() {
                    config.policy = policy;
                } else {
                    config.tenants.insert(tenant.clone(), policy);
                }
                Ok(())
            })
            };
        judge.verdict("AuthPolicy", p, result, true);
    }

    // RateLimitPolicy: rules added to the defaults, or replacing them by name.
    let limits = sorted(&inputs.rate_limit_policies);
    let parsed: Vec<(String, Result<Vec<RateLimitRule>, String>)> = limits
        .iter()
        .map(|l| (l.name_any(), l.spec.to_rules()))
        .collect();
    let clash = conflicts(parsed.iter().flat_map(|(n, rules)| {
        rules
            .iter()
            .flatten()
            .map(move |r| (r.name.clone(), n.as_str()))
    }));
    let replace = limits.iter().any(|l| l.spec.replace_defaults);
    let mut rules: Vec<RateLimitRule> = if replace {
        Vec::new()
    } else {
        config.rate_limits.rules.clone()
    };
    for (l, (name, parsed)) in limits.iter().zip(&parsed) {
        let result = match parsed {
            Err(e) => Err(invalid(e)),
            Ok(own) => {
                if let Some((rule, others)) = own
                    .iter()
                    .find_map(|r| clash.get(&r.name).map(|o| (&r.name, o)))
                {
                    Err(conflict_message(&format!("rule {rule:?}"), others, name))
                } else {
                    RateLimits {
                        rules: own.clone(),
                        ..RateLimits::default()
                    }
                    .validate()
                    .map_err(invalid)
                    .map(|()| {
                        for r in own {
                            rules.retain(|existing| existing.name != r.name);
                            rules.push(r.clone());
                        }
                    })
                }
            }
        };
        judge.verdict("RateLimitPolicy", l, result, true);
    }
    config.rate_limits.rules = rules;

    // OidcProvider: one per provider name; an invalid one is left out.
    let providers = sorted(&inputs.oidc_providers);
    let names: Vec<String> = providers.iter().map(|p| p.name_any()).collect();
    let clash = conflicts(
        providers
            .iter()
            .zip(&names)
            .map(|(p, n)| (p.spec.name(n).to_owned(), n.as_str())),
    );
    let mut valid_providers = Vec::new();
    for (p, name) in providers.iter().zip(&names) {
        let provider_name = p.spec.name(name).to_owned();
        let parsed = p
            .spec
            .to_provider(name)
            .map_err(invalid)
            .and_then(|provider| {
                provider.validate().map_err(invalid)?;
                Ok(provider)
            });
        if let Ok(provider) = &parsed {
            valid_providers.push((name.clone(), provider.clone()));
        }
        let result = match (clash.get(&provider_name), parsed) {
            (Some(others), _) => Err(conflict_message(
                &format!("provider name {provider_name:?}"),
                others,
                name,
            )),
            (None, parsed) => parsed.map(|provider| config.oidc_providers.push(provider)),
        };
        judge.verdict("OidcProvider", p, result, false);
    }

    // ServiceAccountGrant: one per ServiceAccount and tenant; an invalid one is left out.
    let grants = sorted(&inputs.service_account_grants);
    let parsed: Vec<(String, Result<ServiceAccountGrantConfig, String>)> = grants
        .iter()
        .map(|g| {
            let name = g.name_any();
            let grant = g.spec.to_grant(&name);
            (name, grant)
        })
        .collect();
    let granted = |g: &ServiceAccountGrantConfig| {
        format!(
            "ServiceAccount {}/{} on tenant {:?}",
            g.service_account.namespace, g.service_account.name, g.tenant_id
        )
    };
    let clash = conflicts(
        parsed
            .iter()
            .filter_map(|(n, g)| Some((granted(g.as_ref().ok()?), n.as_str()))),
    );
    for (g, (name, parsed)) in grants.iter().zip(&parsed) {
        let result = parsed.clone().map_err(invalid).and_then(|grant| {
            if let Some(others) = clash.get(&granted(&grant)) {
                return Err(conflict_message(&granted(&grant), others, name));
            }
            grant.validate().map_err(invalid)?;
            config.service_account_grants.push(grant);
            Ok(())
        });
        judge.verdict("ServiceAccountGrant", g, result, false);
    }

    // SigningKey: the material found for each; an unusable one is left out.
    let mut keys: Vec<&KeyInput> = inputs.signing_keys.iter().collect();
    keys.sort_by_key(|i| i.key.name_any());
    for input in keys {
        let k = &input.key;
        let result = match &input.material {
            Err(e) => Err((reason::KEY_MATERIAL, e.clone())),
            Ok(m) if m.is_empty() => Err(match &input.refused {
                Some(why) => invalid(why),
                None => (reason::KEY_MATERIAL, "no key material yet".to_owned()),
            }),
            Ok(material) => {
                for m in material {
                    match k.spec.use_ {
                        KeyUse::Token => config.signing_keys.push(SigningKeyConfig {
                            kid: m.kid.clone(),
                            algorithm: algorithm(k.spec.effective_algorithm()),
                            private_key_pem: m.private_key_pem.clone(),
                            activates_at: m.activates_at,
                            retires_at: m.retires_at,
                            signs_until: m.signs_until,
                        }),
                        KeyUse::Transmission => {
                            config.transmission_keys.push(TransmissionKeyConfig {
                                kid: m.kid.clone(),
                                private_key_pem: m.private_key_pem.clone(),
                            })
                        }
                    }
                }
                match &input.refused {
                    Some(why) => Err(invalid(format!(
                        "{why}; its keys stay published as they are, and none is rotated"
                    ))),
                    None => Ok(()),
                }
            }
        };
        judge.verdict("SigningKey", k, result, false);
    }
    if config.signing_keys.is_empty() {
        judge.hold.push(
            "no SigningKey with usable key material (use: token): every server would sign with a key of its own"
                .to_owned(),
        );
    }

    // The whole, checked by the server's own validation.
    if judge.hold.is_empty()
        && let Err(e) = config.validate()
    {
        judge.hold.push(e.to_string());
    }
    let held_back = (!judge.hold.is_empty()).then(|| judge.hold.join("; "));
    if let Some(why) = &held_back {
        let no_key = config.signing_keys.is_empty();
        for v in judge.verdicts.iter_mut().filter(|v| v.ok) {
            v.ok = false;
            v.reason = if no_key {
                reason::NO_SIGNING_KEY
            } else {
                reason::HELD_BACK
            };
            v.message = format!(
                "valid, but the configuration is held back ({why}); the last published one stays in force"
            );
        }
    }
    judge
        .verdicts
        .sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    let json = held_back
        .is_none()
        .then(|| serde_json::to_string_pretty(&config).unwrap_or_default());
    Rendered {
        hash: json
            .as_deref()
            .map(|j| hex::encode(Sha256::digest(j.as_bytes()))),
        json,
        config: held_back.is_none().then_some(config),
        held_back,
        verdicts: judge.verdicts,
        valid_providers,
    }
}

fn valid_tenant(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: serde_json::Value) -> T {
        serde_json::from_value(json!({
            "apiVersion": "keygate.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn key(name: &str) -> KeyInput {
        KeyInput {
            key: obj("SigningKey", name, json!({})),
            refused: None,
            material: Ok(vec![KeyMaterial {
                kid: format!("{name}-1"),
                private_key_pem: keygate_config::keygen::private_key_pem(
                    SigningAlgorithm::ES256,
                    2048,
                )
                .unwrap(),
                activates_at: None,
                retires_at: None,
                signs_until: None,
            }]),
        }
    }

    fn base() -> Inputs {
        Inputs {
            signing_keys: vec![key("main")],
            ..Default::default()
        }
    }

    fn verdict<'a>(r: &'a Rendered, kind: &str, name: &str) -> &'a Verdict {
        r.verdicts
            .iter()
            .find(|v| v.kind == kind && v.name == name)
            .unwrap()
    }

    #[test]
    fn nothing_but_a_key_renders_the_defaults_with_it() {
        let r = render(&base());
        let c = r.config.unwrap();
        assert_eq!(c.signing_keys.len(), 1);
        assert_eq!(c.policy, TenantPolicy::default());
        assert_eq!(c.rate_limits, RateLimits::default());
        assert!(verdict(&render(&base()), "SigningKey", "main").ok);
        // Deterministic: the same inputs give the same bytes.
        let i = base();
        assert_eq!(render(&i).hash, render(&i).hash);
        assert_eq!(render(&i).json, render(&i).json);
    }

    #[test]
    fn without_a_token_key_the_configuration_is_held_back() {
        let mut i = base();
        i.signing_keys.clear();
        i.auth_policies.push(obj(
            "AuthPolicy",
            "p",
            json!({"captcha": {"mode": "always"}}),
        ));
        let r = render(&i);
        assert!(r.config.is_none() && r.json.is_none());
        assert!(r.held_back.as_deref().unwrap().contains("SigningKey"));
        assert_eq!(
            verdict(&r, "AuthPolicy", "p").reason,
            reason::NO_SIGNING_KEY
        );
        // A key whose material is missing is reported as such.
        let mut i = base();
        i.signing_keys[0].material = Err("secret unreadable".into());
        let r = render(&i);
        assert_eq!(
            verdict(&r, "SigningKey", "main").reason,
            reason::KEY_MATERIAL
        );
        assert!(r.config.is_none());
    }

    #[test]
    fn auth_policies_become_tenant_policies_and_conflicts_name_each_other() {
        let mut i = base();
        i.auth_policies.push(obj(
            "AuthPolicy",
            "acme",
            json!({"tenant": "acme", "displayName": "Acme", "captcha": {"mode": "always"}, "lockout": {"lockAfter": 5}}),
        ));
        i.auth_policies.push(obj(
            "AuthPolicy",
            "default",
            json!({"mfa": {"mode": "risk"}}),
        ));
        let c = render(&i).config.unwrap();
        let acme = &c.tenants["acme"];
        assert_eq!(acme.captcha.mode, keygate_config::CaptchaMode::Always);
        assert_eq!(acme.lockout.lock_after, 5);
        assert_eq!(
            acme.lockout.delay_after, 3,
            "unset fields keep their defaults"
        );
        assert_eq!(acme.display_name.as_deref(), Some("Acme"));
        assert_eq!(c.policy.mfa.mode, keygate_config::MfaMode::Risk);
        // Two policies for one tenant: both refused, naming each other, and held back.
        i.auth_policies
            .push(obj("AuthPolicy", "acme-too", json!({"tenant": "acme"})));
        let r = render(&i);
        assert!(r.config.is_none());
        let a = verdict(&r, "AuthPolicy", "acme");
        let b = verdict(&r, "AuthPolicy", "acme-too");
        assert_eq!((a.reason, b.reason), (reason::CONFLICT, reason::CONFLICT));
        assert!(
            a.message.contains("acme-too")
                && b.message.contains("\"acme\" is also claimed by acme")
        );
        assert_eq!(
            verdict(&r, "AuthPolicy", "default").reason,
            reason::HELD_BACK
        );
    }

    #[test]
    fn an_invalid_auth_policy_holds_the_render_back_with_the_servers_own_message() {
        let mut i = base();
        i.auth_policies.push(obj(
            "AuthPolicy",
            "bad",
            json!({"lockout": {"delayAfter": 5, "lockAfter": 5}}),
        ));
        let r = render(&i);
        let v = verdict(&r, "AuthPolicy", "bad");
        assert_eq!(v.reason, reason::INVALID_SPEC);
        assert!(
            v.message.contains("lock_after must exceed delay_after"),
            "{}",
            v.message
        );
        assert!(r.config.is_none());
        let mut i = base();
        i.auth_policies.push(obj(
            "AuthPolicy",
            "typo",
            json!({"lockout": {"lockAftr": 5}}),
        ));
        let v = verdict(&render(&i), "AuthPolicy", "typo").clone();
        assert!(v.message.contains("`lockAftr`"), "{}", v.message);
    }

    #[test]
    fn rate_rules_replace_defaults_by_name_or_are_added() {
        let mut i = base();
        i.rate_limit_policies.push(obj(
            "RateLimitPolicy",
            "tight",
            json!({"rules": [
                {"name": "login-per-ip", "endpoints": ["login"], "key": "client_ip", "limit": 5, "windowSeconds": 60},
                {"name": "extra", "endpoints": ["refresh"], "key": "global", "limit": 1000, "windowSeconds": 1}
            ]}),
        ));
        let c = render(&i).config.unwrap();
        let rule = |n: &str| c.rate_limits.rules.iter().find(|r| r.name == n).cloned();
        assert_eq!(rule("login-per-ip").unwrap().limit, 5);
        assert!(rule("extra").is_some());
        assert_eq!(
            c.rate_limits.rules.len(),
            RateLimits::default().rules.len() + 1
        );
        // replaceDefaults drops the defaults.
        i.rate_limit_policies[0].spec.replace_defaults = true;
        assert_eq!(render(&i).config.unwrap().rate_limits.rules.len(), 2);
        // A rule name in two policies conflicts; an unknown endpoint is invalid.
        i.rate_limit_policies.push(obj(
            "RateLimitPolicy",
            "again",
            json!({"rules": [{"name": "extra", "endpoints": ["login"], "key": "global", "limit": 1, "windowSeconds": 1}]}),
        ));
        let r = render(&i);
        assert_eq!(
            verdict(&r, "RateLimitPolicy", "again").reason,
            reason::CONFLICT
        );
        assert_eq!(
            verdict(&r, "RateLimitPolicy", "tight").reason,
            reason::CONFLICT
        );
        let mut i = base();
        i.rate_limit_policies.push(obj(
            "RateLimitPolicy",
            "bad",
            json!({"rules": [{"name": "x", "endpoints": ["nope"], "key": "global", "limit": 1, "windowSeconds": 1}]}),
        ));
        let r = render(&i);
        assert!(
            verdict(&r, "RateLimitPolicy", "bad")
                .message
                .contains("unknown endpoint")
        );
        assert!(r.config.is_none());
    }

    #[test]
    fn providers_are_named_by_resource_and_an_invalid_one_is_left_out() {
        let mut i = base();
        i.oidc_providers.push(obj(
            "OidcProvider",
            "corp",
            json!({"issuer": "https://id.example", "clientId": "keygate", "provisioning": "create"}),
        ));
        i.oidc_providers.push(obj(
            "OidcProvider",
            "broken",
            json!({"issuer": "http://plain.example", "clientId": "keygate"}),
        ));
        let r = render(&i);
        let c = r.config.clone().unwrap();
        assert_eq!(c.oidc_providers.len(), 1);
        assert_eq!(c.oidc_providers[0].name, "corp");
        assert_eq!(
            c.oidc_providers[0].provisioning,
            keygate_config::Provisioning::Create
        );
        assert_eq!(
            verdict(&r, "OidcProvider", "broken").reason,
            reason::INVALID_SPEC
        );
        // Two resources claiming one provider name.
        i.oidc_providers.push(obj(
            "OidcProvider",
            "corp-v2",
            json!({"providerName": "corp", "issuer": "https://id2.example", "clientId": "k"}),
        ));
        let r = render(&i);
        assert_eq!(verdict(&r, "OidcProvider", "corp").reason, reason::CONFLICT);
        assert_eq!(
            verdict(&r, "OidcProvider", "corp-v2").reason,
            reason::CONFLICT
        );
        assert!(r.config.unwrap().oidc_providers.is_empty());
    }

    /// The key of `base()` and grants (resource name, ServiceAccount of namespace `billing`,
    /// the rest of the spec) for `tickets:create`.
    fn grants(list: &[(&str, &str, serde_json::Value)]) -> Inputs {
        let mut i = base();
        for (name, sa, spec) in list {
            let mut spec = spec.clone();
            spec["serviceAccount"] = json!({"namespace": "billing", "name": sa});
            spec["permissions"] = json!(["tickets:create"]);
            i.service_account_grants
                .push(obj("ServiceAccountGrant", name, spec));
        }
        i
    }

    /// The one grant `r` published: `name`'s, which is accepted.
    fn the_only_grant(r: Rendered, name: &str) -> ServiceAccountGrantConfig {
        assert!(verdict(&r, "ServiceAccountGrant", name).ok);
        let mut published = r.config.unwrap().service_account_grants;
        assert_eq!(published.len(), 1, "{published:?}");
        assert_eq!(published[0].name, name);
        published.remove(0)
    }

    #[test]
    fn service_account_grants_are_rendered_in_name_order() {
        let mut i = grants(&[
            (
                "reports",
                "reports",
                json!({"tenant": "acme", "allowedRoles": ["viewer"]}),
            ),
            (
                "billing",
                "billing-api",
                json!({"rateLimit": {"limit": 100, "windowSeconds": 60}}),
            ),
        ]);
        let r = render(&i);
        assert!(verdict(&r, "ServiceAccountGrant", "billing").ok);
        let c = r.config.unwrap();
        let names: Vec<&str> = c
            .service_account_grants
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(names, ["billing", "reports"]);
        let billing = &c.service_account_grants[0];
        assert_eq!(billing.tenant_id, "default");
        assert_eq!(
            billing.service_account.username(),
            "system:serviceaccount:billing:billing-api"
        );
        assert_eq!(
            billing.permissions,
            [keygate_config::GrantPermission::TicketsCreate]
        );
        assert!(billing.allowed_roles.is_empty());
        assert_eq!(billing.rate_limit.map(|l| l.limit), Some(100));
        assert_eq!(c.service_account_grants[1].tenant_id, "acme");
        assert_eq!(c.service_account_grants[1].allowed_roles, ["viewer"]);
        // The order of the inputs does not change the bytes.
        i.service_account_grants.reverse();
        assert_eq!(render(&i).hash, r.hash);
    }

    #[test]
    fn an_invalid_grant_is_left_out_and_the_rest_is_published() {
        let r = render(&grants(&[
            ("billing", "billing-api", json!({})),
            ("blank-role", "other", json!({"allowedRoles": [" "]})),
            (
                "typo",
                "third",
                json!({"rateLimit": {"limit": 1, "windowSecs": 1}}),
            ),
        ]));
        for (name, says) in [("blank-role", "allowed_roles"), ("typo", "`windowSecs`")] {
            let v = verdict(&r, "ServiceAccountGrant", name);
            assert_eq!(v.reason, reason::INVALID_SPEC);
            assert!(v.message.contains(says), "{}", v.message);
        }
        assert_eq!(
            the_only_grant(r, "billing").service_account.name,
            "billing-api"
        );
    }

    #[test]
    fn two_grants_for_one_service_account_and_tenant_conflict() {
        let r = render(&grants(&[
            ("billing", "billing-api", json!({})),
            (
                "billing-too",
                "billing-api",
                json!({"tenant": "default", "allowedRoles": ["admin"]}),
            ),
            // The same ServiceAccount on another tenant is a grant of its own.
            ("billing-acme", "billing-api", json!({"tenant": "acme"})),
        ]));
        let a = verdict(&r, "ServiceAccountGrant", "billing");
        let b = verdict(&r, "ServiceAccountGrant", "billing-too");
        assert_eq!((a.reason, b.reason), (reason::CONFLICT, reason::CONFLICT));
        assert_eq!(
            a.message,
            "ServiceAccount billing/billing-api on tenant \"default\" is also claimed by billing-too"
        );
        assert!(
            b.message.ends_with("is also claimed by billing"),
            "{}",
            b.message
        );
        assert_eq!(the_only_grant(r, "billing-acme").tenant_id, "acme");
    }

    #[test]
    fn a_server_policy_sets_tokens_hashing_audit_and_proxies() {
        let mut i = base();
        i.server_policies.push(obj(
            "ServerPolicy",
            "server",
            json!({"tokens": {"audience": "api", "accessTokenTtlSeconds": 600},
                   "passwordHashing": {"memoryKib": 65536}, "audit": {"retentionDays": 30},
                   "trustedProxies": ["10.0.0.0/8"], "forwardedHeader": "forwarded"}),
        ));
        let c = render(&i).config.unwrap();
        assert_eq!(c.tokens.audience, "api");
        assert_eq!(c.tokens.access_token_ttl_seconds, 600);
        assert_eq!(c.password_hashing.memory_kib, 65536);
        assert_eq!(c.audit.retention_days, 30);
        assert_eq!(c.rate_limits.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(
            c.rate_limits.forwarded_header,
            keygate_config::ForwardedHeader::Forwarded
        );
        i.server_policies
            .push(obj("ServerPolicy", "second", json!({})));
        let r = render(&i);
        assert_eq!(
            verdict(&r, "ServerPolicy", "second").reason,
            reason::CONFLICT
        );
        assert!(r.config.is_none());
    }

    #[test]
    fn a_refused_timing_keeps_the_keys_published() {
        let mut i = base();
        i.signing_keys[0].refused = Some("prePublish 30s must exceed ...".into());
        let r = render(&i);
        assert_eq!(
            verdict(&r, "SigningKey", "main").reason,
            reason::INVALID_SPEC
        );
        assert_eq!(
            r.config.unwrap().signing_keys.len(),
            1,
            "tokens in flight still verify"
        );
    }

    #[test]
    fn transmission_keys_render_apart_from_token_keys() {
        let mut i = base();
        let mut tx = key("tx");
        tx.key.spec.use_ = KeyUse::Transmission;
        i.signing_keys.push(tx);
        let c = render(&i).config.unwrap();
        assert_eq!(c.signing_keys.len(), 1);
        assert_eq!(c.transmission_keys.len(), 1);
        assert_eq!(c.transmission_keys[0].kid, "tx-1");
    }
}
