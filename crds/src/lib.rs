//! Keygate's custom resources (group `keygate.dev`, version `v1alpha1`): `AuthPolicy`,
//! `RateLimitPolicy`, `OidcProvider`, `SigningKey` and `ServerPolicy`, the declarative API the
//! operator renders into the runtime configuration; their schemas come from the configuration
//! model itself (`schema`).

// Several `printcolumn(...)` attributes of one resource repeat `type_ = "string"` by design.
#![allow(clippy::duplicated_attributes)]

pub mod auth_policy;
pub mod oidc_provider;
pub mod rate_limit_policy;
pub mod schema;
pub mod server_policy;
pub mod signing_key;
pub mod status;

pub use auth_policy::{AuthPolicy, AuthPolicySpec};
pub use oidc_provider::{OidcProvider, OidcProviderSpec, OidcProviderStatus};
pub use rate_limit_policy::{RateLimitPolicy, RateLimitPolicySpec};
pub use server_policy::{ServerPolicy, ServerPolicySpec, ServerSettings};
pub use signing_key::{
    KeyAlgorithm, KeyState, KeyUse, SigningKey, SigningKeySpec, SigningKeyStatus,
};
pub use status::Status;

/// Every CustomResourceDefinition of Keygate, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        AuthPolicy::crd(),
        OidcProvider::crd(),
        RateLimitPolicy::crd(),
        ServerPolicy::crd(),
        SigningKey::crd(),
    ]
}
