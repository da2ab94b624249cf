//! The Kubernetes test environment, proven against a real kube-apiserver with Keygate's own
//! CustomResourceDefinitions: applied and established; a resource created, refused by its
//! schema, watched, patched and server-side applied, with its status subresource;
//! ServiceAccount tokens minted through
//! the TokenRequest API; RBAC refusing an identity without a role on Keygate's resources and
//! admitting it, to reading only, with one;
//! kubectl discovering and listing Keygate's kinds and helm working against the same cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use keygate_crds::{RateLimitPolicy, RateLimitPolicySpec, Status};
use keygate_tests::cluster::control_plane;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// A rule of a `RateLimitPolicy`, as users write them.
fn rule(name: &str, limit: u64) -> Map<String, Value> {
    json!({"name": name, "endpoints": ["login"], "key": "client_ip", "limit": limit, "windowSeconds": 60})
        .as_object()
        .unwrap()
        .clone()
}

/// A `RateLimitPolicy` named `name` with one rule.
fn policy(name: &str) -> RateLimitPolicy {
    RateLimitPolicy::new(
        name,
        RateLimitPolicySpec {
            rules: vec![rule("login-per-ip", 30)],
            replace_defaults: false,
        },
    )
}

/// The environment's API server against Keygate's own resources, with nobody reconciling
/// them (the operator's behaviour is `operator.rs`'s): the committed CRDs applied and
/// established; a `RateLimitPolicy` created, watched, patched, server-side applied by two
/// field managers, its status written through the subresource.
#[tokio::test]
async fn keygate_resources_are_created_watched_patched_applied_and_their_status_written() {
    let cp = control_plane();
    keygate_tests::operator::apply_crds(cp);
    let client = cp.admin_client().await;
    let ns = cp.namespace("kg-crd").await;
    let policies: Api<RateLimitPolicy> = Api::namespaced(client, &ns.name);

    // Watch from the start: every change below must arrive as an event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = policies.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(p)) = stream.next().await {
            if tx.send(p).is_err() {
                break;
            }
        }
    });

    let created = policies
        .create(&PostParams::default(), &policy("limits"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // The CRD's schema is enforced by the API server: a rule without its key is refused.
    let refused = policies
        .create(
            &PostParams::default(),
            &RateLimitPolicy::new(
                "broken",
                RateLimitPolicySpec {
                    rules: vec![json!({"name": "x", "endpoints": ["login"], "limit": 1, "windowSeconds": 1}).as_object().unwrap().clone()],
                    replace_defaults: false,
                },
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 422),
        "{refused:?}"
    );

    // Merge patch of the spec bumps the generation.
    let patched = policies
        .patch(
            "limits",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rules": [rule("login-per-ip", 20)]}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.rules, [rule("login-per-ip", 20)]);
    assert_eq!(patched.metadata.generation, Some(2));

    // Server-side apply by a field manager (forced: it takes over the fields the merge patch
    // set); a second manager then conflicts unless it forces too.
    let apply = json!({
        "apiVersion": "keygate.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": "limits"},
        "spec": {"rules": [rule("login-per-ip", 10)], "replaceDefaults": true}
    });
    let applied = policies
        .patch(
            "limits",
            &PatchParams::apply("platform-team").force(),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    assert!(applied.spec.replace_defaults);
    let other = json!({
        "apiVersion": "keygate.dev/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": "limits"}, "spec": {"replaceDefaults": false}
    });
    let conflict = policies
        .patch(
            "limits",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, kube::Error::Api(ref s) if s.code == 409),
        "{conflict:?}"
    );
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"platform-team".to_owned()),
        "{managers:?}"
    );

    // Status through the subresource (as the operator writes it): the spec and generation do
    // not move.
    let generation = applied.metadata.generation;
    let accepted = Condition {
        type_: keygate_crds::status::ACCEPTED.into(),
        status: "True".into(),
        reason: keygate_crds::status::reason::RENDERED.into(),
        message: "in the rendered configuration".into(),
        last_transition_time: Time(
            k8s_openapi::jiff::Timestamp::now()
                .round(k8s_openapi::jiff::Unit::Second)
                .unwrap(),
        ),
        observed_generation: generation,
    };
    let status = Status {
        conditions: vec![accepted],
        observed_generation: generation,
    };
    let with_status = policies
        .patch_status(
            "limits",
            &PatchParams::apply("keygate-operator").force(),
            &Patch::Apply(json!({
                "apiVersion": "keygate.dev/v1alpha1", "kind": "RateLimitPolicy",
                "metadata": {"name": "limits"}, "status": status
            })),
        )
        .await
        .unwrap();
    assert_eq!(with_status.status.as_ref(), Some(&status));
    assert_eq!(with_status.metadata.generation, generation);
    assert!(with_status.spec.replace_defaults);
    // A status written through the main resource is ignored.
    let ignored = policies
        .patch(
            "limits",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(
        ignored.status.and_then(|s| s.observed_generation),
        generation
    );

    // The watcher saw the object through to its final state.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let p = rx.recv().await.expect("watch stream ended");
            if p.status.as_ref() == Some(&status) && p.spec.replace_defaults {
                return p;
            }
        }
    })
    .await
    .expect("the watch delivered the status change");
    assert_eq!(seen.name_any(), "limits");
    watch.abort();
}

#[tokio::test]
async fn service_account_tokens_are_minted_and_rbac_refuses_without_a_role() {
    let cp = control_plane();
    keygate_tests::operator::apply_crds(cp);
    let admin = cp.admin_client().await;
    let ns = cp.namespace("kg-rbac").await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["keygate".into()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = sas
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .unwrap();
    let token = minted.status.expect("token status").token;
    // A JWT issued by the API server's service-account issuer for this account and audience.
    let payload = token.split('.').nth(1).expect("jwt payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], cp.server());
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:reader", ns.name)
    );
    assert_eq!(claims["aud"], json!(["keygate"]));
    // A token for another audience does not authenticate to the API server itself.
    let wrong_audience: Api<RateLimitPolicy> =
        Api::namespaced(cp.client_with_token(&token).await, &ns.name);
    let refused = wrong_audience.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 401),
        "{refused:?}"
    );

    // A token for the API server: without a role the account may not read Keygate's
    // resources.
    let token = sas
        .create_token_request("reader", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .expect("token status")
        .token;
    let as_reader = cp.client_with_token(&token).await;
    let policies: Api<RateLimitPolicy> = Api::namespaced(as_reader, &ns.name);
    let refused = policies.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 403),
        "{refused:?}"
    );

    // With a Role and a RoleBinding it may, in its namespace only.
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns.name);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "read-rate-limit-policies"},
                "rules": [{"apiGroups": ["keygate.dev"], "resources": ["ratelimitpolicies"], "verbs": ["get", "list"]}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns.name);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "reader-reads"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-rate-limit-policies"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // The authorizer's cache takes the binding in within moments; a loaded machine gets 30 s.
    let started = std::time::Instant::now();
    while let Err(e) = policies.list(&Default::default()).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the RoleBinding did not take effect: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading is all it grants.
    let refused = policies
        .create(&PostParams::default(), &policy("written-by-a-reader"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 403),
        "{refused:?}"
    );
    let elsewhere: Api<RateLimitPolicy> =
        Api::namespaced(cp.client_with_token(&token).await, "default");
    let refused = elsewhere.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 403),
        "{refused:?}"
    );
}

/// Runs `cmd`, which must succeed; its standard output.
fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_and_helm_work_against_the_cluster() {
    let cp = control_plane();
    keygate_tests::operator::apply_crds(cp);
    // kubectl discovers Keygate's kinds and lists them across namespaces.
    let kinds =
        stdout_of(
            cp.kubectl()
                .args(["api-resources", "--api-group", "keygate.dev", "-o", "name"]),
        );
    for kind in ["ratelimitpolicies", "signingkeys", "oidcproviders"] {
        assert!(
            kinds.contains(&format!("{kind}.keygate.dev")),
            "{kind}: {kinds}"
        );
    }
    stdout_of(
        cp.kubectl()
            .args(["get", "ratelimitpolicies.keygate.dev", "--all-namespaces"]),
    );
    let can =
        stdout_of(
            cp.kubectl()
                .args(["auth", "can-i", "create", "ratelimitpolicies.keygate.dev"]),
        );
    assert_eq!(can.trim(), "yes");
    assert!(stdout_of(cp.helm().args(["version", "--short"])).starts_with("v3."));
    // Helm reaches the cluster.
    stdout_of(cp.helm().args(["list", "--all-namespaces"]));
}
