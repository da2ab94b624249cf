//! Passwordless routes: `POST /auth/send-login-code`, then `POST /auth/login/email-code` or
//! `POST /auth/login/phone-code`.

use super::AppState;
use super::dto::{DataResponse, LoginResponse};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ClientIp, tenant_of};
use crate::auth::CaptchaAnswer;
use crate::auth::codes::{CodeLogin, CodeRequest, CodeSent, CodeTarget, SendCode};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Request for a sign-in code (`dto.SendLoginCodeRequest`): exactly one of `email`, `phone`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendLoginCodeRequest {
    /// Email address (empty counts as absent).
    #[serde(default)]
    #[schema(
        max_length = 254,
        pattern = r"^\s*([^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+)?\s*$"
    )]
    pub email: Option<String>,
    /// Phone number in E.164 form (empty counts as absent).
    #[serde(default)]
    #[schema(pattern = r"^\s*(\+[1-9][0-9]{6,14})?\s*$")]
    pub phone: Option<String>,
    /// Tenant; else `X-Tenant-ID`; else `default`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// CAPTCHA provider (when the tenant always demands one).
    #[serde(default)]
    pub captcha_provider: Option<String>,
    /// CAPTCHA solution.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// CAPTCHA challenge id.
    #[serde(default)]
    pub captcha_challenge_id: Option<String>,
}

/// Says in the schema of [`SendLoginCodeRequest`] what the derive cannot: exactly one of
/// `email` and `phone` is given and not blank.
pub(super) fn exactly_one_target(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let Some(RefOr::T(Schema::Object(request))) =
        components.schemas.get_mut("SendLoginCodeRequest")
    else {
        return;
    };
    let given = |field: &str| {
        ObjectBuilder::new()
            .property(
                field,
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"\S")),
            )
            .required(field)
            .build()
    };
    let rule = OneOfBuilder::new()
        .item(given("email"))
        .item(given("phone"))
        .description(Some("Exactly one of email and phone, not blank"))
        .build();
    let mut all = utoipa::openapi::schema::AllOf::new();
    all.items.push(RefOr::T(Schema::Object(request.clone())));
    all.items.push(RefOr::T(Schema::OneOf(rule)));
    components.schemas.insert(
        "SendLoginCodeRequest".to_owned(),
        RefOr::T(Schema::AllOf(all)),
    );
}

/// Where the code went (`dto.SendLoginCodeResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SendLoginCodeResponse {
    /// `email` or `sms`.
    pub channel: String,
    /// The masked email address or phone number.
    pub target: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

impl From<CodeSent> for SendLoginCodeResponse {
    fn from(s: CodeSent) -> Self {
        Self {
            channel: s.channel.as_str().into(),
            target: s.target,
            expires_in: s.expires_in,
        }
    }
}

/// The request's `Accept-Language`, when readable.
pub(super) fn accept_language(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_owned)
}

fn captcha(
    provider: Option<String>,
    token: Option<String>,
    challenge_id: Option<String>,
) -> CaptchaAnswer {
    CaptchaAnswer {
        provider,
        token,
        challenge_id,
    }
}

/// Send a one-time sign-in code by email or SMS. Targets without an account get the same
/// answer.
#[utoipa::path(post, path = "/auth/send-login-code", tag = "auth", request_body = SendLoginCodeRequest,
    params(
        ("X-Tenant-ID" = Option<String>, Header, description = "Tenant when the body has none"),
        ("Accept-Language" = Option<String>, Header, description = "Language of the message"),
    ),
    responses(
        (status = 200, description = "Sent", body = DataResponse<SendLoginCodeResponse>),
        (status = 400, description = "Not exactly one well-formed email or phone (field violations), unknown tenant, sign-in by code disabled (40000402), CAPTCHA", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many codes for this target, address or tenant; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Delivery failed (50300002; no code was issued) or the ephemeral store is down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn send_login_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<SendLoginCodeRequest>,
) -> Result<Json<DataResponse<SendLoginCodeResponse>>, ApiError> {
    let target = CodeTarget::parse(req.email.as_deref(), req.phone.as_deref())?;
    let sent = state
        .auth
        .send_login_code(SendCode {
            request: CodeRequest {
                target,
                tenant_id: tenant_of(req.tenant_id.as_deref(), &headers),
                client_ip,
                captcha: captcha(
                    req.captcha_provider,
                    req.captcha_token,
                    req.captcha_challenge_id,
                ),
            },
            accept_language: accept_language(&headers),
        })
        .await?;
    Ok(Json(DataResponse::new(sent.into())))
}

/// What both code sign-ins carry besides the target.
#[derive(Debug)]
pub struct CodeLoginFields {
    code: String,
    register_if_new: Option<bool>,
    tenant_id: Option<String>,
    captcha: CaptchaAnswer,
}

/// Defines the request body of a code sign-in whose target is the field `$target`; the
/// fields are flat (not `serde(flatten)`) so that a bad field is named in `errors[]`.
macro_rules! code_login_request {
    ($(#[$doc:meta])* $name:ident, $target:ident, $target_doc:literal, $target_pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize, ToSchema)]
        pub struct $name {
            #[doc = $target_doc]
            #[schema(pattern = $target_pattern)]
            pub $target: String,
            /// The code.
            #[schema(min_length = 1, pattern = r"\S")]
            pub code: String,
            /// Create the account if there is none (when the tenant allows sign-up by code).
            #[serde(default)]
            pub register_if_new: Option<bool>,
            /// Tenant; else `X-Tenant-ID`; else `default`.
            #[serde(default)]
            pub tenant_id: Option<String>,
            /// CAPTCHA provider (when the tenant always demands one).
            #[serde(default)]
            pub captcha_provider: Option<String>,
            /// CAPTCHA solution.
            #[serde(default)]
            pub captcha_token: Option<String>,
            /// CAPTCHA challenge id.
            #[serde(default)]
            pub captcha_challenge_id: Option<String>,
        }

        impl $name {
            /// The target as sent, and the rest.
            fn into_parts(self) -> (String, CodeLoginFields) {
                (
                    self.$target,
                    CodeLoginFields {
                        code: self.code,
                        register_if_new: self.register_if_new,
                        tenant_id: self.tenant_id,
                        captcha: captcha(
                            self.captcha_provider,
                            self.captcha_token,
                            self.captcha_challenge_id,
                        ),
                    },
                )
            }
        }
    };
}

code_login_request!(
    /// Sign-in by email code.
    EmailCodeLoginRequest,
    email,
    "The address the code was sent to.",
    r"^\s*[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+\s*$"
);
code_login_request!(
    /// Sign-in by SMS code.
    PhoneCodeLoginRequest,
    phone,
    "The number (E.164) the code was sent to.",
    r"^\s*\+[1-9][0-9]{6,14}\s*$"
);

/// `LoginResponse` and whether the sign-in created the account.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeLoginResponse {
    /// The sign-in.
    #[serde(flatten)]
    pub login: LoginResponse,
    /// The account was created by this sign-in.
    pub is_new_user: bool,
}

async fn code_login(
    state: &AppState,
    headers: &HeaderMap,
    client_ip: Option<String>,
    target: CodeTarget,
    fields: CodeLoginFields,
) -> Result<Json<CodeLoginResponse>, ApiError> {
    let method = target.channel.as_str();
    let result = state
        .auth
        .login_with_code(CodeLogin {
            request: CodeRequest {
                target,
                tenant_id: tenant_of(fields.tenant_id.as_deref(), headers),
                client_ip,
                captcha: fields.captcha,
            },
            code: fields.code,
            register_if_new: fields.register_if_new.unwrap_or(false),
        })
        .await;
    state.metrics.record_login(method, &result);
    let (outcome, is_new_user) = result?;
    Ok(Json(CodeLoginResponse {
        login: outcome.into(),
        is_new_user,
    }))
}

/// Sign in with a code sent by email.
#[utoipa::path(post, path = "/auth/login/email-code", tag = "auth", request_body = EmailCodeLoginRequest,
    params(("X-Tenant-ID" = Option<String>, Header, description = "Tenant when the body has none")),
    responses(
        (status = 200, description = "Signed in (amr otp_email), or requires_mfa with a TOTP challenge for users with TOTP when the policy asks", body = CodeLoginResponse),
        (status = 400, description = "Invalid input, wrong, expired or used code (40000401), no account without register_if_new (40000403), sign-in by code disabled (40000402)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The ephemeral store is down (codes fail closed)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login_email_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<EmailCodeLoginRequest>,
) -> Result<Json<CodeLoginResponse>, ApiError> {
    let (email, fields) = req.into_parts();
    let target = CodeTarget::email(&email)?;
    code_login(&state, &headers, client_ip, target, fields).await
}

/// Sign in with a code sent by SMS.
#[utoipa::path(post, path = "/auth/login/phone-code", tag = "auth", request_body = PhoneCodeLoginRequest,
    params(("X-Tenant-ID" = Option<String>, Header, description = "Tenant when the body has none")),
    responses(
        (status = 200, description = "Signed in (amr otp_sms), or requires_mfa with a TOTP challenge for users with TOTP when the policy asks", body = CodeLoginResponse),
        (status = 400, description = "Invalid input, wrong, expired or used code (40000401), no account without register_if_new (40000403), sign-in by code disabled (40000402)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; retry_after and Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The ephemeral store is down (codes fail closed)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login_phone_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client_ip): ClientIp,
    ApiJson(req): ApiJson<PhoneCodeLoginRequest>,
) -> Result<Json<CodeLoginResponse>, ApiError> {
    let (phone, fields) = req.into_parts();
    let target = CodeTarget::phone(&phone)?;
    code_login(&state, &headers, client_ip, target, fields).await
}
