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
    // take_if takes only the value it names, and only once.
    e.set(&k("c"), r#"{"nonce":"n2"}"#, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(e.take_if(&k("c"), "n1").await.unwrap(), None);
    assert_eq!(
        e.take_if(&k("c"), "n2").await.unwrap().as_deref(),
        Some(r#"{"nonce":"n2"}"#)
    );
    assert_eq!(e.take_if(&k("c"), "n2").await.unwrap(), None);
    assert_eq!(e.take_if(&k("missing"), "n2").await.unwrap(), None);
    // incr (code and MFA attempt counters) is atomic: of many concurrent increments each
    // sees its own value, so at most max_attempts of them can be below the limit.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let e = e.clone();
        let key = k("attempts");
        tasks.push(tokio::spawn(async move {
            e.incr(&key, Duration::from_secs(2)).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<i64>>());
    assert_eq!(
        e.incr(&k("attempts"), Duration::from_secs(2))
            .await
            .unwrap(),
        41
    );
    // Expiry.
    expire().await;
    assert!(!e.exists_any(&[k("a")]).await.unwrap());
    // The counter expires with its window.
    assert_eq!(
        e.incr(&k("attempts"), Duration::from_secs(2))
            .await
            .unwrap(),
        1
    );
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
        RedisEphemeral::connect(
            &keygate_tests::redis_url(),
            std::sync::Arc::new(auth_server::auth::clock::SystemClock),
        )
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
    let r = RedisEphemeral::connect(
        &format!("redis://127.0.0.1:{port}"),
        std::sync::Arc::new(auth_server::auth::clock::SystemClock),
    )
    .await;
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The attempt gate: the same decisions on memory and on Redis, and atomic under contention.
async fn gate_contract(e: Ephemeral, prefix: &str) {
    use auth_server::ephemeral::{Gate, GateRule};
    let rule = GateRule {
        delay_after: 3,
        base_delay_ms: 1000,
        max_delay_ms: 8000,
        lock_after: 5,
        lock_ms: 60_000,
        window_ms: 3_600_000,
    };
    let loose = GateRule {
        delay_after: 1000,
        lock_after: 2000,
        ..rule
    };
    let (acct, ip) = (format!("{prefix}acct"), format!("{prefix}ip"));
    let t0: i64 = 1_900_000_000_000;
    for n in 0..3 {
        assert_eq!(
            e.gate_attempt(&acct, &ip, (&rule, &loose), t0).await,
            Gate::Admitted {
                account_failures: n,
                ip_failures: n
            }
        );
    }
    assert_eq!(e.gate_failures(&acct, &ip).await, (3, 3));
    assert_eq!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 400).await,
        Gate::Refused {
            retry_after_ms: 600,
            locked: false
        }
    );
    assert!(matches!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 1000).await,
        Gate::Admitted { .. }
    ));
    assert!(matches!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 3000).await,
        Gate::Admitted { .. }
    ));
    assert_eq!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 13_000)
            .await,
        Gate::Refused {
            retry_after_ms: 50_000,
            locked: true
        }
    );
    // Success resets the account and returns one attempt to the address.
    e.gate_success(&acct, &ip).await;
    assert_eq!(e.gate_failures(&acct, &ip).await, (0, 4));
    // Clearing (unlock) empties a key.
    assert!(matches!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 14_000)
            .await,
        Gate::Admitted { .. }
    ));
    e.gate_clear(std::slice::from_ref(&acct)).await.unwrap();
    assert_eq!(e.gate_failures(&acct, &ip).await.0, 0);

    // Contention: of 40 simultaneous attempts on a fresh account exactly delay_after pass.
    let acct2 = format!("{prefix}acct2");
    let ip2 = format!("{prefix}ip2");
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (e, a, i) = (e.clone(), acct2.clone(), ip2.clone());
        tasks.push(tokio::spawn(async move {
            e.gate_attempt(&a, &i, (&rule, &loose), t0).await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(matches!(t.await.unwrap(), Gate::Admitted { .. }));
    }
    assert_eq!(admitted, 3);
}

#[tokio::test]
async fn gate_contract_memory() {
    gate_contract(
        Ephemeral::Memory(MemoryEphemeral::new(ManualClock::at(1_900_000_000))),
        "",
    )
    .await;
}

#[tokio::test]
async fn gate_contract_redis() {
    let e = RedisEphemeral::connect(
        &keygate_tests::redis_url(),
        std::sync::Arc::new(auth_server::auth::clock::SystemClock),
    )
    .await
    .unwrap();
    gate_contract(Ephemeral::Redis(e), &keygate_tests::unique("test:gate:")).await;
}

/// `claim` (resend intervals, single-use id_tokens) and `gate_refund`, on both stores: one
/// claimer of many, the wait reported, and a refund that gives one attempt back.
async fn claim_and_refund_contract(e: Ephemeral, prefix: &str) {
    let key = format!("{prefix}claim");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (e, key) = (e.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            e.claim(&key, Duration::from_secs(60)).await.unwrap()
        }));
    }
    let mut free = 0;
    for t in tasks {
        match t.await.unwrap() {
            None => free += 1,
            Some(wait) => assert!((1..=60_000).contains(&wait), "{wait}"),
        }
    }
    assert_eq!(free, 1);
    let rule = auth_server::ephemeral::GateRule {
        delay_after: 2,
        base_delay_ms: 1000,
        max_delay_ms: 8000,
        lock_after: 3,
        lock_ms: 60_000,
        window_ms: 3_600_000,
    };
    let loose = auth_server::ephemeral::GateRule {
        delay_after: 100,
        lock_after: 200,
        ..rule
    };
    let (acct, ip) = (format!("{prefix}acct"), format!("{prefix}ip"));
    let t0 = 1_900_000_000_000;
    for _ in 0..2 {
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0).await;
    }
    // The third attempt would lock; refunded, the lock and delay it set are lifted.
    e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 1000).await;
    e.gate_refund(&acct, &ip, rule.lock_after).await;
    assert_eq!(e.gate_failures(&acct, &ip).await, (2, 2));
    assert!(matches!(
        e.gate_attempt(&acct, &ip, (&rule, &loose), t0 + 1000).await,
        auth_server::ephemeral::Gate::Admitted {
            account_failures: 2,
            ..
        }
    ));
}

#[tokio::test]
async fn claim_and_refund_contract_memory() {
    claim_and_refund_contract(
        Ephemeral::Memory(MemoryEphemeral::new(ManualClock::at(1_900_000_000))),
        "",
    )
    .await;
}

#[tokio::test]
async fn claim_and_refund_contract_redis() {
    let e = RedisEphemeral::connect(
        &keygate_tests::redis_url(),
        std::sync::Arc::new(auth_server::auth::clock::SystemClock),
    )
    .await
    .unwrap();
    claim_and_refund_contract(Ephemeral::Redis(e), &keygate_tests::unique("test:claim:")).await;
}

/// Behind Sentinel with every single-use or counted write confirmed by a replica: the same
/// contracts hold, every write the store acknowledged is on the replica, and with the replica
/// gone those writes fail (closed) within the wait instead of being acknowledged unreplicated.
#[tokio::test]
async fn contracts_hold_behind_sentinel_and_unreplicated_writes_fail_closed() {
    use auth_server::ephemeral::ReplicaWait;
    use keygate_tests::sentinel::{SentinelSet, cli};
    let mut set = SentinelSet::start();
    let url = auth_server::ephemeral::fred_url(&set.url()).unwrap();
    let connect = |wait| {
        let url = url.clone();
        async move {
            RedisEphemeral::connect_waiting(
                &url,
                std::sync::Arc::new(auth_server::auth::clock::SystemClock),
                wait,
            )
            .await
            .unwrap()
        }
    };
    let wait = ReplicaWait {
        replicas: 1,
        timeout: Duration::from_millis(300),
    };
    let e = Ephemeral::Redis(connect(Some(wait)).await);
    contract(e.clone(), "s:", async || {
        tokio::time::sleep(Duration::from_millis(2100)).await
    })
    .await;
    gate_contract(e.clone(), "s:gate:").await;
    claim_and_refund_contract(e.clone(), "s:claim:").await;
    // What WAIT costs: a ticket's set and take, one at a time, without and with it.
    let plain = Ephemeral::Redis(connect(None).await);
    for (name, store) in [("without WAIT", &plain), ("with WAIT 1", &e)] {
        let started = std::time::Instant::now();
        for n in 0..300 {
            let key = format!("s:cost:{n}");
            store.set(&key, "t", Duration::from_secs(60)).await.unwrap();
            store.take(&key).await.unwrap().unwrap();
        }
        println!(
            "set + take {name}: {:.0} µs",
            started.elapsed().as_micros() as f64 / 300.0
        );
    }
    // Acknowledged means on the replica, with nothing more to wait for.
    let replica = set.replica();
    e.set("s:ticket", "t", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cli(replica, &["GET", "s:ticket"]), ["t"]);
    assert_eq!(e.take("s:ticket").await.unwrap().as_deref(), Some("t"));
    assert_eq!(cli(replica, &["EXISTS", "s:ticket"]), ["0"]);

    set.kill(replica);
    e.set("s:code", "c", Duration::from_secs(60)).await.ok();
    let started = std::time::Instant::now();
    assert!(e.take("s:code").await.is_err(), "an unreplicated take");
    assert!(started.elapsed() >= wait.timeout);
    assert!(e.incr("s:n", Duration::from_secs(60)).await.is_err());
    assert!(e.claim("s:c", Duration::from_secs(60)).await.is_err());
    // Reads need no replica, and a store without the requirement keeps working.
    assert!(!e.exists_any(&["s:none".into()]).await.unwrap());
    assert_eq!(plain.incr("s:m", Duration::from_secs(60)).await.unwrap(), 1);
}
