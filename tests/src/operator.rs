//! The operator in tests: an `auth-operator` process against the test cluster (killed on
//! drop), the CRDs applied from the committed YAML, and a stand-in for the kubelet that
//! projects a Secret into a directory exactly as a mounted Secret volume is laid out
//! (`FILE -> ..data/FILE`, `..data -> ..TIMESTAMP/`, swapped atomically by renaming a
//! symlink).

use crate::cluster::{ControlPlane, control_plane};
use crate::{free_port, repo_root, workspace_bin};
use k8s_openapi::api::core::v1::Secret;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Applies the committed CRDs and waits until all are established.
pub fn apply_crds(cp: &ControlPlane) {
    let file = repo_root().join("crds/generated/keygate-crds.yaml");
    let out = cp
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `auth-operator`.
pub struct OperatorProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of its health and metrics endpoints.
    pub base_url: String,
    /// Its log.
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Starts the operator for `namespace` with `kubeconfig` and extra `args`, and waits for
    /// `/healthz`.
    pub fn start(kubeconfig: &Path, namespace: &str, args: &[&str]) -> Self {
        Self::start_with_env(kubeconfig, namespace, args, &[])
    }

    /// [`OperatorProcess::start`] with extra environment variables.
    pub fn start_with_env(
        kubeconfig: &Path,
        namespace: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log_path = dir.path().join("operator.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(workspace_bin("auth-operator"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace, "--log-format", "text"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn auth-operator");
        let mut op = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = op.child.try_wait() {
                panic!("auth-operator exited with {status}:\n{}", op.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return op;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "operator not up:\n{}",
                op.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the operator and waits for it to exit (start-up refusals).
    pub fn run_to_exit(kubeconfig: &Path, namespace: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(workspace_bin("auth-operator"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace, "--log-format", "text"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .output()
            .expect("run auth-operator");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills it (SIGKILL: no chance to release its lease).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Projects the Secret `name` of `namespace` into `dir` as the kubelet does, every 100 ms,
/// until dropped.
pub struct SecretMount {
    task: tokio::task::JoinHandle<()>,
    /// The directory the Secret's keys appear in.
    pub dir: PathBuf,
}

impl SecretMount {
    /// Starts projecting.
    pub async fn start(namespace: &str, name: &str, dir: &Path) -> Self {
        let api: kube::Api<Secret> =
            kube::Api::namespaced(control_plane().admin_client().await, namespace);
        let (name, target) = (name.to_owned(), dir.to_path_buf());
        std::fs::create_dir_all(&target).expect("mount dir");
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                if let Ok(Some(secret)) = api.get_opt(&name).await {
                    let data = secret.data.unwrap_or_default();
                    if last.as_ref() != Some(&data) {
                        let files: Vec<(String, Vec<u8>)> =
                            data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                        project(&target, &files);
                        last = Some(data);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            task,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SecretMount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One atomic update of a Secret volume in `dir` holding `files` (name, content), laid out
/// and swapped as the kubelet does.
pub fn project(dir: &Path, files: &[(String, Vec<u8>)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..{}", crate::unique("v"));
    let version = dir.join(&stamp);
    std::fs::create_dir(&version).expect("version dir");
    for (key, value) in files {
        std::fs::write(version.join(key), value).expect("write key");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (key, _) in files {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link).expect("key symlink");
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
}
