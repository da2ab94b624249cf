//! The Keygate operator: custom resources in, one Secret holding the rendered runtime
//! configuration out. `render` is pure (resources to configuration); `keys` makes key
//! material; `publish` writes the Secret when its content changes; `health` checks the
//! issuers of `OidcProvider`s; `controller` watches, reconciles and reports status and events.

pub mod controller;
pub mod health;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod publish;
pub mod render;
pub mod rotation;

/// Every CRD as YAML documents, in `keygate_crds::crds()` order.
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in keygate_crds::crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
