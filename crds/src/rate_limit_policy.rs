//! `RateLimitPolicy`: named request limits (GCRA per client address, identity, tenant, code
//! target or everything) added to, or replacing by name, the built-in defaults.

use crate::schema::{camel_schema, extend};
use crate::status::Status;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// Rate limits.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "Status",
    shortname = "kgrl",
    category = "keygate",
    doc = "Named request limits of Keygate's endpoints. A rule with the name of a built-in default rule replaces it; other rules are added; replaceDefaults drops every default rule. Deleting the resource brings the defaults back.",
    printcolumn(
        name = "Rules",
        type_ = "integer",
        json_path = ".spec.rules.length()",
        priority = 1
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
pub struct RateLimitPolicySpec {
    /// The rules.
    #[serde(default)]
    pub rules: Vec<Map<String, Value>>,
    /// Drop every built-in default rule (only these rules, and those of other
    /// RateLimitPolicies, apply).
    #[serde(default)]
    pub replace_defaults: bool,
}

impl JsonSchema for RateLimitPolicySpec {
    fn schema_name() -> Cow<'static, str> {
        "RateLimitPolicySpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let rule = camel_schema::<keygate_config::RateLimitRule>(generator, &[]);
        let rules = Schema::try_from(json!({
            "type": "array",
            "description": "Rules: at most `limit` requests per `windowSeconds` for each value of `key` on the listed endpoints (bursts up to `limit`, then evenly spread). Names are unique across every RateLimitPolicy of the namespace.",
            "maxItems": 64,
            "items": rule.to_value(),
        }))
        .unwrap_or_default();
        let replace = Schema::try_from(json!({
            "type": "boolean",
            "default": false,
            "description": "Drop every built-in default rule: only the rules of RateLimitPolicies apply.",
        }))
        .unwrap_or_default();
        extend(
            Schema::try_from(json!({"type": "object"})).unwrap_or_default(),
            vec![("rules", rules), ("replaceDefaults", replace)],
            &[],
        )
    }
}

impl RateLimitPolicySpec {
    /// The rules this spec stands for.
    pub fn to_rules(&self) -> Result<Vec<keygate_config::RateLimitRule>, String> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                crate::schema::to_config(&Value::Object(r.clone()))
                    .map_err(|e| format!("rules[{i}]: {e}"))
            })
            .collect()
    }
}
