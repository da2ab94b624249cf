//! Immutable process settings, from command-line flags and `KEYGATE_*` environment variables:
//! where to listen, where data lives, which backing services to use. Everything that may change
//! at run time lives in the runtime configuration instead.

use clap::Args;
use keygate_config::SigningAlgorithm;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings shared by every subcommand that touches storage.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Directory for the embedded database and the generated development signing key.
    /// Created if missing.
    #[arg(
        long,
        env = "KEYGATE_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Durable storage: `sqlite://PATH` or `postgres://USER:PASS@HOST:PORT/DB`.
    /// Default: a SQLite file `keygate.db` in the data directory.
    #[arg(long, env = "KEYGATE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Runtime-configuration file (JSON, or TOML when it ends in `.toml`): signing keys,
    /// token lifetimes, password hashing. Optional.
    #[arg(long, env = "KEYGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Server-side pepper mixed into every password hash (keep it in a secret; changing it
    /// invalidates every stored password).
    #[arg(
        long,
        env = "KEYGATE_PASSWORD_PEPPER",
        hide_env_values = true,
        global = true
    )]
    pub password_pepper: Option<String>,

    /// Key (base64 of 32 bytes) that encrypts TOTP secrets at rest and keys backup-code
    /// hashes. Default: generated in the data directory. Replicas must share it.
    #[arg(long, env = "KEYGATE_DATA_KEY", hide_env_values = true, global = true)]
    pub data_key: Option<String>,

    /// Algorithm of the signing key generated in the data directory when the runtime
    /// configuration has none: ES256, EdDSA or RS256.
    #[arg(
        long,
        env = "KEYGATE_SIGNING_ALG",
        default_value = "ES256",
        global = true
    )]
    pub signing_alg: SigningAlgorithm,
}

impl StorageSettings {
    /// The database URL in force (explicit, or the embedded SQLite file).
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("keygate.db").display()
            ),
        }
    }
}

/// Settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Ephemeral state (revoked tokens, codes, tickets, challenges, counters):
    /// `redis://HOST:PORT` or `rediss://`, or through Sentinel
    /// `redis-sentinel://HOST:PORT,HOST:PORT,HOST:PORT?sentinelServiceName=NAME` (the sentinels;
    /// `rediss-sentinel://` for TLS). Unset: kept in process (one replica only).
    #[arg(long, env = "KEYGATE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis replicas that must confirm every single-use or counted write (ticket, code and
    /// challenge takes, attempt counters, resend claims, revocations) before it is
    /// acknowledged, with `WAIT`; when fewer confirm in time the request fails with 503.
    /// Default: 1 with a Sentinel URL, else 0 (no wait).
    #[arg(long, env = "KEYGATE_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,

    /// Milliseconds such a write waits for its replicas (1 to 1500).
    #[arg(long, env = "KEYGATE_REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,

    /// Prefix of every API route. Deployed clients behind a gateway may need
    /// `/identity/api/v1`.
    #[arg(long, env = "KEYGATE_BASE_PATH", default_value = "/api/v1")]
    pub base_path: String,

    /// Issuer (`iss`) of the tokens and base of the discovery URLs.
    /// Default: `http://` + the listen address.
    #[arg(long, env = "KEYGATE_ISSUER")]
    pub issuer: Option<String>,

    /// Log format: `text` (one line per event) or `json` (one object per line); both carry
    /// `trace_id` and `span_id`.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value_t = keygate_telemetry::LogFormat::Text)]
    pub log_format: keygate_telemetry::LogFormat,

    /// Threads of the async runtime (HTTP, database, Redis). Default: half the CPUs, at least
    /// one, because password hashing runs on its own threads (one per CPU by default) and idle
    /// async workers searching for work slow the hashing down (see docs/benchmarks.md).
    #[arg(long, env = "KEYGATE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Seconds that in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "KEYGATE_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,

    /// Delivery of one-time codes.
    #[command(flatten)]
    pub delivery: DeliverySettings,

    /// The cluster whose ServiceAccount tokens are accepted.
    #[command(flatten)]
    pub kubernetes: KubernetesSettings,
}

/// Where a pod finds its cluster.
const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The Kubernetes API server whose ServiceAccount tokens may call `POST
/// /auth/generate-ticket` (with a `ServiceAccountGrant`). In a pod every setting defaults to
/// the pod's own environment; outside a pod, without `--kubernetes-api-url`, ServiceAccount
/// tokens are refused.
#[derive(Debug, Clone, Args)]
pub struct KubernetesSettings {
    /// Accept ServiceAccount tokens of the cluster at all (`false`: refused, even in a pod,
    /// and the API server is never called).
    #[arg(
        long,
        env = "KEYGATE_KUBERNETES_SERVICE_ACCOUNTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub kubernetes_service_accounts: bool,

    /// `https://HOST:PORT` of the API server. Default in a pod:
    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[arg(long, env = "KEYGATE_KUBERNETES_API_URL")]
    pub kubernetes_api_url: Option<String>,

    /// PEM bundle of the CA that signed the API server's certificate (only it is trusted for
    /// the API server). Default in a pod: the ServiceAccount's `ca.crt`.
    #[arg(long, env = "KEYGATE_KUBERNETES_CA_FILE")]
    pub kubernetes_ca_file: Option<PathBuf>,

    /// Bearer token for the API server's service-account discovery endpoints (the server's
    /// own ServiceAccount token; read again at every key fetch). Default in a pod: the
    /// ServiceAccount's `token`.
    #[arg(long, env = "KEYGATE_KUBERNETES_TOKEN_FILE")]
    pub kubernetes_token_file: Option<PathBuf>,

    /// The audience a ServiceAccount token must carry (the `audience` of the caller's
    /// projected token volume).
    #[arg(long, env = "KEYGATE_KUBERNETES_AUDIENCE", default_value = "keygate")]
    pub kubernetes_audience: String,
}

/// The cluster as configured: its API server, the CA file, the token file, the audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `https://HOST:PORT`.
    pub api_url: String,
    /// CA bundle (none: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The server's own token (none: the discovery endpoints are called without one).
    pub token_file: Option<PathBuf>,
    /// The audience tokens must carry.
    pub audience: String,
}

impl KubernetesSettings {
    /// The cluster in force: the settings, else the pod's environment (`env` looks a
    /// variable up; `in_cluster` is the ServiceAccount directory).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
        in_cluster: &std::path::Path,
    ) -> Option<ClusterSettings> {
        if !self.kubernetes_service_accounts {
            return None;
        }
        let from_pod = || {
            let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Some(format!("https://{host}:{port}"))
        };
        let api_url = self.kubernetes_api_url.clone().or_else(from_pod)?;
        let default = |name: &str| {
            let path = in_cluster.join(name);
            path.exists().then_some(path)
        };
        Some(ClusterSettings {
            api_url: api_url.trim_end_matches('/').to_owned(),
            ca_file: self
                .kubernetes_ca_file
                .clone()
                .or_else(|| default("ca.crt")),
            token_file: self
                .kubernetes_token_file
                .clone()
                .or_else(|| default("token")),
            audience: self.kubernetes_audience.clone(),
        })
    }

    /// [`resolve`](Self::resolve) in this process's environment.
    pub fn cluster(&self) -> Option<ClusterSettings> {
        self.resolve(
            |k| std::env::var(k).ok(),
            std::path::Path::new(IN_CLUSTER_DIR),
        )
    }
}

/// Where one-time codes are sent. With neither SMTP nor the SMS webhook set, the server is in
/// development mode: codes are written to the log (at warning level) instead.
#[derive(Debug, Clone, Args)]
pub struct DeliverySettings {
    /// SMTP server for email codes: `smtps://[USER:PASS@]HOST[:PORT]` (TLS),
    /// `smtp://...?tls=required` (STARTTLS) or `smtp://HOST:PORT` (unencrypted, local relays
    /// only).
    #[arg(long, env = "KEYGATE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender of email codes.
    #[arg(
        long,
        env = "KEYGATE_SMTP_FROM",
        default_value = "Keygate <no-reply@localhost>"
    )]
    pub smtp_from: String,

    /// PEM file of the CA that signed the SMTP server's certificate (an in-cluster relay with
    /// a private CA); only that CA is trusted then. Needs `smtps://` or `?tls=required`.
    #[arg(long, env = "KEYGATE_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<std::path::PathBuf>,

    /// HTTP(S) endpoint that sends SMS codes: it receives a JSON POST with `target`, `code`,
    /// `expires_in`, `expires_at` and the rendered `message`.
    #[arg(long, env = "KEYGATE_SMS_WEBHOOK_URL")]
    pub sms_webhook_url: Option<String>,

    /// Secret that signs SMS webhook requests (`X-Keygate-Signature: t=UNIX,v1=HMAC`).
    #[arg(long, env = "KEYGATE_SMS_WEBHOOK_SECRET", hide_env_values = true)]
    pub sms_webhook_secret: Option<String>,

    /// Directory of message templates (`LOCALE/login_code.subject`, `.txt`, `.html`, `.sms`,
    /// and the same for `mfa_code`) overriding or adding to the built-in English and German.
    #[arg(long, env = "KEYGATE_TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
}

impl DeliverySettings {
    /// The delivery configuration these settings describe.
    pub fn to_config(&self) -> crate::delivery::DeliveryConfig {
        crate::delivery::DeliveryConfig {
            smtp_url: self.smtp_url.clone(),
            smtp_from: self.smtp_from.clone(),
            smtp_ca_file: self.smtp_ca_file.clone(),
            sms_webhook_url: self.sms_webhook_url.clone(),
            sms_webhook_secret: self.sms_webhook_secret.clone(),
            templates_dir: self.templates_dir.clone(),
        }
    }
}

/// Redis as configured: the URL (in fred's form) and the replica requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://`, `rediss://`, `redis-sentinel://` ...
    pub url: String,
    /// Replicas a single-use or counted write must reach (none: acknowledged at once).
    pub wait: Option<crate::ephemeral::ReplicaWait>,
}

impl ServeSettings {
    /// Redis as configured, checked: `None` without a URL; an error naming the setting when
    /// the URL cannot be used or the replica wait is out of range.
    pub fn redis(&self) -> Result<Option<RedisTarget>, String> {
        use crate::ephemeral::{MAX_WAIT, ReplicaWait, fred_url, is_sentinel};
        let timeout = std::time::Duration::from_millis(self.redis_wait_timeout_ms);
        if timeout.is_zero() || timeout > MAX_WAIT {
            return Err(format!(
                "KEYGATE_REDIS_WAIT_TIMEOUT_MS (--redis-wait-timeout-ms) must be within 1..={}",
                MAX_WAIT.as_millis()
            ));
        }
        let Some(url) = self.redis_url.as_deref() else {
            if self.redis_wait_replicas.is_some_and(|n| n > 0) {
                return Err(
                    "KEYGATE_REDIS_WAIT_REPLICAS (--redis-wait-replicas) needs KEYGATE_REDIS_URL"
                        .into(),
                );
            }
            return Ok(None);
        };
        let fred = fred_url(url).map_err(|e| format!("KEYGATE_REDIS_URL (--redis-url): {e}"))?;
        let replicas = self
            .redis_wait_replicas
            .unwrap_or(u32::from(is_sentinel(url)));
        if replicas > 16 {
            return Err(
                "KEYGATE_REDIS_WAIT_REPLICAS (--redis-wait-replicas) must be at most 16".into(),
            );
        }
        Ok(Some(RedisTarget {
            url: fred,
            wait: (replicas > 0).then_some(ReplicaWait { replicas, timeout }),
        }))
    }

    /// The issuer in force, without a trailing slash.
    pub fn effective_issuer(&self) -> String {
        match &self.issuer {
            Some(i) => i.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Async worker threads in force.
    pub fn effective_worker_threads(&self) -> usize {
        self.worker_threads.filter(|n| *n > 0).unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus / 2).max(1)
        })
    }

    /// The base path normalised to `/x/y` (or empty for the root).
    pub fn normalized_base_path(&self) -> String {
        normalize_base_path(&self.base_path)
    }
}

/// `api/v1/` → `/api/v1`; `/` → ``.
pub fn normalize_base_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_comes_from_flags_or_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t").unwrap();
        let none = KubernetesSettings {
            kubernetes_service_accounts: true,
            kubernetes_api_url: None,
            kubernetes_ca_file: None,
            kubernetes_token_file: None,
            kubernetes_audience: "keygate".into(),
        };
        assert_eq!(none.resolve(|_| None, dir.path()), None);
        let pod = none
            .resolve(
                |k| match k {
                    "KUBERNETES_SERVICE_HOST" => Some("fd00::1".into()),
                    "KUBERNETES_SERVICE_PORT" => Some("6443".into()),
                    _ => None,
                },
                dir.path(),
            )
            .unwrap();
        assert_eq!(pod.api_url, "https://[fd00::1]:6443");
        assert_eq!(pod.token_file, Some(dir.path().join("token")));
        assert_eq!(pod.ca_file, None, "no ca.crt in the directory");
        let flags = KubernetesSettings {
            kubernetes_api_url: Some("https://api.example:443/".into()),
            kubernetes_ca_file: Some("/ca.pem".into()),
            ..none
        }
        .resolve(|_| None, dir.path())
        .unwrap();
        assert_eq!(flags.api_url, "https://api.example:443");
        assert_eq!(flags.ca_file, Some(PathBuf::from("/ca.pem")));
        let off = KubernetesSettings {
            kubernetes_service_accounts: false,
            kubernetes_api_url: Some("https://api.example:443".into()),
            kubernetes_ca_file: None,
            kubernetes_token_file: None,
            kubernetes_audience: "keygate".into(),
        };
        assert_eq!(off.resolve(|_| Some("10.0.0.1".into()), dir.path()), None);
    }

    fn serve(args: &[&str]) -> ServeSettings {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeSettings,
        }
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(all).unwrap().serve
    }

    #[test]
    fn sentinel_urls_wait_for_one_replica_unless_told_otherwise() {
        use crate::ephemeral::ReplicaWait;
        use std::time::Duration;
        assert_eq!(serve(&[]).redis(), Ok(None));
        let plain = serve(&["--redis-url", "redis://127.0.0.1:6379"])
            .redis()
            .unwrap()
            .unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.wait),
            ("redis://127.0.0.1:6379", None)
        );
        let sentinel = serve(&[
            "--redis-url",
            "redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26380/0?sentinelServiceName=kg",
        ])
        .redis()
        .unwrap()
        .unwrap();
        assert_eq!(
            sentinel.url,
            "redis-sentinel://:pw@10.0.0.1:26379/0?sentinelServiceName=kg&node=10.0.0.2:26379&node=10.0.0.3:26380"
        );
        assert_eq!(
            sentinel.wait,
            Some(ReplicaWait {
                replicas: 1,
                timeout: Duration::from_millis(500)
            })
        );
        // fred's own form passes unchanged.
        let fred_form =
            "redis-sentinel://10.0.0.1:26379?sentinelServiceName=kg&node=10.0.0.2:26379";
        assert_eq!(
            serve(&["--redis-url", fred_form])
                .redis()
                .unwrap()
                .unwrap()
                .url,
            fred_form
        );
        let opted_out = serve(&[
            "--redis-url",
            "redis-sentinel://10.0.0.1:26379?sentinelServiceName=kg",
            "--redis-wait-replicas",
            "0",
        ]);
        assert_eq!(opted_out.redis().unwrap().unwrap().wait, None);
        let two = serve(&[
            "--redis-url",
            "redis://h:6379",
            "--redis-wait-replicas",
            "2",
            "--redis-wait-timeout-ms",
            "50",
        ]);
        assert_eq!(
            two.redis().unwrap().unwrap().wait,
            Some(ReplicaWait {
                replicas: 2,
                timeout: Duration::from_millis(50)
            })
        );
    }

    #[test]
    fn unusable_redis_settings_are_refused_by_name() {
        let no_service = serve(&[
            "--redis-url",
            "redis-sentinel://10.0.0.1:26379,10.0.0.2:26379",
        ]);
        assert!(
            no_service
                .redis()
                .unwrap_err()
                .starts_with("KEYGATE_REDIS_URL")
        );
        let garbage = serve(&["--redis-url", "not a url"]);
        assert!(
            garbage
                .redis()
                .unwrap_err()
                .starts_with("KEYGATE_REDIS_URL")
        );
        let no_url = serve(&["--redis-wait-replicas", "1"]);
        assert!(
            no_url
                .redis()
                .unwrap_err()
                .starts_with("KEYGATE_REDIS_WAIT_REPLICAS")
        );
        for timeout in ["0", "1501"] {
            let bad = serve(&[
                "--redis-url",
                "redis://h:1",
                "--redis-wait-timeout-ms",
                timeout,
            ]);
            assert!(
                bad.redis()
                    .unwrap_err()
                    .starts_with("KEYGATE_REDIS_WAIT_TIMEOUT_MS")
            );
        }
    }

    #[test]
    fn base_paths_normalise() {
        assert_eq!(normalize_base_path("/api/v1"), "/api/v1");
        assert_eq!(normalize_base_path("identity/api/v1/"), "/identity/api/v1");
        assert_eq!(normalize_base_path("/"), "");
    }
}
