//! Watching and reconciling: every Keygate resource of the namespace (and the key Secrets)
//! is watched; any change, and a periodic resync, runs one reconcile of the whole namespace,
//! since its output is one configuration. A reconcile reads every resource, makes missing key
//! material, renders, publishes the Secret when its content changed, and writes each
//! resource's status and an Event when its acceptance changes. Errors are retried with a
//! growing backoff and never end the process.

use crate::health::Health;
use crate::keys;
use crate::metrics::Metrics;
use crate::publish::{self, Published};
use crate::render::{self, Inputs, Verdict};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use keygate_crds::status::{self, ACCEPTED, READY};
use keygate_crds::{
    AuthPolicy, OidcProvider, RateLimitPolicy, ServerPolicy, ServiceAccountGrant, SigningKey,
};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// How often the namespace is reconciled without a change.
pub const RESYNC: Duration = Duration::from_secs(60);

/// What the controller works with.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The namespace watched.
    pub namespace: String,
    /// The name of the Secret the configuration is published in.
    pub config_secret: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once a reconcile succeeded.
    pub ready: Arc<AtomicBool>,
    /// How long a Secret change may take to reach every pod, in seconds.
    pub propagation_bound: i64,
    /// Whether this replica leads now.
    pub leading: Arc<AtomicBool>,
    /// The issuer checks of `OidcProvider`s.
    pub health: Arc<Health>,
    recorder: Recorder,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("namespace", &self.namespace)
            .field("config_secret", &self.config_secret)
            .finish_non_exhaustive()
    }
}

/// A reconcile that failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or could not be reached.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Api { what, source }
}

impl Context {
    /// A context for `namespace`, publishing to `config_secret`.
    pub fn new(
        client: Client,
        namespace: String,
        config_secret: String,
        instance: String,
        metrics: Arc<Metrics>,
        propagation_bound: i64,
        provider_check_interval: Duration,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "keygate-operator".into(),
                instance: Some(instance),
            },
        );
        Self {
            client,
            namespace,
            config_secret,
            metrics,
            ready: Arc::default(),
            propagation_bound,
            leading: Arc::default(),
            health: Arc::new(Health::new(provider_check_interval)),
            recorder,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// The kinds watched, with the name metrics use.
pub const KINDS: [&str; 6] = [
    "AuthPolicy",
    "OidcProvider",
    "RateLimitPolicy",
    "ServerPolicy",
    "ServiceAccountGrant",
    "SigningKey",
];

/// Checks at start that every CRD is installed and readable here, with a message saying what
/// to do when not.
pub async fn preflight(ctx: &Context) -> Result<(), String> {
    async fn check<K>(ctx: &Context, kind: &str) -> Result<(), String>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match ctx.api::<K>().list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(format!(
                "the {kind} CRD is not installed: apply crds/generated/keygate-crds.yaml (or install the chart's CRDs) first"
            )),
            Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
                "RBAC forbids listing {kind} in namespace {}: {}",
                ctx.namespace, e.message
            )),
            Err(e) => Err(format!("cannot list {kind}: {e}")),
        }
    }
    check::<AuthPolicy>(ctx, "AuthPolicy").await?;
    check::<OidcProvider>(ctx, "OidcProvider").await?;
    check::<RateLimitPolicy>(ctx, "RateLimitPolicy").await?;
    check::<ServerPolicy>(ctx, "ServerPolicy").await?;
    check::<ServiceAccountGrant>(ctx, "ServiceAccountGrant").await?;
    check::<SigningKey>(ctx, "SigningKey").await?;
    match ctx.api::<Secret>().get_opt(&ctx.config_secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
            "RBAC forbids reading Secrets in namespace {}: {}",
            ctx.namespace, e.message
        )),
        Err(e) => Err(format!("cannot read Secret {}: {e}", ctx.config_secret)),
    }
}

fn watch_kind<K>(ctx: &Context, kind: &'static str, tx: mpsc::Sender<&'static str>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api = ctx.api::<K>();
    let config = if kind == "Secret" {
        watcher::Config::default().labels("app.kubernetes.io/managed-by=keygate-operator")
    } else {
        watcher::Config::default()
    };
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    // A full channel already has a reconcile coming.
                    let _ = tx.try_send(kind);
                }
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
    });
}

/// Runs until `stop` resolves: watches, and while `leader` says this replica leads,
/// reconciles on every change, every [`RESYNC`] and whenever a key schedule wants it.
pub async fn run(
    ctx: Arc<Context>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(1);
    watch_kind::<AuthPolicy>(&ctx, "AuthPolicy", tx.clone());
    watch_kind::<OidcProvider>(&ctx, "OidcProvider", tx.clone());
    watch_kind::<RateLimitPolicy>(&ctx, "RateLimitPolicy", tx.clone());
    watch_kind::<ServerPolicy>(&ctx, "ServerPolicy", tx.clone());
    watch_kind::<ServiceAccountGrant>(&ctx, "ServiceAccountGrant", tx.clone());
    watch_kind::<SigningKey>(&ctx, "SigningKey", tx.clone());
    watch_kind::<Secret>(&ctx, "Secret", tx.clone());
    tokio::spawn(ctx.health.clone().run(ctx.leading.clone(), tx.clone()));
    let mut backoff = Duration::from_millis(500);
    let mut trigger: &'static str = "resync";
    tokio::pin!(stop);
    loop {
        if !*leader.borrow_and_update() {
            ctx.leading.store(false, Ordering::Relaxed);
            ctx.metrics.leading(false);
            // The leader reports the keys and the issuers; a standby's old values would
            // linger in every query otherwise.
            ctx.metrics.key_ages(Vec::new());
            ctx.metrics.providers_ready(Vec::new());
            tracing::info!("standing by: another replica leads");
            tokio::select! {
                () = &mut stop => return,
                changed = leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if !ctx.leading.swap(true, Ordering::Relaxed) {
            ctx.metrics.leading(true);
            tracing::info!("leading: reconciling the namespace");
        }
        let started = Instant::now();
        let span = tracing::info_span!(
            "operator.reconcile",
            keygate.trigger = trigger,
            k8s.namespace.name = %ctx.namespace,
            otel.status_code = tracing::field::Empty,
        );
        let result = reconcile(&ctx).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        ctx.metrics
            .reconciled(trigger, result.is_ok(), started.elapsed().as_secs_f64());
        let wait = match result {
            Ok(wake) => {
                ctx.ready.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(500);
                // Wake for the key schedule (a second late at most, never early).
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                wake.map_or(RESYNC, |w| {
                    Duration::from_secs(u64::try_from(w - now).unwrap_or(0) + 1).min(RESYNC)
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait
            }
        };
        tokio::select! {
            () = &mut stop => return,
            // A closed channel: the lease manager is gone, so this replica no longer knows
            // whether it leads; stop, as the standby branch does.
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            got = tokio::time::timeout(wait, rx.recv()) => {
                trigger = match got {
                    Ok(Some(kind)) => kind,
                    Ok(None) => return,
                    Err(_) => "resync",
                };
                // Let a burst of changes (kubectl apply -f dir/) settle into one reconcile.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}

async fn list<K>(ctx: &Context, kind: &str) -> Result<Vec<K>, ReconcileError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(ctx
        .api::<K>()
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("list {kind}")))?
        .items)
}

/// The token lifetimes the keys must outlive and be announced ahead of: the namespace's one
/// readable `ServerPolicy`, else the defaults.
fn token_policy(servers: &[ServerPolicy]) -> keygate_config::TokenPolicy {
    match servers {
        [one] => one.spec.to_settings().map(|s| s.tokens).unwrap_or_default(),
        _ => keygate_config::TokenPolicy::default(),
    }
}

/// One reconcile of the namespace; returns when the key schedules next want one.
pub async fn reconcile(ctx: &Context) -> Result<Option<i64>, ReconcileError> {
    let secrets = ctx.api::<Secret>();
    let server_policies: Vec<ServerPolicy> = list(ctx, "ServerPolicy").await?;
    let tokens = token_policy(&server_policies);
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let signing: Vec<SigningKey> = list(ctx, "SigningKey").await?;
    let mut signing_keys = Vec::new();
    let mut key_sets = Vec::new();
    let mut wake: Option<i64> = None;
    for key in signing {
        // Kept until its keys retire when deleted (see `keys::retire_all`).
        if key.meta().deletion_timestamp.is_none()
            && let Err(e) = keys::set_finalizer(&key, ctx.client.clone(), true).await
        {
            tracing::warn!(signing_key = %key.name_any(), error = %e, "finalizer not added; retried next reconcile");
        }
        let timing = keys::timing(
            &key,
            ctx.propagation_bound,
            i64::try_from(tokens.jwks_max_age_seconds).unwrap_or(i64::MAX),
            i64::try_from(tokens.access_token_ttl_seconds).unwrap_or(i64::MAX),
        );
        let set = keys::ensure(&secrets, &key, timing.as_ref().ok(), now).await;
        if let Ok(s) = &set {
            wake = [wake, s.next_wake].into_iter().flatten().min();
        }
        signing_keys.push(render::KeyInput {
            material: set
                .as_ref()
                .map(|s| s.material.clone())
                .map_err(Clone::clone),
            refused: timing.err(),
            key: key.clone(),
        });
        key_sets.push((key, set.unwrap_or_default()));
    }
    let inputs = Inputs {
        auth_policies: list(ctx, "AuthPolicy").await?,
        rate_limit_policies: list(ctx, "RateLimitPolicy").await?,
        oidc_providers: list(ctx, "OidcProvider").await?,
        server_policies,
        service_account_grants: list(ctx, "ServiceAccountGrant").await?,
        signing_keys,
    };
    let rendered = render::render(&inputs);
    ctx.health.track(rendered.valid_providers.clone());
    ctx.metrics
        .key_ages(key_sets.iter().filter_map(|(key, set)| {
            // Token keys only (transmission keys sign nothing), by the servers' rule: active,
            // not past signs_until or retires_at.
            if key.spec.use_ != keygate_crds::KeyUse::Token {
                return None;
            }
            let signing = set
                .material
                .iter()
                .filter(|m| {
                    m.activates_at.is_none_or(|a| a <= now)
                        && m.signs_until.is_none_or(|u| u > now)
                        && m.retires_at.is_none_or(|r| r > now)
                })
                .max_by_key(|m| m.activates_at.unwrap_or(i64::MIN))?;
            Some((key.name_any(), now.saturating_sub(signing.activates_at?)))
        }));
    ctx.metrics.providers_ready(
        rendered
            .verdicts
            .iter()
            .filter(|v| v.kind == "OidcProvider")
            .map(|v| {
                (
                    v.name.clone(),
                    ctx.health.outcome(&v.name).is_some_and(|o| o.ready()),
                )
            }),
    );
    match (&rendered.json, &rendered.hash) {
        (Some(json), Some(hash)) => {
            let outcome = publish::publish(&secrets, &ctx.config_secret, json, hash)
                .await
                .map_err(api_err(format!("write Secret {}", ctx.config_secret)))?;
            if outcome == Published::Written {
                ctx.metrics.wrote();
                tracing::info!(secret = %ctx.config_secret, sha256 = %hash, "published the runtime configuration");
            }
        }
        _ => {
            tracing::warn!(
                why = rendered.held_back.as_deref().unwrap_or_default(),
                "configuration held back; the last published one stays"
            );
        }
    }
    for kind in KINDS {
        let (ok, bad) =
            rendered
                .verdicts
                .iter()
                .filter(|v| v.kind == kind)
                .fold(
                    (0, 0),
                    |(ok, bad), v| if v.ok { (ok + 1, bad) } else { (ok, bad + 1) },
                );
        ctx.metrics.resources(kind, ok, bad);
    }
    for v in &rendered.verdicts {
        let result = match v.kind {
            "AuthPolicy" => report_accepted(ctx, &inputs.auth_policies, v).await,
            "RateLimitPolicy" => report_accepted(ctx, &inputs.rate_limit_policies, v).await,
            "OidcProvider" => {
                let (ready, extra) = provider_health(ctx, v);
                report(
                    ctx,
                    &inputs.oidc_providers,
                    v,
                    |p| {
                        p.status
                            .as_ref()
                            .map(|s| s.conditions.clone())
                            .unwrap_or_default()
                    },
                    vec![ready],
                    Some(extra),
                )
                .await
            }
            "ServerPolicy" => report_accepted(ctx, &inputs.server_policies, v).await,
            "ServiceAccountGrant" => report_accepted(ctx, &inputs.service_account_grants, v).await,
            _ => {
                let keys: Vec<SigningKey> = key_sets.iter().map(|(k, _)| k.clone()).collect();
                let extra = key_sets
                    .iter()
                    .find(|(k, _)| k.name_any() == v.name)
                    .map(|(k, s)| signing_key_status(k, s, now));
                report(
                    ctx,
                    &keys,
                    v,
                    |k| {
                        k.status
                            .as_ref()
                            .map(|s| s.conditions.clone())
                            .unwrap_or_default()
                    },
                    Vec::new(),
                    extra,
                )
                .await
            }
        };
        // A status that cannot be written is retried at the next reconcile; the configuration
        // is published already.
        if let Err(e) = result {
            tracing::warn!(kind = v.kind, name = %v.name, error = %e, "status not written");
        }
    }
    Ok(wake)
}

/// The conditions of a resource's status (none before its first status).
fn conditions(status: Option<&keygate_crds::Status>) -> Vec<Condition> {
    status.map(|s| s.conditions.clone()).unwrap_or_default()
}

/// [`report`] for a kind whose status is the shared `Status`: the `Accepted` condition only.
async fn report_accepted<K>(ctx: &Context, items: &[K], v: &Verdict) -> Result<(), ReconcileError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + HasStatus<Status = keygate_crds::Status>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    report(ctx, items, v, |k| conditions(k.status()), Vec::new(), None).await
}

fn rfc3339(unix: i64) -> Option<String> {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .ok()
        .map(|t| t.to_string())
}

/// The schedule part of a `SigningKey`'s status: each key's id, state and times, the active
/// one and the next rotation (names and ids only, never material).
fn signing_key_status(key: &SigningKey, set: &keys::KeySet, now: i64) -> serde_json::Value {
    let states: Vec<keygate_crds::KeyState> = set
        .records
        .iter()
        .zip(&set.material)
        .map(|(r, m)| keygate_crds::KeyState {
            kid: m.kid.clone(),
            state: crate::rotation::state(&set.records, r, now).into(),
            secret_name: format!("{}-{}", key.name_any(), r.ordinal),
            activates_at: rfc3339(r.activates_at),
            retires_at: r.retires_at.and_then(rfc3339),
        })
        .collect();
    serde_json::json!({
        "algorithm": key.spec.effective_algorithm(),
        "activeKid": states.iter().find(|k| k.state == "active").map(|k| k.kid.clone()),
        "keys": states,
        "nextRotation": set.next_rotation.and_then(rfc3339),
        "rotationRequest": set.request,
    })
}

/// A condition besides `Accepted`, as the reconcile decided it.
struct Cond {
    type_: &'static str,
    /// `True`, `False` or `Unknown`.
    status: &'static str,
    reason: &'static str,
    message: String,
    /// The Event's action when it changes.
    action: &'static str,
}

/// The `Ready` condition and the check fields of an `OidcProvider`'s status, from the last
/// check of its issuer.
fn provider_health(ctx: &Context, v: &Verdict) -> (Cond, serde_json::Value) {
    let outcome = ctx.health.outcome(&v.name);
    let ready = match &outcome {
        Some(o) => Cond {
            type_: READY,
            status: if o.ready() { "True" } else { "False" },
            reason: o.reason,
            message: o.message.clone(),
            action: "Check",
        },
        None if v.reason == status::reason::INVALID_SPEC => Cond {
            type_: READY,
            status: "False",
            reason: status::reason::NOT_ACCEPTED,
            message: "not checked: the spec is not accepted (see the Accepted condition)".into(),
            action: "Check",
        },
        None => Cond {
            type_: READY,
            status: "Unknown",
            reason: status::reason::CHECKING,
            message: "the first check of the issuer has not finished".into(),
            action: "Check",
        },
    };
    let o = outcome.as_ref();
    let extra = serde_json::json!({
        "keyCount": o.and_then(|o| o.key_count),
        "lastCheckTime": o.and_then(|o| rfc3339(o.checked_at)),
        "lastReadyTime": o.and_then(|o| o.ready_at).and_then(rfc3339),
    });
    (ready, extra)
}

/// Writes a resource's conditions (`Accepted` from the verdict, and `more`) and `extra`
/// status fields when any changed, and an Event for each condition whose status or reason
/// changed.
async fn report<K>(
    ctx: &Context,
    items: &[K],
    v: &Verdict,
    conditions_of: impl Fn(&K) -> Vec<Condition>,
    more: Vec<Cond>,
    extra: Option<serde_json::Value>,
) -> Result<(), ReconcileError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let Some(obj) = items.iter().find(|o| o.name_any() == v.name) else {
        return Ok(());
    };
    let previous = conditions_of(obj);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let accepted = Cond {
        type_: ACCEPTED,
        status: if v.ok { "True" } else { "False" },
        reason: v.reason,
        message: v.message.clone(),
        action: "Render",
    };
    let wanted: Vec<Cond> = std::iter::once(accepted).chain(more).collect();
    let conditions: Vec<Condition> = wanted
        .iter()
        .map(|c| {
            status::condition(
                c.type_,
                c.status,
                c.reason,
                &c.message,
                v.generation,
                &previous,
                now.clone(),
            )
        })
        .collect();
    let before = |type_: &str| previous.iter().find(|c| c.type_ == type_);
    let unchanged = previous.len() == conditions.len()
        && conditions.iter().all(|c| {
            before(&c.type_).is_some_and(|b| {
                b.status == c.status
                    && b.reason == c.reason
                    && b.message == c.message
                    && b.observed_generation == c.observed_generation
            })
        });
    let mut status = serde_json::json!({
        "conditions": conditions,
        "observedGeneration": v.generation,
    });
    if let Some(serde_json::Value::Object(extra)) = extra {
        let current = serde_json::to_value(obj)
            .ok()
            .and_then(|o| o.get("status").cloned())
            .unwrap_or_default();
        let same_extra = extra
            .iter()
            .all(|(k, val)| current.get(k).unwrap_or(&serde_json::Value::Null).eq(val));
        if unchanged && same_extra {
            return Ok(());
        }
        for (k, val) in extra {
            status[k] = val;
        }
    } else if unchanged {
        return Ok(());
    }
    ctx.api::<K>()
        .patch_status(
            &v.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(api_err(format!("status of {}/{}", v.kind, v.name)))?;
    for (c, condition) in wanted.iter().zip(&conditions) {
        let changed = before(c.type_)
            .is_none_or(|b| b.status != condition.status || b.reason != condition.reason);
        // No Event for "not checked yet": the outcome follows within seconds.
        if !changed || condition.status == "Unknown" {
            continue;
        }
        let event = Event {
            type_: if condition.status == "False" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.to_owned(),
            note: Some(c.message.chars().take(1000).collect()),
            action: c.action.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(kind = v.kind, name = %v.name, error = %e, "event not recorded");
        }
    }
    Ok(())
}
