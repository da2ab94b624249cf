//! One-time tickets across processes: two replicas on one real Postgres and Redis, a ticket
//! issued by one and redeemed by many parallel requests spread over both: exactly one wins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::{add_user, get_json, post_json, replica_env};
use serde_json::json;
use std::time::Duration;

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn of_many_parallel_redemptions_across_replicas_exactly_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // No rate limits: 120 redemptions from one address are the point here.
    let (env, _redis) = replica_env(dir.path(), json!({"rate_limits": {"rules": []}})).await;
    add_user(
        dir.path(),
        &env,
        &["--username", "root", "--role", "admin"],
        PW,
    );
    let bob = add_user(dir.path(), &env, &["--username", "bob"], PW);
    let replicas = keygate_tests::start_replicas(&env, 2);
    let client = reqwest::Client::builder()
        .user_agent("keygate-tests")
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (_, login) = post_json(
        &client,
        &format!("{}/api/v1/auth/login", replicas[0].base_url),
        None,
        &json!({"identity": "root", "password": PW}),
    )
    .await;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"));
    for round in 0..3 {
        let (_, issued) = post_json(
            &client,
            &format!(
                "{}/api/v1/auth/generate-ticket",
                replicas[round % 2].base_url
            ),
            Some(token),
            &json!({"user_id": bob, "reason": "load test"}),
        )
        .await;
        let ticket = issued["data"]["ticket"]
            .as_str()
            .unwrap_or_else(|| panic!("{issued}"))
            .to_owned();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let url = format!("{}/api/v1/auth/ticket/signin", replicas[i % 2].base_url);
                let (client, ticket) = (client.clone(), ticket.clone());
                tokio::spawn(async move {
                    post_json(&client, &url, None, &json!({"ticket": ticket})).await
                })
            })
            .collect();
        let mut wins = Vec::new();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                200 => wins.push(body),
                400 => assert_eq!(body["code"], 40000501, "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(wins.len(), 1, "round {round}");
        assert_eq!(wins[0]["user_id"], bob.as_str());
    }

    // Both replicas wrote one audit trail: three impersonations, with the client's address
    // and user agent, readable from either replica.
    for replica in &replicas {
        let (_, page) = get_json(
            &client,
            &format!(
                "{}/api/v1/admin/audit-events?type=impersonation",
                replica.base_url
            ),
            Some(token),
        )
        .await;
        let events = page["data"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 3, "{page}");
        for e in events {
            assert_eq!(e["user_id"], bob.as_str());
            assert_eq!(e["reason"], "load test");
            assert_eq!(e["client_ip"], "127.0.0.1");
            assert_eq!(e["user_agent"], "keygate-tests");
        }
    }
}
