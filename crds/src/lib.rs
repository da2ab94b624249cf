//! Keygate's custom resources (group `keygate.dev`, version `v1alpha1`): `AuthPolicy`,
//! `RateLimitPolicy`, `OidcProvider`, `SigningKey`, `ServerPolicy` and `ServiceAccountGrant`,
//! the declarative API the operator renders into the runtime configuration; their schemas come
//! from the configuration model itself (`schema`).

// Several `printcolumn(...)` attributes of one resource repeat `type_ = "string"` by design.
#![allow(clippy::duplicated_attributes)]

pub mod auth_policy;
pub mod oidc_provider;
pub mod rate_limit_policy;
pub mod schema;
pub mod server_policy;
pub mod service_account_grant;
pub mod signing_key;
pub mod status;

pub use auth_policy::{AuthPolicy, AuthPolicySpec};
pub use oidc_provider::{OidcProvider, OidcProviderSpec, OidcProviderStatus};
pub use rate_limit_policy::{RateLimitPolicy, RateLimitPolicySpec};
pub use server_policy::{ServerPolicy, ServerPolicySpec, ServerSettings};
pub use service_account_grant::{ServiceAccountGrant, ServiceAccountGrantSpec};
pub use signing_key::{
    KeyAlgorithm, KeyState, KeyUse, SigningKey, SigningKeySpec, SigningKeyStatus,
};
pub use status::Status;

/// Every CustomResourceDefinition of Keygate, in a stable order, with descriptions as
/// paragraphs (`kubectl explain` rewraps text itself; the line breaks of doc comments
/// would show as ragged lines).
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        AuthPolicy::crd(),
        OidcProvider::crd(),
        RateLimitPolicy::crd(),
        ServerPolicy::crd(),
        ServiceAccountGrant::crd(),
        SigningKey::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let mut value = serde_json::to_value(&crd).unwrap_or_default();
        unwrap_descriptions(&mut value);
        serde_json::from_value(value).unwrap_or(crd)
    })
    .collect()
}

/// Joins the lines of every `description` into paragraphs (a blank line stays a break).
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "description"
                    && let serde_json::Value::String(text) = child
                {
                    *text = text
                        .split("\n\n")
                        .map(|para| para.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join("\n\n");
                } else {
                    unwrap_descriptions(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptions_are_paragraphs() {
        let mut v = serde_json::json!({"properties": {"a": {"description": "one\ntwo  three\n\nfour\nfive"}}});
        super::unwrap_descriptions(&mut v);
        assert_eq!(
            v["properties"]["a"]["description"],
            "one two three\n\nfour five"
        );
        fn single_breaks(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Object(m) => m
                    .iter()
                    .map(|(k, c)| match (k.as_str(), c) {
                        ("description", serde_json::Value::String(t)) => {
                            t.replace("\n\n", "").matches('\n').count()
                        }
                        _ => single_breaks(c),
                    })
                    .sum(),
                serde_json::Value::Array(a) => a.iter().map(single_breaks).sum(),
                _ => 0,
            }
        }
        let crds = serde_json::to_value(super::crds()).unwrap_or_default();
        assert!(crds.to_string().contains("\"description\""));
        assert_eq!(single_breaks(&crds), 0);
    }
}
