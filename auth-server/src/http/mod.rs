//! The HTTP interface (the only module that knows axum): the router with its layers, the
//! application state handed to handlers, and the OpenAPI document generated from the same
//! route table.

pub mod admin;
pub mod captcha;
pub mod codes;
pub mod dto;
pub mod error;
pub mod extract;
pub mod federation;
pub mod health;
pub mod login;
pub mod mfa;
pub mod openapi;
pub mod public;
pub mod tickets;
pub mod tokens;
pub mod wellknown;

use crate::auth::AuthService;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Facts about this server instance that handlers need.
#[derive(Debug)]
pub struct ServerInfo {
    /// Normalised API prefix (`/api/v1`).
    pub base_path: String,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
}

/// What every handler receives.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The domain service.
    pub auth: AuthService,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Instance facts.
    pub info: Arc<ServerInfo>,
}

impl AppState {
    /// State for `auth` served under `base_path`.
    pub fn new(auth: AuthService, base_path: &str) -> Self {
        let base_path = crate::settings::normalize_base_path(base_path);
        let openapi_json = openapi(&base_path).to_pretty_json().unwrap_or_default();
        Self {
            auth,
            metrics: Arc::new(Metrics::default()),
            info: Arc::new(ServerInfo {
                base_path,
                openapi_json,
            }),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keygate",
        description = "Kubernetes-native authentication service: password, passwordless, ticket and federated sign-in issuing JWTs verifiable through the JWKS.",
        license(name = "Apache-2.0")
    ),
    components(schemas(error::Problem, error::FieldViolationBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Sign-in, tokens and the current account"),
        (name = "admin", description = "Administration (admin role)"),
        (name = "mfa", description = "Second factors: TOTP enrolment and MFA challenges"),
        (name = "public", description = "Client bootstrap: key exchange and tenant sign-in configuration"),
        (name = "keys", description = "Discovery and signing keys"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The route table: every route is registered here together with its OpenAPI entry, so the
/// document cannot miss one.
fn api(base_path: &str) -> OpenApiRouter<AppState> {
    let prefixed = OpenApiRouter::new()
        .routes(routes!(login::login))
        .routes(routes!(tokens::refresh))
        .routes(routes!(tokens::logout))
        .routes(routes!(tokens::me))
        .routes(routes!(tokens::change_password))
        .routes(routes!(codes::send_login_code))
        .routes(routes!(codes::login_email_code))
        .routes(routes!(codes::login_phone_code))
        .routes(routes!(tickets::generate_ticket))
        .routes(routes!(tickets::ticket_signin))
        .routes(routes!(federation::id_token_signin))
        .routes(routes!(mfa::verify_challenge))
        .routes(routes!(mfa::send_code))
        .routes(routes!(mfa::totp_setup))
        .routes(routes!(mfa::totp_verify))
        .routes(routes!(admin::create_user))
        .routes(routes!(admin::unlock_user))
        .routes(routes!(admin::audit_events))
        .routes(routes!(captcha::challenge))
        .routes(routes!(public::key_exchange))
        .routes(routes!(public::auth_config));
    let root = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(wellknown::discovery))
        .routes(routes!(wellknown::jwks))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi));
    if base_path.is_empty() {
        root.merge(prefixed)
    } else {
        root.nest(base_path, prefixed)
    }
}

/// The OpenAPI document for routes under `base_path`, with the responses operations share.
pub fn openapi(base_path: &str) -> utoipa::openapi::OpenApi {
    let mut doc = api(base_path).into_openapi();
    utoipa::Modify::modify(&openapi::SharedResponses { base_path }, &mut doc);
    openapi::spell_whitespace(&mut doc);
    doc
}

/// The complete application.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api(&state.info.base_path).split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::with_origin,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .layer(axum::middleware::from_fn(error::request_context))
        .with_state(state)
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(error::ProblemKind::NotFound, "no such route")
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    axum::response::IntoResponse::into_response(error::ApiError::new(
        error::ProblemKind::Internal,
        "the request failed",
    ))
}
