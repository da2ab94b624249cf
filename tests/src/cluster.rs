//! A real Kubernetes API server for tests: attaches to the control plane the test command
//! started (`KEYGATE_TEST_KUBECONFIG`), or starts one per test process with
//! `scripts/kube/controlplane.sh` (etcd and kube-apiserver, stopped by PID when the process
//! ends however it ends); clients for the administrator and for any bearer token; a namespace
//! per test; and `kubectl` and `helm` from the same build.

use crate::{repo_root, unique};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The control plane of this test process.
#[derive(Debug)]
pub struct ControlPlane {
    /// Administrator kubeconfig (verified TLS, token of `system:masters`).
    pub kubeconfig: PathBuf,
    /// Where kube-apiserver, etcd, kubectl and helm live.
    pub bin_dir: PathBuf,
    server: String,
    ca_file: PathBuf,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn read_env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The control plane: attached or started on first use.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let (kubeconfig, bin_dir) = match std::env::var("KEYGATE_TEST_KUBECONFIG") {
            Ok(kc) => {
                let bin = std::env::var("KEYGATE_TEST_KUBE_BIN")
                    .expect("KEYGATE_TEST_KUBE_BIN must accompany KEYGATE_TEST_KUBECONFIG");
                (PathBuf::from(kc), PathBuf::from(bin))
            }
            Err(_) => {
                let dir = std::env::temp_dir().join(unique("keygate-kube-"));
                let script = repo_root().join("scripts/kube/controlplane.sh");
                let status = Command::new("bash")
                    .arg(&script)
                    .arg("start")
                    .arg(&dir)
                    .arg("--watch-pid")
                    .arg(std::process::id().to_string())
                    .status()
                    .expect("run scripts/kube/controlplane.sh");
                assert!(
                    status.success(),
                    "the Kubernetes control plane did not start"
                );
                let env = read_env_file(&dir.join("env"));
                let get = |k: &str| {
                    env.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| PathBuf::from(v))
                        .unwrap_or_else(|| panic!("{k} missing from the control plane's env file"))
                };
                (get("KEYGATE_TEST_KUBECONFIG"), get("KEYGATE_TEST_KUBE_BIN"))
            }
        };
        let text = std::fs::read_to_string(&kubeconfig).expect("read kubeconfig");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(&format!("{name}: "))
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("kubeconfig lacks {name}"))
        };
        ControlPlane {
            server: field("server"),
            ca_file: PathBuf::from(field("certificate-authority")),
            kubeconfig,
            bin_dir,
        }
    })
}

impl ControlPlane {
    /// A kubeconfig file for `token` on this cluster (verified TLS as the administrator's).
    pub fn kubeconfig_for_token(&self, token: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            self.server,
            self.ca_file.display()
        );
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write kubeconfig");
        file
    }

    async fn client_from(path: &Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(path).expect("parse kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kubeconfig to client config");
        kube::Client::try_from(config).expect("kube client")
    }

    /// A client with administrator rights.
    pub async fn admin_client(&self) -> kube::Client {
        Self::client_from(&self.kubeconfig).await
    }

    /// A client that authenticates with `token` (a ServiceAccount token, say).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let file = self.kubeconfig_for_token(token);
        Self::client_from(file.path()).await
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA bundle that signed the API server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A token of ServiceAccount `ns/name` (created when missing) through the TokenRequest
    /// API: for `audience` (none: the API server's own), valid `seconds` (600 at least).
    pub fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        audience: Option<&str>,
        seconds: u32,
    ) -> String {
        let created = self
            .kubectl()
            .args(["-n", ns, "create", "serviceaccount", name])
            .output()
            .expect("run kubectl");
        let err = String::from_utf8_lossy(&created.stderr);
        assert!(
            created.status.success() || err.contains("already exists"),
            "create serviceaccount {ns}/{name}: {err}"
        );
        let mut cmd = self.kubectl();
        cmd.args(["-n", ns, "create", "token", name])
            .arg(format!("--duration={seconds}s"));
        if let Some(audience) = audience {
            cmd.arg(format!("--audience={audience}"));
        }
        let out = cmd.output().expect("run kubectl");
        assert!(
            out.status.success(),
            "create token {ns}/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `kubectl` against this cluster as the administrator.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// `helm` against this cluster as the administrator.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("helm"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env(
                "HELM_CACHE_HOME",
                std::env::temp_dir().join("keygate-helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                std::env::temp_dir().join("keygate-helm-config"),
            )
            .env(
                "HELM_DATA_HOME",
                std::env::temp_dir().join("keygate-helm-data"),
            );
        cmd
    }

    /// A fresh namespace for one test, deleted (without waiting) when dropped.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        use k8s_openapi::api::core::v1::Namespace;
        let name = unique(&format!("{prefix}-"));
        let api: kube::Api<Namespace> = kube::Api::all(self.admin_client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"keygate.dev/test": "true"}}
        }))
        .expect("namespace object");
        api.create(&kube::api::PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            kubectl: self.bin_dir.join("kubectl"),
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// A namespace that belongs to one test.
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Without a controller-manager the namespace stays Terminating; what matters is that
        // no later test can use it by accident.
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}
