//! Operations routes: `/healthz` (alive), `/readyz` (backing services reachable, configuration
//! loaded), `/metrics` (Prometheus) and `/openapi.json`.

use super::AppState;
use super::error::{ApiError, NotAProblem, ProblemKind};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: &'static str,
    /// Per dependency: `ok` or why not.
    pub checks: std::collections::BTreeMap<&'static str, String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: Default::default(),
    })
}

/// The database, Redis (if configured) and the configuration are usable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = Health),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    let mut ok = true;
    let mut check = |name: &'static str, result: Result<String, String>| match result {
        Ok(detail) => {
            checks.insert(name, detail);
        }
        Err(e) => {
            tracing::warn!(check = name, error = %e, "readiness check failed");
            ok = false;
            checks.insert(name, "unavailable".into());
        }
    };
    check(
        "database",
        state
            .auth
            .store
            .ping()
            .await
            .map(|_| "ok".into())
            .map_err(|e| e.to_string()),
    );
    let kind = state.auth.ephemeral.kind();
    check(
        "ephemeral",
        state
            .auth
            .ephemeral
            .ping()
            .await
            .map(|_| format!("ok ({kind})"))
            .map_err(|e| e.to_string()),
    );
    let signing = state
        .auth
        .runtime()
        .keys
        .signing_key(state.auth.clock.unix())
        .is_some();
    let config = match (signing, state.auth.config_rejected_at()) {
        (false, _) => Err("no signing key is active".into()),
        // The last good configuration still serves: ready, but say so.
        (true, Some(at)) => Ok(format!(
            "ok (the newest file was rejected at {}; see the server log)",
            crate::auth::clock::rfc3339(at)
        )),
        (true, None) => Ok("ok".into()),
    };
    check("config", config);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ok { "ok" } else { "unavailable" },
        checks,
    };
    // The per-check body is the answer here, also on 503: not turned into a problem.
    let mut res = (status, Json(body)).into_response();
    res.extensions_mut().insert(NotAProblem);
    res
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.metrics.observe_signing_key(&state.auth);
    let text = state
        .metrics
        .render()
        .map_err(|_| ApiError::new(ProblemKind::Internal, "metrics could not be rendered"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI document", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.info.openapi_json.clone(),
    )
        .into_response()
}
