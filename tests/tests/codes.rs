//! One-time codes across processes: two server replicas on one real Redis and Postgres share
//! codes and keep per-target limits global; a server with no delivery configured runs in the
//! development mode and says so in its log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::delivery::{WebhookReceiver, first_digits};
use keygate_tests::{ServerOptions, ServerProcess, add_user, replica_env};
use serde_json::{Value, json};
use std::time::Duration;

const PW: &str = "correct horse battery staple";

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    keygate_tests::post_json(client, &url, None, &body).await
}

/// Two replicas on one Redis and Postgres sending SMS codes to a webhook receiver, with a
/// user per (username, phone).
struct SmsReplicas {
    hook: WebhookReceiver,
    replicas: Vec<ServerProcess>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _redis: keygate_tests::RedisProcess,
}

async fn sms_replicas(config: Value, users: &[(&str, &str)]) -> SmsReplicas {
    let hook = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut env, redis) = replica_env(dir.path(), config).await;
    env.push(("KEYGATE_SMS_WEBHOOK_URL".into(), hook.url.clone()));
    env.push(("KEYGATE_SMS_WEBHOOK_SECRET".into(), "s3cret".into()));
    for (username, phone) in users {
        add_user(
            dir.path(),
            &env,
            &["--username", username, "--phone", phone],
            PW,
        );
    }
    let replicas = keygate_tests::start_replicas(&env, 2);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    SmsReplicas {
        hook,
        replicas,
        client,
        _dir: dir,
        _redis: redis,
    }
}

/// Sends a sign-in code to `phone` through `replica`; the code the webhook received.
async fn send_code(
    client: &reqwest::Client,
    replica: &ServerProcess,
    hook: &WebhookReceiver,
    phone: &str,
) -> String {
    let url = format!("{}/api/v1/auth/send-login-code", replica.base_url);
    let (status, body) = post(client, url, json!({"phone": phone})).await;
    assert_eq!(status, 200, "{body}");
    hook.last_code_for(phone).unwrap()
}

#[tokio::test]
async fn replicas_on_one_redis_share_codes_and_per_target_limits() {
    let (busy, other) = ("+14155550101".to_owned(), "+14155550102".to_owned());
    let SmsReplicas {
        hook,
        replicas,
        client,
        _dir,
        _redis,
    } = sms_replicas(json!({}), &[("una", &busy), ("ola", &other)]).await;

    // 16 requests for one number, alternating between the replicas, all at once: the
    // per-target resend interval (60 s by default), claimed atomically in Redis, admits
    // exactly one in total; the others are told how long to wait (by the interval, or by the
    // window budget of 5 per 600 s, which counts them too).
    let sends: Vec<_> = (0..16)
        .map(|i| {
            let url = format!("{}/api/v1/auth/send-login-code", replicas[i % 2].base_url);
            let (client, busy) = (client.clone(), busy.clone());
            tokio::spawn(async move { post(&client, url, json!({"phone": busy})).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        let (status, body) = s.await.unwrap();
        if status == 429 {
            // The interval refuses, or (once five have been counted) the window budget.
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.contains("resend-interval") || detail.contains("send-code-per-target"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(hook.calls().len(), 1);

    // A code sent through one replica signs in through the other, once.
    let code = send_code(&client, &replicas[0], &hook, &other).await;
    let login = format!("{}/api/v1/auth/login/phone-code", replicas[1].base_url);
    let (status, body) = post(
        &client,
        login.clone(),
        json!({"phone": other, "code": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_new_user"], false);
    let (status, body) = post(
        &client,
        format!("{}/api/v1/auth/login/phone-code", replicas[0].base_url),
        json!({"phone": other, "code": code}),
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!(40000401)),
        "{body}"
    );
}

#[tokio::test]
async fn without_delivery_codes_are_logged_loudly() {
    let dir = tempfile::tempdir().unwrap();
    add_user(
        dir.path(),
        &[],
        &["--username", "dev", "--email", "dev@example.com"],
        PW,
    );
    let server = ServerProcess::start(ServerOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    assert!(
        server.log().contains("DEVELOPMENT MODE"),
        "{}",
        server.log()
    );
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        format!("{}/api/v1/auth/send-login-code", server.base_url),
        json!({"email": "dev@example.com"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("NOT delivered") && l.contains("dev@example.com"))
        .unwrap_or_else(|| panic!("no logged code:\n{log}"));
    let code = first_digits(&line[line.find("code=").unwrap()..], 6).unwrap();
    let (status, body) = post(
        &client,
        format!("{}/api/v1/auth/login/email-code", server.base_url),
        json!({"email": "dev@example.com", "code": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn parallel_wrong_codes_over_two_replicas_use_up_the_code_on_both() {
    let phone = "+14155550103".to_owned();
    let SmsReplicas {
        hook,
        replicas,
        client,
        _dir,
        _redis: redis,
    } = sms_replicas(json!({"rate_limits": {"rules": []}}), &[("pia", &phone)]).await;
    let code = send_code(&client, &replicas[0], &hook, &phone).await;
    let right: u32 = code.parse().unwrap();
    // max_attempts (5 by default) + 5 wrong codes at once: eight through one replica, two
    // through the other (per-replica counting would leave the second one's code alive).
    let wrong: Vec<_> = (1..=10u32)
        .map(|n| {
            let url = format!(
                "{}/api/v1/auth/login/phone-code",
                replicas[usize::from(n > 8)].base_url
            );
            let guess = format!("{:06}", (right + n * 7919) % 1_000_000);
            let (client, phone) = (client.clone(), phone.clone());
            tokio::spawn(
                async move { post(&client, url, json!({"phone": phone, "code": guess})).await },
            )
        })
        .collect();
    for w in wrong {
        let (status, body) = w.await.unwrap();
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!(40000401)),
            "{body}"
        );
    }
    // Every answer was counted once, in the one counter both replicas share: exactly
    // max_attempts of them (the first five) were compared with the code.
    let counters =
        keygate_tests::sentinel::cli(redis.port, &["--scan", "--pattern", "kg:code:att:*"]);
    assert_eq!(
        counters.len(),
        1,
        "one attempt counter per code: {counters:?}"
    );
    assert_eq!(
        keygate_tests::sentinel::cli(redis.port, &["GET", &counters[0]]),
        ["10"],
        "ten answers counted"
    );
    // Five wrong answers kill the code everywhere: had each replica counted its own, or had
    // the counter raced, it would still sign in somewhere.
    for replica in &replicas {
        let (status, body) = post(
            &client,
            format!("{}/api/v1/auth/login/phone-code", replica.base_url),
            json!({"phone": phone, "code": code}),
        )
        .await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!(40000401)),
            "{body}"
        );
    }
}
