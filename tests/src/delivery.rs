//! Receivers for one-time codes: a real SMTP server process (aiosmtpd with its Maildir
//! handler) whose messages are decoded by Python's `email` package, and an HTTP receiver for
//! the SMS webhook that records each request and answers with a settable status.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An `aiosmtpd` server delivering into a Maildir; killed on drop.
pub struct SmtpServer {
    child: Child,
    /// Port on 127.0.0.1.
    pub port: u16,
    maildir: tempfile::TempDir,
    tls: Option<SmtpTls>,
}

/// How an [`SmtpServer`] speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// SMTPS: TLS from the first byte.
    Implicit,
    /// STARTTLS, required before mail.
    StartTls,
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One received email, decoded.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mail {
    /// `To` header.
    pub to: String,
    /// `From` header.
    pub from: String,
    /// Decoded subject.
    pub subject: String,
    /// The text/plain part.
    pub text: String,
    /// The text/html part.
    pub html: String,
}

impl Mail {
    /// The first run of `len` digits in the plain-text part.
    pub fn code(&self, len: usize) -> String {
        first_digits(&self.text, len).unwrap_or_else(|| panic!("no code in {:?}", self.text))
    }
}

/// The first run of exactly `len` ASCII digits in `text`.
pub fn first_digits(text: &str, len: usize) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == len)
        .map(str::to_owned)
}

const DECODE: &str = r#"
import email, email.policy, json, os, sys
out = []
d = os.path.join(sys.argv[1], "new")
for name in sorted(os.listdir(d), key=lambda n: os.stat(os.path.join(d, n)).st_mtime_ns):
    with open(os.path.join(d, name), "rb") as f:
        m = email.message_from_binary_file(f, policy=email.policy.default)
    text = m.get_body(preferencelist=("plain",))
    html = m.get_body(preferencelist=("html",))
    out.append({"to": str(m["To"]), "from": str(m["From"]), "subject": str(m["Subject"]),
                "text": text.get_content() if text else "", "html": html.get_content() if html else ""})
print(json.dumps(out))
"#;

impl SmtpServer {
    /// Starts `python3 -m aiosmtpd` on a free port (scripts/test installs aiosmtpd).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server speaking TLS as `tls` says, with a certificate for 127.0.0.1 from a CA of its
    /// own ([`SmtpServer::ca_file`]; made with `openssl`).
    pub fn start_tls(tls: SmtpTls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<SmtpTls>) -> Self {
        let port = crate::free_port();
        let maildir = tempfile::tempdir().expect("maildir");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
        if let Some(mode) = tls {
            let d = maildir.path();
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ];
            openssl(
                d,
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &[
                        "-keyout",
                        "ca.key",
                        "-out",
                        "ca.pem",
                        "-days",
                        "2",
                        "-subj",
                        "/CN=keygate-test-smtp-ca",
                    ],
                ]
                .concat(),
            );
            openssl(
                d,
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        "server.key",
                        "-out",
                        "server.csr",
                        "-subj",
                        "/CN=127.0.0.1",
                    ],
                ]
                .concat(),
            );
            std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san");
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-days",
                    "2",
                    "-extfile",
                    "san.ext",
                ],
            );
            let (cert, key) = match mode {
                SmtpTls::Implicit => ("--smtpscert", "--smtpskey"),
                SmtpTls::StartTls => ("--tlscert", "--tlskey"),
            };
            cmd.arg(cert)
                .arg(d.join("server.pem"))
                .arg(key)
                .arg(d.join("server.key"));
        }
        let child = cmd
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (scripts/test installs aiosmtpd)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "aiosmtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            maildir,
            tls,
        }
    }

    /// `smtp://127.0.0.1:PORT`, `smtps://…` or `smtp://…?tls=required` for the TLS modes.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("smtp://127.0.0.1:{}", self.port),
            Some(SmtpTls::Implicit) => format!("smtps://127.0.0.1:{}", self.port),
            Some(SmtpTls::StartTls) => format!("smtp://127.0.0.1:{}?tls=required", self.port),
        }
    }

    /// The CA that signed a TLS server's certificate (PEM).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.maildir.path().join("ca.pem")
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let dir = self.maildir.path().join("mail");
        if !dir.join("new").exists() {
            return Vec::new();
        }
        let out = Command::new("python3")
            .args(["-c", DECODE])
            .arg(&dir)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "decoding mail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("decoded mail")
    }

    /// The messages to `to`, oldest first.
    pub fn messages_to(&self, to: &str) -> Vec<Mail> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.contains(to))
            .collect()
    }

    /// Waits (up to 10 s) until the `n`-th message to `to` has arrived and returns it.
    pub async fn wait_for(&self, to: &str, n: usize) -> Mail {
        let started = Instant::now();
        loop {
            let mut found = self.messages_to(to);
            if found.len() >= n {
                return found.swap_remove(n - 1);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "message {n} to {to} did not arrive (have {})",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct WebhookCall {
    /// The `X-Keygate-Signature` header, if sent.
    pub signature: Option<String>,
    /// The raw body.
    pub body: String,
    /// The body as JSON.
    pub json: serde_json::Value,
}

/// An HTTP server on 127.0.0.1 recording POSTs; stops when dropped.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT/sms`
    pub url: String,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts the receiver (answers 200 until told otherwise).
    pub async fn start() -> Self {
        use axum::http::{HeaderMap, StatusCode};
        let calls: Arc<Mutex<Vec<WebhookCall>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (c, s) = (calls.clone(), status.clone());
        let app = axum::Router::new().route(
            "/sms",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (c, s) = (c.clone(), s.clone());
                async move {
                    let call = WebhookCall {
                        signature: headers
                            .get("x-keygate-signature")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        json: serde_json::from_str(&body).unwrap_or_default(),
                        body,
                    };
                    c.lock().expect("calls").push(call);
                    StatusCode::from_u16(s.load(Ordering::SeqCst))
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/sms"),
            calls,
            status,
            task,
        }
    }

    /// Makes the receiver answer `status` from now on.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().expect("calls").clone()
    }

    /// The code in the newest request to `target`.
    pub fn last_code_for(&self, target: &str) -> Option<String> {
        self.calls()
            .iter()
            .rev()
            .find(|c| c.json["target"] == target)
            .and_then(|c| c.json["code"].as_str().map(str::to_owned))
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
