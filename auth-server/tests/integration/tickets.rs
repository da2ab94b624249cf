//! One-time tickets through the router: who may issue them, single use, expiry on the injected
//! clock, `amr` and `act`, and parallel redemptions.

use crate::common::{Store, TestApp, assert_problem};
use serde_json::json;

const GEN: &str = "/api/v1/auth/generate-ticket";
const SIGNIN: &str = "/api/v1/auth/ticket/signin";
const PW: &str = "correct horse battery";

#[tokio::test]
async fn only_holders_of_tickets_create_issue_tickets() {
    let app = TestApp::new().await;
    let admin = app.add_user("root", PW, &["admin"]).await;
    let user = app.add_user("bob", PW, &[]).await;
    app.add_user("issuer", PW, &["ticket-issuer"]).await;
    let body = json!({"user_id": user, "reason": "support case 42"});
    assert_problem(&app.post(GEN, body.clone(), None).await, 401, 40100001);
    let bob = app.token("bob", PW).await;
    assert_problem(
        &app.post(GEN, body.clone(), Some(&bob)).await,
        403,
        40300001,
    );
    for who in ["root", "issuer"] {
        let t = app.token(who, PW).await;
        let r = app.post(GEN, body.clone(), Some(&t)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["data"]["expires_in"], 300);
        let ticket = r.body["data"]["ticket"].as_str().unwrap();
        // "tkt_" + base64url of 32 bytes.
        assert!(
            ticket.starts_with("tkt_") && ticket.len() == 4 + 43,
            "{ticket}"
        );
    }
    // No way up: a ticket-issuer cannot become an administrator (an administrator can sign in
    // as anyone of the tenant).
    let issuer = app.token("issuer", PW).await;
    let r = app
        .post(GEN, json!({"user_id": admin}), Some(&issuer))
        .await;
    assert_problem(&r, 403, 40300001);
    let root = app.token("root", PW).await;
    let other_issuer = app.add_user("issuer2", PW, &["ticket-issuer"]).await;
    let r = app
        .post(GEN, json!({"user_id": other_issuer}), Some(&root))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .post(GEN, json!({"user_id": "usr_nobody"}), Some(&root))
        .await;
    assert_problem(&r, 404, 40400001);
    let r = app
        .post(
            GEN,
            json!({"user_id": user, "tenant_id": "other"}),
            Some(&root),
        )
        .await;
    assert_problem(&r, 403, 40300001);
    let r = app
        .post(
            GEN,
            json!({"user_id": user, "reason": "x".repeat(201)}),
            Some(&root),
        )
        .await;
    assert_problem(&r, 400, 40000001);
}

#[tokio::test]
async fn a_ticket_signs_in_once_with_amr_and_act() {
    let app = TestApp::new().await;
    let admin = app.add_user("root", PW, &["admin"]).await;
    let user = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;
    let r = app
        .post(
            GEN,
            json!({"user_id": user, "reason": "support case 42"}),
            Some(&root),
        )
        .await;
    let ticket = r.body["data"]["ticket"].as_str().unwrap().to_owned();
    let r = app.post(SIGNIN, json!({"ticket": ticket}), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user_id"], user);
    let claims = app
        .auth
        .authenticate(r.body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims.sub, user);
    assert_eq!(claims.amr, ["ticket"]);
    let act = claims.act.unwrap();
    assert_eq!(act.sub, admin);
    assert_eq!(act.reason.as_deref(), Some("support case 42"));
    // Spent.
    assert_problem(
        &app.post(SIGNIN, json!({"ticket": ticket}), None).await,
        400,
        40000501,
    );
    assert_problem(
        &app.post(SIGNIN, json!({"ticket": "tkt_forged"}), None)
            .await,
        400,
        40000501,
    );
    assert_problem(&app.post(SIGNIN, json!({}), None).await, 400, 40000001);

    // A ticket for oneself carries no act; an expired ticket does not work.
    let r = app.post(GEN, json!({"user_id": admin}), Some(&root)).await;
    let own = r.body["data"]["ticket"].as_str().unwrap().to_owned();
    let r = app.post(SIGNIN, json!({"ticket": own}), None).await;
    let claims = app
        .auth
        .authenticate(r.body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(claims.act.is_none());
    let r = app.post(GEN, json!({"user_id": user}), Some(&root)).await;
    let late = r.body["data"]["ticket"].as_str().unwrap().to_owned();
    app.clock.advance(300);
    assert_problem(
        &app.post(SIGNIN, json!({"ticket": late}), None).await,
        400,
        40000501,
    );
}

#[tokio::test]
async fn of_parallel_redemptions_exactly_one_succeeds() {
    parallel_redemptions(Store::Memory).await;
}

#[tokio::test]
async fn of_parallel_redemptions_on_redis_exactly_one_succeeds() {
    parallel_redemptions(Store::Redis).await;
}

async fn parallel_redemptions(store: Store) {
    let app = TestApp::new_on(store).await;
    app.add_user("root", PW, &["admin"]).await;
    let user = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;
    let r = app.post(GEN, json!({"user_id": user}), Some(&root)).await;
    let ticket = r.body["data"]["ticket"].as_str().unwrap().to_owned();
    let mut ok = 0;
    for status in app
        .post_in_parallel(SIGNIN, vec![json!({"ticket": ticket}); 16])
        .await
    {
        match status {
            200 => ok += 1,
            400 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
}

/// A ticket for `user` issued with `token`, redeemed: the sign-in's body.
async fn impersonate(app: &TestApp, token: &str, user: &str, reason: &str) -> serde_json::Value {
    let r = app
        .post(GEN, json!({"user_id": user, "reason": reason}), Some(token))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .post(SIGNIN, json!({"ticket": r.body["data"]["ticket"]}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn act_stays_through_refreshes_and_nests_when_an_impersonated_session_issues() {
    let app = TestApp::new().await;
    let admin = app.add_user("root", PW, &["admin"]).await;
    let support = app.add_user("sam", PW, &["ticket-issuer"]).await;
    let bob = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;
    // The administrator signs in as the support agent...
    let as_sam = impersonate(&app, &root, &support, "audit").await;
    // ...who, so impersonated, issues a ticket for bob.
    let sam_token = as_sam["access_token"].as_str().unwrap();
    let as_bob = impersonate(&app, sam_token, &bob, "case 9").await;
    let chain =
        json!({"sub": support, "reason": "case 9", "act": {"sub": admin, "reason": "audit"}});
    // Every token of the session carries the whole chain, also after refreshes.
    let mut refresh = as_bob["refresh_token"].clone();
    let mut access = as_bob["access_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let claims = app.auth.authenticate(&access).await.unwrap();
        assert_eq!(serde_json::to_value(&claims.act).unwrap(), chain);
        let me = app.get("/api/v1/auth/me", Some(&access)).await;
        assert_eq!(me.body["data"]["act"], chain, "{}", me.body);
        let r = app
            .post(
                "/api/v1/auth/refresh",
                json!({"refresh_token": refresh}),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        refresh = r.body["refresh_token"].clone();
        access = r.body["access_token"].as_str().unwrap().to_owned();
    }
    // The user's own sessions have no actor.
    let own = app.token("bob", PW).await;
    assert!(app.auth.authenticate(&own).await.unwrap().act.is_none());
    let me = app.get("/api/v1/auth/me", Some(&own)).await;
    assert!(me.body["data"].get("act").is_none(), "{}", me.body);
    // The audit trail records the chain with the impersonation.
    let events = app
        .auth
        .store
        .audit_events(&auth_server::store::AuditQuery {
            tenant_id: "default".into(),
            user_id: Some(bob.clone()),
            event_type: Some("impersonation".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let details: serde_json::Value =
        serde_json::from_str(events[0].details.as_deref().unwrap()).unwrap();
    assert_eq!(details["act"], chain);
    assert_eq!(events[0].actor_id.as_deref(), Some(support.as_str()));
}

#[tokio::test]
async fn tickets_stay_inside_their_tenant() {
    let app = TestApp::new().await;
    app.auth.create_tenant("acme", "Acme").await.unwrap();
    let outsider = app
        .auth
        .create_user(
            "acme",
            auth_server::auth::users::UserInput {
                username: "eve".into(),
                password: Some(PW.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    app.add_user("root", PW, &["admin"]).await;
    let bob = app.add_user("bob", PW, &[]).await;
    let root = app.token("root", PW).await;
    // An administrator of `default` cannot reach a user of `acme` by id, named tenant or not.
    assert_problem(
        &app.post(GEN, json!({"user_id": outsider}), Some(&root))
            .await,
        404,
        40400001,
    );
    assert_problem(
        &app.post(
            GEN,
            json!({"user_id": outsider, "tenant_id": "acme"}),
            Some(&root),
        )
        .await,
        403,
        40300001,
    );
    // A ticket signs in to its own tenant, whatever tenant the redeeming request names.
    let r = app.post(GEN, json!({"user_id": bob}), Some(&root)).await;
    let ticket = r.body["data"]["ticket"].clone();
    let req = axum::http::Request::post(SIGNIN)
        .header("content-type", "application/json")
        .header("x-tenant-id", "acme")
        .body(axum::body::Body::from(
            json!({"ticket": ticket, "tenant_id": "acme"}).to_string(),
        ))
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let claims = app
        .auth
        .authenticate(r.body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (claims.tid.as_str(), claims.sub.as_str()),
        ("default", bob.as_str())
    );
}
