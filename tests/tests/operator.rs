//! The operator against the real API server: the generated CRDs are accepted and their
//! schemas and CEL rules refuse bad specs; resources become one published Secret, statuses
//! and Events; and, end to end, a running `auth-server` fed by that Secret through a
//! kubelet-style mount follows every change (CAPTCHA policy, a lowered rate limit, an OIDC
//! provider, a declared tenant) and loses each effect when its resource is deleted; a
//! ServiceAccountGrant lets a ServiceAccount's own token issue tickets until it is deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::cluster::{ControlPlane, control_plane};
use keygate_tests::oidc::OidcProvider;
use keygate_tests::operator::{OperatorProcess, SecretMount, apply_crds};
use keygate_tests::{ServerOptions, ServerProcess, eventually, get_json, post_json};
use serde_json::{Value, json};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

fn kubectl(cp: &ControlPlane, ns: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = cp.kubectl();
    cmd.args(["-n", ns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn apply(cp: &ControlPlane, ns: &str, yaml: &str) -> (bool, String) {
    kubectl(cp, ns, &["apply", "-f", "-"], Some(yaml))
}

fn get(cp: &ControlPlane, ns: &str, what: &str) -> Value {
    let (ok, text) = kubectl(cp, ns, &["get", what, "-o", "json"], None);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn accepted(obj: &Value) -> Option<(String, String, String)> {
    condition(obj, "Accepted")
}

/// Applies the SigningKey `main` (nothing is published without one) and projects the
/// published configuration Secret like a kubelet; returns the directory, the projection and
/// the path of `config.json` once it is there.
async fn first_signing_key_published(
    cp: &ControlPlane,
    ns: &str,
) -> (tempfile::TempDir, SecretMount, std::path::PathBuf) {
    let (ok, text) = apply(
        cp,
        ns,
        "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: main}\nspec: {}\n",
    );
    assert!(ok, "{text}");
    let mount_dir = tempfile::tempdir().unwrap();
    let mount = SecretMount::start(ns, "keygate-config", mount_dir.path()).await;
    let config = mount_dir.path().join("config.json");
    eventually(
        Duration::from_secs(30),
        "the published configuration",
        async || config.exists().then_some(()),
    )
    .await;
    (mount_dir, mount, config)
}

/// The Events that `selector` (a field selector) picks.
fn events(cp: &ControlPlane, ns: &str, selector: &str) -> Vec<Value> {
    let (ok, text) = kubectl(
        cp,
        ns,
        &["get", "events", "--field-selector", selector, "-o", "json"],
        None,
    );
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A condition's (status, reason, message).
fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

#[tokio::test]
async fn generated_crds_are_accepted_and_refuse_bad_specs() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-crds").await;
    for (yaml, expect) in [
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: a}\nspec: {captcha: {mode: sometimes}}\n",
            "Unsupported value: \"sometimes\"",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: b}\nspec: {lockout: {delayAfter: 5, lockAfter: 5}}\n",
            "lockout.lockAfter must exceed lockout.delayAfter",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: c}\nspec: {tenant: Not_A_Tenant}\n",
            "spec.tenant",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: d}\nspec: {captcha: {powDifficulty: 12}}\n",
            "spec.captcha.powDifficulty",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: OidcProvider\nmetadata: {name: e}\nspec: {issuer: 'http://id.example', clientId: k}\n",
            "issuer must be https:// unless allowHttp is true",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: f}\nspec: {algorithm: HS256}\n",
            "Unsupported value: \"HS256\"",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: t}\nspec: {use: transmission, algorithm: ES256}\n",
            "a transmission key is RSA",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: g}\nspec: {rules: [{name: x, endpoints: [login], key: client_ip, limit: 0, windowSeconds: 60}]}\n",
            "spec.rules[0].limit",
        ),
        (
            "apiVersion: keygate.dev/v1alpha1\nkind: ServiceAccountGrant\nmetadata: {name: h}\nspec: {serviceAccount: {namespace: billing, name: billing-api}, permissions: ['users:delete']}\n",
            "Unsupported value: \"users:delete\"",
        ),
    ] {
        let (ok, text) = apply(cp, &ns.name, yaml);
        assert!(!ok, "accepted: {yaml}");
        assert!(text.contains(expect), "{expect:?} not in {text}");
    }
    // Defaults are filled in by the API server, and `kubectl explain` has the descriptions.
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: ok}\nspec: {captcha: {mode: always}}\n",
    );
    assert!(ok, "{text}");
    let p = get(cp, &ns.name, "authpolicy/ok");
    assert_eq!(p["spec"]["captcha"]["powDifficulty"], 4);
    assert_eq!(p["spec"]["lockout"]["lockAfter"], 10);
    let (ok, text) = kubectl(
        cp,
        &ns.name,
        &["explain", "authpolicy.spec.lockout.lockAfter"],
        None,
    );
    assert!(
        ok && text.contains("Failures after which the account is locked"),
        "{text}"
    );
    let (ok, text) = kubectl(cp, &ns.name, &["get", "kgap"], None);
    assert!(
        ok && text.contains("TENANT") && text.contains("ACCEPTED"),
        "{text}"
    );
}

#[tokio::test]
async fn the_operator_refuses_to_start_without_its_crds_readable() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-op-rbac").await;
    // A ServiceAccount with no role at all: told what is missing, exit non-zero.
    let token = cp.service_account_token(&ns.name, "nobody", None, 3600);
    let kubeconfig = cp.kubeconfig_for_token(&token);
    let (status, log) = OperatorProcess::run_to_exit(kubeconfig.path(), &ns.name);
    assert!(!status.success());
    assert!(log.contains("RBAC forbids listing AuthPolicy"), "{log}");
}

#[tokio::test]
async fn resources_reach_a_running_server_and_deleting_them_takes_the_effect_away() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-op").await;
    let operator = OperatorProcess::start(
        &cp.kubeconfig,
        &ns.name,
        &["--provider-check-interval", "2s"],
    );
    let client = reqwest::Client::new();
    // Nothing published without a SigningKey (every server would sign with its own key).
    let (_mount_dir, _mount, config) = first_signing_key_published(cp, &ns.name).await;
    let key = get(cp, &ns.name, "signingkey/main");
    let kid = key["status"]["activeKid"].as_str().unwrap().to_owned();
    assert_eq!(accepted(&key).unwrap().0, "True", "{key}");
    // The key Secret is owned by the SigningKey; status names the key, never its material.
    let secret = get(cp, &ns.name, "secret/main-1");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "SigningKey"
    );
    assert!(!key["status"].to_string().contains("PRIVATE"));

    let data = tempfile::tempdir().unwrap();
    keygate_tests::add_user(data.path(), &[], &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(data.path().to_path_buf()),
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let jwks = get_json(
        &client,
        &format!("{}/.well-known/jwks.json", server.base_url),
        None,
    )
    .await
    .1;
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());

    let login = |body: Value| {
        let (client, base) = (client.clone(), server.base_url.clone());
        async move { post_json(&client, &format!("{base}/api/v1/auth/login"), None, &body).await }
    };
    // Right passwords as the probe: failures would count and bring a CAPTCHA of their own.
    let alice = json!({"identity": "alice", "password": PW});
    assert_eq!(login(alice.clone()).await.0, 200);

    // An AuthPolicy (the default policy) that always wants a CAPTCHA.
    let applied = Instant::now();
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: default}\nspec: {captcha: {mode: always}}\n",
    );
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "CAPTCHA demanded", async || {
        (login(alice.clone()).await.1["code"] == 40000301).then_some(())
    })
    .await;
    println!(
        "AuthPolicy applied -> in force on the server: {:?}",
        applied.elapsed()
    );
    let p = get(cp, &ns.name, "authpolicy/default");
    assert_eq!(accepted(&p).unwrap().1, "Rendered", "{p}");
    assert_eq!(p["status"]["observedGeneration"], 1);

    // A RateLimitPolicy lowering the key-exchange budget to 2 a minute (and raising the login
    // budget of this test's one address, which polls sign-ins below).
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: tight}\nspec:\n  rules:\n  - {name: bootstrap-per-ip, endpoints: [key_exchange], key: client_ip, limit: 2, windowSeconds: 60}\n  - {name: login-per-ip, endpoints: [login], key: client_ip, limit: 100000, windowSeconds: 60}\n  - {name: login-per-identity, endpoints: [login], key: identity, limit: 100000, windowSeconds: 60}\n",
    );
    assert!(ok, "{text}");
    let kex = async || {
        get_json(
            &client,
            &format!("{}/api/v1/public/key-exchange", server.base_url),
            None,
        )
        .await
        .0
    };
    eventually(Duration::from_secs(20), "the lowered limit", async || {
        (kex().await == 429).then_some(())
    })
    .await;

    // An OidcProvider at a real provider; its tenant is created by the server.
    let mut idp = OidcProvider::start(&[("k1", "RS256")]);
    let (ok, text) = apply(
        cp,
        &ns.name,
        &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: OidcProvider\nmetadata: {{name: corp}}\nspec: {{issuer: '{}', clientId: keygate, allowHttp: true, provisioning: create, tenantId: partners}}\n",
            idp.issuer
        ),
    );
    assert!(ok, "{text}");
    let signin = async |provider: &str, id_token: String| {
        post_json(
            &client,
            &format!("{}/api/v1/auth/id-token/signin", server.base_url),
            None,
            &json!({"provider": provider, "id_token": id_token}),
        )
        .await
    };
    let (_, body) = eventually(Duration::from_secs(20), "federated sign-in", async || {
        let r = signin("corp", idp.id_token("keygate", "alice")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert!(body["access_token"].is_string());
    // The issuer is checked: Ready, with the key count and the check time.
    let corp = eventually(Duration::from_secs(20), "Ready=True", async || {
        let p = get(cp, &ns.name, "oidcprovider/corp");
        (condition(&p, "Ready")?.0 == "True").then_some(p)
    })
    .await;
    assert_eq!(condition(&corp, "Ready").unwrap().1, "KeysPublished");
    assert_eq!(corp["status"]["keyCount"], 1, "{corp}");
    assert!(corp["status"]["lastCheckTime"].is_string(), "{corp}");
    let (_, table) = kubectl(cp, &ns.name, &["get", "oidcproviders"], None);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "ISSUER", "TENANT", "ACCEPTED", "READY", "KEYS", "AGE"
        ],
        "{table}"
    );
    // The issuer goes down: not Ready with the reason, still in the configuration, and the
    // server's cached keys keep signing in; back up, Ready again after the backoff.
    let spare = idp.id_token("keygate", "alice");
    idp.stop();
    let (_, reason, message) = eventually(Duration::from_secs(20), "Ready=False", async || {
        condition(&get(cp, &ns.name, "oidcprovider/corp"), "Ready").filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(reason, "DiscoveryFailed", "{message}");
    assert!(
        message.contains("stays in the published configuration"),
        "{message}"
    );
    assert_eq!(
        accepted(&get(cp, &ns.name, "oidcprovider/corp")).unwrap().0,
        "True"
    );
    assert!(
        !events(
            cp,
            &ns.name,
            "involvedObject.name=corp,reason=DiscoveryFailed"
        )
        .is_empty(),
        "a Warning event for the failed check"
    );
    assert_eq!(signin("corp", spare).await.0, 200, "cached keys verify");
    idp.restart_with_keys(&[("k1", "RS256")]);
    eventually(Duration::from_secs(30), "Ready=True again", async || {
        let c = condition(&get(cp, &ns.name, "oidcprovider/corp"), "Ready")?;
        (c.0 == "True").then_some(())
    })
    .await;
    // A provider at a dead port: not Ready, with the reason; Accepted and published all the
    // same (the server judges tokens for it, rather than answering "no such provider").
    let dead_port = keygate_tests::free_port();
    let (ok, text) = apply(
        cp,
        &ns.name,
        &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: OidcProvider\nmetadata: {{name: dead}}\nspec: {{issuer: 'http://127.0.0.1:{dead_port}', clientId: keygate, allowHttp: true}}\n"
        ),
    );
    assert!(ok, "{text}");
    let (_, reason, message) =
        eventually(Duration::from_secs(20), "dead: Ready=False", async || {
            condition(&get(cp, &ns.name, "oidcprovider/dead"), "Ready").filter(|c| c.0 == "False")
        })
        .await;
    assert_eq!(reason, "DiscoveryFailed");
    assert!(message.contains("refused"), "{message}");
    let dead = get(cp, &ns.name, "oidcprovider/dead");
    assert_eq!(accepted(&dead).unwrap().0, "True", "{dead}");
    assert!(dead["status"]["keyCount"].is_null(), "{dead}");
    let token = idp.id_token("keygate", "alice");
    eventually(
        Duration::from_secs(20),
        "dead provider published",
        async || {
            let r = signin("dead", token.clone()).await;
            (r.1["code"] == 40000601).then_some(())
        },
    )
    .await;
    let (ok, text) = kubectl(cp, &ns.name, &["delete", "oidcprovider", "dead"], None);
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "dead provider gone", async || {
        let r = signin("dead", token.clone()).await;
        (r.1["errors"][0]["field"] == "provider").then_some(())
    })
    .await;
    let cfg = get_json(
        &client,
        &format!("{}/api/v1/public/auth-config/partners", server.base_url),
        None,
    )
    .await;
    assert_eq!(cfg.0, 200, "the declared tenant exists: {}", cfg.1);

    // A spec only the configuration's validation refuses: Accepted=False with the reason, an
    // Event, and the published Secret unchanged.
    let before = get(cp, &ns.name, "secret/keygate-config")["metadata"]["annotations"]["keygate.dev/config-sha256"].clone();
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: acme}\nspec: {tenant: acme, password: {acceptedTransmissions: [plain], preferredTransmission: hash}}\n",
    );
    assert!(ok, "{text}");
    let (status, reason, message) =
        eventually(Duration::from_secs(20), "Accepted=False", async || {
            accepted(&get(cp, &ns.name, "authpolicy/acme")).filter(|c| c.0 == "False")
        })
        .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("preferred_transmission"), "{message}");
    let events = events(cp, &ns.name, "involvedObject.name=acme");
    assert!(
        events.iter().any(|e| e["reason"] == "InvalidSpec"),
        "{events:?}"
    );
    let after = get(cp, &ns.name, "secret/keygate-config")["metadata"]["annotations"]["keygate.dev/config-sha256"].clone();
    assert_eq!(
        before, after,
        "held back: the last good configuration stays"
    );
    assert_eq!(
        login(alice.clone()).await.1["code"],
        40000301,
        "still in force"
    );
    let (ok, text) = kubectl(cp, &ns.name, &["delete", "authpolicy", "acme"], None);
    assert!(ok, "{text}");

    // Deleting each resource takes its effect away.
    let (ok, text) = kubectl(cp, &ns.name, &["delete", "authpolicy", "default"], None);
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "no CAPTCHA", async || {
        (login(alice.clone()).await.0 == 200).then_some(())
    })
    .await;
    let (ok, text) = kubectl(cp, &ns.name, &["delete", "oidcprovider", "corp"], None);
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "the provider gone", async || {
        let r = signin("corp", idp.id_token("keygate", "alice")).await;
        (r.0 == 400 && r.1["errors"][0]["field"] == "provider").then_some(())
    })
    .await;
    let (ok, text) = kubectl(cp, &ns.name, &["delete", "ratelimitpolicy", "tight"], None);
    assert!(ok, "{text}");
    let published = get(cp, &ns.name, "secret/keygate-config");
    let json = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        published["data"]["config.json"].as_str().unwrap(),
    );
    assert!(json.is_ok());
    eventually(
        Duration::from_secs(20),
        "the default limit back",
        async || {
            let text = std::fs::read_to_string(&config).ok()?;
            let c: Value = serde_json::from_str(&text).ok()?;
            let rule = c["rate_limits"]["rules"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "bootstrap-per-ip")?
                .clone();
            (rule["limit"] == 120).then_some(())
        },
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", operator.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("keygate_operator_reconciles_total{kind=\"AuthPolicy\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_operator_config_writes_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn applied_resources_reach_the_secret_quickly() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-op-latency").await;
    let _operator = OperatorProcess::start(&cp.kubeconfig, &ns.name, &[]);
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: main}\nspec: {}\n",
    );
    assert!(ok, "{text}");
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(cp.admin_client().await, &ns.name);
    let hash = async || {
        secrets
            .get_opt("keygate-config")
            .await
            .unwrap()
            .and_then(|s| s.metadata.annotations)
            .and_then(|a| a.get("keygate.dev/config-sha256").cloned())
    };
    let mut last = eventually(Duration::from_secs(30), "the first Secret", async || {
        hash().await
    })
    .await;
    let policies: kube::Api<keygate_crds::AuthPolicy> =
        kube::Api::namespaced(cp.admin_client().await, &ns.name);
    let mut took = Vec::new();
    for i in 0..10u32 {
        let policy: keygate_crds::AuthPolicy = serde_json::from_value(json!({
            "apiVersion": "keygate.dev/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "default"},
            "spec": {"captcha": {"afterFailures": 4 + i}},
        }))
        .unwrap();
        let started = Instant::now();
        policies
            .patch(
                "default",
                &kube::api::PatchParams::apply("keygate-tests").force(),
                &kube::api::Patch::Apply(&policy),
            )
            .await
            .unwrap();
        last = eventually(Duration::from_secs(10), "the Secret updated", async || {
            hash().await.filter(|h| *h != last)
        })
        .await;
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "operator: resource applied -> Secret updated, 10 changes: p50 {:?}, p99 {:?}",
        took[5], took[9]
    );
    assert!(took[5] < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn every_example_manifest_is_accepted() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-examples").await;
    let _operator = OperatorProcess::start(&cp.kubeconfig, &ns.name, &[]);
    let dir = keygate_tests::repo_root().join("examples");
    let (ok, text) = kubectl(cp, &ns.name, &["apply", "-f", dir.to_str().unwrap()], None);
    assert!(ok, "{text}");
    let count = std::fs::read_dir(&dir).unwrap().count();
    for kind in [
        "authpolicies",
        "ratelimitpolicies",
        "oidcproviders",
        "serverpolicies",
        "serviceaccountgrants",
        "signingkeys",
    ] {
        let items = eventually(Duration::from_secs(30), kind, async || {
            let list = get(cp, &ns.name, kind);
            let items = list["items"].as_array()?.clone();
            items
                .iter()
                .all(|i| accepted(i).is_some_and(|c| c.0 == "True"))
                .then_some(items)
        })
        .await;
        assert!(!items.is_empty(), "no {kind} among the examples");
    }
    let (ok, text) = kubectl(cp, &ns.name, &["get", "keygate"], None);
    assert!(ok, "{text}");
    assert_eq!(text.matches("True").count(), count, "{text}");
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_a_killed_leader_is_replaced() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-op-leader").await;
    let args = ["--lease-duration", "4"];
    let mut first = OperatorProcess::start(&cp.kubeconfig, &ns.name, &args);
    // The first one leads before the second starts.
    eventually(Duration::from_secs(20), "a leader", async || {
        first.log().contains("leading: reconciling").then_some(())
    })
    .await;
    let second = OperatorProcess::start(&cp.kubeconfig, &ns.name, &args);
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: main}\nspec: {}\n",
    );
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "the key's Secret", async || {
        kubectl(cp, &ns.name, &["get", "secret", "main-1"], None)
            .0
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(second.log().contains("standing by"), "{}", second.log());
    assert!(!second.log().contains("leading"), "{}", second.log());
    assert!(
        !second.log().contains("generated key material"),
        "{}",
        second.log()
    );
    // Kill the leader: the other takes over within the lease duration and carries on.
    first.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(20), "the new leader", async || {
        second.log().contains("leading: reconciling").then_some(())
    })
    .await;
    println!("leader killed -> new leader: {:?}", killed.elapsed());
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "{:?}",
        killed.elapsed()
    );
    let (ok, text) = apply(
        cp,
        &ns.name,
        "apiVersion: keygate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {name: default}\nspec: {captcha: {mode: always}}\n",
    );
    assert!(ok, "{text}");
    eventually(
        Duration::from_secs(20),
        "the new leader's render",
        async || {
            let p = get(cp, &ns.name, "authpolicy/default");
            accepted(&p).filter(|c| c.0 == "True").map(|_| ())
        },
    )
    .await;
    // One key, made once: the new leader read the one the first made.
    let secrets = get(cp, &ns.name, "secrets");
    let keys = secrets["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["labels"]["keygate.dev/signing-key"] == "main")
        .count();
    assert_eq!(keys, 1);
}

#[tokio::test]
async fn a_service_account_grant_lets_its_caller_issue_tickets_until_it_is_deleted() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-grant").await;
    let _operator = OperatorProcess::start(&cp.kubeconfig, &ns.name, &[]);
    let client = reqwest::Client::new();
    let (_mount_dir, _mount, config) = first_signing_key_published(cp, &ns.name).await;
    // The server runs as its own ServiceAccount, as the chart's pod would, with the cluster
    // given by flags (outside a pod).
    let data = tempfile::tempdir().unwrap();
    let token_file = data.path().join("sa-token");
    std::fs::write(
        &token_file,
        cp.service_account_token(&ns.name, "keygate-server", None, 3600),
    )
    .unwrap();
    let alice = keygate_tests::add_user(data.path(), &[], &["--username", "alice"], PW);
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(data.path().to_path_buf()),
        args: vec![
            "--config".into(),
            config.display().to_string(),
            "--kubernetes-api-url".into(),
            cp.server().to_owned(),
            "--kubernetes-ca-file".into(),
            cp.ca_file().display().to_string(),
            "--kubernetes-token-file".into(),
            token_file.display().to_string(),
        ],
        ..Default::default()
    });
    let caller = cp.service_account_token(&ns.name, "billing-api", Some("keygate"), 600);
    let ticket = async || {
        post_json(
            &client,
            &format!("{}/api/v1/auth/generate-ticket", server.base_url),
            Some(&caller),
            &json!({"user_id": alice, "reason": "billing portal"}),
        )
        .await
    };
    assert_eq!(ticket().await.0, 403, "verified, not granted yet");
    let (ok, text) = apply(
        cp,
        &ns.name,
        &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: ServiceAccountGrant\nmetadata: {{name: billing}}\nspec: {{serviceAccount: {{namespace: {}, name: billing-api}}, permissions: ['tickets:create']}}\n",
            ns.name
        ),
    );
    assert!(ok, "{text}");
    let (_, body) = eventually(Duration::from_secs(20), "the grant in force", async || {
        let r = ticket().await;
        (r.0 == 200).then_some(r)
    })
    .await;
    let signed_in = post_json(
        &client,
        &format!("{}/api/v1/auth/ticket/signin", server.base_url),
        None,
        &json!({"ticket": body["data"]["ticket"]}),
    )
    .await;
    assert_eq!(signed_in.0, 200, "{}", signed_in.1);
    let me = get_json(
        &client,
        &format!("{}/api/v1/auth/me", server.base_url),
        signed_in.1["access_token"].as_str(),
    )
    .await;
    assert_eq!(
        me.1["data"]["act"]["sub"],
        format!("system:serviceaccount:{}:billing-api", ns.name)
    );
    let grant = get(cp, &ns.name, "serviceaccountgrant/billing");
    assert_eq!(accepted(&grant).unwrap().0, "True", "{grant}");
    // Deleting the grant revokes the access within the reload time.
    let deleted = Instant::now();
    let (ok, text) = kubectl(
        cp,
        &ns.name,
        &["delete", "serviceaccountgrant", "billing"],
        None,
    );
    assert!(ok, "{text}");
    eventually(Duration::from_secs(20), "the grant revoked", async || {
        (ticket().await.0 == 403).then_some(())
    })
    .await;
    println!(
        "ServiceAccountGrant deleted -> refused by the server: {:?}",
        deleted.elapsed()
    );
}

#[tokio::test]
async fn the_operator_traces_its_reconciles_and_exports_leader_rotation_key_age_and_provider_health()
 {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-op-otel").await;
    let collector = keygate_tests::collector::Collector::start();
    let idp = OidcProvider::start(&[("k1", "RS256")]);
    let op = OperatorProcess::start_with_env(
        &cp.kubeconfig,
        &ns.name,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.otlp_grpc.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let (ok, text) = apply(
        cp,
        &ns.name,
        &format!(
            "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {{name: main}}\nspec: {{}}\n---\n\
             apiVersion: keygate.dev/v1alpha1\nkind: OidcProvider\nmetadata: {{name: corp}}\n\
             spec: {{issuer: \"{}\", clientId: keygate, allowHttp: true}}\n",
            idp.issuer
        ),
    );
    assert!(ok, "{text}");
    let metric = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let scrape = async || {
        reqwest::get(format!("{}/metrics", op.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually(
        Duration::from_secs(30),
        "the provider's check",
        async || {
            let text = scrape().await;
            (metric(
                &text,
                "keygate_operator_oidc_provider_ready{provider=\"corp\"}",
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;
    // A rotation by annotation is counted; the signing key's age is exported.
    let (ok, text) = kubectl(
        cp,
        &ns.name,
        &["annotate", "signingkey/main", "keygate.dev/rotate=now"],
        None,
    );
    assert!(ok, "{text}");
    let text = eventually(Duration::from_secs(30), "the rotation", async || {
        let text = scrape().await;
        (metric(
            &text,
            "keygate_operator_key_rotations_total{signing_key=\"main\"}",
        ) == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "keygate_operator_leader "),
        Some(1.0),
        "{text}"
    );
    let age = metric(
        &text,
        "keygate_operator_signing_key_age_seconds{signing_key=\"main\"}",
    );
    assert!(age.is_some_and(|a| (0.0..120.0).contains(&a)), "{text}");
    // Changes applied together settle into one reconcile, counted under the kind that came
    // first: count the successful reconciles of any kind.
    let succeeded: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("keygate_operator_reconciles_total{") && l.contains("outcome=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(succeeded >= 1.0, "{text}");

    // The reconciles and the issuer checks arrive as spans; a check carries its trace to the
    // provider.
    let spans = eventually(
        Duration::from_secs(30),
        "the operator's spans",
        async || {
            let spans = collector.service_spans("keygate-operator").await;
            (spans.iter().any(|s| s.name == "operator.reconcile")
                && spans.iter().any(|s| s.name == "operator.provider_check"))
            .then_some(spans)
        },
    )
    .await;
    let check = spans
        .iter()
        .find(|s| s.name == "operator.provider_check")
        .unwrap();
    assert_eq!(check.attr("keygate.provider"), Some("corp"));
    let fetches: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == check.trace_id && s.kind.contains("CLIENT"))
        .collect();
    assert!(
        !fetches.is_empty(),
        "no client spans under the check: {spans:#?}"
    );
    let requests = idp.requests();
    for fetch in fetches {
        let wanted = format!("00-{}-{}-01", fetch.trace_id, fetch.span_id);
        assert!(
            requests.iter().any(|(_, _, tp)| *tp == wanted),
            "the provider never saw {wanted}: {requests:?}"
        );
    }
    drop(op);
}
