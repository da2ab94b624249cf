//! The one place where failures become HTTP: the business-code table, the problem body
//! (`application/problem+json`, a superset of both error schemas of the contract), the mapping
//! from domain errors, and the middleware that stamps request ids onto every problem.

use crate::auth::clock::rfc3339;
use crate::auth::error::{AuthError, FieldViolation};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::Instrument;
use utoipa::ToSchema;

/// Name of this service in problem bodies.
pub const SERVICE_NAME: &str = "keygate-auth";

/// Every problem the API can answer with: status, stable business code, slug and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ProblemKind {
    InvalidRequest,
    MalformedJson,
    InvalidCredentials,
    UnknownTenant,
    RefreshTokenReused,
    InvalidRefreshToken,
    TransmissionNotAccepted,
    PasswordUndecodable,
    KeyExchangeExpired,
    CaptchaRequired,
    CaptchaInvalid,
    MfaCodeInvalid,
    MfaChallengeInvalid,
    TicketInvalid,
    IdTokenInvalid,
    FederationNoAccount,
    CodeInvalid,
    LoginCodesDisabled,
    NoAccountForCode,
    LoginDelayed,
    AccountLocked,
    Unauthenticated,
    TokenRevoked,
    Forbidden,
    AccountDisabled,
    PasswordExpired,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Internal,
    Unavailable,
    DeliveryFailed,
}

impl ProblemKind {
    /// The table (documented in docs/errors.md; a test keeps the two in step).
    pub const ALL: &'static [ProblemKind] = &[
        Self::InvalidRequest,
        Self::MalformedJson,
        Self::InvalidCredentials,
        Self::UnknownTenant,
        Self::RefreshTokenReused,
        Self::InvalidRefreshToken,
        Self::TransmissionNotAccepted,
        Self::PasswordUndecodable,
        Self::KeyExchangeExpired,
        Self::CaptchaRequired,
        Self::CaptchaInvalid,
        Self::MfaCodeInvalid,
        Self::MfaChallengeInvalid,
        Self::TicketInvalid,
        Self::IdTokenInvalid,
        Self::FederationNoAccount,
        Self::CodeInvalid,
        Self::LoginCodesDisabled,
        Self::NoAccountForCode,
        Self::LoginDelayed,
        Self::AccountLocked,
        Self::Unauthenticated,
        Self::TokenRevoked,
        Self::Forbidden,
        Self::AccountDisabled,
        Self::PasswordExpired,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RateLimited,
        Self::Internal,
        Self::Unavailable,
        Self::DeliveryFailed,
    ];

    /// (HTTP status, business code, slug, title).
    pub fn spec(self) -> (StatusCode, u32, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::InvalidRequest => (
                S::BAD_REQUEST,
                40000001,
                "invalid-request",
                "Invalid request parameters",
            ),
            Self::MalformedJson => (
                S::BAD_REQUEST,
                40000002,
                "malformed-json",
                "Malformed JSON body",
            ),
            Self::InvalidCredentials => (
                S::BAD_REQUEST,
                40000101,
                "invalid-credentials",
                "Invalid credentials",
            ),
            Self::UnknownTenant => (S::BAD_REQUEST, 40000102, "unknown-tenant", "Unknown tenant"),
            Self::RefreshTokenReused => (
                S::BAD_REQUEST,
                40000201,
                "refresh-token-reused",
                "Refresh token reuse detected",
            ),
            Self::InvalidRefreshToken => (
                S::BAD_REQUEST,
                40000202,
                "invalid-refresh-token",
                "Invalid refresh token",
            ),
            Self::TransmissionNotAccepted => (
                S::BAD_REQUEST,
                61000104,
                "transmission-not-accepted",
                "Password transmission mode not accepted",
            ),
            Self::PasswordUndecodable => (
                S::BAD_REQUEST,
                61000105,
                "password-undecodable",
                "Password could not be decrypted",
            ),
            Self::KeyExchangeExpired => (
                S::BAD_REQUEST,
                61000106,
                "key-exchange-expired",
                "Key exchange expired or already used",
            ),
            Self::CaptchaRequired => (
                S::BAD_REQUEST,
                40000301,
                "captcha-required",
                "CAPTCHA required",
            ),
            Self::CaptchaInvalid => (
                S::BAD_REQUEST,
                40000302,
                "captcha-invalid",
                "CAPTCHA invalid",
            ),
            Self::MfaCodeInvalid => (
                S::BAD_REQUEST,
                61000402,
                "mfa-code-invalid",
                "Wrong MFA code",
            ),
            Self::MfaChallengeInvalid => (
                S::FORBIDDEN,
                61000403,
                "mfa-challenge-invalid",
                "MFA challenge expired or used",
            ),
            Self::TicketInvalid => (
                S::BAD_REQUEST,
                40000501,
                "ticket-invalid",
                "Invalid or expired ticket",
            ),
            Self::IdTokenInvalid => (
                S::BAD_REQUEST,
                40000601,
                "id-token-invalid",
                "Invalid id_token",
            ),
            Self::FederationNoAccount => (
                S::FORBIDDEN,
                40300004,
                "federation-no-account",
                "No account for this external identity",
            ),
            Self::CodeInvalid => (
                S::BAD_REQUEST,
                40000401,
                "code-invalid",
                "Invalid or expired code",
            ),
            Self::LoginCodesDisabled => (
                S::BAD_REQUEST,
                40000402,
                "login-codes-disabled",
                "Sign-in by code is not enabled",
            ),
            Self::NoAccountForCode => (
                S::BAD_REQUEST,
                40000403,
                "no-account",
                "No account for this address or number",
            ),
            Self::LoginDelayed => (
                S::TOO_MANY_REQUESTS,
                42900002,
                "login-delayed",
                "Too many failed sign-ins: wait",
            ),
            Self::AccountLocked => (
                S::TOO_MANY_REQUESTS,
                42900003,
                "login-locked",
                "Too many failed sign-ins: locked",
            ),
            Self::Unauthenticated => (
                S::UNAUTHORIZED,
                40100001,
                "unauthenticated",
                "Authentication required",
            ),
            Self::TokenRevoked => (S::UNAUTHORIZED, 40100002, "token-revoked", "Token revoked"),
            Self::Forbidden => (S::FORBIDDEN, 40300001, "forbidden", "Forbidden"),
            Self::AccountDisabled => (
                S::FORBIDDEN,
                40300002,
                "account-disabled",
                "Account disabled",
            ),
            Self::PasswordExpired => (
                S::FORBIDDEN,
                40300003,
                "password-expired",
                "Password expired",
            ),
            Self::NotFound => (S::NOT_FOUND, 40400001, "not-found", "Not found"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                40500001,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Conflict => (S::CONFLICT, 40900001, "conflict", "Conflict"),
            Self::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                41300001,
                "payload-too-large",
                "Request body too large",
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                41500001,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::RateLimited => (
                S::TOO_MANY_REQUESTS,
                42900001,
                "rate-limited",
                "Too many requests",
            ),
            Self::Internal => (
                S::INTERNAL_SERVER_ERROR,
                50000001,
                "internal",
                "Internal server error",
            ),
            Self::Unavailable => (
                S::SERVICE_UNAVAILABLE,
                50300001,
                "unavailable",
                "Service unavailable",
            ),
            Self::DeliveryFailed => (
                S::SERVICE_UNAVAILABLE,
                50300002,
                "delivery-failed",
                "The code could not be delivered",
            ),
        }
    }

    fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::InvalidRequest,
            401 => Self::Unauthenticated,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// One rejected field in a problem body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldViolationBody {
    /// Path of the field in dot/array notation, e.g. `user.email`.
    pub field: String,
    /// `required`, `format`, `range` or `conflict`.
    pub code: String,
    /// Which rule was broken.
    pub description: String,
}

impl From<FieldViolation> for FieldViolationBody {
    fn from(v: FieldViolation) -> Self {
        Self {
            field: v.field,
            code: v.code.to_owned(),
            description: v.description,
        }
    }
}

/// The error body of every 4xx and 5xx response (RFC 9457 plus the contract's extensions).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI reference naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary, the same for every instance of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: String,
    /// Stable business code.
    pub code: u32,
    /// Same as `detail` (for clients of the simple error schema).
    pub message: String,
    /// RFC 3339 time of the error.
    pub timestamp: String,
    /// Path of the request.
    pub instance: String,
    /// Request id (also in the `X-Request-ID` header).
    pub request_id: String,
    /// Trace id of the request (W3C, 32 hex digits; the caller's when it sent `traceparent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Id of the request's server span (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Service name.
    pub service: String,
    /// Field violations (empty when none).
    pub errors: Vec<FieldViolationBody>,
    /// Seconds to wait (429 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Localisation key.
    pub i18n_key: String,
    /// Localisation arguments.
    pub i18n_args: serde_json::Map<String, serde_json::Value>,
}

/// An error on its way out; finished into a [`Problem`] by [`request_context`].
#[derive(Debug, Clone)]
pub struct ApiError {
    kind: ProblemKind,
    detail: String,
    errors: Vec<FieldViolationBody>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 400 with field violations.
    pub fn invalid(errors: Vec<FieldViolation>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.description),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self {
            errors: errors.into_iter().map(Into::into).collect(),
            ..Self::new(ProblemKind::InvalidRequest, detail)
        }
    }

    /// Malformed or mistyped JSON, with the offending field when known.
    pub fn malformed(detail: impl Into<String>, errors: Vec<FieldViolation>) -> Self {
        Self {
            errors: errors.into_iter().map(Into::into).collect(),
            ..Self::new(ProblemKind::MalformedJson, detail)
        }
    }

    /// The kind.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use ProblemKind as K;
        match e {
            AuthError::Validation(v) => Self::invalid(v),
            AuthError::UnknownTenant => Self::new(K::UnknownTenant, "the tenant does not exist"),
            AuthError::InvalidCredentials => Self::new(
                K::InvalidCredentials,
                "the identity or the password is wrong",
            ),
            AuthError::AccountDisabled => Self::new(K::AccountDisabled, "the account is disabled"),
            AuthError::PasswordExpired => Self::new(
                K::PasswordExpired,
                "the password expired past its grace period and must be reset",
            ),
            AuthError::TransmissionNotAccepted => Self::new(
                K::TransmissionNotAccepted,
                "the tenant does not accept this password_transmission mode",
            ),
            AuthError::PasswordUndecodable => Self::new(
                K::PasswordUndecodable,
                "the password could not be decrypted with the named key",
            ),
            AuthError::KeyExchangeExpired => Self::new(
                K::KeyExchangeExpired,
                "the key exchange is unknown, expired or already used; fetch a new one",
            ),
            AuthError::CaptchaRequired => Self::new(
                K::CaptchaRequired,
                "a captcha is required: send captcha_provider and captcha_token",
            ),
            AuthError::CaptchaInvalid => Self::new(
                K::CaptchaInvalid,
                "the captcha answer is wrong, expired or already used",
            ),
            AuthError::LoginThrottled {
                retry_after,
                locked,
            } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    if locked {
                        K::AccountLocked
                    } else {
                        K::LoginDelayed
                    },
                    if locked {
                        format!("too many failed sign-ins: locked; retry in {retry_after} s")
                    } else {
                        format!("too many failed sign-ins: retry in {retry_after} s")
                    },
                )
            },
            AuthError::MfaCodeInvalid => Self::new(K::MfaCodeInvalid, "the code is wrong"),
            AuthError::MfaChallengeInvalid => Self::new(
                K::MfaChallengeInvalid,
                "the challenge is unknown, expired, used up or already answered; sign in again",
            ),
            AuthError::TicketInvalid => Self::new(
                K::TicketInvalid,
                "the ticket is unknown, expired or already used",
            ),
            AuthError::IdTokenInvalid(why) => Self::new(
                K::IdTokenInvalid,
                format!("the id_token is not valid: {}", why.replace('_', " ")),
            ),
            AuthError::FederationNoAccount => Self::new(
                K::FederationNoAccount,
                "no account is linked to this external identity, and the provider is not set up to link or create one",
            ),
            AuthError::CodeInvalid => Self::new(
                K::CodeInvalid,
                "the code is wrong, expired, used up or already used",
            ),
            AuthError::LoginCodesDisabled => Self::new(
                K::LoginCodesDisabled,
                "this tenant does not offer sign-in by code",
            ),
            AuthError::NoAccountForCode => Self::new(
                K::NoAccountForCode,
                "no account has this address or number; send register_if_new to create one",
            ),
            AuthError::DeliveryFailed(channel) => Self::new(
                K::DeliveryFailed,
                format!("the {channel} could not be sent; no code was issued, retry later"),
            ),
            AuthError::RateLimited { retry_after, rule } => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    K::RateLimited,
                    format!("too many requests ({rule}); retry in {retry_after} s"),
                )
            },
            AuthError::InvalidRefreshToken => Self::new(
                K::InvalidRefreshToken,
                "the refresh token is unknown, expired or revoked",
            ),
            AuthError::RefreshTokenReused => Self::new(
                K::RefreshTokenReused,
                "the refresh token was already used; the session has been revoked",
            ),
            AuthError::Unauthenticated(why) => Self::new(K::Unauthenticated, why),
            AuthError::TokenRevoked => {
                Self::new(K::TokenRevoked, "the access token has been revoked")
            }
            AuthError::Forbidden => Self::new(K::Forbidden, "not allowed for this account"),
            AuthError::Conflict(field) => Self {
                errors: vec![FieldViolationBody {
                    field: field.to_owned(),
                    code: "conflict".into(),
                    description: format!("this {field} is already taken"),
                }],
                ..Self::new(K::Conflict, format!("{field} already exists"))
            },
            AuthError::NotFound(what) => Self::new(K::NotFound, format!("{what} not found")),
            AuthError::Unavailable(internal) => {
                tracing::error!(error = %internal, "backing service unavailable");
                Self::new(
                    K::Unavailable,
                    "a backing service is unavailable; retry later",
                )
            }
            AuthError::Internal(internal) => {
                tracing::error!(error = %internal, "internal error");
                Self::new(K::Internal, "the request failed")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.kind.spec();
        let mut res = status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// Marks an error response whose body is deliberately not a problem (readiness details).
#[derive(Debug, Clone, Copy)]
pub struct NotAProblem;

/// The span of the current request (set by [`request_context`]; the router names it after the
/// matched route).
#[derive(Debug, Clone)]
pub struct RequestSpan(pub tracing::Span);

/// The request id of the current request (set by [`request_context`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| s.to_owned())
}

/// Outermost middleware: gives every request an id (a well-formed incoming `X-Request-ID`
/// is kept), echoes it, and turns every error response (ours, or axum's own such as 405)
/// into a complete problem body.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| crate::auth::random::id("req"));
    let instance = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "http.server",
        otel.name = crate::metrics::method_label(req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = crate::metrics::method_label(req.method()),
        http.route = tracing::field::Empty,
        url.path = %instance,
        http.response.status_code = tracing::field::Empty,
        keygate.request_id = %request_id,
    );
    keygate_telemetry::propagation::continue_trace(&span, req.headers());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(RequestSpan(span.clone()));
    let mut res = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let _entered = span.enter();
    let status = res.status();
    let draft = res.extensions_mut().remove::<ApiError>();
    let is_problem = res.extensions().get::<NotAProblem>().is_some()
        || res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if let Some(draft) = draft.or_else(|| {
        (status.as_u16() >= 400 && !is_problem).then(|| {
            let kind = ProblemKind::for_status(status);
            ApiError::new(kind, kind.spec().3.to_lowercase())
        })
    }) {
        res = render_problem(draft, status, &instance, &request_id, res);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

fn render_problem(
    e: ApiError,
    status: StatusCode,
    instance: &str,
    request_id: &str,
    res: Response,
) -> Response {
    let (_, code, slug, title) = e.kind.spec();
    // The problem's type and code only: a detail can quote what the client sent.
    if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            code,
            problem = slug,
            "request failed"
        );
    } else {
        tracing::info!(
            status = status.as_u16(),
            code,
            problem = slug,
            "request refused"
        );
    }
    let (trace_id, span_id) = keygate_telemetry::current_ids().unzip();
    let problem = Problem {
        type_: format!("urn:keygate:problem:{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: e.detail.clone(),
        code,
        message: e.detail,
        timestamp: rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        instance: instance.to_owned(),
        request_id: request_id.to_owned(),
        trace_id,
        span_id,
        service: SERVICE_NAME.to_owned(),
        errors: e.errors,
        retry_after: e.retry_after,
        i18n_key: format!("error.{}", slug.replace('-', "_")),
        i18n_args: serde_json::Map::new(),
    };
    let (mut parts, _) = res.into_parts();
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(secs) = problem.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        parts.headers.insert(header::RETRY_AFTER, v);
    }
    if status == StatusCode::UNAUTHORIZED {
        parts
            .headers
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_codes_are_unique_and_documented() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md"))
                .expect("docs/errors.md");
        let mut seen = std::collections::BTreeSet::new();
        for kind in ProblemKind::ALL {
            let (status, code, slug, _) = kind.spec();
            assert!(seen.insert(code), "duplicate code {code}");
            let row = format!("| {code} | {} | `{slug}` |", status.as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }

    #[test]
    fn deployed_client_codes_are_kept() {
        assert_eq!(ProblemKind::RefreshTokenReused.spec().1, 40000201);
        assert_eq!(ProblemKind::TransmissionNotAccepted.spec().1, 61000104);
    }
}
