//! The one Secret every server mounts: the rendered configuration under `config.json`, its
//! SHA-256 in an annotation, written only when the content changes, and never blindly (a
//! replacement carries the `resourceVersion` it read, so a concurrent writer makes it fail
//! rather than be overwritten).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;

/// The Secret field holding the configuration.
pub const CONFIG_FIELD: &str = "config.json";
/// The annotation holding its hash.
pub const HASH_ANNOTATION: &str = "keygate.dev/config-sha256";

/// What publishing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The Secret already held this configuration.
    Unchanged,
    /// Created or replaced.
    Written,
}

/// Writes `json` (hash `hash`) to the Secret `name` unless it holds it already.
pub async fn publish(
    secrets: &Api<Secret>,
    name: &str,
    json: &str,
    hash: &str,
) -> Result<Published, kube::Error> {
    let desired = |existing: Option<&Secret>| {
        let mut meta = existing.map(|s| s.metadata.clone()).unwrap_or(ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        });
        meta.labels.get_or_insert_with(BTreeMap::new).insert(
            "app.kubernetes.io/managed-by".into(),
            "keygate-operator".into(),
        );
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_ANNOTATION.into(), hash.into());
        Secret {
            metadata: meta,
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                CONFIG_FIELD.to_owned(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    };
    match secrets.get_opt(name).await? {
        Some(existing)
            if existing
                .annotations()
                .get(HASH_ANNOTATION)
                .map(String::as_str)
                == Some(hash) =>
        {
            Ok(Published::Unchanged)
        }
        Some(existing) => {
            secrets
                .replace(name, &PostParams::default(), &desired(Some(&existing)))
                .await?;
            Ok(Published::Written)
        }
        None => {
            secrets
                .create(&PostParams::default(), &desired(None))
                .await?;
            Ok(Published::Written)
        }
    }
}
