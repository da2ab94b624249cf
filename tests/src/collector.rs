//! A real OpenTelemetry collector for tracing tests: Jaeger v2 (built on the OpenTelemetry
//! Collector, from `scripts/jaeger/build.sh`; the test command exports its path in
//! `KEYGATE_TEST_JAEGER`) with OTLP receivers over gRPC and HTTP and in-memory storage, on free
//! ports, and its query API (`/api/v3/traces/{id}`) to read what arrived.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Jaeger process; killed on drop.
pub struct Collector {
    child: Child,
    /// OTLP/gRPC endpoint (`http://127.0.0.1:PORT`).
    pub otlp_grpc: String,
    /// OTLP/HTTP endpoint (`http://127.0.0.1:PORT`).
    pub otlp_http: String,
    query: String,
    _dir: tempfile::TempDir,
}

/// One span as the collector stored it.
#[derive(Debug, Clone)]
pub struct StoredSpan {
    /// Lowercase hex.
    pub trace_id: String,
    /// Lowercase hex.
    pub span_id: String,
    /// Lowercase hex; empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, ...
    pub kind: String,
    /// The resource's `service.name`.
    pub service: String,
    /// String forms of the attributes.
    pub attributes: Vec<(String, String)>,
}

impl StoredSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn binary() -> String {
    std::env::var("KEYGATE_TEST_JAEGER").unwrap_or_else(|_| {
        panic!("KEYGATE_TEST_JAEGER is not set: run the tests through scripts/test (it builds Jaeger with scripts/jaeger/build.sh)")
    })
}

/// Base64 OTLP/JSON ids (the v3 API's JSON follows the proto3 mapping) to lowercase hex.
fn hex_id(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    let s = v.as_str().unwrap_or_default();
    if (s.len() == 32 || s.len() == 16) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s.to_ascii_lowercase();
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(hex::encode)
        .unwrap_or_default()
}

/// `SPAN_KIND_SERVER` and so on, whether the API sent the enum's name or its number.
fn span_kind(v: &serde_json::Value) -> String {
    const KINDS: [&str; 6] = [
        "SPAN_KIND_UNSPECIFIED",
        "SPAN_KIND_INTERNAL",
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CLIENT",
        "SPAN_KIND_PRODUCER",
        "SPAN_KIND_CONSUMER",
    ];
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| KINDS.get(n as usize))
            .map_or_else(|| n.to_string(), |k| (*k).to_owned()),
        other => other.as_str().unwrap_or_default().to_owned(),
    }
}

fn any_value(v: &serde_json::Value) -> String {
    for k in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = v.get(k) {
            return x.as_str().map_or_else(|| x.to_string(), str::to_owned);
        }
    }
    v.to_string()
}

impl Collector {
    /// Starts Jaeger and waits until its OTLP receivers and query API listen.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("collector dir");
        let [grpc, http, query, query_grpc, health] = [(); 5].map(|()| crate::free_port());
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config).expect("collector config");
        let log = std::fs::File::create(dir.path().join("jaeger.log")).expect("collector log");
        let child = Command::new(binary())
            .arg(format!("--config=file:{}", path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn jaeger");
        let collector = Self {
            child,
            otlp_grpc: format!("http://127.0.0.1:{grpc}"),
            otlp_http: format!("http://127.0.0.1:{http}"),
            query: format!("http://127.0.0.1:{query}"),
            _dir: dir,
        };
        let started = Instant::now();
        for port in [grpc, http, query] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "jaeger did not listen on {port}:\n{}",
                    collector.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        collector
    }

    /// Jaeger's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// A trace as the query API answers it (names, attributes, events, resource), as text.
    pub async fn trace_text(&self, trace_id: &str) -> String {
        reqwest::get(format!("{}/api/v3/traces/{trace_id}", self.query))
            .await
            .expect("GET trace")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The spans of a trace stored so far (empty when none arrived).
    pub async fn trace(&self, trace_id: &str) -> Vec<StoredSpan> {
        self.spans(&format!("{}/api/v3/traces/{trace_id}", self.query))
            .await
    }

    /// The spans of the traces of `service` from the last ten minutes.
    pub async fn service_spans(&self, service: &str) -> Vec<StoredSpan> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let rfc3339 = |secs: u64| {
            let out = Command::new("date")
                .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .expect("date");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v3/traces", self.query),
            [
                ("query.service_name", service.to_owned()),
                ("query.start_time_min", rfc3339(now - 600)),
                ("query.start_time_max", rfc3339(now + 60)),
                ("query.num_traces", "1000".to_owned()),
            ],
        )
        .expect("search URL");
        self.spans(url.as_str()).await
    }

    async fn spans(&self, url: &str) -> Vec<StoredSpan> {
        let res = reqwest::get(url).await.expect("GET traces");
        if !res.status().is_success() {
            // 404: nothing stored yet.
            return Vec::new();
        }
        let body: serde_json::Value = res.json().await.expect("trace json");
        let mut spans = Vec::new();
        let empty = Vec::new();
        for rs in body["result"]["resourceSpans"].as_array().unwrap_or(&empty) {
            let service = rs["resource"]["attributes"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .find(|a| a["key"] == "service.name")
                .map(|a| any_value(&a["value"]))
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().unwrap_or(&empty) {
                for s in ss["spans"].as_array().unwrap_or(&empty) {
                    spans.push(StoredSpan {
                        trace_id: hex_id(&s["traceId"]),
                        span_id: hex_id(&s["spanId"]),
                        parent_span_id: hex_id(&s["parentSpanId"]),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        kind: span_kind(&s["kind"]),
                        service: service.clone(),
                        attributes: s["attributes"]
                            .as_array()
                            .unwrap_or(&empty)
                            .iter()
                            .map(|a| {
                                (
                                    a["key"].as_str().unwrap_or_default().to_owned(),
                                    any_value(&a["value"]),
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
        spans
    }

    /// Waits until the trace has a span for which `done` holds over all spans, and returns
    /// them.
    pub async fn wait_for(
        &self,
        trace_id: &str,
        done: impl Fn(&[StoredSpan]) -> bool,
    ) -> Vec<StoredSpan> {
        let started = Instant::now();
        loop {
            let spans = self.trace(trace_id).await;
            if done(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "trace {trace_id} incomplete after 30 s; spans so far: {:#?}\njaeger log:\n{}",
                spans
                    .iter()
                    .map(|s| (&s.name, &s.service, &s.span_id, &s.parent_span_id))
                    .collect::<Vec<_>>(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
