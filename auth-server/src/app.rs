//! Assembly and lifecycle: opening storage, choosing the ephemeral store, loading (and
//! hot-reloading) the runtime configuration, and serving with graceful shutdown.

use crate::auth::clock::{SharedClock, SystemClock};
use crate::auth::keys::load_or_generate_dev_key;
use crate::auth::password::PasswordHasher;
use crate::auth::{AuthService, DevKeys, Runtime};
use crate::ephemeral::{Ephemeral, MemoryEphemeral, RedisEphemeral};
use crate::http::{AppState, router};
use crate::settings::{ServeSettings, StorageSettings};
use crate::store::SqlStore;
use keygate_config::{Format, RuntimeConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Start-up failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn fail(context: &str) -> impl Fn(String) -> StartError + '_ {
    move |e| StartError(format!("{context}: {e}"))
}

/// Reads and validates the runtime configuration file (absent: defaults).
pub fn load_config(path: Option<&Path>) -> Result<RuntimeConfig, StartError> {
    let Some(path) = path else {
        return Ok(RuntimeConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError(format!("cannot read configuration {}: {e}", path.display())))?;
    RuntimeConfig::parse(&text, Format::from_path(&path.to_string_lossy()))
        .map_err(|e| StartError(format!("{}: {e}", path.display())))
}

/// Everything opened from the storage settings: database, configuration, development key.
#[derive(Debug)]
pub struct Opened {
    /// Durable storage, migrated.
    pub store: SqlStore,
    /// The runtime configuration.
    pub config: RuntimeConfig,
    /// The development keys, where the configuration has none.
    pub dev_keys: DevKeys,
    /// Password hashing with the configured parameters and pepper.
    pub hasher: PasswordHasher,
    /// The key for secrets at rest.
    pub data_key: crate::auth::mfa::DataKey,
}

/// Opens storage (creating the data directory and applying migrations), loads the
/// configuration and, if it names no signing keys, the development key.
pub async fn open(storage: &StorageSettings) -> Result<Opened, StartError> {
    std::fs::create_dir_all(&storage.data_dir).map_err(|e| {
        StartError(format!(
            "cannot create the data directory {}: {e}",
            storage.data_dir.display()
        ))
    })?;
    let config = load_config(storage.config.as_deref())?;
    // The development keys, when the configuration names none, are loaded (on a first start:
    // generated) while the database opens; the RSA transmission key, slow to generate, is
    // generated in the background and waited for only by what needs it.
    let dev_keys = {
        let (dir, alg) = (storage.data_dir.clone(), storage.signing_alg);
        let (signing, transmission) = (
            config.signing_keys.is_empty(),
            config.transmission_keys.is_empty(),
        );
        tokio::task::spawn_blocking(move || -> Result<DevKeys, StartError> {
            let mut dev_keys = DevKeys::default();
            if signing {
                dev_keys.signing = Some(
                    load_or_generate_dev_key(&dir, alg).map_err(|e| StartError(e.to_string()))?,
                );
            }
            if transmission {
                dev_keys.transmission = Some(
                    crate::auth::transmission::DevTransmissionKey::open(&dir)
                        .map_err(StartError)?,
                );
            }
            Ok(dev_keys)
        })
    };
    let store = SqlStore::open(&storage.effective_database_url())
        .await
        .map_err(|e| StartError(format!("database: {e}")))?;
    let dev_keys = dev_keys
        .await
        .map_err(|e| StartError(format!("development keys: {e}")))??;
    let pepper = storage
        .password_pepper
        .as_ref()
        .map(|p| p.as_bytes().to_vec());
    let hasher = PasswordHasher::new(&config.password_hashing, pepper)
        .map_err(|e| StartError(e.to_string()))?;
    let data_key = match &storage.data_key {
        Some(text) => crate::auth::mfa::DataKey::from_base64(text),
        None => crate::auth::mfa::DataKey::load_or_generate(&storage.data_dir),
    }
    .map_err(|e| StartError(format!("data key: {e}")))?;
    Ok(Opened {
        data_key,
        store,
        config,
        dev_keys,
        hasher,
    })
}

/// Builds the domain service from opened storage.
pub async fn service(
    opened: Opened,
    redis: Option<&crate::settings::RedisTarget>,
    issuer: String,
    clock: SharedClock,
) -> Result<(AuthService, DevKeys), StartError> {
    let ephemeral = match redis {
        Some(target) => Ephemeral::Redis(
            RedisEphemeral::connect_waiting(&target.url, clock.clone(), target.wait)
                .await
                .map_err(|e| StartError(format!("redis: {e}")))?,
        ),
        None => Ephemeral::Memory(MemoryEphemeral::new(clock.clone())),
    };
    let runtime = Runtime::build(opened.config, &opened.dev_keys).map_err(fail("configuration"))?;
    Ok((
        AuthService::new(
            opened.store,
            ephemeral,
            clock,
            opened.hasher,
            runtime,
            issuer,
            opened.data_key,
        ),
        opened.dev_keys,
    ))
}

/// The verifier of the cluster's ServiceAccount tokens; an unreadable CA file stops the
/// start.
pub fn cluster_verifier(
    cluster: &crate::settings::ClusterSettings,
) -> Result<crate::auth::service_accounts::ClusterVerifier, StartError> {
    let fetcher = match &cluster.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| StartError(format!("kubernetes CA file {}: {e}", path.display())))?;
            keygate_oidc::Fetcher::trusting(&pem)
                .map_err(|e| StartError(format!("kubernetes CA file {}: {e}", path.display())))?
        }
        None => keygate_oidc::Fetcher::default(),
    };
    Ok(crate::auth::service_accounts::ClusterVerifier::new(
        keygate_oidc::Cluster {
            api_url: cluster.api_url.clone(),
            token_file: cluster.token_file.clone(),
        },
        fetcher,
        cluster.audience.clone(),
    ))
}

/// Runs the server until SIGTERM or SIGINT, then lets in-flight requests finish.
pub async fn serve(storage: StorageSettings, settings: ServeSettings) -> Result<(), StartError> {
    let redis = settings.redis().map_err(StartError)?;
    let opened = open(&storage).await?;
    if opened.dev_keys.signing.is_some()
        && opened.store.backend() == crate::store::Backend::Postgres
    {
        tracing::warn!(
            "no signing keys are configured: using this replica's development key; replicas \
             sharing a database must share keys through the runtime configuration"
        );
    }
    if let Some(wait) = redis.as_ref().and_then(|r| r.wait) {
        tracing::info!(
            replicas = wait.replicas,
            timeout_ms = wait.timeout.as_millis() as u64,
            "single-use and counted Redis writes are acknowledged once replicas confirm them (WAIT)"
        );
    }
    let (auth, dev_keys) = service(
        opened,
        redis.as_ref(),
        settings.effective_issuer(),
        Arc::new(SystemClock),
    )
    .await?;
    if storage.data_key.is_none() && settings.redis_url.is_some() {
        tracing::warn!(
            "KEYGATE_DATA_KEY is not set: using this replica's generated data key; replicas \
             sharing Redis must share it, or codes and TOTP secrets work on one replica only"
        );
    }
    let delivery =
        crate::delivery::Delivery::new(&settings.delivery.to_config()).map_err(fail("delivery"))?;
    if delivery.is_development() {
        tracing::warn!(
            "DEVELOPMENT MODE: neither KEYGATE_SMTP_URL nor KEYGATE_SMS_WEBHOOK_URL is set; \
             one-time codes are written to this log instead of being delivered"
        );
    }
    let mut auth = auth.with_delivery(delivery);
    if let Some(cluster) = settings.kubernetes.cluster() {
        auth = auth.with_cluster(cluster_verifier(&cluster)?);
        tracing::info!(api = %cluster.api_url, audience = %cluster.audience, "ServiceAccount tokens of the cluster are accepted where a ServiceAccountGrant allows");
    }
    auth.ensure_configured_tenants().await;
    if let Some(path) = storage.config.clone() {
        tokio::spawn(watch_config(auth.clone(), path, dev_keys));
    }
    tokio::spawn(purge_expired(auth.clone()));
    let state = AppState::new(auth.clone(), &settings.base_path);
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", settings.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    tracing::info!(
        addr = %local,
        issuer = auth.issuer(),
        database = ?auth.store.backend(),
        ephemeral = auth.ephemeral.kind(),
        "keygate auth-server listening"
    );
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let grace = Duration::from_secs(settings.shutdown_grace_seconds);
    tokio::select! {
        r = server => r.map_err(|e| StartError(e.to_string()))?,
        () = async {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("shutdown grace period over: closing remaining connections"),
    }
    auth.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// How often the configuration file is looked at: a change is in force within this (plus the
/// parse), well under a second.
pub const CONFIG_POLL: Duration = Duration::from_millis(250);

/// Polls the configuration file and swaps in each valid new version; an invalid one is
/// logged and the last good configuration stays in force. The path is read afresh every
/// time, so the kubelet's atomic `..data` symlink swap of a mounted Secret is seen like any
/// other change (and a half-written file never is: the swap is atomic).
async fn watch_config(auth: AuthService, path: PathBuf, dev_keys: DevKeys) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(CONFIG_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = std::fs::read(&path).ok();
        if current == last || current.is_none() {
            continue;
        }
        last = current;
        let result = load_config(Some(&path))
            .and_then(|config| Runtime::build(config, &dev_keys).map_err(StartError));
        let outcome = match result {
            Ok(rt) => auth.replace_runtime(rt).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        crate::metrics::record_config_reload(outcome.is_ok());
        match outcome {
            Ok(()) => {
                tracing::info!(path = %path.display(), "runtime configuration reloaded");
                auth.ensure_configured_tenants().await;
            }
            Err(e) => {
                auth.set_config_rejection(Some(auth.clock.unix()));
                tracing::error!(error = %e, "runtime configuration rejected; keeping the last good one");
            }
        }
    }
}

/// Deletes ended sessions and refresh tokens once an hour.
async fn purge_expired(auth: AuthService) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match auth.store.purge_expired(auth.clock.unix()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged ended sessions and refresh tokens"),
            Err(e) => tracing::warn!(error = %e, "purge of ended sessions failed"),
        }
        let days = auth.runtime().config.audit.retention_days;
        let before = auth.clock.unix() - i64::from(days) * 86_400;
        match auth.store.purge_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, days, "purged audit events past retention"),
            Err(e) => tracing::warn!(error = %e, "purge of old audit events failed"),
        }
    }
}
