//! `AuthPolicy`: one tenant's sign-in policy (or, naming no tenant, the default policy of
//! every tenant without its own): password transmission and rules, CAPTCHA, delay and lockout,
//! MFA, risk scoring and one-time codes, with the runtime configuration's own fields.

use crate::schema::{camel_schema, extend, string};
use crate::status::Status;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The sign-in policy of a tenant.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    namespaced,
    status = "Status",
    shortname = "kgap",
    category = "keygate",
    doc = "The sign-in policy of one Keygate tenant (or the default policy when it names no tenant): accepted password transmissions and password rules, CAPTCHA, progressive delay and lockout, MFA, risk scoring and one-time codes. The tenant is created on every server when the configuration naming it is loaded.",
    printcolumn(
        name = "Tenant",
        type_ = "string",
        json_path = ".spec.tenant",
        description = "The tenant (empty: the default policy)"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicySpec {
    /// The tenant id (1-63 of a-z, 0-9 and '-', starting with a letter); absent: the default
    /// policy of every tenant that has no AuthPolicy of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The policy sections (`displayName`, `password`, `captcha`, `lockout`, `mfa`, `risk`,
    /// `loginCodes`).
    #[serde(flatten)]
    pub policy: Map<String, Value>,
}

/// What a tenant id may look like.
pub const TENANT_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}$";

impl JsonSchema for AuthPolicySpec {
    fn schema_name() -> Cow<'static, str> {
        "AuthPolicySpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let base = camel_schema::<keygate_config::TenantPolicy>(generator, &[]);
        extend(
            base,
            vec![(
                "tenant",
                string(
                    "The tenant id; absent: the default policy of every tenant without an AuthPolicy of its own.",
                    Some(TENANT_PATTERN),
                ),
            )],
            &[
                (
                    "!has(self.lockout) || !has(self.lockout.lockAfter) || !has(self.lockout.delayAfter) || self.lockout.lockAfter > self.lockout.delayAfter",
                    "lockout.lockAfter must exceed lockout.delayAfter",
                ),
                (
                    "!has(self.captcha) || !has(self.captcha.provider) || self.captcha.provider != 'turnstile' || has(self.captcha.turnstileSecret)",
                    "captcha.provider turnstile needs captcha.turnstileSecret",
                ),
                (
                    "!has(self.risk) || !has(self.risk.mediumThreshold) || !has(self.risk.highThreshold) || self.risk.highThreshold > self.risk.mediumThreshold",
                    "risk.highThreshold must exceed risk.mediumThreshold",
                ),
            ],
        )
    }
}

impl AuthPolicySpec {
    /// The policy this spec stands for.
    pub fn to_policy(&self) -> Result<keygate_config::TenantPolicy, String> {
        crate::schema::to_config(&Value::Object(self.policy.clone()))
    }
}
