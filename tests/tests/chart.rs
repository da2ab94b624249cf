//! The Helm chart: `helm lint --strict` and the rendered objects of every values file in
//! `charts/keygate/ci/` checked structurally (hardened pods, probes, resources, RBAC without
//! wildcards, the mode each file asks for), bad values refused by the schema with a message
//! that names the value; then, against the real API server, `helm install`, `upgrade` and
//! `uninstall`, the chart's ServiceAccounts held to what each binary needs (the operator does
//! its whole job as its ServiceAccount and is refused elsewhere), and both binaries started
//! with exactly the arguments and environment the rendered Deployments give them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::cluster::{ControlPlane, control_plane};
use keygate_tests::operator::{SecretMount, apply_crds};
use keygate_tests::{eventually, repo_root, workspace_bin};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KUBE_VERSION: &str = "1.34.0";

fn chart() -> PathBuf {
    repo_root().join("charts/keygate")
}

fn values_file(name: &str) -> PathBuf {
    chart().join("ci").join(format!("{name}-values.yaml"))
}

fn run(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().expect("run helm or kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `helm template` of release `kg` in `namespace` with `values` (extra `--set`s after
/// it); the objects, or helm's message.
fn render(
    cp: &ControlPlane,
    namespace: &str,
    values: &Path,
    sets: &[&str],
) -> Result<Vec<Value>, String> {
    let mut cmd = cp.helm();
    cmd.args(["template", "kg"])
        .arg(chart())
        .args(["--namespace", namespace, "--kube-version", KUBE_VERSION])
        .arg("-f")
        .arg(values);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML");
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn kinds(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

fn env_of(container: &Value, name: &str) -> Option<Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

/// What every rendered values file must hold.
fn check_common(file: &str, objects: &[Value]) {
    for d in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "{file} {name}"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{file} {name}"
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{file} {name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{file} {name}");
            assert_eq!(sc["runAsNonRoot"], true, "{file} {name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{file} {name}");
            assert_eq!(
                sc["seccompProfile"]["type"], "RuntimeDefault",
                "{file} {name}"
            );
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                assert!(
                    c[probe]["httpGet"]["path"].is_string(),
                    "{file} {name} {probe}"
                );
            }
            assert!(
                c["resources"]["requests"]["cpu"].is_string(),
                "{file} {name}"
            );
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{file} {name}"
            );
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{file} {name}"
            );
            for p in c["ports"].as_array().unwrap() {
                assert!(p["name"].is_string(), "{file} {name}: named ports");
            }
        }
    }
    // Images as the Dockerfile builds them.
    let image = |name: &str| {
        find(objects, "Deployment", name).unwrap()["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        image("kg-keygate-server"),
        "ghcr.io/keygate/auth-server:0.1.0"
    );
    assert_eq!(
        image("kg-keygate-operator"),
        "ghcr.io/keygate/auth-operator:0.1.0"
    );
    // RBAC: no wildcard anywhere, the operator's rules in its namespace only.
    for o in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        let text = o["rules"].to_string();
        assert!(!text.contains("\"*\""), "{file}: a wildcard in {text}");
    }
    let role = find(objects, "Role", "kg-keygate-operator").unwrap();
    assert!(
        role["rules"]
            .to_string()
            .contains("serviceaccountgrants/status")
    );
    assert!(kinds(objects, "ClusterRole") <= 1);
    if let Some(cr) = objects.iter().find(|o| o["kind"] == "ClusterRole") {
        assert_eq!(
            cr["rules"],
            json!([{"nonResourceURLs": ["/.well-known/openid-configuration", "/openid/v1/jwks"], "verbs": ["get"]}]),
            "{file}: the server may read the issuer's discovery document and keys, nothing else"
        );
    }
    for s in objects.iter().filter(|o| o["kind"] == "Service") {
        for p in s["spec"]["ports"].as_array().unwrap() {
            assert!(p["name"].is_string(), "{file}: named Service ports");
        }
    }
    let server = find(objects, "Deployment", "kg-keygate-server").unwrap();
    let pod = &server["spec"]["template"];
    assert!(
        pod["metadata"]["annotations"]["checksum/settings"]
            .as_str()
            .is_some_and(|s| s.len() == 64),
        "{file}: a restart when the process settings change"
    );
    let settings = find(objects, "ConfigMap", "kg-keygate-server-settings").unwrap();
    assert_eq!(
        settings["data"]["KEYGATE_CONFIG"],
        "/etc/keygate/config/config.json"
    );
    let mounts = pod["spec"]["containers"][0]["volumeMounts"].to_string();
    assert!(mounts.contains("/etc/keygate/config"), "{mounts}");
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("kg-keygate-config"), "{volumes}");
    // The grace period covers the preStop pause and the drain.
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap()
            >= 30
    );
    assert_eq!(
        pod["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        5
    );
}

#[test]
fn the_chart_lints_and_renders_what_each_values_file_asks_for() {
    let cp = control_plane();
    for file in ["default", "production", "ha", "minimal"] {
        let mut lint = cp.helm();
        lint.args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart())
            .arg("-f")
            .arg(values_file(file));
        let (ok, text) = run(lint);
        assert!(ok, "helm lint --strict with {file}: {text}");
        let objects = render(cp, "keygate", &values_file(file), &[]).unwrap();
        check_common(file, &objects);
        let server = find(&objects, "Deployment", "kg-keygate-server").unwrap();
        let spec = &server["spec"];
        let container = &spec["template"]["spec"]["containers"][0];
        let sa = find(&objects, "ServiceAccount", "kg-keygate-server").unwrap();
        match file {
            "default" => {
                assert_eq!(spec["replicas"], 1);
                assert_eq!(spec["strategy"]["type"], "Recreate");
                let pvc = find(&objects, "PersistentVolumeClaim", "kg-keygate-server-data");
                assert!(pvc.is_some(), "the embedded database has its claim");
                assert!(env_of(container, "KEYGATE_DATABASE_URL").is_none());
                assert_eq!(sa["automountServiceAccountToken"], true);
                let settings = find(&objects, "ConfigMap", "kg-keygate-server-settings").unwrap();
                assert!(
                    settings["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].is_null(),
                    "traces are off by default"
                );
            }
            "production" => {
                assert_eq!(spec["replicas"], 3);
                assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
                assert_eq!(
                    env_of(container, "KEYGATE_DATABASE_URL").unwrap()["valueFrom"]["secretKeyRef"]
                        ["name"],
                    "keygate-database"
                );
                for var in [
                    "KEYGATE_REDIS_URL",
                    "KEYGATE_DATA_KEY",
                    "KEYGATE_PASSWORD_PEPPER",
                    "KEYGATE_SMTP_URL",
                ] {
                    assert!(env_of(container, var).is_some(), "{var}");
                }
                assert_eq!(kinds(&objects, "ServiceMonitor"), 2);
                assert_eq!(kinds(&objects, "NetworkPolicy"), 2);
                assert_eq!(kinds(&objects, "PersistentVolumeClaim"), 0);
                let settings = find(&objects, "ConfigMap", "kg-keygate-server-settings").unwrap();
                assert_eq!(
                    settings["data"]["KEYGATE_ISSUER"],
                    "https://auth.example.com"
                );
                // Traces: both components export to the collector, under their own names.
                let collector = "http://otel-collector.observability:4317";
                assert_eq!(settings["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"], collector);
                assert_eq!(settings["data"]["OTEL_SERVICE_NAME"], "keygate-auth-server");
                let operator = find(&objects, "Deployment", "kg-keygate-operator").unwrap();
                let op = &operator["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(
                    env_of(op, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap()["value"],
                    collector
                );
                assert_eq!(
                    env_of(op, "OTEL_SERVICE_NAME").unwrap()["value"],
                    "keygate-operator"
                );
            }
            "ha" => {
                assert!(spec["replicas"].is_null(), "the autoscaler owns the count");
                let hpa = find(&objects, "HorizontalPodAutoscaler", "kg-keygate-server").unwrap();
                assert_eq!(hpa["spec"]["minReplicas"], 3);
                let operator = find(&objects, "Deployment", "kg-keygate-operator").unwrap();
                assert_eq!(operator["spec"]["replicas"], 3);
                let spread = &spec["template"]["spec"]["topologySpreadConstraints"][0];
                assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
                assert!(find(&objects, "PodDisruptionBudget", "kg-keygate-server").is_some());
            }
            _ => {
                assert_eq!(kinds(&objects, "PodDisruptionBudget"), 0);
                assert_eq!(kinds(&objects, "ClusterRole"), 0);
                assert_eq!(sa["automountServiceAccountToken"], false);
                assert_eq!(
                    spec["template"]["spec"]["automountServiceAccountToken"],
                    false
                );
                let settings = find(&objects, "ConfigMap", "kg-keygate-server-settings").unwrap();
                assert_eq!(
                    settings["data"]["KEYGATE_KUBERNETES_SERVICE_ACCOUNTS"],
                    "false"
                );
                let operator = find(&objects, "Deployment", "kg-keygate-operator").unwrap();
                let args =
                    operator["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
                assert!(args.contains("--leader-election=false"), "{args}");
            }
        }
    }
    // Bad values are refused, naming the value.
    let default = values_file("default");
    for (sets, expect) in [
        (vec!["server.replicas=3"], "/server/replicas"),
        (
            vec!["server.database.mode=external"],
            "/server/database/existingSecret",
        ),
        (
            vec![
                "server.database.mode=external",
                "server.database.existingSecret=db",
                "server.replicas=2",
            ],
            "/server/redis/existingSecret",
        ),
        (
            vec!["operator.replicas=2", "operator.leaderElection=false"],
            "/operator/leaderElection",
        ),
        (
            vec!["server.replica=2"],
            "additional properties 'replica' not allowed",
        ),
        (
            vec!["operator.propagationBound=90"],
            "/operator/propagationBound",
        ),
        (vec!["server.issuer=auth.example.com"], "/server/issuer"),
        (vec!["tracing.endpoint=otel:4317"], "/tracing/endpoint"),
        (vec!["tracing.protocol=http/json"], "/tracing/protocol"),
    ] {
        let err = render(cp, "keygate", &default, &sets).unwrap_err();
        assert!(err.contains(expect), "{sets:?}: {err}");
    }
    // The chart carries the generated CRDs.
    assert_eq!(
        std::fs::read_to_string(chart().join("crds/keygate-crds.yaml")).unwrap(),
        std::fs::read_to_string(repo_root().join("crds/generated/keygate-crds.yaml")).unwrap(),
        "charts/keygate/crds is a copy of crds/generated"
    );
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let cp = control_plane();
    let mut cmd = Command::new(cp.bin_dir.join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    run(cmd)
}

/// A process killed on drop.
struct Running(Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// Starts `binary` with a rendered container's `args` and environment: `env` entries (values,
/// `fieldRef`s of the pod) and `envFrom` ConfigMaps from `objects`; paths under `mounts`
/// (the pod's mount paths) are placed under `root`; `extra` stands in for what the kubelet
/// adds to every pod (its in-cluster credentials).
fn start_as_rendered(
    binary: &str,
    container: &Value,
    objects: &[Value],
    pod: (&str, &str),
    root: &Path,
    extra: &[(&str, String)],
) -> Running {
    let mounts: Vec<String> = container["volumeMounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| v["mountPath"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let place = |v: &str| -> String {
        if mounts.iter().any(|m| v.starts_with(m.as_str())) {
            root.join(v.trim_start_matches('/')).display().to_string()
        } else {
            v.to_owned()
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"].as_str().unwrap();
        let cm = find(objects, "ConfigMap", name).unwrap();
        for (k, v) in cm["data"].as_object().unwrap() {
            env.push((k.clone(), place(v.as_str().unwrap())));
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = match (
            &e["value"],
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => place(v),
            (_, Some("metadata.namespace")) => pod.0.to_owned(),
            (_, Some("metadata.name")) => pod.1.to_owned(),
            _ => panic!("{binary}: no stand-in for {e}"),
        };
        env.push((name, value));
    }
    for m in &mounts {
        std::fs::create_dir_all(root.join(m.trim_start_matches('/'))).unwrap();
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| place(a.as_str().unwrap()))
        .collect();
    let log_path = root.join(format!("{binary}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(workspace_bin(binary))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the binary");
    Running(child, log_path)
}

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls_and_its_service_accounts_suffice() {
    let cp = control_plane();
    apply_crds(cp);
    let ns = cp.namespace("kg-chart").await;
    let other = cp.namespace("kg-chart-other").await;
    let helm = |args: &[&str]| {
        let mut cmd = cp.helm();
        cmd.args(args).arg(chart()).args(["--namespace", &ns.name]);
        run(cmd)
    };
    let (ok, text) = helm(&["install", "kg"]);
    assert!(ok, "helm install: {text}");
    assert!(text.contains("Create the first one"), "NOTES.txt: {text}");
    let (ok, text) = kubectl_as(
        &cp.kubeconfig,
        &[
            "-n",
            &ns.name,
            "get",
            "deployments,serviceaccounts,roles,rolebindings,services,configmaps,pvc,pdb",
            "-o",
            "name",
        ],
    );
    assert!(ok, "{text}");
    for name in [
        "deployment.apps/kg-keygate-server",
        "deployment.apps/kg-keygate-operator",
        "serviceaccount/kg-keygate-operator",
        "role.rbac.authorization.k8s.io/kg-keygate-operator",
        "persistentvolumeclaim/kg-keygate-server-data",
        "poddisruptionbudget.policy/kg-keygate-server",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }

    // The operator as its ServiceAccount: its whole job in this namespace, nothing else.
    let op_token = cp.service_account_token(&ns.name, "kg-keygate-operator", None, 3600);
    let op_kubeconfig = cp.kubeconfig_for_token(&op_token);
    // The default values, as installed.
    let objects = render(cp, &ns.name, &values_file("default"), &[]).unwrap();
    let container = |name: &str| {
        find(&objects, "Deployment", name).unwrap()["spec"]["template"]["spec"]["containers"][0]
            .clone()
    };
    let root = tempfile::tempdir().unwrap();
    let operator = start_as_rendered(
        "auth-operator",
        &container("kg-keygate-operator"),
        &objects,
        (&ns.name, "kg-keygate-operator-0"),
        root.path(),
        &[("KUBECONFIG", op_kubeconfig.path().display().to_string())],
    );
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the operator ready", async || {
        let r = client
            .get("http://127.0.0.1:8081/readyz")
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let (ok, text) = kubectl_as(
        &cp.kubeconfig,
        &[
            "-n",
            &ns.name,
            "apply",
            "-f",
            &repo_root()
                .join("examples/signing-key.yaml")
                .display()
                .to_string(),
        ],
    );
    assert!(ok, "{text}");
    eventually(
        Duration::from_secs(30),
        "the configuration Secret",
        async || {
            let (ok, _) = kubectl_as(
                &cp.kubeconfig,
                &["-n", &ns.name, "get", "secret", "kg-keygate-config"],
            );
            ok.then_some(())
        },
    )
    .await;
    let (_, status) = kubectl_as(
        &cp.kubeconfig,
        &[
            "-n",
            &ns.name,
            "get",
            "signingkeys",
            "-o",
            "jsonpath={.items[0].status.conditions[0].status}",
        ],
    );
    assert_eq!(status, "True", "{}", operator.log());
    let (ok, text) = kubectl_as(op_kubeconfig.path(), &["-n", &other.name, "get", "secrets"]);
    assert!(!ok && text.contains("Forbidden"), "{text}");
    let crd = repo_root().join("crds/generated/keygate-crds.yaml");
    let (ok, text) = kubectl_as(
        op_kubeconfig.path(),
        &["apply", "-f", &crd.display().to_string()],
    );
    assert!(!ok && text.contains("forbidden"), "{text}");

    // The server as its ServiceAccount: the issuer's discovery, nothing else.
    let server_token = cp.service_account_token(&ns.name, "kg-keygate-server", None, 3600);
    let server_kubeconfig = cp.kubeconfig_for_token(&server_token);
    let (ok, text) = kubectl_as(
        server_kubeconfig.path(),
        &["get", "--raw", "/openid/v1/jwks"],
    );
    assert!(ok, "{text}");
    let (ok, text) = kubectl_as(
        server_kubeconfig.path(),
        &["-n", &ns.name, "get", "secrets"],
    );
    assert!(!ok && text.contains("Forbidden"), "{text}");
    // The server exactly as rendered: the operator's Secret where the pod mounts it, the
    // kubelet's credentials given by flag variables (a pod reads them from its own mount).
    let config_dir = root.path().join("etc/keygate/config");
    let _mount = SecretMount::start(&ns.name, "kg-keygate-config", &config_dir).await;
    // The kubelet starts the container once the Secret volume is there.
    eventually(
        Duration::from_secs(20),
        "the mounted configuration",
        async || config_dir.join("config.json").exists().then_some(()),
    )
    .await;
    let token_file = root.path().join("sa-token");
    std::fs::write(&token_file, &server_token).unwrap();
    let server = start_as_rendered(
        "auth-server",
        &container("kg-keygate-server"),
        &objects,
        (&ns.name, "kg-keygate-server-0"),
        root.path(),
        &[
            ("KEYGATE_KUBERNETES_API_URL", cp.server().to_owned()),
            (
                "KEYGATE_KUBERNETES_CA_FILE",
                cp.ca_file().display().to_string(),
            ),
            (
                "KEYGATE_KUBERNETES_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ],
    );
    let started = Instant::now();
    while !client
        .get("http://127.0.0.1:8080/readyz")
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server as rendered did not become ready: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jwks: Value = client
        .get("http://127.0.0.1:8080/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"][0]["kid"]
            .as_str()
            .is_some_and(|k| k.starts_with("main-")),
        "the operator's key: {jwks} {}",
        server.log()
    );
    drop(server);
    drop(operator);

    // Upgrade to an HA shape (objects only: no kubelet runs here), then uninstall.
    let mut up = cp.helm();
    up.args(["upgrade", "kg"])
        .arg(chart())
        .args(["--namespace", &ns.name, "-f"])
        .arg(values_file("ha"));
    let (ok, text) = run(up);
    assert!(ok, "helm upgrade: {text}");
    let (ok, text) = kubectl_as(
        &cp.kubeconfig,
        &[
            "-n",
            &ns.name,
            "get",
            "hpa/kg-keygate-server",
            "deployment/kg-keygate-operator",
            "-o",
            "jsonpath={.items[*].spec.minReplicas} {.items[*].spec.replicas}",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains('3'), "{text}");
    let mut un = cp.helm();
    un.args(["uninstall", "kg", "--namespace", &ns.name]);
    let (ok, text) = run(un);
    assert!(ok, "helm uninstall: {text}");
    let (_, left) = kubectl_as(
        &cp.kubeconfig,
        &["-n", &ns.name, "get", "deployments,roles,pvc", "-o", "name"],
    );
    assert!(!left.contains("deployment"), "{left}");
    assert!(
        left.contains("persistentvolumeclaim/kg-keygate-server-data"),
        "the data claim is kept: {left}"
    );
}
