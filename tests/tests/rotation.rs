//! Key rotation end to end: an operator rotating a `SigningKey` every few seconds, two
//! `auth-server` replicas fed through a kubelet-style mount, and a verifier that refreshes its
//! copy of the JWKS on a timer (never on an unknown `kid`) and checks every freshly issued
//! token: over three rotations not one verification fails, old tokens keep verifying until
//! they expire, and retired keys leave the JWKS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use keygate_tests::cluster::control_plane;
use keygate_tests::operator::{OperatorProcess, SecretMount, apply_crds};
use keygate_tests::{ServerOptions, ServerProcess, add_user, eventually, get_json, post_json};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

fn apply(ns: &str, yaml: &str) {
    let mut child = control_plane()
        .kubectl()
        .args(["-n", ns, "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(jwks: &JwkSet, token: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("unknown kid {kid}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&["keygate"]);
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|_| ())
        .map_err(|e| format!("{kid}: {e}"))
}

/// A namespace with an operator (propagation bound 1 s), short-lived tokens (30 s, JWKS cached
/// 1 s), no rate rules (the tests sign in about ten times a second), the `signing_keys`
/// manifests applied and the configuration Secret projected into a directory.
struct Cluster {
    ns: keygate_tests::cluster::TestNamespace,
    _operator: OperatorProcess,
    _mount: SecretMount,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(prefix: &str, signing_keys: &str) -> Self {
        let cp = control_plane();
        apply_crds(cp);
        let ns = cp.namespace(prefix).await;
        let operator =
            OperatorProcess::start(&cp.kubeconfig, &ns.name, &["--propagation-bound", "1s"]);
        apply(
            &ns.name,
            "apiVersion: keygate.dev/v1alpha1\nkind: ServerPolicy\nmetadata: {name: server}\nspec: {tokens: {accessTokenTtlSeconds: 30, jwksMaxAgeSeconds: 1}}\n",
        );
        apply(
            &ns.name,
            "apiVersion: keygate.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: none}\nspec: {replaceDefaults: true}\n",
        );
        apply(&ns.name, signing_keys);
        let dir = tempfile::tempdir().unwrap();
        let mount = SecretMount::start(&ns.name, "keygate-config", dir.path()).await;
        Self {
            ns,
            _operator: operator,
            _mount: mount,
            dir,
        }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config.json")
    }
}

#[tokio::test]
async fn three_rotations_without_a_failed_verification() {
    let cp = control_plane();
    // A period of 8 s, announced 4 s ahead (the bound of 1 s plus the 1 s JWKS cache, with
    // room), retired 61 s after it stops signing (30 s tokens plus 30 s leeway).
    let cluster = Cluster::start(
        "kg-rotation",
        "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: rotating}\nspec: {rotationPeriod: 8s, prePublish: 4s, retireAfter: 61s}\n",
    )
    .await;
    let ns = &cluster.ns;
    let config = cluster.config();
    eventually(Duration::from_secs(30), "the configuration", async || {
        config.exists().then_some(())
    })
    .await;
    let replicas: Vec<ServerProcess> = (0..2)
        .map(|_| {
            let data = tempfile::tempdir().unwrap().keep();
            add_user(&data, &[], &["--username", "alice"], PW);
            ServerProcess::start(ServerOptions {
                data_dir: Some(data),
                args: vec!["--config".into(), config.display().to_string()],
                ..Default::default()
            })
        })
        .collect();
    let client = reqwest::Client::new();
    let jwks_of = async |base: &str| -> JwkSet {
        let (_, body) = get_json(&client, &format!("{base}/.well-known/jwks.json"), None).await;
        serde_json::from_value(body).unwrap()
    };
    // The verifier refreshes its copy every second (below prePublish), never on demand.
    let mut cached = jwks_of(&replicas[0].base_url).await;
    let mut refreshed = Instant::now();
    let mut kids_seen: Vec<String> = Vec::new();
    let mut old_tokens: Vec<(Instant, String)> = Vec::new();
    let (mut checked, mut failures) = (0, Vec::new());
    let began = Instant::now();
    while kids_seen.len() < 4 && began.elapsed() < Duration::from_secs(60) {
        if refreshed.elapsed() >= Duration::from_secs(1) {
            cached = jwks_of(&replicas[0].base_url).await;
            refreshed = Instant::now();
        }
        for r in &replicas {
            let (status, body) = post_json(
                &client,
                &format!("{}/api/v1/auth/login", r.base_url),
                None,
                &json!({"identity": "alice", "password": PW}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let token = body["access_token"].as_str().unwrap().to_owned();
            let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
            if !kids_seen.contains(&kid) {
                kids_seen.push(kid);
            }
            checked += 1;
            if let Err(e) = verify(&cached, &token) {
                failures.push(e);
            }
            if old_tokens.len() < 200 {
                old_tokens.push((Instant::now(), token));
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "rotation: {checked} fresh tokens from two replicas over {:?}, {} signing keys, {} failed verifications",
        began.elapsed(),
        kids_seen.len(),
        failures.len()
    );
    assert!(
        kids_seen.len() >= 4,
        "three rotations happened: {kids_seen:?}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    // Tokens issued by the first keys still verify against the current JWKS (not expired yet).
    let now_jwks = jwks_of(&replicas[1].base_url).await;
    for (at, token) in old_tokens
        .iter()
        .filter(|(at, _)| at.elapsed() < Duration::from_secs(25))
    {
        verify(&now_jwks, token)
            .unwrap_or_else(|e| panic!("token from {:?} ago: {e}", at.elapsed()));
    }
    // The status shows the schedule.
    let out = cp
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "get",
            "signingkey",
            "rotating",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = key["status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "active").count(),
        1,
        "{key}"
    );
    assert!(states.contains(&"retiring"), "{states:?}");
    assert!(key["status"]["nextRotation"].is_string(), "{key}");
    // The first key leaves the JWKS once retired (61 s after it stopped signing).
    let first = kids_seen[0].clone();
    let first_kid_gone = async || {
        let set = jwks_of(&replicas[0].base_url).await;
        set.find(&first).is_none()
    };
    eventually(
        Duration::from_secs(90),
        "the retired key gone",
        async || first_kid_gone().await.then_some(()),
    )
    .await;
}

#[tokio::test]
async fn a_deleted_signing_key_stops_signing_and_retires_before_it_goes() {
    let cp = control_plane();
    let cluster = Cluster::start(
        "kg-key-delete",
        "apiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: stays}\nspec: {prePublish: 4s, retireAfter: 61s}\n---\napiVersion: keygate.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: old}\nspec: {prePublish: 4s, retireAfter: 61s}\n",
    )
    .await;
    let ns = &cluster.ns;
    let config = cluster.config();
    let data = tempfile::tempdir().unwrap();
    add_user(data.path(), &[], &["--username", "alice"], PW);
    let kids = eventually(Duration::from_secs(30), "two keys published", async || {
        let c: Value = std::fs::read_to_string(&config)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())?;
        let kids: Vec<String> = c["signing_keys"]
            .as_array()?
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        (kids.len() == 2).then_some(kids)
    })
    .await;
    let old_kid = kids.iter().find(|k| k.starts_with("old-")).unwrap().clone();
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(data.path().to_path_buf()),
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let client = reqwest::Client::new();
    let signed_kid = async || {
        let (status, body) = post_json(
            &client,
            &format!("{}/api/v1/auth/login", server.base_url),
            None,
            &json!({"identity": "alice", "password": PW}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        jsonwebtoken::decode_header(body["access_token"].as_str().unwrap())
            .unwrap()
            .kid
            .unwrap()
    };
    let published = async || -> bool {
        let (_, body) = get_json(
            &client,
            &format!("{}/.well-known/jwks.json", server.base_url),
            None,
        )
        .await;
        let set: JwkSet = serde_json::from_value(body).unwrap();
        set.find(&old_kid).is_some()
    };
    let out = cp
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "delete",
            "signingkey",
            "old",
            "--wait=false",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Within moments it no longer signs, yet stays published for the tokens it signed.
    eventually(
        Duration::from_secs(20),
        "the deleted key to stop signing",
        async || (!signed_kid().await.starts_with("old-")).then_some(()),
    )
    .await;
    for _ in 0..5 {
        assert!(!signed_kid().await.starts_with("old-"));
    }
    assert!(published().await, "retiring, not gone");
    // After retireAfter the key, its Secret and the resource are gone.
    eventually(
        Duration::from_secs(100),
        "the deleted SigningKey gone",
        async || {
            let found = cp
                .kubectl()
                .args(["-n", &ns.name, "get", "signingkey", "old"])
                .output()
                .unwrap()
                .status
                .success();
            (!found && !published().await).then_some(())
        },
    )
    .await;
    let out = cp
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "get",
            "secrets",
            "-l",
            "keygate.dev/signing-key=old",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
