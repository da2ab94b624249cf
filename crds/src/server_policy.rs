//! `ServerPolicy`: the settings of every server that are neither a tenant's policy nor a rate
//! rule: token lifetimes and audience, argon2id parameters, audit retention, trusted proxies.
//! At most one per namespace.

use crate::schema::{camel_schema, extend};
use crate::status::Status;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// Server-wide settings.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "ServerPolicy",
    namespaced,
    status = "Status",
    shortname = "kgsp",
    category = "keygate",
    doc = "Server-wide Keygate settings: token lifetimes and audience, argon2id parameters, audit retention, and the trusted proxies in front of the servers. At most one per namespace; without one the built-in defaults apply.",
    printcolumn(
        name = "Audience",
        type_ = "string",
        json_path = ".spec.tokens.audience"
    ),
    printcolumn(
        name = "Access TTL",
        type_ = "integer",
        json_path = ".spec.tokens.accessTokenTtlSeconds"
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
pub struct ServerPolicySpec {
    /// `tokens`, `passwordHashing`, `audit`, `trustedProxies`, `forwardedHeader`.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

impl JsonSchema for ServerPolicySpec {
    fn schema_name() -> Cow<'static, str> {
        "ServerPolicySpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let section = |s: Schema, description: &str| {
            let mut v = s.to_value();
            v["description"] = Value::String(description.to_owned());
            Schema::try_from(v).unwrap_or_default()
        };
        let tokens = section(
            camel_schema::<keygate_config::TokenPolicy>(generator, &[]),
            "Token lifetimes, audience and refresh-rotation policy.",
        );
        let hashing = section(
            camel_schema::<keygate_config::PasswordHashing>(generator, &[]),
            "argon2id parameters for new hashes and the hashing concurrency cap.",
        );
        let audit = section(
            camel_schema::<keygate_config::AuditPolicy>(generator, &[]),
            "How long the audit trail is kept.",
        );
        let header = section(
            camel_schema::<keygate_config::ForwardedHeader>(generator, &[]),
            "The header the trusted proxies record the client's address in: x_forwarded_for or forwarded (RFC 7239).",
        );
        let proxies = Schema::try_from(json!({
            "type": "array",
            "items": {"type": "string"},
            "maxItems": 64,
            "description": "Proxies (CIDR, IPv4 or IPv6) whose forwarding header is believed; the client is the rightmost hop that is not one of them.",
        }))
        .unwrap_or_default();
        extend(
            Schema::try_from(json!({"type": "object"})).unwrap_or_default(),
            vec![
                ("tokens", tokens),
                ("passwordHashing", hashing),
                ("audit", audit),
                ("trustedProxies", proxies),
                ("forwardedHeader", header),
            ],
            &[],
        )
    }
}

/// The configuration sections a `ServerPolicy` sets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Tokens.
    pub tokens: keygate_config::TokenPolicy,
    /// Hashing.
    pub password_hashing: keygate_config::PasswordHashing,
    /// Audit.
    pub audit: keygate_config::AuditPolicy,
    /// Trusted proxies.
    pub trusted_proxies: Vec<String>,
    /// Their header.
    pub forwarded_header: keygate_config::ForwardedHeader,
}

impl ServerPolicySpec {
    /// The settings this spec stands for.
    pub fn to_settings(&self) -> Result<ServerSettings, String> {
        crate::schema::to_config(&Value::Object(self.settings.clone()))
    }
}
