//! `OidcProvider`: an external OpenID Connect issuer whose id_tokens sign users in through
//! `/auth/id-token/signin`, with the runtime configuration's own provider fields, and its
//! status: `Accepted` (rendered) and `Ready` (the issuer's discovery document and keys, as the
//! operator last checked them).

use crate::schema::{camel_schema, extend, string};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// An external OpenID Connect provider.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "OidcProvider",
    namespaced,
    status = "OidcProviderStatus",
    shortname = "kgoidc",
    category = "keygate",
    doc = "An external OpenID Connect issuer whose id_tokens sign users in (POST /auth/id-token/signin with provider set to the provider name: spec.providerName, else the resource's name).",
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuer"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Checked",
        type_ = "date",
        json_path = ".status.lastCheckTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OidcProviderSpec {
    /// The name clients send as `provider`; default: the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    /// The provider's settings (`issuer`, `clientId`, `allowedAlgorithms`, ...).
    #[serde(flatten)]
    pub provider: Map<String, Value>,
}

/// The status of an `OidcProvider`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OidcProviderStatus {
    /// `Accepted`: valid and in the published configuration. `Ready`: the issuer's discovery
    /// document names the configured issuer and its `jwks_uri` serves at least one key of an
    /// allowed algorithm (`Unknown` until the first check; `False` with the reason of the
    /// failure, while the provider stays in the configuration and the servers keep verifying
    /// with the keys they cached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Keys of the issuer's JWKS that an allowed algorithm can use, at the last successful
    /// check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i64>,
    /// RFC 3339 time of the last check, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    /// RFC 3339 time of the last successful check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ready_time: Option<String>,
}

impl JsonSchema for OidcProviderSpec {
    fn schema_name() -> Cow<'static, str> {
        "OidcProviderSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let base = camel_schema::<keygate_config::OidcProviderConfig>(generator, &["name"]);
        extend(
            base,
            vec![(
                "providerName",
                string(
                    "The name clients send as `provider` (1-64 of a-z, 0-9, '-', '_'); default: the resource's name.",
                    Some("^[a-z0-9_-]{1,64}$"),
                ),
            )],
            &[(
                "self.issuer.startsWith('https://') || (has(self.allowHttp) && self.allowHttp)",
                "issuer must be https:// unless allowHttp is true",
            )],
        )
    }
}

impl OidcProviderSpec {
    /// The provider name clients use (the spec's, else `resource_name`).
    pub fn name<'a>(&'a self, resource_name: &'a str) -> &'a str {
        self.provider_name.as_deref().unwrap_or(resource_name)
    }

    /// The provider configuration this spec stands for, named `resource_name` unless the spec
    /// names it.
    pub fn to_provider(
        &self,
        resource_name: &str,
    ) -> Result<keygate_config::OidcProviderConfig, String> {
        let mut v = self.provider.clone();
        v.insert(
            "name".into(),
            Value::String(self.name(resource_name).to_owned()),
        );
        crate::schema::to_config(&Value::Object(v))
    }
}
