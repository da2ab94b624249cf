//! Discovery and keys at the root: `/.well-known/openid-configuration` and
//! `/.well-known/jwks.json`.

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// Discovery document (the subset of OpenID Provider Metadata that verifiers use).
#[derive(Debug, Serialize, ToSchema)]
pub struct Discovery {
    /// Token issuer (`iss`).
    pub issuer: String,
    /// Where the signing keys are.
    pub jwks_uri: String,
    /// Algorithms of the published keys.
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
    /// Claims in access tokens.
    pub claims_supported: Vec<&'static str>,
    /// Only public subject identifiers.
    pub subject_types_supported: Vec<&'static str>,
    /// Sign-in endpoint (password).
    pub login_endpoint: String,
    /// Refresh endpoint.
    pub refresh_endpoint: String,
    /// Logout endpoint.
    pub end_session_endpoint: String,
    /// Account endpoint.
    pub userinfo_endpoint: String,
}

/// Discovery document.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "keys",
    responses((status = 200, description = "Discovery document", body = Discovery))
)]
pub async fn discovery(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.auth.issuer().to_owned();
    let api = format!("{issuer}{}", state.info.base_path);
    let now = state.auth.clock.unix();
    let doc = Discovery {
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        id_token_signing_alg_values_supported: state.auth.runtime().keys.algorithms(now),
        claims_supported: vec![
            "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tid", "sid", "amr", "act",
        ],
        subject_types_supported: vec!["public"],
        login_endpoint: format!("{api}/auth/login"),
        refresh_endpoint: format!("{api}/auth/refresh"),
        end_session_endpoint: format!("{api}/auth/logout"),
        userinfo_endpoint: format!("{api}/auth/me"),
        issuer,
    };
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(doc))
}

/// JWKS: every pending, active and retiring signing key.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "keys",
    responses((status = 200, description = "JSON Web Key Set", body = Object))
)]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let rt = state.auth.runtime();
    let set = rt.keys.jwks(state.auth.clock.unix());
    // A short cache (`tokens.jwks_max_age_seconds`): pending keys are published `prePublish`
    // ahead of use, which exceeds this, so verifiers that honour it always know the next key.
    let cache = format!("public, max-age={}", rt.config.tokens.jwks_max_age_seconds);
    ([(header::CACHE_CONTROL, cache)], Json(set))
}
