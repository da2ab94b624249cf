//! Hot reload under load: two replicas on Postgres and Redis read their configuration from a
//! kubelet-style Secret volume (`..data` symlink swaps); while clients sign in and refresh
//! continuously, 20 configuration changes in a row each reach both replicas, and not one
//! request fails. Prints how long each change took to be in force (file swapped → the
//! replica issues tokens under it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::operator::project;
use keygate_tests::{add_user, post_json, replica_env, start_replicas};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

fn config(key: &Value, ttl: u64) -> Value {
    json!({
        "signing_keys": [key],
        "password_hashing": {"memory_kib": 8192, "iterations": 1, "parallelism": 1},
        "rate_limits": {"rules": []},
        "tokens": {"access_token_ttl_seconds": ttl},
    })
}

#[tokio::test]
async fn twenty_changes_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygate_tests::generate_signing_key();
    let (mut env, _redis) = replica_env(dir.path(), config(&key, 600)).await;
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let write = |ttl: u64| {
        project(
            &volume,
            &[(
                "config.json".to_owned(),
                serde_json::to_vec(&config(&key, ttl)).unwrap(),
            )],
        )
    };
    write(600);
    for (k, v) in &mut env {
        if k == "KEYGATE_CONFIG" {
            *v = volume.join("config.json").display().to_string();
        }
    }
    // One account per client: concurrent sign-ins of one account count against it until they
    // succeed (docs/policy.md), which is not what this test is about.
    for w in 0..4 {
        add_user(dir.path(), &env, &["--username", &format!("load{w}")], PW);
    }
    add_user(dir.path(), &env, &["--username", "probe"], PW);
    let replicas = start_replicas(&env, 2);
    let urls: Vec<String> = replicas.iter().map(|r| r.base_url.clone()).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Load: sign-ins and refreshes on both replicas, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, urls, stop, done, failed) = (
            client.clone(),
            urls.clone(),
            stop.clone(),
            done.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let base = &urls[n % 2];
                n += 1;
                let (status, body) = post_json(
                    &client,
                    &format!("{base}/api/v1/auth/login"),
                    None,
                    &json!({"identity": format!("load{w}"), "password": PW}),
                )
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("sign-in failed: {status} {body}");
                    continue;
                }
                let other = &urls[n % 2];
                let (status, body) = post_json(
                    &client,
                    &format!("{other}/api/v1/auth/refresh"),
                    None,
                    &json!({"refresh_token": body["refresh_token"]}),
                )
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("refresh failed: {status} {body}");
                }
            }
        }));
    }

    // 20 changes; each is in force when a replica issues tokens with the new lifetime.
    let mut latencies = Vec::new();
    for i in 1..=20u64 {
        let ttl = 600 + i * 10;
        let swapped = Instant::now();
        write(ttl);
        for base in &urls {
            loop {
                let (status, body) = post_json(
                    &client,
                    &format!("{base}/api/v1/auth/login"),
                    None,
                    &json!({"identity": "probe", "password": PW}),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                if body["expires_in"] == ttl {
                    break;
                }
                assert!(
                    swapped.elapsed() < Duration::from_secs(5),
                    "change {i} not in force on {base}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies.push(swapped.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "reload: file swapped -> in force, 40 observations: p50 {:?}, p99 {:?}, max {:?}; {} requests under load, {} failed",
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) > 40, "the load ran");
    assert!(pct(0.5) < Duration::from_secs(1), "p50 {:?}", pct(0.5));
}
