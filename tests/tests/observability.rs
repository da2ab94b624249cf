//! Observability against real receivers: spans of a sign-in exported over OTLP (gRPC and
//! HTTP) to a real Jaeger collector, continuing the caller's `traceparent` and carried on to
//! the OIDC provider; `/metrics` read by the Python `prometheus_client` parser while counters
//! move; JSON logs whose trace id is the problem body's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::collector::{Collector, StoredSpan};
use keygate_tests::oidc::OidcProvider;
use keygate_tests::{ServerOptions, ServerProcess, add_user, write_config};
use serde_json::{Value, json};
use std::collections::HashMap;

const PW: &str = "correct horse battery staple";

/// A caller's sampled `traceparent`: (header, trace id, parent span id).
fn traceparent() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let parent = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{parent}-01"), trace_id, parent)
}

fn otel_env(endpoint: &str, protocol: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "keygate-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// A server with cheap hashing on a data directory of its own, one user (`user_args`), and
/// `env` added when it starts.
fn fast_server(
    user_args: &[&str],
    env: Vec<(String, String)>,
) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({"password_hashing": {"memory_kib": 8192, "iterations": 1, "parallelism": 1}}),
    );
    let mut all = vec![("KEYGATE_CONFIG".to_owned(), config)];
    add_user(dir.path(), &all, user_args, PW);
    all.extend(env);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env: all,
        ..Default::default()
    });
    (dir, server)
}

/// The spans under `root` (by parent links), names only.
fn descendants<'a>(spans: &'a [StoredSpan], root: &str) -> Vec<&'a StoredSpan> {
    let mut out = Vec::new();
    let mut frontier = vec![root.to_owned()];
    while let Some(parent) = frontier.pop() {
        for s in spans.iter().filter(|s| s.parent_span_id == parent) {
            frontier.push(s.span_id.clone());
            out.push(s);
        }
    }
    out
}

async fn password_sign_in_is_traced(protocol: &str) {
    let collector = Collector::start();
    let endpoint = if protocol == "grpc" {
        &collector.otlp_grpc
    } else {
        &collector.otlp_http
    };
    let (_dir, server) = fast_server(
        &["--username", "alice", "--email", "alice@example.com"],
        otel_env(endpoint, protocol),
    );
    let (header, trace_id, parent) = traceparent();
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", server.base_url))
        .header("traceparent", &header)
        .json(&json!({"identity": "alice@example.com", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let wanted = [
        "password.verify",
        "store.login_lookup",
        "token.sign",
        "auth.risk",
    ];
    let spans = collector
        .wait_for(&trace_id, |spans| {
            wanted.iter().all(|w| spans.iter().any(|s| s.name == *w))
                && spans.iter().any(|s| s.kind.contains("SERVER"))
        })
        .await;
    let server_span = spans
        .iter()
        .find(|s| s.kind.contains("SERVER"))
        .unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    // The caller's span is the server span's parent: one trace across the hop.
    assert_eq!(server_span.trace_id, trace_id);
    assert_eq!(server_span.parent_span_id, parent, "{server_span:#?}");
    assert_eq!(
        server_span.name, "POST /api/v1/auth/login",
        "{server_span:#?}"
    );
    assert_eq!(server_span.service, "keygate-test");
    assert_eq!(server_span.attr("http.request.method"), Some("POST"));
    assert_eq!(server_span.attr("http.route"), Some("/api/v1/auth/login"));
    assert_eq!(server_span.attr("url.path"), Some("/api/v1/auth/login"));
    assert_eq!(server_span.attr("http.response.status_code"), Some("200"));
    // The auth steps are children of the server span.
    let under: Vec<&str> = descendants(&spans, &server_span.span_id)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for step in wanted.iter().chain(&[
        "auth.password_sign_in",
        "auth.attempt_gate",
        "auth.mfa_decision",
        "auth.session_open",
    ]) {
        assert!(
            under.contains(step),
            "{step} is not under the server span: {under:?}"
        );
    }
    let lookup = spans
        .iter()
        .find(|s| s.name == "store.login_lookup")
        .unwrap();
    assert_eq!(lookup.attr("db.system.name"), Some("sqlite"));
    // Nothing secret or personal anywhere in the stored trace: names, attributes, events,
    // resource.
    let stored = collector.trace_text(&trace_id).await;
    assert!(stored.contains("store.login_lookup"), "{stored}");
    for secret in [
        PW,
        "alice@example.com",
        "alice",
        access.as_str(),
        refresh.as_str(),
    ] {
        assert!(
            !stored.contains(secret),
            "the trace holds {secret:?}: {stored}"
        );
    }
}

#[tokio::test]
async fn a_password_sign_in_is_traced_to_a_real_collector_over_grpc() {
    password_sign_in_is_traced("grpc").await;
}

#[tokio::test]
async fn a_password_sign_in_is_traced_to_a_real_collector_over_http() {
    password_sign_in_is_traced("http/protobuf").await;
}

#[tokio::test]
async fn the_jwks_fetch_of_an_id_token_sign_in_carries_the_trace_to_the_provider() {
    let collector = Collector::start();
    let idp = OidcProvider::start(&[("k1", "RS256")]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({"oidc_providers": [{"name": "corp", "issuer": idp.issuer, "client_id": "keygate",
            "provisioning": "create", "allow_http": true}]}),
    );
    let mut env = vec![("KEYGATE_CONFIG".to_owned(), config)];
    env.extend(otel_env(&collector.otlp_grpc, "grpc"));
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let token = idp.id_token("keygate", "alice");
    let (header, trace_id, parent) = traceparent();
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/id-token/signin", server.base_url))
        .header("traceparent", &header)
        .json(&json!({"provider": "corp", "id_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let spans = collector
        .wait_for(&trace_id, |spans| {
            spans.iter().filter(|s| s.kind.contains("CLIENT")).count() >= 2
                && spans.iter().any(|s| s.kind.contains("SERVER"))
        })
        .await;
    let server_span = spans.iter().find(|s| s.kind.contains("SERVER")).unwrap();
    assert_eq!(server_span.parent_span_id, parent);
    let clients: HashMap<&str, &StoredSpan> = spans
        .iter()
        .filter(|s| s.kind.contains("CLIENT"))
        .map(|s| (s.attr("url.full").unwrap_or_default(), s))
        .collect();
    let jwks = clients
        .iter()
        .find(|(url, _)| url.contains("jwks"))
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no client span for the JWKS: {clients:#?}"));
    assert_eq!(jwks.attr("http.request.method"), Some("GET"));
    assert_eq!(jwks.attr("http.response.status_code"), Some("200"));
    assert!(
        descendants(&spans, &server_span.span_id)
            .iter()
            .any(|s| s.span_id == jwks.span_id),
        "the JWKS fetch is not under the request's span"
    );
    // The provider received the trace, with the client span as the parent.
    let requests = idp.requests();
    let jwks_path = jwks
        .attr("url.full")
        .unwrap()
        .split(&idp.issuer)
        .nth(1)
        .unwrap()
        .to_owned();
    let received = requests
        .iter()
        .find(|(method, path, _)| method == "GET" && *path == jwks_path)
        .unwrap_or_else(|| panic!("the provider saw no {jwks_path}: {requests:?}"));
    assert_eq!(received.2, format!("00-{trace_id}-{}-01", jwks.span_id));
}

/// The metric families of an OpenMetrics text, parsed by Python's `prometheus_client`:
/// `{"name{label=value,...}": value}` for every sample.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_with_prometheus_client_and_move_with_sign_ins() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &json!({
            "password_hashing": {"memory_kib": 8192, "iterations": 1, "parallelism": 1},
            "rate_limits": {"rules": [{"name": "login-ip", "endpoints": ["login"], "key": "client_ip", "limit": 4, "window_seconds": 60}]},
        }),
    );
    let env = vec![
        ("KEYGATE_CONFIG".to_owned(), config),
        ("KEYGATE_LOG_FORMAT".to_owned(), "json".to_owned()),
    ];
    add_user(dir.path(), &env, &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let before = parse_metrics(&server.metrics().await);
    let client = reqwest::Client::new();
    let login = |password: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/v1/auth/login", server.base_url);
        async move {
            let res = client
                .post(url)
                .json(&json!({"identity": "alice", "password": password}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(login(PW).await.0, 200);
    let (status, failed) = login("wrong password entirely").await;
    assert_eq!(status, 400, "{failed}");
    assert_eq!(login("wrong password again").await.0, 400);
    // The limit is 4 per address: two more pass the rule, then it refuses.
    let mut limited = 0;
    for _ in 0..4 {
        if login("still wrong").await.0 == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 1, "the rate limit never answered 429");

    let text = server.metrics().await;
    let after = parse_metrics(&text);
    let delta = |key: &str| sample(&after, key) - sample(&before, key);
    assert_eq!(
        delta("keygate_logins_total{method=password,outcome=success}"),
        1.0,
        "{text}"
    );
    assert!(
        delta("keygate_logins_total{method=password,outcome=invalid_credentials}") >= 2.0,
        "{text}"
    );
    assert_eq!(
        delta("keygate_rate_limit_rejections_total{rule=login-ip}"),
        f64::from(limited),
        "{text}"
    );
    assert!(
        delta(
            "keygate_http_requests_total{method=POST,outcome=client_error,route=/api/v1/auth/login,status=400}"
        ) >= 2.0,
        "{text}"
    );
    // Store latency comes from the store's spans; the hashing queue is idle again.
    // One lookup per sign-in that got past the rate limit.
    assert_eq!(
        delta(
            "keygate_store_operation_duration_seconds_count{operation=store.login_lookup,system=sqlite}"
        ),
        delta("keygate_logins_total{method=password,outcome=success}")
            + delta("keygate_logins_total{method=password,outcome=invalid_credentials}"),
        "{text}"
    );
    assert_eq!(
        after.get("keygate_password_hash_queue_depth{}"),
        Some(&0.0),
        "{text}"
    );

    // The failed request's problem body and its log line share the trace id.
    let trace_id = failed["trace_id"]
        .as_str()
        .expect("trace_id in the problem");
    let span_id = failed["span_id"].as_str().expect("span_id in the problem");
    assert_eq!(trace_id.len(), 32, "{failed}");
    assert_eq!(span_id.len(), 16, "{failed}");
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|l| l["trace_id"] == trace_id)
        .unwrap_or_else(|| panic!("no log line with trace {trace_id}:\n{log}"));
    assert_eq!(line["span_id"], span_id, "{line}");
    assert_eq!(line["status"], 400, "{line}");
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    assert!(
        !log.contains(PW) && !log.contains("wrong password"),
        "a password is in the log"
    );
}

#[tokio::test]
async fn a_dead_collector_never_fails_or_slows_a_request_and_is_counted() {
    // Nothing listens there: every export fails.
    let dead = format!("http://127.0.0.1:{}", keygate_tests::free_port());
    let mut env = otel_env(&dead, "http/protobuf");
    env.push(("OTEL_TRACES_SAMPLER".to_owned(), "always_on".to_owned()));
    let (_dir, server) = fast_server(&["--username", "alice"], env);
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let res = client
            .post(format!("{}/api/v1/auth/login", server.base_url))
            .json(&json!({"identity": "alice", "password": PW}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let took = started.elapsed();
    // Twenty cheap sign-ins; a request waiting on the exporter would take seconds each.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let failures = keygate_tests::eventually(
        std::time::Duration::from_secs(30),
        "a counted export failure",
        async || {
            let m = parse_metrics(&server.metrics().await);
            let n = sample(&m, "keygate_trace_export_failures_total{}");
            (n >= 1.0).then_some(n)
        },
    )
    .await;
    assert!(failures >= 1.0);
    assert!(
        server.log().contains("trace export failed"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn lockouts_codes_and_the_signing_key_are_counted_without_telling_accounts_apart() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut first = keygate_tests::generate_signing_key();
    first["activates_at"] = json!(now - 100);
    let config = |key: &Value| {
        json!({
            "password_hashing": {"memory_kib": 8192, "iterations": 1, "parallelism": 1},
            "rate_limits": {"rules": []},
            "signing_keys": [key],
            "policy": {"captcha": {"mode": "never"},
                       "lockout": {"delay_after": 2, "base_delay_seconds": 1, "max_delay_seconds": 1,
                                   "lock_after": 3, "lock_seconds": 600, "ip_delay_after": 1000, "ip_lock_after": 2000}},
        })
    };
    let path = write_config(dir.path(), &config(&first));
    let env = vec![("KEYGATE_CONFIG".to_owned(), path.clone())];
    add_user(
        dir.path(),
        &env,
        &["--username", "alice", "--email", "alice@example.com"],
        PW,
    );
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        env,
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let post = |path: &'static str, body: Value| {
        let client = client.clone();
        let url = format!("{}/api/v1{path}", server.base_url);
        async move { keygate_tests::post_json(&client, &url, None, &body).await }
    };
    let before = parse_metrics(&server.metrics().await);
    let key_age = |m: &HashMap<String, f64>| {
        m.iter()
            .find(|(k, _)| k.starts_with("keygate_signing_key_age_seconds{"))
            .map(|(k, v)| (k.clone(), *v))
    };
    let (age_key, age) = key_age(&before).expect("the key's age");
    assert!(
        age_key.contains(first["kid"].as_str().unwrap()),
        "{age_key}"
    );
    assert!((100.0..160.0).contains(&age), "{age}");

    // The same three failures lock a real account and an unknown identifier, and both count.
    for identity in ["alice", "nobody"] {
        let wrong = || {
            post(
                "/auth/login",
                json!({"identity": identity, "password": "wrong password"}),
            )
        };
        assert_eq!(wrong().await.0, 400);
        assert_eq!(wrong().await.0, 400);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(wrong().await.0, 400);
        let (status, body) = wrong().await;
        assert_eq!(status, 429, "{identity}: {body}");
    }
    // A code for an account and one for an address without one: counted alike.
    for email in ["alice@example.com", "nobody@example.com"] {
        let (status, body) = post("/auth/send-login-code", json!({"email": email})).await;
        assert_eq!(status, 200, "{body}");
    }
    // A new key takes over: one change.
    let second = keygate_tests::generate_signing_key();
    keygate_tests::write_atomically(
        std::path::Path::new(&path),
        &serde_json::to_vec(&config(&second)).unwrap(),
    );
    let second_kid = second["kid"].as_str().unwrap().to_owned();
    let after = keygate_tests::eventually(
        std::time::Duration::from_secs(20),
        "the new key",
        async || {
            let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", server.base_url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            jwks["keys"]
                .as_array()?
                .iter()
                .any(|k| k["kid"] == second_kid.as_str())
                .then_some(())?;
            Some(parse_metrics(&server.metrics().await))
        },
    )
    .await;
    let delta = |key: &str| sample(&after, key) - sample(&before, key);
    assert_eq!(delta("keygate_lockouts_total{}"), 2.0);
    assert_eq!(
        delta("keygate_codes_sent_total{channel=email,outcome=sent,purpose=login_code}"),
        2.0
    );
    assert_eq!(delta("keygate_signing_key_changes_total{}"), 1.0);
    // The new key has no activation time: no age rather than a made-up one.
    assert_eq!(key_age(&after), None);
}
