//! Keygate's authentication server as a library: the domain (`auth`), durable (`store`) and
//! ephemeral (`ephemeral`) state, the HTTP interface (`http`), settings and assembly (`app`).

pub mod app;
pub mod auth;
pub mod delivery;
pub mod ephemeral;
pub mod http;
pub mod metrics;
pub mod settings;
pub mod store;
