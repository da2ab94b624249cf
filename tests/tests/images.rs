//! The container images, built without a Docker engine by `scripts/images` (buildah, from
//! `scratch`, statically linked binaries): the OCI config says a non-root user, the
//! entrypoint, the command and the exposed port; the chart's default image names and tags are
//! these; and the binaries inside run, `--version` and the server's `serve` answering
//! `/healthz`, in `crun` with a read-only root filesystem and a tmpfs `/tmp` (as the chart's
//! pods have them) when this machine lets a container runtime run, else from the unpacked root
//! filesystem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{eventually, free_port, repo_root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OCI layouts: `KEYGATE_TEST_IMAGES` (the test command builds them once), else built
/// here.
fn images() -> PathBuf {
    if let Ok(dir) = std::env::var("KEYGATE_TEST_IMAGES") {
        return PathBuf::from(dir);
    }
    let dir = std::env::temp_dir().join(keygate_tests::unique("keygate-images-"));
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/images"))
        .arg(&dir)
        .status()
        .expect("run scripts/images");
    assert!(status.success(), "scripts/images failed");
    dir
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")
}

/// The image config of the layout's only image, and its tag.
fn config(layout: &Path) -> (Value, String) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    let tag = entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let manifest: Value =
        serde_json::from_slice(&blob(layout, entry["digest"].as_str().unwrap())).unwrap();
    let config: Value = serde_json::from_slice(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    (config, tag)
}

fn unpack(layout: &Path, tag: &str, bundle: &Path) {
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewrites the bundle's runtime config: `args`, the host's network (so that the test can
/// reach it), a read-only root and a tmpfs `/tmp`.
fn prepare(bundle: &Path, args: &[&str], env: &[(&str, &str)]) {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = json!(args);
    spec["process"]["terminal"] = json!(false);
    let vars = spec["process"]["env"].as_array_mut().unwrap();
    vars.extend(env.iter().map(|(k, v)| json!(format!("{k}={v}"))));
    spec["root"]["readonly"] = json!(true);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
    }));
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// Runs the bundle's `--version` process in crun; `None` when crun cannot run containers here
/// (its own refusal, such as a host with hybrid cgroups, comes before the process prints).
fn crun_version(bundle: &Path, id: &str) -> Option<String> {
    let out = Command::new("crun")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let _ = Command::new("crun")
        .args(["delete", "--force", id])
        .output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains(VERSION) {
        Some(text)
    } else {
        println!("crun cannot run containers here: {}", text.trim());
        None
    }
}

#[tokio::test]
async fn the_images_are_small_non_root_and_run() {
    let dir = images();
    let chart_values =
        std::fs::read_to_string(repo_root().join("charts/keygate/values.yaml")).unwrap();
    let mut in_crun = false;
    for (name, port, cmd) in [
        ("auth-server", "8080/tcp", json!(["serve"])),
        ("auth-operator", "8081/tcp", Value::Null),
    ] {
        let layout = dir.join(name);
        let (config, tag) = config(&layout);
        assert_eq!(tag, VERSION, "{name}: tagged with the version");
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532", "{name}: non-root");
        assert_eq!(
            c["Entrypoint"],
            json!([format!("/usr/local/bin/{name}")]),
            "{name}"
        );
        assert_eq!(c["Cmd"], cmd, "{name}");
        assert!(
            c["ExposedPorts"][port].is_object(),
            "{name}: exposes {port}: {c}"
        );
        assert_eq!(config["architecture"], "amd64");
        // The chart pulls ghcr.io/keygate/<name>:<appVersion>.
        assert!(
            chart_values.contains(&format!("image: {name}")),
            "{name} in values.yaml"
        );
        let bytes: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!("{name}:{tag}: {} KiB", bytes / 1024);
        assert!(bytes < 64 * 1024 * 1024, "{name}: small ({bytes} bytes)");

        let work = tempfile::tempdir().unwrap();
        let bundle = work.path().join("bundle");
        unpack(&layout, &tag, &bundle);
        // Nothing else in the image: no shell, no libc.
        assert!(!bundle.join("rootfs/bin/sh").exists());
        assert!(!bundle.join("rootfs/lib").exists());
        prepare(
            &bundle,
            &[&format!("/usr/local/bin/{name}"), "--version"],
            &[],
        );
        let (ok, text) = match crun_version(&bundle, &keygate_tests::unique("kg-version-")) {
            Some(text) => {
                in_crun = true;
                (true, text)
            }
            None => {
                let binary = bundle.join("rootfs/usr/local/bin").join(name);
                let out = Command::new(&binary).arg("--version").output().unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            }
        };
        assert!(ok && text.contains(VERSION), "{name} --version: {text}");
    }

    // The server image serves /healthz, read-only root and all.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    unpack(&dir.join("auth-server"), VERSION, &bundle);
    let listen = format!("127.0.0.1:{}", free_port());
    let data = if in_crun {
        "/tmp/data".to_owned()
    } else {
        work.path().join("data").display().to_string()
    };
    let env = [
        ("KEYGATE_LISTEN", listen.as_str()),
        ("KEYGATE_DATA_DIR", data.as_str()),
        ("KEYGATE_KUBERNETES_SERVICE_ACCOUNTS", "false"),
    ];
    prepare(&bundle, &["/usr/local/bin/auth-server", "serve"], &env);
    let id = keygate_tests::unique("kg-serve-");
    let mut child = if in_crun {
        Command::new("crun")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    } else {
        Command::new(bundle.join("rootfs/usr/local/bin/auth-server"))
            .arg("serve")
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/healthz");
    eventually(
        Duration::from_secs(30),
        "/healthz of the image's server",
        async || {
            let r = client.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    println!(
        "auth-server image: /healthz answered ({})",
        if in_crun {
            "in crun"
        } else {
            "from the unpacked root filesystem"
        }
    );
    if in_crun {
        let _ = Command::new("crun").args(["kill", &id, "TERM"]).status();
        let _ = child.wait();
        let _ = Command::new("crun")
            .args(["delete", "--force", &id])
            .status();
    } else {
        let _ = child.kill();
        let _ = child.wait();
    }
}
