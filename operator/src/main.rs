//! The `auth-operator` command: flags and environment, the Kubernetes client (kubeconfig or
//! in-cluster), the start-up checks, the health and metrics endpoints, and the controller
//! loop until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser;
use operator::controller::{self, Context};
use operator::metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Keygate operator: renders the Keygate custom resources of a namespace (AuthPolicy,
/// RateLimitPolicy, OidcProvider, ServerPolicy, ServiceAccountGrant, SigningKey) into one
/// Secret holding the runtime configuration that every auth-server replica mounts and
/// hot-reloads, generates the key material of SigningKeys into Secrets they own, and reports
/// each resource's acceptance in its status and in Events.
#[derive(Debug, Parser)]
#[command(name = "auth-operator", version, about, long_about)]
struct Cli {
    /// Namespace to watch (default: the pod's own, from POD_NAMESPACE or the service-account
    /// mount; else the kubeconfig's).
    #[arg(long, env = "KEYGATE_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the Secret the rendered configuration is written to (key `config.json`).
    #[arg(long, env = "KEYGATE_CONFIG_SECRET", default_value = "keygate-config")]
    config_secret: String,
    /// Kubeconfig file (default: in-cluster credentials, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KEYGATE_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// How long a change of the configuration Secret may take to reach every server pod (the
    /// kubelet's sync period plus its cache TTL), as a Go duration. A SigningKey's prePublish
    /// must exceed it plus the JWKS cache lifetime.
    #[arg(long, env = "KEYGATE_PROPAGATION_BOUND", default_value = "90s", value_parser = parse_duration)]
    propagation_bound: std::time::Duration,
    /// How often the issuer of every OidcProvider is checked while it answers, as a Go
    /// duration; after a failed check the next comes 5s later, doubling up to this interval.
    #[arg(long, env = "KEYGATE_PROVIDER_CHECK_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    provider_check_interval: std::time::Duration,
    /// Elect one leader among the operator replicas through a Lease; off: this replica always
    /// reconciles (run exactly one).
    #[arg(long, env = "KEYGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "KEYGATE_LEASE_NAME", default_value = "keygate-operator")]
    lease_name: String,
    /// Seconds a leader holds the Lease without renewing it (a killed leader is replaced
    /// within this).
    #[arg(long, env = "KEYGATE_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration: u64,
    /// Log format: `text` or `json` (default: text on a terminal, json otherwise); both carry
    /// `trace_id` and `span_id`.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum)]
    log_format: Option<keygate_telemetry::LogFormat>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

async fn client(cli: &Cli) -> anyhow::Result<(kube::Client, String)> {
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("kubeconfig unusable")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes credentials: run in a pod or pass --kubeconfig")?,
    };
    let namespace = cli
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((kube::Client::try_from(config)?, namespace))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = keygate_telemetry::init(
        &keygate_telemetry::Options {
            service_name: "keygate-operator",
            service_version: env!("CARGO_PKG_VERSION"),
            format: cli
                .log_format
                .unwrap_or_else(keygate_telemetry::LogFormat::for_stderr),
            default_filter: "info,kube=warn",
        },
        None,
    )?;
    let (client, namespace) = client(&cli).await?;
    let metrics = Arc::new(Metrics::default());
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "local".into());
    let ctx = Arc::new(Context::new(
        client,
        namespace.clone(),
        cli.config_secret.clone(),
        instance,
        metrics.clone(),
        i64::try_from(cli.propagation_bound.as_secs()).unwrap_or(i64::MAX),
        cli.provider_check_interval,
    ));
    if let Err(e) = controller::preflight(&ctx).await {
        tracing::error!(error = %e, "cannot start");
        anyhow::bail!(e);
    }
    let election = cli.leader_election.then(|| operator::leader::Election {
        lease_name: cli.lease_name.clone(),
        lease_duration: cli.lease_duration,
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("auth-operator-{}", std::process::id())),
    });
    let leader = operator::leader::start(ctx.client.clone(), &namespace, election).await?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let ready = ctx.ready.clone();
    let leading = ctx.leading.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.load(Ordering::Relaxed);
                let leading = leading.load(Ordering::Relaxed);
                async move {
                    if !leading {
                        (axum::http::StatusCode::OK, "ready (standing by)")
                    } else if ready {
                        (axum::http::StatusCode::OK, "ready (leading)")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "no reconcile has succeeded yet",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
    tracing::info!(
        namespace = %namespace,
        secret = %cli.config_secret,
        addr = %listener.local_addr()?,
        "keygate operator started"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(async move {
        let mut rx = stop_rx.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    controller::run(ctx, leader, shutdown_signal()).await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = http.await;
    telemetry.shutdown().await;
    Ok(())
}
