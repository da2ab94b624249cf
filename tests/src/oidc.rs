//! A real, independently written OpenID provider for federation tests: npm's `oidc-provider`
//! run by `tests/js/oidc-provider.mjs` on a free port (restartable with other keys, which is
//! how tests rotate them), and real id_tokens obtained through its authorization-code flow by
//! `tests/js/oidc-login.mjs`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clients registered at every test provider: (client_id, secret, redirect URI).
pub const CLIENTS: &[(&str, &str, &str)] = &[
    ("keygate", "keygate-secret", "http://127.0.0.1/callback"),
    ("other-app", "other-secret", "http://127.0.0.1/other"),
];

/// An `oidc-provider` process; killed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub issuer: String,
    dir: tempfile::TempDir,
}

fn js(script: &str) -> PathBuf {
    crate::repo_root().join("tests/js").join(script)
}

impl OidcProvider {
    /// Starts a provider whose signing keys are `keys` (kid, `RS256` or `ES256`; the first
    /// signs), with the [`CLIENTS`] and accounts `alice` (verified email and phone), `bob`
    /// (unverified email), `carol` and `dave` (verified emails).
    pub fn start(keys: &[(&str, &str)]) -> Self {
        let mut p = Self::unstarted();
        p.restart_with_keys(keys);
        p
    }

    fn unstarted() -> Self {
        let port = crate::free_port();
        Self {
            child: None,
            port,
            issuer: format!("http://127.0.0.1:{port}"),
            dir: tempfile::tempdir().expect("provider dir"),
        }
    }

    /// Starts a second provider (its own issuer and port) that signs with the same key
    /// material as `other`: its tokens verify against `other`'s keys but name another issuer.
    pub fn start_sharing_keys(other: &OidcProvider, keys: &[(&str, &str)]) -> Self {
        let mut p = Self::unstarted();
        std::fs::copy(
            other.dir.path().join("keys.json"),
            p.dir.path().join("keys.json"),
        )
        .expect("copy keys");
        p.restart_with_keys(keys);
        p
    }

    /// The requests the provider received so far: (method, path, `traceparent` or `-`).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// Stops the provider (if running) and starts it again on the same port with `keys`;
    /// keys named before keep their material.
    pub fn restart_with_keys(&mut self, keys: &[(&str, &str)]) {
        self.stop();
        let config = serde_json::json!({
            "port": self.port,
            "issuer": self.issuer,
            "keys_file": self.dir.path().join("keys.json"),
            "request_log": self.dir.path().join("requests.log"),
            "keys": keys.iter().map(|(kid, alg)| serde_json::json!({"kid": kid, "alg": alg})).collect::<Vec<_>>(),
            "id_token_ttl_seconds": 3600,
            "clients": CLIENTS.iter().map(|(id, secret, uri)| serde_json::json!({
                "client_id": id, "client_secret": secret, "redirect_uris": [uri]})).collect::<Vec<_>>(),
            "accounts": [
                {"sub": "alice", "email": "alice@example.com", "email_verified": true,
                 "name": "Alice", "phone_number": "+14155550170"},
                {"sub": "bob", "email": "bob@example.com", "email_verified": false, "name": "Bob"},
                {"sub": "carol", "email": "carol@example.com", "email_verified": true, "name": "Carol"},
                {"sub": "dave", "email": "dave@example.com", "email_verified": true, "name": "Dave"},
            ],
        });
        let path = self.dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).expect("provider config");
        let mut child = Command::new("node")
            .arg(js("oidc-provider.mjs"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (scripts/test installs the packages of tests/js)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("oidc-provider did not start");
        assert!(line.starts_with("READY"), "oidc-provider said {line:?}");
        self.child = Some(child);
    }

    /// Stops the provider.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A real id_token for `client_id` after signing in as `login` through the provider's
    /// authorization-code flow (with PKCE).
    pub fn id_token(&self, client_id: &str, login: &str) -> String {
        let (_, secret, redirect) = CLIENTS
            .iter()
            .find(|(id, ..)| *id == client_id)
            .expect("a registered client");
        let started = Instant::now();
        let out = Command::new("node")
            .arg(js("oidc-login.mjs"))
            .args(["--issuer", &self.issuer, "--client-id", client_id])
            .args(["--client-secret", secret, "--redirect-uri", redirect])
            .args(["--login", login, "--nonce", &crate::unique("n")])
            .output()
            .expect("node oidc-login.mjs");
        assert!(
            out.status.success(),
            "login at the provider failed after {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// The provider's public signing keys (its JWKS).
    pub async fn jwks(&self) -> serde_json::Value {
        reqwest::get(format!("{}/jwks", self.issuer))
            .await
            .expect("GET jwks")
            .json()
            .await
            .expect("jwks json")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
