//! Keygate's custom resource types (`OidcProvider`, `SigningKey`, `RateLimitPolicy`): the
//! declarative API the operator reconciles into the runtime configuration. The types arrive
//! with the operator; until then this crate re-exports the configuration model they render to.

pub use keygate_config::RuntimeConfig;
