//! The storage contract, run against the embedded SQLite file and a real Postgres server.

use auth_server::store::{
    AuditQuery, AuditRecord, IdentityKind, NewRefresh, NewUser, Session, SqlStore, StoreError,
    Tenant,
};

async fn sqlite() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    (SqlStore::open(&url).await.unwrap(), dir)
}

async fn postgres() -> SqlStore {
    SqlStore::open(&keygate_tests::fresh_postgres_database().await)
        .await
        .unwrap()
}

fn new_user(
    id: &str,
    tenant: &str,
    username: &str,
    email: Option<&str>,
    phone: Option<&str>,
) -> NewUser {
    NewUser {
        id: id.into(),
        tenant_id: tenant.into(),
        username: username.into(),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
        password_hash: Some("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        roles: vec!["admin".into()],
        must_change_password: true,
        created_at: 100,
    }
}

fn refresh(hash: &str, now: i64) -> NewRefresh {
    NewRefresh {
        token_hash: hash.into(),
        created_at: now,
        expires_at: now + 1000,
        access_expires_at: now + 300,
    }
}

async fn contract(s: SqlStore) {
    // Migrations are idempotent.
    s.migrate().await.unwrap();
    s.ping().await.unwrap();

    // Tenants.
    let default = s.tenant("default").await.unwrap().unwrap();
    assert_eq!(default.display_name, "Default");
    assert!(s.tenant("acme").await.unwrap().is_none());
    s.create_tenant(
        &Tenant {
            id: "acme".into(),
            name: "acme".into(),
            display_name: "Acme".into(),
        },
        1,
    )
    .await
    .unwrap();
    assert!(s.tenant("acme").await.unwrap().is_some());

    // Users: unique per tenant, by every identity kind.
    let u = s
        .create_user(&new_user(
            "usr_1",
            "default",
            "alice",
            Some("a@x.io"),
            Some("+4915112345678"),
        ))
        .await
        .unwrap();
    assert_eq!(u.roles, ["admin"]);
    assert!(u.must_change_password);
    assert_eq!(u.password_changed_at, Some(100));
    assert!(u.has_role("admin"));
    for (candidate, field) in [
        (
            new_user("usr_2", "default", "alice", None, None),
            "username",
        ),
        (
            new_user("usr_2", "default", "alice2", Some("a@x.io"), None),
            "email",
        ),
        (
            new_user("usr_2", "default", "alice2", None, Some("+4915112345678")),
            "phone",
        ),
    ] {
        match s.create_user(&candidate).await {
            Err(StoreError::Conflict(f)) => assert_eq!(f, field),
            other => panic!("expected a {field} conflict, got {other:?}"),
        }
    }
    // Several users without email or phone are fine.
    s.create_user(&new_user("usr_3", "default", "bob", None, None))
        .await
        .unwrap();
    s.create_user(&new_user("usr_4", "default", "carol", None, None))
        .await
        .unwrap();
    // The same names in another tenant are fine.
    s.create_user(&new_user(
        "usr_5",
        "acme",
        "alice",
        Some("a@x.io"),
        Some("+4915112345678"),
    ))
    .await
    .unwrap();
    assert!(matches!(
        s.create_user(&new_user("usr_6", "nope", "zed", None, None))
            .await,
        Err(StoreError::NotFound(_))
    ));
    for (kind, value) in [
        (IdentityKind::Username, "alice"),
        (IdentityKind::Email, "a@x.io"),
        (IdentityKind::Phone, "+4915112345678"),
    ] {
        let found = s
            .user_by_identity("default", kind, value)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, "usr_1");
        assert_eq!(
            s.user_by_identity("acme", kind, value)
                .await
                .unwrap()
                .unwrap()
                .id,
            "usr_5"
        );
    }
    assert!(
        s.user_by_identity("default", IdentityKind::Username, "nobody")
            .await
            .unwrap()
            .is_none()
    );
    s.set_password_hash("usr_1", "$new", 200).await.unwrap();
    assert_eq!(
        s.user("usr_1")
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$new")
    );
    assert!(s.user("usr_404").await.unwrap().is_none());

    // Sessions and refresh rotation.
    let session = Session {
        id: "ses_1".into(),
        tenant_id: "default".into(),
        user_id: "usr_1".into(),
        amr: vec!["pwd".into(), "otp".into()],
        created_at: 1000,
        expires_at: 5000,
        revoked_at: None,
        actor: None,
    };
    s.create_session(&session, &refresh("h1", 1000))
        .await
        .unwrap();
    // A session's actor chain is kept with it; the bearer check sees its revocation.
    s.create_session(
        &Session {
            id: "ses_act".into(),
            actor: Some(r#"{"sub":"usr_admin"}"#.into()),
            ..session.clone()
        },
        &refresh("h_act", 1000),
    )
    .await
    .unwrap();
    assert_eq!(
        s.refresh_token("h_act")
            .await
            .unwrap()
            .unwrap()
            .session
            .actor
            .as_deref(),
        Some(r#"{"sub":"usr_admin"}"#)
    );
    assert!(
        s.user_in_session("usr_1", "ses_act")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.user_in_session("usr_2", "ses_act")
            .await
            .unwrap()
            .is_none(),
        "another user's session"
    );
    // The latest access-token expiry of a session, whatever the lifetime was.
    s.add_refresh(
        "ses_act",
        &NewRefresh {
            access_expires_at: 9000,
            ..refresh("h_act2", 1100)
        },
    )
    .await
    .unwrap();
    s.add_refresh("ses_act", &refresh("h_act3", 1200))
        .await
        .unwrap();
    assert_eq!(
        s.session_access_expiry("ses_act").await.unwrap(),
        Some(9000)
    );
    assert_eq!(s.session_access_expiry("ses_none").await.unwrap(), None);
    assert!(s.revoke_session("ses_act", 1300, "logout").await.unwrap());
    assert!(
        s.user_in_session("usr_1", "ses_act")
            .await
            .unwrap()
            .is_none(),
        "a revoked session has no user"
    );
    assert_eq!(s.session("ses_1").await.unwrap().unwrap(), session);
    let rec = s.refresh_token("h1").await.unwrap().unwrap();
    assert_eq!(rec.session, session);
    assert_eq!(rec.rotated_at, None);
    assert_eq!(rec.expires_at, 2000);
    assert!(
        s.rotate_refresh("ses_1", "h1", 1100, &refresh("h2", 1100))
            .await
            .unwrap()
    );
    assert!(
        !s.rotate_refresh("ses_1", "h1", 1101, &refresh("h3", 1101))
            .await
            .unwrap()
    );
    assert!(
        s.refresh_token("h3").await.unwrap().is_none(),
        "a lost rotation stores nothing"
    );
    assert_eq!(
        s.refresh_token("h1").await.unwrap().unwrap().rotated_at,
        Some(1100)
    );
    s.add_refresh("ses_1", &refresh("h4", 1102)).await.unwrap();
    assert_eq!(
        s.refresh_token("h4").await.unwrap().unwrap().session.id,
        "ses_1"
    );
    // A token cannot be rotated through another session.
    assert!(
        !s.rotate_refresh("ses_other", "h2", 1103, &refresh("h5", 1103))
            .await
            .unwrap()
    );

    // Concurrent rotations of one token: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.rotate_refresh("ses_1", "h2", 1200, &refresh(&format!("race{i}"), 1200))
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one concurrent rotation may succeed");

    // Revocation is once.
    assert!(s.revoke_session("ses_1", 1300, "logout").await.unwrap());
    assert!(!s.revoke_session("ses_1", 1301, "logout").await.unwrap());
    assert_eq!(
        s.refresh_token("h4")
            .await
            .unwrap()
            .unwrap()
            .session
            .revoked_at,
        Some(1300)
    );

    // Password changes keep a bounded history, newest first.
    for (i, h) in ["$h2", "$h3", "$h4"].iter().enumerate() {
        let old = s.user("usr_3").await.unwrap().unwrap().password_hash;
        s.change_password("usr_3", old.as_deref(), h, 2000 + i as i64, 2)
            .await
            .unwrap();
    }
    let u3 = s.user("usr_3").await.unwrap().unwrap();
    assert_eq!(u3.password_hash.as_deref(), Some("$h4"));
    assert_eq!(u3.password_changed_at, Some(2002));
    assert!(!u3.must_change_password);
    assert_eq!(
        s.password_history("usr_3", 10).await.unwrap(),
        ["$h3", "$h2"]
    );
    assert_eq!(s.password_history("usr_3", 1).await.unwrap(), ["$h3"]);

    // Ending every other session of a user.
    for id in ["ses_a", "ses_b", "ses_c"] {
        let other = Session {
            id: id.into(),
            user_id: "usr_3".into(),
            ..session.clone()
        };
        s.create_session(&other, &refresh(&format!("rt_{id}"), 1000))
            .await
            .unwrap();
    }
    let mut ended = s
        .revoke_other_sessions("usr_3", "ses_b", 2100, "password_change")
        .await
        .unwrap();
    ended.sort();
    assert_eq!(ended, ["ses_a", "ses_c"]);
    assert!(
        s.session("ses_b")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert_eq!(
        s.session("ses_a").await.unwrap().unwrap().revoked_at,
        Some(2100)
    );

    // Purge removes ended tokens and sessions only.
    s.create_session(
        &Session {
            id: "ses_2".into(),
            expires_at: 99_999,
            ..session.clone()
        },
        &refresh("live", 90_000),
    )
    .await
    .unwrap();
    assert!(s.purge_expired(6000).await.unwrap() > 0);
    assert!(s.session("ses_1").await.unwrap().is_none());
    assert!(s.refresh_token("h1").await.unwrap().is_none());
    assert!(s.refresh_token("live").await.unwrap().is_some());

    audit_contract(&s).await;
}

/// Audit entries: optional columns, every filter alone and together, order, cursor, purge.
async fn audit_contract(s: &SqlStore) {
    let event = |id: &str, at: i64, user: Option<&str>, kind: &str| AuditRecord {
        id: id.into(),
        occurred_at: at,
        tenant_id: "t1".into(),
        event_type: kind.into(),
        outcome: "success".into(),
        method: Some("password".into()),
        user_id: user.map(str::to_owned),
        actor_id: None,
        client_ip: Some("203.0.113.9".into()),
        user_agent: None,
        reason: None,
        details: Some(r#"{"identity":"x"}"#.into()),
    };
    for e in [
        event("evt_1", 100, Some("u1"), "sign_in"),
        event("evt_2", 200, Some("u2"), "sign_in"),
        event("evt_3", 300, Some("u1"), "lockout"),
        event("evt_4", 400, None, "sign_in"),
        AuditRecord {
            tenant_id: "t2".into(),
            ..event("evt_5", 500, Some("u1"), "sign_in")
        },
    ] {
        s.insert_audit(&e).await.unwrap();
    }
    let ids = |q: AuditQuery| async move {
        s.audit_events(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let base = AuditQuery {
        tenant_id: "t1".into(),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(base.clone()).await,
        ["evt_4", "evt_3", "evt_2", "evt_1"]
    );
    let user = AuditQuery {
        user_id: Some("u1".into()),
        ..base.clone()
    };
    assert_eq!(ids(user.clone()).await, ["evt_3", "evt_1"]);
    let kind = AuditQuery {
        event_type: Some("sign_in".into()),
        ..base.clone()
    };
    assert_eq!(ids(kind).await, ["evt_4", "evt_2", "evt_1"]);
    let window = AuditQuery {
        since: Some(200),
        until: Some(400),
        ..base.clone()
    };
    assert_eq!(ids(window).await, ["evt_3", "evt_2"]);
    let page = AuditQuery {
        before_id: Some("evt_3".into()),
        limit: 1,
        ..base.clone()
    };
    assert_eq!(ids(page).await, ["evt_2"]);
    let all = AuditQuery {
        event_type: Some("lockout".into()),
        since: Some(1),
        until: Some(1000),
        before_id: Some("evt_9".into()),
        ..user
    };
    assert_eq!(ids(all).await, ["evt_3"]);
    let got = s.audit_events(&base).await.unwrap();
    assert_eq!(got[0], event("evt_4", 400, None, "sign_in"));
    assert_eq!(s.purge_audit(250).await.unwrap(), 2);
    assert_eq!(ids(base).await, ["evt_4", "evt_3"]);
}

#[tokio::test]
async fn store_contract_sqlite() {
    let (s, _dir) = sqlite().await;
    contract(s).await;
}

#[tokio::test]
async fn store_contract_postgres() {
    contract(postgres().await).await;
}

#[tokio::test]
async fn postgres_errors_do_not_leak_the_password() {
    let err = SqlStore::open("postgres://keygate:s3cr3t-pw@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cr3t-pw"), "{err}");
}

#[tokio::test]
async fn a_sqlite_url_for_a_new_file_creates_it_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/keygate/auth.db");
    let store = SqlStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.ping().await.unwrap();
    assert!(path.exists());
    // A directory that cannot be made: the error names the path and the reason.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let bad = blocker.join("auth.db");
    let err = SqlStore::open(&format!("sqlite://{}", bad.display()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains("cannot create") && err.contains("os error"),
        "{err}"
    );
}

/// Connections are kept between uses instead of going back to sqlx's pool (which pings each
/// one handed back): a transaction that fails in its last statement, more operations at once
/// than there are connections, and operations cancelled at every point leave nothing behind
/// that a later use of a connection would inherit. `other` reads through connections of its
/// own, so a write left uncommitted on one of `s`'s connections would not be seen there.
async fn connections_contract(url: &str) {
    let s = SqlStore::open(url).await.unwrap();
    let other = SqlStore::open(url).await.unwrap();
    s.create_user(&new_user("usr_c", "default", "conn", None, None))
        .await
        .unwrap();
    let session = |id: &str| Session {
        id: id.into(),
        tenant_id: "default".into(),
        user_id: "usr_c".into(),
        amr: vec!["pwd".into()],
        created_at: 1000,
        expires_at: 5000,
        revoked_at: None,
        actor: None,
    };
    let audit = |id: &str| AuditRecord {
        id: id.into(),
        occurred_at: 1000,
        tenant_id: "default".into(),
        event_type: "sign_in".into(),
        outcome: "success".into(),
        method: Some("password".into()),
        user_id: Some("usr_c".into()),
        actor_id: None,
        client_ip: None,
        user_agent: None,
        reason: None,
        details: None,
    };
    let sign_in = |s: SqlStore, name: String| async move {
        s.create_session_with_profile(
            &session(&format!("ses_{name}")),
            &refresh(&format!("h_{name}"), 1000),
            Some(r#"{"v":1}"#),
            &[audit(&format!("evt_{name}"))],
        )
        .await
    };
    // Whole or not at all, as `other` sees it: session, refresh token and audit entry.
    let seen = |name: String| {
        let other = other.clone();
        async move {
            let session = other.session(&format!("ses_{name}")).await.unwrap();
            let token = other.refresh_token(&format!("h_{name}")).await.unwrap();
            let q = AuditQuery {
                tenant_id: "default".into(),
                user_id: Some("usr_c".into()),
                event_type: None,
                since: None,
                until: None,
                before_id: None,
                limit: 1000,
            };
            let entry = other
                .audit_events(&q)
                .await
                .unwrap()
                .iter()
                .any(|e| e.id == format!("evt_{name}"));
            assert_eq!(
                session.is_some(),
                token.is_some(),
                "{name}: session and token"
            );
            assert_eq!(session.is_some(), entry, "{name}: session and audit entry");
            session.is_some()
        }
    };

    // The last statement fails (the audit id is taken): nothing of the sign-in stays.
    s.insert_audit(&audit("evt_taken")).await.unwrap();
    let err = s
        .create_session_with_profile(
            &session("ses_fail"),
            &refresh("h_fail", 1000),
            Some(r#"{"v":1}"#),
            &[audit("evt_first"), audit("evt_taken")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(other.session("ses_fail").await.unwrap().is_none());
    assert!(other.refresh_token("h_fail").await.unwrap().is_none());
    assert!(!seen("first".into()).await);

    // Many more operations at once than connections: all done, each write seen at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        tasks.spawn(sign_in(s.clone(), format!("p{i}")));
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    for i in 0..48 {
        assert!(seen(format!("p{i}")).await, "p{i}");
    }

    // Cancelled after 0 to 9 polls, 0 to 0.4 ms apart: every sign-in is whole or absent, and
    // the connections go on working (a transaction left open would hide the writes after it
    // from `other`, and on SQLite would block them).
    let mut finished = 0;
    for i in 0..50u32 {
        let op = sign_in(s.clone(), format!("x{i}"));
        let pause = std::time::Duration::from_micros(u64::from(i % 5) * 100);
        if poll_then_drop(op, i / 5, pause)
            .await
            .is_some_and(|r| r.is_ok())
        {
            finished += 1;
        }
        sign_in(s.clone(), format!("after{i}")).await.unwrap();
        assert!(seen(format!("after{i}")).await, "after{i}");
    }
    let mut present = 0;
    for i in 0..50 {
        let there = seen(format!("x{i}")).await;
        // Never polled, never begun (one poll can be enough for all, when the database
        // answers each round trip before the poll looks for the answer).
        assert!(!(there && i < 5), "x{i} was never polled");
        present += u32::from(there);
    }
    assert!(
        present >= finished,
        "{present} present, {finished} finished"
    );

    // A rotation cancelled midway leaves no row locked: the same token rotates (or is found
    // rotated) through `other` at once, with nothing else using `s`'s connections meanwhile.
    for i in 0..30u32 {
        let name = format!("r{i}");
        // A connection left inside a transaction by the cancellation before would run this
        // sign-in inside it, never committed, and hold its locks: a later one would wait
        // forever.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sign_in(s.clone(), name.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: a sign-in waited for a transaction left open"))
        .unwrap();
        assert!(
            seen(name.clone()).await,
            "{name}: a sign-in was not committed"
        );
        let rotate = |s: SqlStore, next: &str| {
            let (session, old, next) =
                (format!("ses_{name}"), format!("h_{name}"), next.to_owned());
            async move {
                s.rotate_refresh(&session, &old, 2000, &refresh(&next, 2000))
                    .await
            }
        };
        let pause = std::time::Duration::from_micros(u64::from(i % 10) * 60);
        let _ = poll_then_drop(rotate(s.clone(), &format!("{name}_s")), 1 + i / 10, pause).await;
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            rotate(other.clone(), &format!("{name}_other")),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: a cancelled rotation left its row locked"))
        .unwrap();
    }
    // A rotation cancelled after its `BEGIN` went out but before the answer (which sqlx does
    // not count as a transaction) closed its connection: none is left inside a transaction.
    if url.starts_with("postgres") {
        let mut open = -1;
        for _ in 0..50 {
            open = idle_in_transaction(url).await;
            if open == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(open, 0, "connections left inside a transaction");
    }

    // Closing while sign-ins are under way: they finish or fail, none keeps its connection
    // past the close (sqlx's pool close waits for every connection to come back).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        tasks.spawn(sign_in(s.clone(), format!("c{i}")));
    }
    tokio::task::yield_now().await;
    tokio::time::timeout(std::time::Duration::from_secs(10), s.close())
        .await
        .expect("the close waited for a kept connection");
    while tasks.join_next().await.is_some() {}
    assert!(
        s.tenant("default").await.is_err(),
        "a closed store refuses work"
    );
}

/// The connections to the database at `url` that sit inside a transaction, doing nothing.
async fn idle_in_transaction(url: &str) -> i64 {
    use sqlx::Connection as _;
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

/// Polls `op` `polls` times, `pause` apart (the database works meanwhile), and drops it
/// unless it finished; its result if it did.
async fn poll_then_drop<F: std::future::Future>(
    op: F,
    polls: u32,
    pause: std::time::Duration,
) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut op = std::pin::pin!(op);
    for _ in 0..polls {
        if let Poll::Ready(r) = op.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return Some(r);
        }
        std::thread::sleep(pause);
        // Lets the runtime's I/O driver see Postgres's answer.
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test]
async fn kept_connections_settle_what_failures_and_cancellations_left_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
    connections_contract(&url).await;
}

#[tokio::test]
async fn kept_connections_settle_what_failures_and_cancellations_left_postgres() {
    connections_contract(&keygate_tests::fresh_postgres_database().await).await;
}

/// Kept connections the server ended (a restart or failover does that) are found out by
/// the ping before their next use after an idle second, and replaced: no operation fails.
#[tokio::test]
async fn kept_connections_ended_by_the_server_are_replaced() {
    use sqlx::Connection as _;
    let url = keygate_tests::fresh_postgres_database().await;
    let s = SqlStore::open(&url).await.unwrap();
    let in_parallel = |s: &SqlStore| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let s = s.clone();
            tasks.spawn(async move { s.tenant("default").await });
        }
        tasks.join_all()
    };
    for r in in_parallel(&s).await {
        assert!(r.unwrap().is_some());
    }
    let mut admin = sqlx::AnyConnection::connect(&url).await.unwrap();
    let ended = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let ended: i64 = sqlx::Row::get(&ended, "n");
    assert!(ended >= 2, "{ended} connections ended");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    for r in in_parallel(&s).await {
        assert!(r.unwrap().is_some());
    }
}
