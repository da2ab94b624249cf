//! `SigningKey`: a JWT signing key (or the RSA key of the `asymmetric` password transmission)
//! whose private material the operator generates into a Secret owned by the resource.

use crate::status::Status;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key the operator generates and publishes.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "keygate.dev",
    version = "v1alpha1",
    kind = "SigningKey",
    namespaced,
    status = "SigningKeyStatus",
    shortname = "kgsk",
    category = "keygate",
    validation = kube::core::Rule::new("self.spec.use != 'transmission' || !has(self.spec.algorithm) || self.spec.algorithm == 'RS256'").message("a transmission key is RSA: leave algorithm unset or RS256"),
    doc = "A key Keygate signs access tokens with (use: token) or clients encrypt passwords to (use: transmission). The operator generates the private key into a Secret owned by this resource; it never appears in status, events or logs.",
    printcolumn(name = "Use", type_ = "string", json_path = ".spec.use"),
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".status.algorithm"),
    printcolumn(name = "Active Kid", type_ = "string", json_path = ".status.activeKid"),
    printcolumn(name = "Next Rotation", type_ = "string", json_path = ".status.nextRotation"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keys.length()", priority = 1),
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
pub struct SigningKeySpec {
    /// What the key is for.
    #[serde(default, rename = "use")]
    pub use_: KeyUse,
    /// Signing algorithm of a token key (default ES256). A transmission key is always RSA
    /// (RSA-OAEP with SHA-256): RS256 or unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// RSA modulus size in bits (RS256 and transmission keys).
    #[serde(default = "default_rsa_bits")]
    #[schemars(range(min = 2048, max = 4096))]
    pub rsa_bits: u32,
    /// How long a key signs before the next one takes over, as a Go duration (`720h`);
    /// absent: the key is never rotated except by the `keygate.dev/rotate` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<Duration>,
    /// How long a new key is published (in the JWKS, not signing) before it signs; must exceed
    /// the operator's propagation bound, so that every server and every verifier's JWKS
    /// cache has it before any token carries its `kid`.
    #[serde(default = "default_pre_publish")]
    pub pre_publish: Duration,
    /// How long a superseded key stays published after it stopped signing; must cover the
    /// longest access-token lifetime, so that no token outlives its key.
    #[serde(default = "default_retire_after")]
    pub retire_after: Duration,
}

fn default_rsa_bits() -> u32 {
    2048
}

fn default_pre_publish() -> Duration {
    std::time::Duration::from_secs(600).into()
}

fn default_retire_after() -> Duration {
    std::time::Duration::from_secs(7200).into()
}

/// The annotation that starts a rotation now (still with pre-publication): set it to a new
/// value (a timestamp, say) for each rotation wanted.
pub const ROTATE_ANNOTATION: &str = "keygate.dev/rotate";

/// What a key is for.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyUse {
    /// Signing access tokens (published in the JWKS).
    #[default]
    Token,
    /// Decrypting passwords sent in the `asymmetric` transmission mode.
    Transmission,
}

/// Signing algorithms.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256.
    #[default]
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

/// One key of a `SigningKey`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyState {
    /// The key id (`kid` in tokens and the JWKS).
    pub kid: String,
    /// `pending` (published, not signing), `active` (signing) or `retiring` (published, not
    /// signing, until every token it signed has expired).
    pub state: String,
    /// The Secret holding its private key.
    pub secret_name: String,
    /// RFC 3339 time from which it signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<String>,
    /// RFC 3339 time after which it is neither used nor published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<String>,
}

/// The status of a `SigningKey`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    /// `Accepted`, as for every Keygate resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The algorithm in use (the spec's, or the default for the key's use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// The key id that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Every key of this resource, with its state and times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyState>,
    /// RFC 3339 time at which the next key starts signing (pending or planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
    /// The last `keygate.dev/rotate` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
}

impl SigningKeySpec {
    /// The algorithm keys of this spec are made for.
    pub fn effective_algorithm(&self) -> KeyAlgorithm {
        match self.use_ {
            KeyUse::Transmission => KeyAlgorithm::RS256,
            KeyUse::Token => self.algorithm.unwrap_or_default(),
        }
    }
}

impl From<&SigningKeyStatus> for Status {
    fn from(s: &SigningKeyStatus) -> Self {
        Status {
            conditions: s.conditions.clone(),
            observed_generation: s.observed_generation,
        }
    }
}
