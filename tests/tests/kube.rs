//! The Kubernetes test environment, proven against a real kube-apiserver: a
//! CustomResourceDefinition applied and established; objects created, watched, patched and
//! server-side applied, with their status subresource; ServiceAccount tokens minted through
//! the TokenRequest API; RBAC refusing an identity without a role and admitting it with one;
//! kubectl and helm working against the same cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keygate_tests::cluster::control_plane;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// A test-only custom resource with a status subresource.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.keygate.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    ready: bool,
    observed_generation: Option<i64>,
}

async fn established_crd(client: kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.patch(
        "widgets.test.keygate.dev",
        &PatchParams::apply("keygate-tests").force(),
        &Patch::Apply(Widget::crd()),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "widgets.test.keygate.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("watch the CRD");
}

#[tokio::test]
async fn custom_resources_are_created_watched_patched_applied_and_their_status_written() {
    let cp = control_plane();
    let client = cp.admin_client().await;
    established_crd(client.clone()).await;
    let ns = cp.namespace("kg-crd").await;
    let widgets: Api<Widget> = Api::namespaced(client, &ns.name);

    // Watch from the start: every change below must arrive as an event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = widgets.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(w)) = stream.next().await {
            if tx.send(w).is_err() {
                break;
            }
        }
    });

    let created = widgets
        .create(
            &PostParams::default(),
            &Widget::new(
                "w1",
                WidgetSpec {
                    size: 1,
                    color: None,
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // Merge patch of the spec bumps the generation.
    let patched = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.size, 2);
    assert_eq!(patched.metadata.generation, Some(2));

    // Server-side apply by a field manager (forced: it takes over the fields the merge patch
    // set); a second manager then conflicts unless it forces too.
    let apply = json!({
        "apiVersion": "test.keygate.dev/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3, "color": "blue"}
    });
    let applied = widgets
        .patch(
            "w1",
            &PatchParams::apply("keygate-operator").force(),
            &Patch::Apply(&apply),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.color.as_deref(), Some("blue"));
    let other = json!({
        "apiVersion": "test.keygate.dev/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 4}
    });
    let conflict = widgets
        .patch(
            "w1",
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
        managers.contains(&"keygate-operator".to_owned()),
        "{managers:?}"
    );

    // Status through the subresource: the spec and generation do not move.
    let generation = applied.metadata.generation;
    let with_status = widgets
        .patch_status(
            "w1",
            &PatchParams::apply("keygate-operator").force(),
            &Patch::Apply(json!({
                "apiVersion": "test.keygate.dev/v1", "kind": "Widget", "metadata": {"name": "w1"},
                "status": {"ready": true, "observedGeneration": generation}
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        with_status.status,
        Some(WidgetStatus {
            ready: true,
            observed_generation: generation
        })
    );
    assert_eq!(with_status.metadata.generation, generation);
    assert_eq!(with_status.spec.size, 3);
    // A status written through the main resource is ignored.
    let ignored = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status.map(|s| s.ready), Some(true));

    // The watcher saw the object through to its final state.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let w = rx.recv().await.expect("watch stream ended");
            if w.status.as_ref().is_some_and(|s| s.ready) && w.spec.size == 3 {
                return w;
            }
        }
    })
    .await
    .expect("the watch delivered the status change");
    assert_eq!(seen.name_any(), "w1");
    watch.abort();
}

#[tokio::test]
async fn service_account_tokens_are_minted_and_rbac_refuses_without_a_role() {
    let cp = control_plane();
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
    let wrong_audience: Api<ConfigMap> =
        Api::namespaced(cp.client_with_token(&token).await, &ns.name);
    let refused = wrong_audience.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 401),
        "{refused:?}"
    );

    // A token for the API server: without a role the account may not read ConfigMaps.
    let token = sas
        .create_token_request("reader", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .expect("token status")
        .token;
    let as_reader = cp.client_with_token(&token).await;
    let cms: Api<ConfigMap> = Api::namespaced(as_reader, &ns.name);
    let refused = cms.list(&Default::default()).await.unwrap_err();
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
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
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
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut allowed = false;
    for _ in 0..50 {
        if cms.list(&Default::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "the RoleBinding did not take effect");
    let elsewhere: Api<ConfigMap> = Api::namespaced(cp.client_with_token(&token).await, "default");
    let refused = elsewhere.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(refused, kube::Error::Api(ref s) if s.code == 403),
        "{refused:?}"
    );
}

#[test]
fn kubectl_and_helm_work_against_the_cluster() {
    let cp = control_plane();
    let out = cp
        .kubectl()
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));
    let out = cp
        .kubectl()
        .args(["auth", "can-i", "create", "customresourcedefinitions"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = cp.helm().args(["version", "--short"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("v3."));
    let out = cp
        .helm()
        .args(["list", "--all-namespaces"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm cannot reach the cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
