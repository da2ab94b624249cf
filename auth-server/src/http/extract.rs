//! Extractors: JSON bodies that fail as problems with field paths, the verified bearer
//! token, and the tenant of an unauthenticated request.

use super::AppState;
use super::error::{ApiError, ProblemKind};
use crate::auth::error::FieldViolation;
use crate::auth::service_accounts::BearerCaller;
use crate::auth::tokens::AccessClaims;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use serde::de::DeserializeOwned;

/// The default tenant's canonical id.
pub const DEFAULT_TENANT: &str = "default";

/// A JSON body. Non-JSON content types are a 415, bodies over the limit a 413, syntax errors
/// and wrong types a 400 naming the field.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ProblemKind::PayloadTooLarge, "the body exceeds 64 KiB")
            } else {
                ApiError::new(ProblemKind::InvalidRequest, "the body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserialises with field paths in the errors. Every request body is a JSON object (or
/// `null` where it is optional): serde would also fill a struct from an array of its fields in
/// order, which the document does not allow, so an array is refused here.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::invalid(vec![FieldViolation::new(
            "body",
            "format",
            "must be a JSON object",
        )]));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                let base = if path == "." { String::new() } else { path };
                let (field, code) = match msg
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(name) if base.is_empty() => (name.to_owned(), "required"),
                    Some(name) => (format!("{base}.{name}"), "required"),
                    None if base.is_empty() => ("body".to_owned(), "format"),
                    None => (base, "format"),
                };
                let description = strip_position(&msg);
                ApiError::invalid(vec![FieldViolation::new(field, code, description)])
            }
            _ => ApiError::malformed(
                format!(
                    "the body is not valid JSON: {}",
                    strip_position(&inner.to_string())
                ),
                Vec::new(),
            ),
        }
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// The tenant of an unauthenticated request: the body's `tenant_id`, else `X-Tenant-ID`,
/// else the default tenant.
pub fn tenant_of(body_tenant: Option<&str>, headers: &HeaderMap) -> String {
    body_tenant
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("x-tenant-id")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned())
}

/// The client's address: the socket peer, or `X-Forwarded-For` read through the configured
/// trusted proxies; `None` when the server was not given connection info (in-process tests).
#[derive(Debug, Clone)]
pub struct ClientIp(pub Option<String>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Worked out once per request, by `with_origin`, which wraps every route.
        let known = crate::auth::audit::ORIGIN.try_with(|o| o.client_ip.clone());
        Ok(ClientIp(known.unwrap_or_else(|_| {
            client_ip_of(&parts.extensions, &parts.headers, state)
        })))
    }
}

fn client_ip_of(
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    state: &AppState,
) -> Option<String> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let rt = state.auth.runtime();
    let header = rt.config.rate_limits.forwarded_header;
    let name = match header {
        keygate_config::ForwardedHeader::XForwardedFor => "x-forwarded-for",
        keygate_config::ForwardedHeader::Forwarded => "forwarded",
    };
    // Hops matter only behind a trusted proxy; the walk itself stops at the peer otherwise.
    let hops = if rt.trusted_proxies.is_empty() {
        Vec::new()
    } else {
        // A line with bytes that are not text still has its other hops read (a proxy appends
        // the real address to whatever the client sent).
        let lines: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        crate::auth::limits::forwarded_hops(header, lines.iter().map(String::as_str))
    };
    crate::auth::limits::client_address(peer, &hops, &rt.trusted_proxies).map(|ip| ip.to_string())
}

/// Middleware: serves the request with its origin (client address, user agent) known to the
/// audit trail.
pub async fn with_origin(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let origin = crate::auth::audit::Origin {
        client_ip: client_ip_of(req.extensions(), req.headers(), &state),
        user_agent: req
            .headers()
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect()),
    };
    crate::auth::audit::ORIGIN
        .scope(origin, next.run(req))
        .await
}

/// The bearer token of a request, or 401.
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ProblemKind::Unauthenticated, "a bearer token is required"))
}

/// Verified claims of the bearer token (and not revoked).
#[derive(Debug, Clone)]
pub struct Bearer(pub AccessClaims);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let claims = state.auth.authenticate(bearer_token(parts)?).await?;
        Ok(Bearer(claims))
    }
}

/// The verified caller of the bearer token: a Keygate access token, or a ServiceAccount
/// token of the cluster.
#[derive(Debug, Clone)]
pub struct Caller(pub BearerCaller);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.auth.authenticate_caller(bearer_token(parts)?).await?;
        Ok(Caller(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    fn field_of(e: &ApiError) -> (String, String) {
        let dbg = format!("{e:?}");
        (dbg.clone(), dbg)
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let e = parse_json::<Body>(br#"{"name": 5}"#).unwrap_err();
        assert!(
            field_of(&e).0.contains("field: \"name\", code: \"format\""),
            "{e:?}"
        );
        let e = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert!(
            field_of(&e)
                .0
                .contains("field: \"name\", code: \"required\""),
            "{e:?}"
        );
        let e = parse_json::<Body>(br#"{"name": "x", "inner": {"n": "y"}}"#).unwrap_err();
        assert!(field_of(&e).0.contains("field: \"inner.n\""), "{e:?}");
        let e = parse_json::<Body>(br#"{"name": "x", "inner": {}}"#).unwrap_err();
        assert!(
            field_of(&e)
                .0
                .contains("field: \"inner.n\", code: \"required\""),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        let e = parse_json::<Body>(br#"{"name": "#).unwrap_err();
        assert_eq!(e.kind(), ProblemKind::MalformedJson);
        let e = parse_json::<Body>(b"").unwrap_err();
        assert_eq!(e.kind(), ProblemKind::MalformedJson);
        let e = parse_json::<Body>(b"[1]").unwrap_err();
        assert_eq!(e.kind(), ProblemKind::InvalidRequest);
        // Not filled in field order from an array, even when every field has a default
        // (schema fuzzing found `[]` accepted as a logout body).
        #[derive(Debug, Default, serde::Deserialize)]
        #[allow(dead_code)]
        struct Optional {
            #[serde(default)]
            token: Option<String>,
        }
        for body in [&b"[]"[..], b" [\"t\"]"] {
            let e = parse_json::<Optional>(body).unwrap_err();
            assert_eq!(e.kind(), ProblemKind::InvalidRequest, "{body:?}");
        }
        assert!(parse_json::<Option<Optional>>(b"null").unwrap().is_none());
    }

    #[test]
    fn tenant_precedence() {
        let mut h = HeaderMap::new();
        assert_eq!(tenant_of(None, &h), "default");
        h.insert("x-tenant-id", "acme".parse().unwrap());
        assert_eq!(tenant_of(None, &h), "acme");
        assert_eq!(tenant_of(Some("body"), &h), "body");
        assert_eq!(tenant_of(Some(" "), &h), "acme");
    }
}
