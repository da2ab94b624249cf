//! `ServiceAccountGrant`: what one Kubernetes ServiceAccount may do in Keygate with its own
//! projected token (the permissions, on which tenant's users, holding which roles, how often),
//! with the runtime configuration's own grant fields.

use crate::auth_policy::TENANT_PATTERN;
use crate::schema::{camel_schema, extend, string};
use crate::status::Status;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The tenant of a grant that names none.
pub const DEFAULT_TENANT: &str = "default";

/// Permissions of a ServiceAccount on one tenant.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "ServiceAccountGrant",
    namespaced,
    status = "Status",
    shortname = "kgsag",
    category = "keygate",
    doc = "Allows one Kubernetes ServiceAccount (of any namespace) to call Keygate with its own projected token: the permissions it has (tickets:create: POST /auth/generate-ticket) on the users of one tenant, the roles those users may hold (none listed: only users without roles), and an optional rate limit of the grant's own. One grant per ServiceAccount and tenant; without a grant the ServiceAccount is refused.",
    printcolumn(
        name = "SA Namespace",
        type_ = "string",
        json_path = ".spec.serviceAccount.namespace",
        description = "The namespace of the ServiceAccount granted"
    ),
    printcolumn(
        name = "ServiceAccount",
        type_ = "string",
        json_path = ".spec.serviceAccount.name"
    ),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(
        name = "Permissions",
        type_ = "string",
        json_path = ".spec.permissions"
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
pub struct ServiceAccountGrantSpec {
    /// The tenant whose users the ServiceAccount acts on; absent: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The grant (`serviceAccount`, `permissions`, `allowedRoles`, `rateLimit`).
    #[serde(flatten)]
    pub grant: Map<String, Value>,
}

impl JsonSchema for ServiceAccountGrantSpec {
    fn schema_name() -> Cow<'static, str> {
        "ServiceAccountGrantSpec".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let base = camel_schema::<keygate_config::ServiceAccountGrantConfig>(
            generator,
            &["name", "tenant_id"],
        );
        let mut tenant = string(
            "The tenant whose users the ServiceAccount acts on (1-63 of a-z, 0-9 and '-', starting with a letter); default: default.",
            Some(TENANT_PATTERN),
        );
        tenant.insert("default".into(), DEFAULT_TENANT.into());
        extend(base, vec![("tenant", tenant)], &[])
    }
}

impl ServiceAccountGrantSpec {
    /// The tenant the grant is for (the spec's, else `default`).
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// The grant this spec stands for, named `resource_name`.
    pub fn to_grant(
        &self,
        resource_name: &str,
    ) -> Result<keygate_config::ServiceAccountGrantConfig, String> {
        let mut v = self.grant.clone();
        v.insert("name".into(), Value::String(resource_name.to_owned()));
        v.insert("tenantId".into(), Value::String(self.tenant().to_owned()));
        crate::schema::to_config(&Value::Object(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn spec(v: Value) -> ServiceAccountGrantSpec {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_spec_becomes_the_grant_named_by_its_resource() {
        let s = spec(serde_json::json!({
            "serviceAccount": {"namespace": "billing", "name": "billing-api"},
            "permissions": ["tickets:create"],
            "allowedRoles": ["customer"],
            "rateLimit": {"limit": 100, "windowSeconds": 60},
        }));
        let g = s
            .to_grant("billing-tickets")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.name, "billing-tickets");
        assert_eq!(g.tenant_id, "default");
        assert_eq!(
            g.service_account.username(),
            "system:serviceaccount:billing:billing-api"
        );
        assert!(g.allows(keygate_config::GrantPermission::TicketsCreate));
        assert_eq!(g.allowed_roles, ["customer"]);
        assert_eq!(g.rate_limit.map(|r| r.window_seconds), Some(60));
        assert!(g.validate().is_ok());
        let s = spec(serde_json::json!({
            "tenant": "acme",
            "serviceAccount": {"namespace": "a", "name": "b"},
            "permissions": ["tickets:create"],
        }));
        assert_eq!(s.to_grant("x").map(|g| g.tenant_id).as_deref(), Ok("acme"));
        // Names in errors are the spec's own.
        let err = spec(serde_json::json!({
            "serviceAccount": {"namespace": "a", "name": "b"},
            "permissions": ["tickets:create"], "alowedRoles": [],
        }))
        .to_grant("x")
        .unwrap_err();
        assert!(err.contains("`alowedRoles`"), "{err}");
    }

    #[test]
    fn the_schema_has_the_spec_names_and_the_configurations_rules() {
        let crd = serde_json::to_value(ServiceAccountGrant::crd()).unwrap_or_default();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = spec["properties"].as_object().cloned().unwrap_or_default();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "allowedRoles",
                "permissions",
                "rateLimit",
                "serviceAccount",
                "tenant"
            ]
        );
        assert_eq!(props["tenant"]["default"], DEFAULT_TENANT);
        assert_eq!(props["tenant"]["pattern"], TENANT_PATTERN);
        assert!(props["rateLimit"].to_string().contains("windowSeconds"));
        assert!(props["permissions"].to_string().contains("tickets:create"));
        assert!(
            props["permissions"]["minItems"] == 1,
            "{}",
            props["permissions"]
        );
    }
}
