//! Three replicas on one Postgres and one Redis under concurrent load: the single-use and
//! counted decisions allow exactly what the policy allows; then faults mid-run (Redis killed and
//! restarted, Postgres stopped and started, a replica SIGKILLed, the Sentinel primary killed),
//! each with its documented behaviour (docs/reliability.md), no acknowledged write lost, and
//! recovery without restarting a server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_tests::delivery::WebhookReceiver;
use keygate_tests::sentinel::SentinelSet;
use keygate_tests::{ServerProcess, add_user, eventually, replica_env, start_replicas};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery staple";

/// Three replicas, an administrator's token and the users' ids.
struct Trio {
    replicas: Vec<ServerProcess>,
    client: reqwest::Client,
    admin: String,
    ids: HashMap<String, String>,
    env: Vec<(String, String)>,
    hook: WebhookReceiver,
    _dir: tempfile::TempDir,
    /// The Redis of `replica_env` (unused behind Sentinel).
    redis: std::sync::Mutex<keygate_tests::RedisProcess>,
}

/// What a request got: a status, or no answer at all (`0`: the connection failed).
type Answer = (u16, Value);

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value));
}

impl Trio {
    /// Starts three replicas with `config`; `adjust` may change the environment first (another
    /// database or Redis). Users: `root` (admin) and each of `users` as (username, phone).
    async fn start(
        config: Value,
        users: &[(&str, &str)],
        adjust: impl FnOnce(&mut Vec<(String, String)>),
    ) -> Self {
        let hook = WebhookReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (mut env, redis) = replica_env(dir.path(), config).await;
        env.push(("KEYGATE_SMS_WEBHOOK_URL".into(), hook.url.clone()));
        env.push(("KEYGATE_SMS_WEBHOOK_SECRET".into(), "s3cret".into()));
        adjust(&mut env);
        let mut ids = HashMap::new();
        add_user(
            dir.path(),
            &env,
            &["--username", "root", "--role", "admin"],
            PW,
        );
        for (name, phone) in users {
            let id = add_user(
                dir.path(),
                &env,
                &["--username", name, "--phone", phone],
                PW,
            );
            ids.insert((*name).to_owned(), id);
        }
        let replicas = start_replicas(&env, 3);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut trio = Self {
            replicas,
            client,
            admin: String::new(),
            ids,
            env,
            hook,
            _dir: dir,
            redis: std::sync::Mutex::new(redis),
        };
        let (status, body) = trio.login(0, "root", PW).await;
        assert_eq!(status, 200, "{body}");
        trio.admin = body["access_token"].as_str().unwrap().to_owned();
        trio
    }

    fn url(&self, replica: usize, path: &str) -> String {
        format!(
            "{}/api/v1{path}",
            self.replicas[replica % self.replicas.len()].base_url
        )
    }

    /// POSTs to `path` on `replica`; a failed connection is status 0.
    fn post(
        &self,
        replica: usize,
        path: &str,
        bearer: Option<String>,
        body: Value,
    ) -> impl Future<Output = Answer> + Send + 'static {
        let (client, url) = (self.client.clone(), self.url(replica, path));
        async move {
            let mut req = client.post(url).json(&body);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    (status, res.json().await.unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            }
        }
    }

    fn login(
        &self,
        replica: usize,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Answer> + Send + 'static {
        self.post(
            replica,
            "/auth/login",
            None,
            json!({"identity": user, "password": password}),
        )
    }

    fn refresh(
        &self,
        replica: usize,
        token: &str,
    ) -> impl Future<Output = Answer> + Send + 'static {
        self.post(
            replica,
            "/auth/refresh",
            None,
            json!({"refresh_token": token}),
        )
    }

    /// A ticket for `user`, issued by `replica`.
    fn issue(&self, replica: usize, user: &str) -> impl Future<Output = Answer> + Send + 'static {
        let user_id = self.ids[user].clone();
        self.post(
            replica,
            "/auth/generate-ticket",
            Some(self.admin.clone()),
            json!({"user_id": user_id}),
        )
    }

    async fn ticket(&self, replica: usize, user: &str) -> String {
        let (status, body) = self.issue(replica, user).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["ticket"].as_str().unwrap().to_owned()
    }

    fn redeem(
        &self,
        replica: usize,
        ticket: &str,
    ) -> impl Future<Output = Answer> + Send + 'static {
        self.post(
            replica,
            "/auth/ticket/signin",
            None,
            json!({"ticket": ticket}),
        )
    }

    /// `n` redemptions of each ticket at once, spread over the replicas; per ticket, the
    /// statuses.
    async fn redeem_all(&self, tickets: &[String], n: usize) -> Vec<Vec<u16>> {
        let tasks: Vec<Vec<_>> = tickets
            .iter()
            .map(|t| {
                (0..n)
                    .map(|i| tokio::spawn(self.redeem(i, t)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut out = Vec::new();
        for per_ticket in tasks {
            let mut statuses = Vec::new();
            for t in per_ticket {
                statuses.push(t.await.unwrap().0);
            }
            out.push(statuses);
        }
        out
    }

    /// Sends a sign-in code to `phone` through `replica`; the status.
    fn send_code(
        &self,
        replica: usize,
        phone: &str,
    ) -> impl Future<Output = Answer> + Send + 'static {
        self.post(
            replica,
            "/auth/send-login-code",
            None,
            json!({"phone": phone}),
        )
    }

    fn code_login(
        &self,
        replica: usize,
        phone: &str,
        code: &str,
    ) -> impl Future<Output = Answer> + Send + 'static {
        self.post(
            replica,
            "/auth/login/phone-code",
            None,
            json!({"phone": phone, "code": code}),
        )
    }

    /// Waits until every live replica says it is ready.
    async fn await_ready(&self, what: &str) {
        for r in &self.replicas {
            let url = format!("{}/readyz", r.base_url);
            eventually(Duration::from_secs(60), what, async || {
                let res = self.client.get(&url).send().await.ok()?;
                (res.status() == 200).then_some(())
            })
            .await;
        }
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

fn wrong_code(right: &str, n: u32) -> String {
    format!(
        "{:06}",
        (right.parse::<u32>().unwrap() + n * 7919) % 1_000_000
    )
}

fn token(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {body}"))
        .to_owned()
}

const LOCKOUT: &str = r#"{"delay_after": 2, "base_delay_seconds": 1, "max_delay_seconds": 1,
    "lock_after": 3, "lock_seconds": 600, "ip_delay_after": 1000, "ip_lock_after": 2000}"#;

fn config(grace_seconds: u64) -> Value {
    json!({
        "rate_limits": {"rules": []},
        "tokens": {"refresh_reuse_grace_seconds": grace_seconds},
        "policy": {"captcha": {"mode": "never"},
                   "lockout": serde_json::from_str::<Value>(LOCKOUT).unwrap()},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_concurrent_load_allow_exactly_what_the_policy_allows() {
    let (p4, p5, p6) = ("+14155550104", "+14155550105", "+14155550106");
    let t = Trio::start(
        config(1),
        &[
            ("bob", "+14155550101"),
            ("alice", "+14155550102"),
            ("carol", "+14155550103"),
            ("pia", p4),
            ("pim", p5),
            ("pat", p6),
        ],
        |_| {},
    )
    .await;
    let tickets_phase = async {
        let mut tickets = Vec::new();
        for i in 0..6 {
            tickets.push(t.ticket(i, "bob").await);
        }
        // 24 redemptions of each of six tickets, all 144 at once over three replicas.
        for (n, statuses) in t.redeem_all(&tickets, 24).await.iter().enumerate() {
            assert_eq!(count(statuses, 200), 1, "ticket {n}: {statuses:?}");
            assert_eq!(count(statuses, 400), 23, "ticket {n}: {statuses:?}");
        }
    };
    let codes_phase = async {
        // max_attempts (5): four wrong answers at once leave the right code usable, five do
        // not: exactly five answers are evaluated per code, over three replicas.
        for (phone, wrong, signs_in) in [(p4, 4, true), (p5, 5, false)] {
            assert_eq!(t.send_code(0, phone).await.0, 200);
            let right = t.hook.last_code_for(phone).unwrap();
            let answers: Vec<_> = (1..=wrong)
                .map(|n| tokio::spawn(t.code_login(n as usize, phone, &wrong_code(&right, n))))
                .collect();
            for a in answers {
                let (status, body) = a.await.unwrap();
                assert_eq!(
                    (status, body["code"].clone()),
                    (400, json!(40000401)),
                    "{body}"
                );
            }
            let (status, body) = t.code_login(2, phone, &right).await;
            assert_eq!(
                status == 200,
                signs_in,
                "{phone} after {wrong} wrong: {body}"
            );
        }
        // Per target: 15 sends at once over three replicas, exactly one code goes out.
        let sends: Vec<_> = (0..15).map(|i| tokio::spawn(t.send_code(i, p6))).collect();
        let mut statuses = Vec::new();
        for s in sends {
            statuses.push(s.await.unwrap().0);
        }
        assert_eq!(
            (count(&statuses, 200), count(&statuses, 429)),
            (1, 14),
            "{statuses:?}"
        );
        let sent = t
            .hook
            .calls()
            .iter()
            .filter(|c| c.json["target"] == p6)
            .count();
        assert_eq!(sent, 1);
    };
    let lockout_phase = async {
        // 12 wrong passwords at once: exactly delay_after (2) are evaluated, the others wait a
        // delay (not a lock).
        let burst: Vec<_> = (0..12)
            .map(|i| tokio::spawn(t.login(i, "alice", &format!("wrong {i}"))))
            .collect();
        let mut evaluated = 0;
        for b in burst {
            match b.await.unwrap() {
                (400, body) => {
                    assert_eq!(body["code"], 40000101, "{body}");
                    evaluated += 1;
                }
                (429, body) => assert!(body["retry_after"].as_u64().unwrap() <= 2, "{body}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(evaluated, 2);
        // Once the delay has passed, the third failure (lock_after) is evaluated and locks.
        let mut n = 0;
        eventually(Duration::from_secs(10), "the delay to pass", async || {
            n += 1;
            let (status, _) = t.login(n, "alice", "wrong again").await;
            (status == 400).then_some(())
        })
        .await;
        let right: Vec<_> = (0..6)
            .map(|i| tokio::spawn(t.login(i, "alice", PW)))
            .collect();
        for r in right {
            let (status, body) = r.await.unwrap();
            assert_eq!(status, 429, "{body}");
            assert!(
                body["retry_after"].as_u64().unwrap() > 300,
                "a lock: {body}"
            );
        }
    };
    let refresh_phase = async {
        let (status, body) = t.login(1, "carol", PW).await;
        assert_eq!(status, 200, "{body}");
        let first = token(&body, "refresh_token");
        let (status, body) = t.refresh(2, &first).await;
        assert_eq!(status, 200, "{body}");
        let second = token(&body, "refresh_token");
        // Past the grace window (1 s, counted in whole seconds), nine replays at once over
        // three replicas: none succeeds, the first detects the reuse (40000201) and revokes
        // the session, those that come after it find it revoked (40000202; clients test the
        // prefix 400002), and the session is gone on every replica.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let replays: Vec<_> = (0..9).map(|i| tokio::spawn(t.refresh(i, &first))).collect();
        let mut reuse = 0;
        for r in replays {
            let (status, body) = r.await.unwrap();
            match (status, body["code"].as_u64()) {
                (400, Some(40000201)) => reuse += 1,
                (400, Some(40000202)) => {}
                other => panic!("a replay answered {other:?}: {body}"),
            }
        }
        assert!(reuse >= 1, "the reuse was detected");
        for i in 0..3 {
            assert_eq!(t.refresh(i, &second).await.0, 400, "revoked on replica {i}");
        }
    };
    tokio::join!(tickets_phase, codes_phase, lockout_phase, refresh_phase);
}

/// Refresh-token chains, one per worker, each on its own replica: every acknowledged token is
/// the next one to present; a request that got no answer is retried on the next replica with
/// the last acknowledged token (the grace window forgives a rotation whose answer was lost).
/// `fault` strikes in the third round, its requests in flight.
async fn advance_chains(
    t: &Trio,
    chains: &mut [(usize, String)],
    rounds: usize,
    fault: &dyn Fn(),
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for round in 0..rounds {
        let tasks: Vec<_> = chains
            .iter()
            .map(|(replica, tok)| tokio::spawn(t.refresh(*replica, tok)))
            .collect();
        if round == 2 {
            // While the third round's requests are in flight.
            fault();
        }
        for (chain, task) in chains.iter_mut().zip(tasks) {
            let (status, body) = task.await.unwrap();
            statuses.push(status);
            match status {
                200 => chain.1 = token(&body, "refresh_token"),
                _ => chain.0 += 1,
            }
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_and_a_replica_killed_mid_run_lose_nothing_acknowledged() {
    let mut t = Trio::start(config(30), &[("bob", "+14155550111")], |_| {}).await;
    let mut chains = Vec::new();
    for i in 0..6 {
        let (status, body) = t.login(i, "bob", PW).await;
        assert_eq!(status, 200, "{body}");
        chains.push((i % 3, token(&body, "refresh_token")));
    }
    let before = [t.ticket(0, "bob").await, t.ticket(1, "bob").await];

    // Redis killed with refreshes in flight; then the tickets issued before it are redeemed.
    let kill = || t.redis.lock().unwrap().stop();
    let statuses = advance_chains(&t, &mut chains, 8, &kill).await;
    let redeemed = t.redeem_all(&before, 6).await;
    // Refresh lives in Postgres: no refresh failed.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Redis was stopped (and waited for) before these redemptions: every one is a 503,
    // none is decided without the shared record.
    for s in &redeemed {
        assert_eq!(s, &[503; 6], "redeemed while Redis was down");
    }
    // During the outage: tickets can be neither issued nor taken (503), sign-in works on
    // per-replica counters.
    assert_eq!(t.issue(2, "bob").await.0, 503);
    assert_eq!(t.redeem(1, &before[0]).await.0, 503);
    assert_eq!(t.login(2, "bob", PW).await.0, 200);

    tokio::task::block_in_place(|| t.redis.lock().unwrap().restart());
    t.await_ready("readiness after Redis returned").await;
    // This Redis keeps nothing on disk: it came back empty, and the tickets issued before the
    // outage are refused on every replica, never accepted without their record.
    for s in t.redeem_all(&before, 3).await {
        assert_eq!(s, [400, 400, 400], "a ticket issued before the outage");
    }
    // Recovered without a restart: new tickets are taken exactly once again.
    let after = [t.ticket(1, "bob").await, t.ticket(2, "bob").await];
    for s in t.redeem_all(&after, 9).await {
        assert_eq!(count(&s, 200), 1, "{s:?}");
    }

    // A replica SIGKILLed mid-run: the other two keep answering; tickets it issued and
    // tokens it rotated (answered 200) hold on the others.
    let orphan = t.ticket(2, "bob").await;
    let doomed_pid = t.replicas[2].pid();
    let kill = || {
        std::process::Command::new("kill")
            .args(["-KILL", &doomed_pid.to_string()])
            .status()
            .unwrap();
    };
    let statuses = advance_chains(&t, &mut chains, 8, &kill).await;
    assert!(
        statuses.iter().all(|s| [200, 0].contains(s)),
        "only the killed replica may fail to answer: {statuses:?}"
    );
    assert!(
        statuses.contains(&0),
        "the replica was killed mid-run: {statuses:?}"
    );
    t.replicas.truncate(2);
    for (replica, tok) in &mut chains {
        *replica %= 2;
        let (status, body) = t.refresh(*replica, tok).await;
        assert_eq!(status, 200, "an acknowledged refresh token: {body}");
    }
    let s = t.redeem_all(std::slice::from_ref(&orphan), 6).await;
    assert_eq!(count(&s[0], 200), 1, "{s:?}");
    // The environment that starts a replacement is unchanged: it serves with the others.
    let replacement = ServerProcess::start(keygate_tests::ServerOptions {
        env: t.env.clone(),
        ..Default::default()
    });
    t.replicas.push(replacement);
    let last = t.ticket(2, "bob").await;
    assert_eq!(count(&t.redeem_all(&[last], 6).await[0], 200), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_mid_run_loses_no_acknowledged_refresh() {
    let pg = tokio::task::block_in_place(keygate_tests::postgres::PostgresProcess::start);
    let database = keygate_tests::fresh_postgres_database_on(&pg.url()).await;
    let t = Trio::start(config(60), &[("bob", "+14155550121")], |env| {
        set_env(env, "KEYGATE_DATABASE_URL", database)
    })
    .await;
    let mut chains = Vec::new();
    for i in 0..6 {
        let (status, body) = t.login(i, "bob", PW).await;
        assert_eq!(status, 200, "{body}");
        chains.push((i % 3, token(&body, "refresh_token")));
    }
    let stop = || tokio::task::block_in_place(|| pg.stop_immediately());
    let statuses = advance_chains(&t, &mut chains, 8, &stop).await;
    // Refreshes in flight fail closed (503), none is answered wrongly.
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    // While it is down: sign-in, refresh and ticket issue are 503 on every replica; readiness
    // says so.
    for (i, (_, tok)) in chains.iter().enumerate().take(3) {
        assert_eq!(t.login(i, "bob", PW).await.0, 503);
        assert_eq!(t.refresh(i, tok).await.0, 503);
        let res = t
            .client
            .get(format!("{}/readyz", t.replicas[i].base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    tokio::task::block_in_place(|| pg.start_again());
    t.await_ready("readiness after Postgres returned").await;
    // Every chain continues from its last acknowledged token (a rotation committed but not
    // answered is forgiven in the grace window), on every replica.
    for round in 0..3 {
        for (n, (_, tok)) in chains.iter_mut().enumerate() {
            let (status, body) = t.refresh(n + round, tok).await;
            assert_eq!(status, 200, "chain {n} round {round}: {body}");
            *tok = token(&body, "refresh_token");
        }
    }
    let ticket = t.ticket(0, "bob").await;
    assert_eq!(count(&t.redeem_all(&[ticket], 6).await[0], 200), 1);
}

/// `n` ticket sign-ins (tickets issued beforehand), eight at a time, spread over the replicas;
/// sign-ins per second.
async fn redemption_rate(t: &Trio, replicas: &[usize], n: usize) -> f64 {
    let mut tickets = Vec::new();
    for i in 0..n {
        tickets.push(t.ticket(replicas[i % replicas.len()], "bob").await);
    }
    let started = Instant::now();
    for chunk in tickets.chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, tk)| tokio::spawn(t.redeem(replicas[i % replicas.len()], tk)))
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().0, 200);
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_servers_follow_a_new_primary_and_nothing_taken_is_taken_again() {
    let phone = "+14155550131";
    let mut set = tokio::task::block_in_place(SentinelSet::start);
    let url = set.url();
    let mut t = Trio::start(
        config(10),
        &[("bob", phone), ("mia", "+14155550132")],
        |env| set_env(env, "KEYGATE_REDIS_URL", url),
    )
    .await;

    // The cost of WAIT: ticket sign-ins through the same Sentinel set on one server without
    // it (a fourth server, WAIT off) and on one with it, alternating to share the noise.
    let mut plain_env = t.env.clone();
    set_env(&mut plain_env, "KEYGATE_REDIS_WAIT_REPLICAS", "0".into());
    t.replicas
        .push(ServerProcess::start(keygate_tests::ServerOptions {
            env: plain_env,
            ..Default::default()
        }));
    let (mut with, mut without) = (0.0, 0.0);
    for _ in 0..3 {
        without += redemption_rate(&t, &[3], 60).await / 3.0;
        with += redemption_rate(&t, &[0], 60).await / 3.0;
    }
    println!(
        "ticket sign-ins per second behind Sentinel: {without:.0} without WAIT, {with:.0} with WAIT 1 ({:+.0} %)",
        (with / without - 1.0) * 100.0
    );
    t.replicas.truncate(3);

    // Taken before the failover: tickets, a code, an MFA challenge.
    let mut taken = Vec::new();
    for i in 0..4 {
        taken.push(t.ticket(i, "bob").await);
    }
    for s in t.redeem_all(&taken, 3).await {
        assert_eq!(count(&s, 200), 1, "{s:?}");
    }
    let open: Vec<String> = [t.ticket(0, "bob").await, t.ticket(1, "bob").await].into();
    // Redeemed while the replica has fallen behind, just before the primary dies (below).
    let lagged = t.ticket(2, "bob").await;
    assert_eq!(t.send_code(0, phone).await.0, 200);
    let code = t.hook.last_code_for(phone).unwrap();
    assert_eq!(t.code_login(1, phone, &code).await.0, 200);
    let (_, body) = t.login(0, "mia", PW).await;
    let mia = token(&body, "access_token");
    let (status, setup) = t
        .post(0, "/auth/mfa/totp/setup", Some(mia.clone()), json!({}))
        .await;
    assert_eq!(status, 200, "{setup}");
    let secret = setup["data"]["secret"].as_str().unwrap().to_owned();
    let verify = json!({"code": keygate_tests::pyotp(&secret, 0)});
    assert_eq!(
        t.post(1, "/auth/mfa/totp/verify", Some(mia), verify)
            .await
            .0,
        200
    );
    let (_, challenge) = t.login(2, "mia", PW).await;
    // The right code (the next time step: the current one was spent on activation).
    let answer = || {
        let code = keygate_tests::pyotp(&secret, 30);
        json!({"challenge_token": challenge["challenge_token"], "code": code})
    };
    let verify_challenge = "/auth/mfa/verify-challenge";
    let (status, body) = t.post(0, verify_challenge, None, answer()).await;
    assert_eq!(status, 200, "{body}");

    // Issue and redeem tickets without pause while the primary is killed and the sentinels
    // promote the replica; the old primary then rejoins as a replica.
    // The load runs as a task of its own, so that it goes on while this one waits on the
    // sentinels.
    let t = std::sync::Arc::new(t);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (t2, stop2) = (t.clone(), stop.clone());
    let load = tokio::spawn(async move {
        let (t, stop) = (t2, stop2);
        let mut redeemed: Vec<(String, Vec<u16>)> = Vec::new();
        let (mut n, mut unavailable) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let (status, body) = t.issue(n, "bob").await;
            assert!([200, 503].contains(&status), "issue: {status} {body}");
            unavailable += usize::from(status == 503);
            if status == 200 {
                let ticket = token(&body["data"], "ticket");
                let s = t.redeem_all(std::slice::from_ref(&ticket), 3).await;
                unavailable += count(&s[0], 503);
                redeemed.push((ticket, s[0].clone()));
            }
        }
        (redeemed, unavailable)
    });
    let fault = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A take that only the primary has when it dies: the replica cut off first. No replica
        // confirms it, so it is not acknowledged (503); without WAIT it would be a 200 that
        // the failover then undoes, and the same ticket would sign in again below.
        let replica = tokio::task::block_in_place(|| set.cut_off_replica());
        let (status, body) = t.redeem(0, &lagged).await;
        assert_eq!(status, 503, "a take no replica confirmed: {body}");
        let old = set.kill_primary();
        set.resume(replica);
        let started = Instant::now();
        let new = tokio::task::block_in_place(|| set.await_failover(old, Duration::from_secs(60)));
        println!("failover to {new} in {:?}", started.elapsed());
        tokio::task::block_in_place(|| set.rejoin(old));
        // Followed without a restart: every replica issues and takes tickets again.
        for i in 0..3 {
            eventually(
                Duration::from_secs(30),
                "a ticket after the failover",
                async || {
                    let (status, body) = t.issue(i, "bob").await;
                    let ticket = body["data"]["ticket"].as_str()?.to_owned();
                    (status == 200 && t.redeem(i, &ticket).await.0 == 200).then_some(())
                },
            )
            .await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    fault.await;
    let (redeemed, unavailable) = load.await.unwrap();
    let mut taken_during = 0;
    for (ticket, s) in &redeemed {
        assert!(count(s, 200) <= 1, "{s:?}");
        assert!(s.iter().all(|x| [200, 400, 503].contains(x)), "{s:?}");
        if count(s, 200) == 1 {
            taken.push(ticket.clone());
            taken_during += 1;
        }
    }
    // Between the kill and the replica's return nothing single-use is acknowledged: 503.
    assert!(unavailable > 0, "the failover was seen");
    println!(
        "{} tickets issued during the run, {taken_during} taken, {unavailable} answers 503",
        redeemed.len()
    );

    // From here each answer is awaited past 503s: while the rejoined node resynchronises, a
    // take may have no replica to confirm it, and is refused undecided.
    // Nothing taken before or during the failover is taken again, on any replica.
    for ticket in &taken {
        assert_eq!(redeem_decided(&t, ticket, 3).await, [400, 400, 400]);
    }
    let decided = |status: u16| (status != 503).then_some(status);
    let status = eventually(Duration::from_secs(30), "a decided code", async || {
        decided(t.code_login(2, phone, &code).await.0)
    })
    .await;
    assert_eq!(status, 400);
    let (status, body) = eventually(Duration::from_secs(30), "a decided answer", async || {
        let (status, body) = t.post(1, verify_challenge, None, answer()).await;
        decided(status).map(|s| (s, body))
    })
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (403, json!(61000403)),
        "{body}"
    );
    // Tickets issued (acknowledged) before the failover and not taken are still there, once;
    // so is the one whose take was refused for want of a replica (the promoted replica never
    // saw that take), and it too signs in exactly once.
    for ticket in open.iter().chain([&lagged]) {
        let s = redeem_decided(&t, ticket, 6).await;
        assert_eq!(count(&s, 200), 1, "{s:?}");
    }
}

/// `ticket` redeemed through replicas `0..n` (modulo three) in turn, each try repeated while it
/// answers 503 (undecided): the decided statuses.
async fn redeem_decided(t: &Trio, ticket: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let status = eventually(
            Duration::from_secs(30),
            "a decided redemption",
            async || {
                let status = t.redeem(i, ticket).await.0;
                (status != 503).then_some(status)
            },
        )
        .await;
        statuses.push(status);
    }
    statuses
}
