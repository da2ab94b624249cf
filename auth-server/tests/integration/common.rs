//! Builds an in-process application on a temporary SQLite file with a settable clock, its
//! ephemeral state in process or on a Redis server of its own; or replicas of one deployment
//! sharing a Postgres database and a Redis server.

use auth_server::auth::clock::{Clock, ManualClock};
use auth_server::auth::keys::load_or_generate_dev_key;
use auth_server::auth::password::PasswordHasher;
use auth_server::auth::{AuthService, DevKeys, Runtime};
use auth_server::ephemeral::{Ephemeral, MemoryEphemeral, RedisEphemeral};
use auth_server::http::{AppState, router};
use auth_server::store::SqlStore;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keygate_config::{PasswordHashing, RuntimeConfig, SigningAlgorithm};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

pub const ISSUER: &str = "https://id.test";

/// Small argon2 parameters so that tests run fast; the e2e tests use the defaults.
pub fn small_hashing() -> PasswordHashing {
    PasswordHashing {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 4,
    }
}

pub struct TestApp {
    pub router: Router,
    pub auth: AuthService,
    pub clock: Arc<ManualClock>,
    dev: DevKeys,
    _dir: tempfile::TempDir,
    _redis: Option<Arc<keygate_tests::RedisProcess>>,
}

/// Where an application's data lives: its own SQLite file and `Store`, or, for a replica, a
/// Postgres database and a Redis server that other applications use too.
enum Backing {
    Own(Store),
    Shared {
        database: String,
        redis: Arc<keygate_tests::RedisProcess>,
        /// The signing, transmission and MFA data keys, the same for every replica.
        keys: Arc<tempfile::TempDir>,
    },
}

/// Where an application keeps its ephemeral state (codes, tickets, challenges, counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The in-process store.
    Memory,
    /// A real Redis server started for this application (its clock is real time, so tests on
    /// it do not advance the application's clock past Redis expiries).
    Redis,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::new_on(Store::Memory).await
    }

    /// The default application with its ephemeral state in `store`.
    pub async fn new_on(store: Store) -> Self {
        Self::on(
            store,
            RuntimeConfig {
                password_hashing: small_hashing(),
                ..Default::default()
            },
            None,
        )
        .await
    }

    pub async fn with_config(config: RuntimeConfig) -> Self {
        Self::with_delivery(config, None).await
    }

    /// An application that sends codes as `delivery` says (`None`: development mode).
    pub async fn with_delivery(
        config: RuntimeConfig,
        delivery: Option<auth_server::delivery::DeliveryConfig>,
    ) -> Self {
        Self::on(Store::Memory, config, delivery).await
    }

    /// [`TestApp::with_delivery`] with its ephemeral state in `store`.
    pub async fn on(
        store: Store,
        config: RuntimeConfig,
        delivery: Option<auth_server::delivery::DeliveryConfig>,
    ) -> Self {
        Self::build(Backing::Own(store), config, delivery).await
    }

    /// `n` applications as replicas of one deployment: one fresh Postgres database and one
    /// Redis server shared by all, each with its own clock set to the real time.
    pub async fn replicas(n: usize, config: RuntimeConfig) -> Vec<Self> {
        let database = keygate_tests::fresh_postgres_database().await;
        let redis = Arc::new(keygate_tests::RedisProcess::start());
        let keys = Arc::new(tempfile::tempdir().unwrap());
        let mut apps = Vec::new();
        for _ in 0..n {
            let backing = Backing::Shared {
                database: database.clone(),
                redis: redis.clone(),
                keys: keys.clone(),
            };
            let app = Self::build(backing, config.clone(), None).await;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            app.clock.advance(now - app.clock.unix());
            apps.push(app);
        }
        apps
    }

    async fn build(
        backing: Backing,
        config: RuntimeConfig,
        delivery: Option<auth_server::delivery::DeliveryConfig>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, keys) = match &backing {
            Backing::Own(_) => (
                format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
                dir.path().to_path_buf(),
            ),
            Backing::Shared { database, keys, .. } => (database.clone(), keys.path().to_path_buf()),
        };
        let store = SqlStore::open(&url).await.unwrap();
        let clock = ManualClock::at(1_800_000_000);
        let dev = DevKeys {
            signing: Some(load_or_generate_dev_key(&keys, SigningAlgorithm::ES256).unwrap()),
            transmission: Some(auth_server::auth::transmission::DevTransmissionKey::ready(
                auth_server::auth::transmission::load_or_generate_dev_key(&keys).unwrap(),
            )),
        };
        let hasher = PasswordHasher::new(&config.password_hashing, None).unwrap();
        let runtime = Runtime::build(config, &dev.clone()).unwrap();
        let redis = match backing {
            Backing::Own(Store::Memory) => None,
            Backing::Own(Store::Redis) => Some(Arc::new(keygate_tests::RedisProcess::start())),
            Backing::Shared { redis, .. } => Some(redis),
        };
        let ephemeral = match &redis {
            None => Ephemeral::Memory(MemoryEphemeral::new(clock.clone())),
            Some(redis) => Ephemeral::Redis(
                RedisEphemeral::connect(&redis.url(), clock.clone())
                    .await
                    .unwrap(),
            ),
        };
        let auth = AuthService::new(
            store,
            ephemeral,
            clock.clone(),
            hasher,
            runtime,
            ISSUER.into(),
            auth_server::auth::mfa::DataKey::load_or_generate(&keys).unwrap(),
        );
        let auth = match delivery {
            Some(d) => auth.with_delivery(auth_server::delivery::Delivery::new(&d).unwrap()),
            None => auth,
        };
        let router = router(AppState::new(auth.clone(), "/api/v1"));
        Self {
            router,
            auth,
            clock,
            dev,
            _dir: dir,
            _redis: redis,
        }
    }

    /// Sends every body to `path` at once (one task each); the statuses, in order.
    pub async fn post_in_parallel(&self, path: &str, bodies: Vec<Value>) -> Vec<u16> {
        self.replies_in_parallel(path, bodies)
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect()
    }

    /// POSTs every body at once; the replies in the bodies' order.
    pub async fn replies_in_parallel(&self, path: &str, bodies: Vec<Value>) -> Vec<Reply> {
        replies_in_parallel_over(std::slice::from_ref(self), path, bodies).await
    }

    /// The application accepting ServiceAccount tokens of `cluster`.
    pub fn with_cluster(
        mut self,
        cluster: auth_server::auth::service_accounts::ClusterVerifier,
    ) -> Self {
        self.auth = self.auth.with_cluster(cluster);
        self.router = router(AppState::new(self.auth.clone(), "/api/v1"));
        self
    }

    /// Swaps in a new runtime configuration, as a hot reload does.
    pub fn reload(&self, config: RuntimeConfig) {
        self.auth
            .replace_runtime(Runtime::build(config, &self.dev).unwrap())
            .unwrap();
    }

    pub async fn add_user(&self, username: &str, password: &str, roles: &[&str]) -> String {
        self.auth
            .create_user(
                "default",
                auth_server::auth::users::UserInput {
                    username: username.into(),
                    email: Some(format!("{username}@example.com")),
                    password: Some(password.into()),
                    roles: roles.iter().map(|r| r.to_string()).collect(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .id
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        reply_of(self.router.clone(), req).await
    }

    pub async fn post(&self, path: &str, body: Value, bearer: Option<&str>) -> Reply {
        let mut b = Request::post(path).header("content-type", "application/json");
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub async fn send_put(&self, path: &str, body: Value, bearer: &str) -> Reply {
        let req = Request::put(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {bearer}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(req).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut b = Request::get(path);
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    pub async fn login(&self, identity: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/auth/login",
            serde_json::json!({"identity": identity, "password": password}),
            None,
        )
        .await
    }
}

impl TestApp {
    /// Signs in and returns the access token (the sign-in must succeed without MFA).
    pub async fn token(&self, identity: &str, password: &str) -> String {
        let r = self.login(identity, password).await;
        r.body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {}", r.body))
            .to_owned()
    }
}

/// Asserts a problem body of `status` and business `code`; returns the body.
pub fn assert_problem(r: &Reply, status: u16, code: u64) -> &Value {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json",
        "{}",
        r.body
    );
    assert_eq!(r.body["status"], status, "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    assert_eq!(r.body["message"], r.body["detail"]);
    assert!(r.body["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(r.body["errors"].is_array());
    &r.body
}

/// POSTs every body at once, the `i`-th to `apps[i % apps.len()]` (replicas behind a
/// balancer); the replies in the bodies' order.
pub async fn replies_in_parallel_over(
    apps: &[TestApp],
    path: &str,
    bodies: Vec<Value>,
) -> Vec<Reply> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let router = apps[i % apps.len()].router.clone();
            let req = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            tokio::spawn(reply_of(router, req))
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

/// `req` answered by `router`, its body parsed as JSON (or kept as a string).
async fn reply_of(router: axum::Router, req: Request<Body>) -> Reply {
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}
