//! The OpenAPI document's shared parts, added in one walk over the generated document: the
//! responses operations share (the problems of a JSON body, 400/413/415; of a bearer token,
//! 401; of rate limits, 429 with `Retry-After`; of backing services, 503; of an internal
//! failure, 500), each only where the server can answer with it, the `X-Request-ID` header of
//! every response, and the server's whitespace spelled out in the schemas' patterns.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, Header, OpenApi, Ref, RefOr, Required, Response};

/// Operations (paths below the API prefix or at the root) and the rate-limit endpoint their
/// rules name (`rate_limits.rules[].endpoints`); each answers 429 when a rule of it is spent.
/// `generate-ticket` has no rule endpoint: its limit is the ServiceAccount grant's own.
pub const RATE_LIMITED: &[(&str, &str)] = &[
    ("/auth/login", "login"),
    ("/auth/refresh", "refresh"),
    ("/auth/mfa/verify-challenge", "mfa_verify"),
    ("/auth/mfa/send-code", "mfa_send_code"),
    ("/auth/captcha/challenge", "captcha_challenge"),
    ("/public/key-exchange", "key_exchange"),
    ("/auth/send-login-code", "send_code"),
    ("/auth/login/email-code", "code_login"),
    ("/auth/login/phone-code", "code_login"),
    ("/auth/ticket/signin", "ticket_signin"),
    ("/auth/id-token/signin", "id_token_signin"),
    ("/auth/me/password", "password_change"),
    (
        "/auth/generate-ticket",
        "a ServiceAccountGrant's rate_limit",
    ),
];

/// Paths whose handlers reach no database, Redis or external service, so never answer 503
/// (readiness reports the services, and says so in its own 503).
const WITHOUT_BACKING_SERVICES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/.well-known/openid-configuration",
    "/.well-known/jwks.json",
];

/// Adds the shared responses to every operation of `doc`, whose API routes are served under
/// `base_path`.
pub struct SharedResponses<'a> {
    /// The API prefix (`/api/v1`, or empty).
    pub base_path: &'a str,
}

impl utoipa::Modify for SharedResponses<'_> {
    fn modify(&self, doc: &mut OpenApi) {
        if let Some(components) = doc.components.as_mut() {
            super::codes::exactly_one_target(components);
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let route = path.strip_prefix(self.base_path).unwrap_or(path);
            let rate_rule = RATE_LIMITED
                .iter()
                .find(|(p, _)| *p == route)
                .map(|(_, rule)| *rule);
            let backed = !WITHOUT_BACKING_SERVICES.contains(&path.as_str());
            for op in operations(item) {
                add_shared(op, rate_rule, backed);
            }
        }
    }
}

/// The operations of a path, whatever their method.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// The characters the server trims and calls whitespace (Unicode `White_Space`, as Rust's
/// `char::is_whitespace`), as a regular-expression class body.
const WHITESPACE: &str = r"\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Patterns are written with `\s` and `\S`; ECMA-262 (the document's dialect) and the server
/// disagree about a few characters of those, so the document spells out the server's set.
pub fn spell_whitespace(doc: &mut OpenApi) {
    fn spell(pattern: &mut String) {
        *pattern = pattern
            .replace(r"[^@\s.]", &format!("[^@.{WHITESPACE}]"))
            .replace(r"[^@\s]", &format!("[^@{WHITESPACE}]"))
            .replace(r"\s", &format!("[{WHITESPACE}]"))
            .replace(r"\S", &format!("[^{WHITESPACE}]"));
    }
    fn walk(schema: &mut RefOr<Schema>) {
        let RefOr::T(schema) = schema else {
            return;
        };
        match schema {
            Schema::Object(o) => {
                if let Some(p) = o.pattern.as_mut() {
                    spell(p);
                }
                o.properties.values_mut().for_each(walk);
            }
            Schema::Array(a) => {
                if let ArrayItems::RefOrSchema(items) = &mut a.items {
                    walk(items);
                }
            }
            Schema::OneOf(o) => o.items.iter_mut().for_each(walk),
            Schema::AllOf(o) => o.items.iter_mut().for_each(walk),
            Schema::AnyOf(o) => o.items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(components) = doc.components.as_mut() {
        components.schemas.values_mut().for_each(walk);
    }
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for param in op.parameters.iter_mut().flatten() {
                if let Some(schema) = param.schema.as_mut() {
                    walk(schema);
                }
            }
        }
    }
}

fn add_shared(op: &mut Operation, rate_rule: Option<&str>, backed: bool) {
    let body = op.request_body.as_ref();
    let has_body = body.is_some();
    // A required body is read by the JSON extractor, which checks the content type; the one
    // optional body (logout) is parsed whatever the type says.
    let json_only = body.is_some_and(|b| matches!(b.required, Some(Required::True)));
    let bearer = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_query = op.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
    });
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description).into());
    };
    if has_body || has_query {
        add(
            "400",
            "Malformed JSON, a wrong type or a missing field (errors[] names each)",
        );
    }
    if bearer {
        add("401", "Missing, invalid, expired or revoked bearer token");
    }
    if has_body {
        add("413", "Body larger than 64 KiB");
    }
    if json_only {
        add(
            "415",
            "Body not sent as JSON (Content-Type: application/json)",
        );
    }
    if let Some(rule) = rate_rule {
        add(
            "429",
            &format!("Too many requests (rate rules of `{rule}`); retry_after and Retry-After"),
        );
    }
    if backed {
        add(
            "503",
            "A backing service (database, Redis) is unavailable; retry later",
        );
    }
    add(
        "500",
        "The request failed inside the server; the body gives only the request_id",
    );
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            "X-Request-ID".to_owned(),
            header(
                Type::String,
                "Id of the request (the caller's when well formed)",
            ),
        );
        match status.as_str() {
            "429" => {
                response.headers.insert(
                    "Retry-After".to_owned(),
                    header(Type::Integer, "Seconds to wait (as retry_after)"),
                );
            }
            "401" => {
                response.headers.insert(
                    "WWW-Authenticate".to_owned(),
                    header(Type::String, "`Bearer`"),
                );
            }
            _ => {}
        }
    }
}

fn problem(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        "application/problem+json".to_owned(),
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    response
}

fn header(ty: Type, description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(ty));
    header.description = Some(description.to_owned());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(doc: &OpenApi, method: &str, path: &str) -> Vec<String> {
        let item = &doc.paths.paths[path];
        let op = match method {
            "get" => item.get.as_ref(),
            "put" => item.put.as_ref(),
            _ => item.post.as_ref(),
        }
        .unwrap_or_else(|| panic!("{method} {path}"));
        op.responses.responses.keys().cloned().collect()
    }

    #[test]
    fn shared_responses_go_where_the_server_gives_them() {
        let doc = super::super::openapi("/api/v1");
        let login = statuses(&doc, "post", "/api/v1/auth/login");
        for s in ["400", "413", "415", "429", "500", "503"] {
            assert!(login.contains(&s.to_owned()), "login lacks {s}: {login:?}");
        }
        assert!(!login.contains(&"401".to_owned()));
        let logout = statuses(&doc, "post", "/api/v1/auth/logout");
        assert!(logout.contains(&"401".to_owned()) && logout.contains(&"413".to_owned()));
        assert!(!logout.contains(&"415".to_owned()), "{logout:?}");
        let me = statuses(&doc, "get", "/api/v1/auth/me");
        assert!(!me.contains(&"415".to_owned()) && !me.contains(&"429".to_owned()));
        let health = statuses(&doc, "get", "/healthz");
        assert_eq!(health, ["200", "500"]);
    }

    #[test]
    fn patterns_spell_the_servers_whitespace() {
        let json = super::super::openapi("").to_pretty_json().unwrap();
        assert!(!json.contains(r"\\s") && !json.contains(r"\\S"), "{json}");
        assert!(json.contains(r"\\x85"));
    }

    #[test]
    fn rate_limited_operations_exist_and_name_known_rules() {
        let doc = super::super::openapi("");
        for (path, rule) in RATE_LIMITED {
            assert!(doc.paths.paths.contains_key(*path), "{path}");
            assert!(
                keygate_config::RATE_LIMITED_ENDPOINTS.contains(rule) || path.contains("ticket"),
                "{rule}"
            );
        }
    }
}
