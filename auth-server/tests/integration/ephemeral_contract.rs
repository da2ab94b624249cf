//! The ephemeral-store contract, run against the in-process store and a real Redis server.

use auth_server::auth::clock::ManualClock;
use auth_server::ephemeral::{Ephemeral, MemoryEphemeral, RedisEphemeral};
use std::time::Duration;

async fn contract(e: Ephemeral, prefix: &str, expire: impl AsyncFn()) {
    let k = |s: &str| format!("{prefix}{s}");
    e.ping().await.unwrap();
    assert!(!e.exists_any(&[k("a"), k("b")]).await.unwrap());
    assert!(!e.exists_any(&[]).await.unwrap());
    e.set(&k("a"), "1", Duration::from_secs(2)).await.unwrap();
    assert!(e.exists_any(&[k("x"), k("a")]).await.unwrap());
    // take is atomic: of many concurrent takers exactly one gets the value.
    e.set(&k("once"), "v", Duration::from_secs(30))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let e = e.clone();
        let key = k("once");
        tasks.push(tokio::spawn(async move { e.take(&key).await.unwrap() }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    assert_eq!(got, ["v"]);
    assert_eq!(e.take(&k("once")).await.unwrap(), None);
    // Expiry.
    expire().await;
    assert!(!e.exists_any(&[k("a")]).await.unwrap());
    e.set(&k("t"), "v", Duration::from_secs(2)).await.unwrap();
    expire().await;
    assert_eq!(e.take(&k("t")).await.unwrap(), None);
}

#[tokio::test]
async fn ephemeral_contract_memory() {
    let clock = ManualClock::at(1_000);
    let e = Ephemeral::Memory(MemoryEphemeral::new(clock.clone()));
    contract(e, "", async || clock.advance(3)).await;
}

#[tokio::test]
async fn ephemeral_contract_redis() {
    let e = Ephemeral::Redis(
        RedisEphemeral::connect(&keygate_tests::redis_url())
            .await
            .unwrap(),
    );
    let prefix = keygate_tests::unique("test:");
    contract(e, &prefix, async || {
        tokio::time::sleep(Duration::from_millis(2100)).await
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let port = keygate_tests::free_port();
    let started = std::time::Instant::now();
    let r = RedisEphemeral::connect(&format!("redis://127.0.0.1:{port}")).await;
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}
