//! What every Keygate resource reports in `status`: standard conditions (`Accepted`: valid and
//! part of the rendered configuration, or why not) and the generation they describe.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the resource is valid and in the rendered runtime configuration.
pub const ACCEPTED: &str = "Accepted";

/// Condition type of an `OidcProvider`: its issuer answered the last check.
pub const READY: &str = "Ready";

/// Reasons of the `Accepted` condition.
pub mod reason {
    /// Valid and rendered.
    pub const RENDERED: &str = "Rendered";
    /// The spec is not valid (the message says which field and why).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Another resource claims the same thing (the message names it).
    pub const CONFLICT: &str = "Conflict";
    /// Valid, but the configuration is held back by another resource's error.
    pub const HELD_BACK: &str = "HeldBack";
    /// Valid, but the configuration waits for a `SigningKey`.
    pub const NO_SIGNING_KEY: &str = "NoSigningKey";
    /// Key material could not be made or read.
    pub const KEY_MATERIAL: &str = "KeyMaterialError";
    /// `Ready`: the issuer's discovery document and keys were read at the last check.
    pub const KEYS_PUBLISHED: &str = "KeysPublished";
    /// `Ready` is `Unknown`: the first check has not finished.
    pub const CHECKING: &str = "Checking";
    /// `Ready` is `False` without a check: the spec is not accepted. (A failed check's reason
    /// says what failed: `DiscoveryFailed`, `IssuerMismatch`, `JwksFailed`, `NoUsableKey`.)
    pub const NOT_ACCEPTED: &str = "NotAccepted";
}

/// The status of a Keygate resource.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `Accepted`: whether the resource is valid and part of the runtime configuration the
    /// operator published, with the reason and a message when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A condition of `kind` with `status` (`True`, `False`, `Unknown`), keeping the transition
/// time of `previous` when its status did not change.
pub fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: since,
        observed_generation: generation,
    }
}
