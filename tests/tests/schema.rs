//! Schema fuzzing: schemathesis sends generated requests (schema-valid and not) to every
//! operation of the real server's OpenAPI document with all its checks, and the document must
//! say exactly what the server answers: no undocumented status, body or header, nothing
//! refused that the schema allows or accepted that it forbids, no 5xx, no panic, no hang. The
//! server's own request counters then show that every operation was reached past its
//! authentication and lookups. A second run, with every rate rule spent after two requests,
//! meets the 429s and their `Retry-After` against the document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{ServerOptions, ServerProcess, add_user, repo_root, write_config};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

/// Test cases per operation and phase: about a minute and a half on two cores. Longer runs:
/// docs/testing.md.
const MAX_EXAMPLES: &str = "100";

/// Operations whose success needs a secret that random data and the hooks do not have (a
/// delivered code, an authenticator's TOTP code, an MFA challenge, the current password, an
/// external provider's id_token); they must still be answered past 401 and 404.
const NO_SUCCESS_EXPECTED: &[&str] = &[
    "POST /api/v1/auth/login/email-code",
    "POST /api/v1/auth/login/phone-code",
    "POST /api/v1/auth/mfa/verify-challenge",
    "POST /api/v1/auth/mfa/send-code",
    "POST /api/v1/auth/mfa/totp/verify",
    "PUT /api/v1/auth/me/password",
    "POST /api/v1/auth/id-token/signin",
];

/// `keygate_http_requests_total` by operation (`METHOD route`): the statuses answered.
fn statuses_by_operation(metrics: &str) -> BTreeMap<String, BTreeSet<u16>> {
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(labels) = line
            .strip_prefix("keygate_http_requests_total{")
            .and_then(|rest| rest.rsplit_once('}'))
            .map(|(labels, _)| labels)
        else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let status = label("status").parse().expect("a numeric status label");
        out.entry(format!("{} {}", label("method"), label("route")))
            .or_default()
            .insert(status);
    }
    out
}

/// The server's OpenAPI document.
async fn document(server: &ServerProcess) -> Value {
    reqwest::get(format!("{}/openapi.json", server.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A server with cheap hashing and no CAPTCHA, delay or lock in the way, the rate limits
/// `rate_limits`, an administrator `admin` and an account `alice`; alice's id, and the data
/// directory to keep.
fn start(rate_limits: Value) -> (ServerProcess, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({
            "password_hashing": {"memory_kib": 8192, "iterations": 1, "parallelism": 1},
            "rate_limits": rate_limits,
            "policy": {
                "captcha": {"mode": "never"},
                "lockout": {"delay_after": 100000, "lock_after": 200000,
                            "ip_delay_after": 100000, "ip_lock_after": 200000}
            }
        }),
    );
    let env = vec![("KEYGATE_CONFIG".to_owned(), config)];
    add_user(
        dir.path(),
        &env,
        &["--username", "admin", "--role", "admin"],
        PW,
    );
    let user_id = add_user(dir.path(), &env, &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    (server, user_id, dir)
}

#[tokio::test]
async fn every_operation_answers_as_its_document_says() {
    // No rate rule: otherwise most answers would be 429 (the run below meets those).
    let (server, user_id, _dir) = start(json!({"rules": []}));
    fuzz(&server, &user_id, MAX_EXAMPLES, &[]).await;

    // Coverage, from the server's own counters: each operation of the document answered
    // something besides 401 and 404, and those with data to reach it, a success.
    let doc = document(&server).await;
    let answered = statuses_by_operation(&server.metrics().await);
    let mut gaps = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let op = format!("{} {path}", method.to_uppercase());
            let statuses = answered.get(&op).cloned().unwrap_or_default();
            if statuses.iter().any(|s| *s >= 500) {
                gaps.push(format!("{op} answered a 5xx: {statuses:?}"));
            }
            if statuses.iter().all(|s| [401, 404].contains(s)) {
                gaps.push(format!("{op} only answered {statuses:?}"));
            } else if !NO_SUCCESS_EXPECTED.contains(&op.as_str())
                && !statuses.iter().any(|s| (200..300).contains(s))
            {
                gaps.push(format!("{op} never succeeded: {statuses:?}"));
            }
        }
    }
    assert!(gaps.is_empty(), "coverage gaps:\n{}", gaps.join("\n"));
}

/// Runs schemathesis with all its checks against every operation of `server`'s document
/// (`max_examples` per operation and phase; `env` for the hooks) and fails on any failure it
/// reports, on a hang, and on a handler's panic in the server's log.
async fn fuzz(server: &ServerProcess, user_id: &str, max_examples: &str, env: &[(&str, &str)]) {
    let settings = repo_root().join("tests/schemathesis");
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new("python3")
        .current_dir(work.path())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(settings.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", server.base_url))
        .args(["--checks", "all", "--max-examples", max_examples])
        .args([
            "--workers",
            "2",
            "--no-color",
            "--generation-database",
            "none",
        ])
        .env("SCHEMATHESIS_HOOKS", settings.join("hooks.py"))
        .env("KEYGATE_FUZZ_URL", &server.base_url)
        .env("KEYGATE_FUZZ_ADMIN", "admin")
        .env("KEYGATE_FUZZ_USER", "alice")
        .env("KEYGATE_FUZZ_USER_ID", user_id)
        .env("KEYGATE_FUZZ_PASSWORD", PW)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs schemathesis)");
    let output = tokio::task::spawn_blocking(move || {
        let waited = Instant::now();
        while child.try_wait().expect("wait for schemathesis").is_none() {
            if waited.elapsed() > Duration::from_secs(600) {
                child.kill().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        child.wait_with_output().expect("schemathesis output")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "schemathesis ran {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        report.lines().rev().take(12).collect::<Vec<_>>().join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{report}\n--- server log (end) ---\n{}",
        output.status,
        server
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "a handler panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The same checks with every rate rule spent after two requests from the fuzzer's address, so
/// that the 429s the server gives (with their `Retry-After`) meet the document: each rate-limited
/// operation must have answered 429, and schemathesis must find every answer documented. The
/// hooks' own requests (sign-ins for tokens, tickets) come through a trusted proxy from
/// addresses of their own, and spend nothing of it.
#[tokio::test]
async fn with_rate_limits_spent_every_429_is_as_documented() {
    let rules: Vec<Value> = keygate_config::RATE_LIMITED_ENDPOINTS
        .iter()
        .filter(|e| **e != "sms_delivery")
        .map(|e| json!({"name": format!("{e}-per-ip"), "endpoints": [e], "key": "client_ip", "limit": 2, "window_seconds": 3600}))
        .collect();
    let (server, user_id, _dir) =
        start(json!({"trusted_proxies": ["127.0.0.1/32"], "rules": rules}));
    fuzz(
        &server,
        &user_id,
        "25",
        &[("KEYGATE_FUZZ_OWN_ADDRESSES", "1")],
    )
    .await;

    // Every operation whose document says 429 answered it, but `generate-ticket`, whose limit
    // is a ServiceAccountGrant's (none here), and the two MFA-challenge operations, whose rules
    // are checked once the challenge is known (they count per account too), which random data
    // never names.
    let doc = document(&server).await;
    let answered = statuses_by_operation(&server.metrics().await);
    let mut limited = 0;
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["responses"].get("429").is_none()
                || path.ends_with("/generate-ticket")
                || path.ends_with("/mfa/send-code")
                || path.ends_with("/mfa/verify-challenge")
            {
                continue;
            }
            limited += 1;
            let op = format!("{} {path}", method.to_uppercase());
            let statuses = answered.get(&op).cloned().unwrap_or_default();
            if !statuses.contains(&429) {
                missing.push(format!("{op}: {statuses:?}"));
            }
        }
    }
    assert!(limited >= 10, "{limited} operations document 429");
    assert!(
        missing.is_empty(),
        "never answered 429:\n{}",
        missing.join("\n")
    );
}
