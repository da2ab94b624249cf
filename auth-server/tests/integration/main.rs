//! auth-server's integration tests, in one binary: the storage contract on SQLite and a real
//! Postgres, the ephemeral store on memory and a real Redis, and the HTTP API through the
//! router, and ServiceAccount callers against a real Kubernetes API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod codes;
mod common;
mod ephemeral_contract;
mod federation;
mod hardening;
mod http_api;
mod mfa;
mod service_accounts;
mod store_contract;
mod tickets;
mod transmission;
