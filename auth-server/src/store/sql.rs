//! The SQL implementation of durable storage over sqlx's `Any` pool: connection set-up per
//! backend (SQLite pragmas, Postgres pool), migrations, and every statement.

use super::conns::{Conn, Connections, PING_AFTER_IDLE};
use super::{
    AuditQuery, AuditRecord, IdentityKind, LoginRecord, NewRefresh, NewUser, RefreshRecord,
    Session, StoreError, Tenant, TotpFactor, User,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::sync::Arc;
use std::time::Duration;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file (embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Durable storage on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    conns: Arc<Connections>,
    backend: Backend,
}

fn db(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        let text = format!("{} {}", d.constraint().unwrap_or_default(), d.message());
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                for field in ["username", "email", "phone"] {
                    if text.contains(field) {
                        return StoreError::Conflict(field);
                    }
                }
                return StoreError::Conflict("id");
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return StoreError::NotFound("referenced row");
            }
            _ => {}
        }
    }
    StoreError::Database(e.to_string())
}

const USER_COLUMNS: &str = "id, tenant_id, username, email, phone, password_hash, status, roles, \
     must_change_password, password_changed_at, created_at";

/// Stores a user's risk profile ($1 user, $2 profile JSON, $3 time), replacing the old one.
const UPSERT_RISK_PROFILE: &str = "INSERT INTO risk_profiles (user_id, profile, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (user_id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at";

const SESSION_COLUMNS: &str =
    "s.id, s.tenant_id, s.user_id, s.amr, s.created_at, s.expires_at, s.revoked_at, s.actor";

fn split_list(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn user_from(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        password_hash: row.try_get("password_hash")?,
        status: row.try_get("status")?,
        roles: split_list(&row.try_get::<String, _>("roles")?),
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
        password_changed_at: row.try_get("password_changed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn session_from(row: &AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        amr: split_list(&row.try_get::<String, _>("amr")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        actor: row.try_get("actor")?,
    })
}

/// The file a `sqlite:` URL names.
fn sqlite_path(url: &str) -> std::path::PathBuf {
    let rest = url.trim_start_matches("sqlite:");
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    std::path::PathBuf::from(rest.split('?').next().unwrap_or_default())
}

/// A `sqlite:` URL that creates its file when missing (`mode=rwc` unless the URL names a
/// mode of its own), with the file's directory created first; a directory that cannot be
/// made is an error naming it and why.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let path = sqlite_path(url);
    if path.as_os_str().is_empty() || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(url.to_owned());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Database(format!(
                "cannot create {} for the SQLite database {}: {e}",
                dir.display(),
                path.display()
            ))
        })?;
    }
    Ok(if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// A statement with its arguments bound.
type Statement<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl SqlStore {
    /// A connection for one operation's statements; `keep` it when they are done.
    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        self.conns.get().await.map_err(db)
    }

    /// Runs one statement; the rows it affected.
    async fn affected<'q>(
        &self,
        sql: &'q str,
        bind: impl FnOnce(Statement<'q>) -> Statement<'q>,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let done = bind(sqlx::query(sql)).execute(&mut *c).await.map_err(db)?;
        c.keep();
        Ok(done.rows_affected())
    }

    /// Runs one query; its first row, if any.
    async fn optional(&self, query: Statement<'_>) -> Result<Option<AnyRow>, StoreError> {
        let mut c = self.conn().await?;
        let row = query.fetch_optional(&mut *c).await.map_err(db)?;
        c.keep();
        Ok(row)
    }

    /// Runs one query; its only row.
    async fn one(&self, query: Statement<'_>) -> Result<AnyRow, StoreError> {
        let mut c = self.conn().await?;
        let row = query.fetch_one(&mut *c).await.map_err(db)?;
        c.keep();
        Ok(row)
    }

    /// Runs one query; all its rows.
    async fn all(&self, query: Statement<'_>) -> Result<Vec<AnyRow>, StoreError> {
        let mut c = self.conn().await?;
        let rows = query.fetch_all(&mut *c).await.map_err(db)?;
        c.keep();
        Ok(rows)
    }

    /// Connects (creating the SQLite file when the URL allows it) without migrating.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Database(
                "database URL must start with sqlite:// or postgres://".into(),
            ));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let url = url.as_str();
        let max: u32 = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let acquire_timeout = Duration::from_secs(5);
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            // A connection in steady use is not pinged before each statement (a round trip
            // per statement: a third of /auth/me's database CPU); one that sat idle is, so
            // that a database restart during a quiet spell costs no request.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; \
                             PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| match backend {
                Backend::Sqlite => StoreError::Database(format!(
                    "cannot open the SQLite database {}: {e}",
                    sqlite_path(url).display()
                )),
                Backend::Postgres => StoreError::Database(redact(&e.to_string(), url)),
            })?;
        let conns = Connections::new(pool.clone(), max as usize, acquire_timeout);
        Ok(Self {
            pool,
            conns,
            backend,
        })
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        let mut c = self.conn().await?;
        migrator
            .run(&mut *c)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        c.keep();
        Ok(())
    }

    /// `db.system.name` of the OpenTelemetry conventions.
    pub fn system_name(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => "postgresql",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round trip to the database (readiness).
    #[tracing::instrument(name = "store.ping", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.affected("SELECT 1", |q| q).await.map(|_| ())
    }

    /// Closes the pool (shutdown).
    pub async fn close(&self) {
        self.conns.close();
        self.pool.close().await;
    }

    /// A tenant by canonical id.
    #[tracing::instrument(name = "store.tenant", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let row = self
            .optional(
                sqlx::query("SELECT id, name, display_name FROM tenants WHERE id = $1").bind(id),
            )
            .await?;
        row.map(|r| {
            Ok(Tenant {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                display_name: r.try_get("display_name")?,
            })
        })
        .transpose()
        .map_err(db)
    }

    /// Creates a tenant.
    #[tracing::instrument(name = "store.create_tenant", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn create_tenant(&self, t: &Tenant, now: i64) -> Result<(), StoreError> {
        self.affected(
            "INSERT INTO tenants (id, name, display_name, created_at) VALUES ($1, $2, $3, $4)",
            |q| q.bind(&t.id).bind(&t.name).bind(&t.display_name).bind(now),
        )
        .await
        .map(|_| ())
    }

    /// Creates a user; `Conflict(field)` when the username, email or phone is taken in the
    /// tenant, `NotFound` when the tenant does not exist.
    pub async fn create_user(&self, u: &NewUser) -> Result<User, StoreError> {
        self.create_user_linked(u, None).await
    }

    /// Creates a user and, in the same transaction, links it to an external account
    /// `(issuer, subject)`; a link taken meanwhile is a `Conflict("link")`.
    #[tracing::instrument(name = "store.create_user_linked", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn create_user_linked(
        &self,
        u: &NewUser,
        link: Option<(&str, &str)>,
    ) -> Result<User, StoreError> {
        if self.tenant(&u.tenant_id).await?.is_none() {
            return Err(StoreError::NotFound("tenant"));
        }
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, tenant_id, username, email, phone, password_hash, status, roles, \
             must_change_password, password_changed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&u.id)
        .bind(&u.tenant_id)
        .bind(&u.username)
        .bind(&u.email)
        .bind(&u.phone)
        .bind(&u.password_hash)
        .bind(super::status::ACTIVE)
        .bind(u.roles.join(" "))
        .bind(i64::from(u.must_change_password))
        .bind(u.password_hash.as_ref().map(|_| u.created_at))
        .bind(u.created_at)
        .bind(u.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db);
        let inserted = match (inserted, link) {
            (Ok(_), Some((issuer, subject))) => {
                insert_link(&mut tx, &u.tenant_id, issuer, subject, &u.id, u.created_at).await
            }
            (r, _) => r.map(|_| ()),
        };
        if matches!(inserted, Err(StoreError::Conflict("link"))) {
            return Err(StoreError::Conflict("link"));
        }
        if let Err(StoreError::Conflict(reported)) = inserted {
            drop(tx);
            drop(c);
            // Backends report whichever index they checked first; name the first taken field
            // in a fixed order so that answers do not depend on the backend.
            for (kind, value, field) in [
                (IdentityKind::Username, Some(&u.username), "username"),
                (IdentityKind::Email, u.email.as_ref(), "email"),
                (IdentityKind::Phone, u.phone.as_ref(), "phone"),
            ] {
                if let Some(v) = value
                    && self
                        .user_by_identity(&u.tenant_id, kind, v)
                        .await?
                        .is_some()
                {
                    return Err(StoreError::Conflict(field));
                }
            }
            return Err(StoreError::Conflict(reported));
        }
        inserted?;
        tx.commit().await.map_err(db)?;
        c.keep();
        self.user(&u.id).await?.ok_or(StoreError::NotFound("user"))
    }

    /// The user linked to an external account in a tenant.
    #[tracing::instrument(name = "store.federated_user", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn federated_user(
        &self,
        tenant_id: &str,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<User>, StoreError> {
        self.user_where(
            "id = (SELECT f.user_id FROM federated_identities f \
             WHERE f.tenant_id = $1 AND f.issuer = $2 AND f.subject = $3)",
            &[tenant_id, issuer, subject],
        )
        .await
    }

    /// The user matching `condition` (with `$1`... bound to `binds`), if any.
    async fn user_where(
        &self,
        condition: &str,
        binds: &[&str],
    ) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(*b);
        }
        let row = self.optional(query).await?;
        row.as_ref().map(user_from).transpose().map_err(db)
    }

    /// Whether `user_id` has a link to an account of `issuer` in the tenant.
    #[tracing::instrument(name = "store.has_federated_link", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn has_federated_link(
        &self,
        tenant_id: &str,
        issuer: &str,
        user_id: &str,
    ) -> Result<bool, StoreError> {
        let row = self
            .optional(
                sqlx::query(
                    "SELECT 1 AS one FROM federated_identities \
             WHERE tenant_id = $1 AND issuer = $2 AND user_id = $3",
                )
                .bind(tenant_id)
                .bind(issuer)
                .bind(user_id),
            )
            .await?;
        Ok(row.is_some())
    }

    /// Links an external account to an existing user; `Conflict("link")` when it is linked
    /// already.
    #[tracing::instrument(name = "store.link_federated", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn link_federated(
        &self,
        tenant_id: &str,
        issuer: &str,
        subject: &str,
        user_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        insert_link(&mut tx, tenant_id, issuer, subject, user_id, now).await?;
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(())
    }

    /// A user by id.
    #[tracing::instrument(name = "store.user", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.user_where("id = $1", &[id]).await
    }

    /// The user of a session that is not revoked (a bearer token's account, checked against
    /// the stored revocation in the same round trip).
    #[tracing::instrument(name = "store.user_in_session", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn user_in_session(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Option<User>, StoreError> {
        self.user_where(
            "id = $1 AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = $2 \
             AND s.user_id = users.id AND s.revoked_at IS NULL)",
            &[user_id, session_id],
        )
        .await
    }

    /// A user by normalised identity within a tenant.
    #[tracing::instrument(name = "store.user_by_identity", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn user_by_identity(
        &self,
        tenant_id: &str,
        kind: IdentityKind,
        value: &str,
    ) -> Result<Option<User>, StoreError> {
        let column = identity_column(kind);
        self.user_where(
            &format!("tenant_id = $1 AND {column} = $2"),
            &[tenant_id, value],
        )
        .await
    }

    /// Everything a password sign-in needs about a user, in one round trip: the user, whether
    /// a TOTP factor is active, and the stored risk profile.
    #[tracing::instrument(name = "store.login_lookup", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn login_lookup(
        &self,
        tenant_id: &str,
        kind: IdentityKind,
        value: &str,
    ) -> Result<Option<LoginRecord>, StoreError> {
        let column = identity_column(kind);
        let sql = format!(
            "SELECT {USER_COLUMNS}, \
             (SELECT t.confirmed_at FROM mfa_totp t WHERE t.user_id = users.id) AS totp_confirmed_at, \
             (SELECT r.profile FROM risk_profiles r WHERE r.user_id = users.id) AS risk_profile \
             FROM users WHERE tenant_id = $1 AND {column} = $2"
        );
        let row = self
            .optional(sqlx::query(&sql).bind(tenant_id).bind(value))
            .await?;
        row.map(|r| {
            Ok(LoginRecord {
                user: user_from(&r)?,
                totp_active: r.try_get::<Option<i64>, _>("totp_confirmed_at")?.is_some(),
                risk_profile: r.try_get("risk_profile")?,
            })
        })
        .transpose()
        .map_err(db)
    }

    /// Replaces a user's password hash (rehash on parameter change, password change).
    #[tracing::instrument(name = "store.set_password_hash", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn set_password_hash(
        &self,
        user_id: &str,
        phc: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.affected(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3",
            |q| q.bind(phc).bind(now).bind(user_id),
        )
        .await
        .map(|_| ())
    }

    /// Replaces a password: the old hash goes into the history (keeping the newest `keep`),
    /// the change time is set and any demand to change is cleared, atomically.
    #[tracing::instrument(name = "store.change_password", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn change_password(
        &self,
        user_id: &str,
        old_hash: Option<&str>,
        new_hash: &str,
        now: i64,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        if let Some(old) = old_hash {
            sqlx::query("INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)")
                .bind(user_id)
                .bind(old)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2, must_change_password = 0, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(new_hash)
        .bind(now)
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let rows =
            sqlx::query("SELECT seq FROM password_history WHERE user_id = $1 ORDER BY seq DESC")
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
        if let Some(row) = rows.get(keep) {
            let cutoff: i64 = row.try_get("seq").map_err(db)?;
            sqlx::query("DELETE FROM password_history WHERE user_id = $1 AND seq <= $2")
                .bind(user_id)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(())
    }

    /// The newest `limit` previous password hashes of a user.
    #[tracing::instrument(name = "store.password_history", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn password_history(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self.all(sqlx::query(
            "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))).await?;
        rows.iter()
            .map(|r| r.try_get("password_hash"))
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    /// Revokes every open session of a user except `keep`; returns the revoked ids.
    #[tracing::instrument(name = "store.revoke_other_sessions", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &str,
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        let rows = sqlx::query(
            "SELECT id FROM sessions WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()
            .map_err(db)?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE user_id = $3 AND id <> $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(user_id)
        .bind(keep)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(ids)
    }

    /// The user's TOTP factor, if any.
    #[tracing::instrument(name = "store.totp", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn totp(&self, user_id: &str) -> Result<Option<TotpFactor>, StoreError> {
        let row = self.optional(sqlx::query(
            "SELECT secret_sealed, confirmed_at, last_used_step FROM mfa_totp WHERE user_id = $1",
        )
        .bind(user_id)).await?;
        row.map(|r| {
            Ok(TotpFactor {
                secret_sealed: r.try_get("secret_sealed")?,
                confirmed: r.try_get::<Option<i64>, _>("confirmed_at")?.is_some(),
                last_used_step: r.try_get("last_used_step")?,
            })
        })
        .transpose()
        .map_err(db)
    }

    /// Stores a new, unconfirmed TOTP secret; `false` if an active factor exists.
    #[tracing::instrument(name = "store.put_unconfirmed_totp", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn put_unconfirmed_totp(
        &self,
        user_id: &str,
        sealed: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.affected(
            "INSERT INTO mfa_totp (user_id, secret_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET secret_sealed = excluded.secret_sealed, \
             created_at = excluded.created_at, last_used_step = 0 WHERE mfa_totp.confirmed_at IS NULL",
            |q| q.bind(user_id).bind(sealed).bind(now),
        )
        .await
        .map(|n| n == 1)
    }

    /// Activates the pending TOTP factor with the step of its first code and replaces the
    /// backup codes, atomically; `false` if there was nothing to activate.
    #[tracing::instrument(name = "store.confirm_totp", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn confirm_totp(
        &self,
        user_id: &str,
        step: i64,
        now: i64,
        backup_hashes: &[String],
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE mfa_totp SET confirmed_at = $1, last_used_step = $2 \
             WHERE user_id = $3 AND confirmed_at IS NULL AND last_used_step < $4",
        )
        .bind(now)
        .bind(step)
        .bind(user_id)
        .bind(step)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if done != 1 {
            tx.rollback().await.map_err(db)?;
            c.keep();
            return Ok(false);
        }
        sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for h in backup_hashes {
            sqlx::query(
                "INSERT INTO backup_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(user_id)
            .bind(h)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(true)
    }

    /// Records that a TOTP code of `step` was used; `false` when that step (or a later one)
    /// was already used, so no code works twice.
    #[tracing::instrument(name = "store.use_totp_step", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        self.affected(
            "UPDATE mfa_totp SET last_used_step = $1 \
             WHERE user_id = $2 AND confirmed_at IS NOT NULL AND last_used_step < $3",
            |q| q.bind(step).bind(user_id).bind(step),
        )
        .await
        .map(|n| n == 1)
    }

    /// Spends a backup code; `false` if unknown or already used.
    #[tracing::instrument(name = "store.use_backup_code", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn use_backup_code(
        &self,
        user_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.affected(
            "UPDATE backup_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            |q| q.bind(now).bind(user_id).bind(code_hash),
        )
        .await
        .map(|n| n == 1)
    }

    /// The stored risk profile (JSON) of a user.
    #[tracing::instrument(name = "store.risk_profile", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn risk_profile(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .optional(
                sqlx::query("SELECT profile FROM risk_profiles WHERE user_id = $1").bind(user_id),
            )
            .await?;
        row.map(|r| r.try_get("profile")).transpose().map_err(db)
    }

    /// Stores a user's risk profile (JSON).
    #[tracing::instrument(name = "store.put_risk_profile", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn put_risk_profile(
        &self,
        user_id: &str,
        profile: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.affected(UPSERT_RISK_PROFILE, |q| {
            q.bind(user_id).bind(profile).bind(now)
        })
        .await
        .map(|_| ())
    }

    /// Opens a session with its first refresh token, atomically.
    pub async fn create_session(&self, s: &Session, first: &NewRefresh) -> Result<(), StoreError> {
        self.create_session_with_profile(s, first, None, &[]).await
    }

    /// Opens a session and, in the same transaction, stores the user's updated risk profile
    /// and the audit entries that record it.
    #[tracing::instrument(name = "store.create_session_with_profile", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn create_session_with_profile(
        &self,
        s: &Session,
        first: &NewRefresh,
        profile: Option<&str>,
        audit: &[AuditRecord],
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        if let Some(profile) = profile {
            batch.push(UPSERT_RISK_PROFILE, move |q| {
                q.bind(&s.user_id).bind(profile).bind(s.created_at)
            });
        }
        batch.push(INSERT_SESSION, move |q| {
            q.bind(&s.id)
                .bind(&s.tenant_id)
                .bind(&s.user_id)
                .bind(s.amr.join(" "))
                .bind(s.created_at)
                .bind(s.expires_at)
                .bind(&s.actor)
        });
        batch.push(INSERT_REFRESH, move |q| bind_refresh(q, &s.id, first));
        for e in audit {
            batch.push(INSERT_AUDIT, move |q| bind_audit(q, e));
        }
        let joined = batch.joined(self.backend);
        batch.execute(self, &joined).await
    }

    /// A session by id.
    #[tracing::instrument(name = "store.session", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1");
        let row = self.optional(sqlx::query(&sql).bind(id)).await?;
        row.as_ref().map(session_from).transpose().map_err(db)
    }

    /// A refresh token by hash, with its session.
    #[tracing::instrument(name = "store.refresh_token", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let sql = format!(
            "SELECT rt.token_hash, rt.expires_at AS rt_expires_at, rt.rotated_at, {SESSION_COLUMNS} \
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE rt.token_hash = $1"
        );
        let row = self.optional(sqlx::query(&sql).bind(token_hash)).await?;
        row.map(|r| {
            Ok(RefreshRecord {
                token_hash: r.try_get("token_hash")?,
                expires_at: r.try_get("rt_expires_at")?,
                rotated_at: r.try_get("rotated_at")?,
                session: session_from(&r)?,
            })
        })
        .transpose()
        .map_err(db)
    }

    /// Marks `old_hash` rotated at `now` and stores its successor, atomically; `false` when
    /// the token had already been rotated (by a concurrent request or a replay).
    #[tracing::instrument(name = "store.rotate_refresh", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn rotate_refresh(
        &self,
        session_id: &str,
        old_hash: &str,
        now: i64,
        next: &NewRefresh,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = $1 WHERE token_hash = $2 AND session_id = $3 \
             AND rotated_at IS NULL",
        )
        .bind(now)
        .bind(old_hash)
        .bind(session_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if done != 1 {
            tx.rollback().await.map_err(db)?;
            c.keep();
            return Ok(false);
        }
        insert_refresh(&mut tx, session_id, next).await?;
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(true)
    }

    /// Adds a refresh token to an existing session (a replay inside the grace window).
    #[tracing::instrument(name = "store.add_refresh", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn add_refresh(&self, session_id: &str, next: &NewRefresh) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let mut tx = c.begin().await.map_err(db)?;
        insert_refresh(&mut tx, session_id, next).await?;
        tx.commit().await.map_err(db)?;
        c.keep();
        Ok(())
    }

    /// The latest expiry of an access token issued in a session (`None` for sessions older
    /// than that record).
    #[tracing::instrument(name = "store.session_access_expiry", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn session_access_expiry(&self, id: &str) -> Result<Option<i64>, StoreError> {
        let row = self.one(sqlx::query(
            "SELECT MAX(access_expires_at) AS latest FROM refresh_tokens WHERE session_id = $1",
        )
        .bind(id)).await?;
        row.try_get::<Option<i64>, _>("latest").map_err(db)
    }

    /// Revokes a session and so every refresh token of it; `false` if it was already revoked.
    #[tracing::instrument(name = "store.revoke_session", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn revoke_session(
        &self,
        id: &str,
        now: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.affected(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE id = $3 AND revoked_at IS NULL",
            |q| q.bind(now).bind(reason).bind(id),
        )
        .await
        .map(|n| n == 1)
    }

    /// Appends an entry to the audit trail.
    #[tracing::instrument(name = "store.insert_audit", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn insert_audit(&self, e: &AuditRecord) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        audit_insert(e).execute(&mut *c).await.map_err(db)?;
        c.keep();
        Ok(())
    }

    /// Audit entries matching `q`, newest first.
    #[tracing::instrument(name = "store.audit_events", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Optional filters become `$n IS NULL OR column ...` so one statement serves all.
        let sql = "SELECT id, occurred_at, tenant_id, type, outcome, method, user_id, actor_id, \
             client_ip, user_agent, reason, details FROM audit_events \
             WHERE tenant_id = $1 \
             AND ($2 IS NULL OR user_id = $2) \
             AND ($3 IS NULL OR type = $3) \
             AND ($4 IS NULL OR occurred_at >= $4) \
             AND ($5 IS NULL OR occurred_at < $5) \
             AND ($6 IS NULL OR id < $6) \
             ORDER BY id DESC LIMIT $7";
        let rows = self
            .all(
                sqlx::query(sql)
                    .bind(&q.tenant_id)
                    .bind(&q.user_id)
                    .bind(&q.event_type)
                    .bind(q.since)
                    .bind(q.until)
                    .bind(&q.before_id)
                    .bind(i64::from(q.limit)),
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    occurred_at: row.try_get("occurred_at")?,
                    tenant_id: row.try_get("tenant_id")?,
                    event_type: row.try_get("type")?,
                    outcome: row.try_get("outcome")?,
                    method: row.try_get("method")?,
                    user_id: row.try_get("user_id")?,
                    actor_id: row.try_get("actor_id")?,
                    client_ip: row.try_get("client_ip")?,
                    user_agent: row.try_get("user_agent")?,
                    reason: row.try_get("reason")?,
                    details: row.try_get("details")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    /// Removes audit entries older than `before` (retention), in batches of 5000 so that a
    /// large backlog never holds one long transaction.
    #[tracing::instrument(name = "store.purge_audit", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn purge_audit(&self, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .affected(
                    "DELETE FROM audit_events WHERE id IN \
                     (SELECT id FROM audit_events WHERE occurred_at < $1 LIMIT 5000)",
                    |q| q.bind(before),
                )
                .await?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }

    /// Deletes refresh tokens and sessions that ended before `before` (housekeeping).
    #[tracing::instrument(name = "store.purge_expired", skip_all, fields(db.system.name = self.system_name()))]
    pub async fn purge_expired(&self, before: i64) -> Result<u64, StoreError> {
        let tokens = self
            .affected("DELETE FROM refresh_tokens WHERE expires_at < $1", |q| {
                q.bind(before)
            })
            .await?;
        self.affected(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE expires_at < $1)",
            |q| q.bind(before),
        )
        .await?;
        let sessions = self
            .affected("DELETE FROM sessions WHERE expires_at < $1", |q| {
                q.bind(before)
            })
            .await?;
        Ok(tokens + sessions)
    }
}

/// Inserts a federated link; a link that exists is `Conflict("link")`.
async fn insert_link(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant_id: &str,
    issuer: &str,
    subject: &str,
    user_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO federated_identities (tenant_id, issuer, subject, user_id, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant_id)
    .bind(issuer)
    .bind(subject)
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map(|_| ())
    .map_err(|e| match db(e) {
        StoreError::Conflict(_) => StoreError::Conflict("link"),
        other => other,
    })
}

/// Appends an audit entry (arguments: [`bind_audit`]).
const INSERT_AUDIT: &str = "INSERT INTO audit_events (id, occurred_at, tenant_id, type, outcome, method, user_id, \
     actor_id, client_ip, user_agent, reason, details) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Opens a session ($1 id, $2 tenant, $3 user, $4 amr, $5 created, $6 expires, $7 actor).
const INSERT_SESSION: &str = "INSERT INTO sessions (id, tenant_id, user_id, amr, created_at, expires_at, actor) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Stores a refresh token (arguments: [`bind_refresh`]).
const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens \
     (token_hash, session_id, created_at, expires_at, access_expires_at) \
     VALUES ($1, $2, $3, $4, $5)";

/// The statement that appends `e` to the audit trail (on the pool or in a transaction).
fn audit_insert(e: &AuditRecord) -> Statement<'_> {
    bind_audit(sqlx::query(INSERT_AUDIT), e)
}

/// Binds an audit entry to [`INSERT_AUDIT`]'s parameters.
fn bind_audit<'q>(q: Statement<'q>, e: &'q AuditRecord) -> Statement<'q> {
    q.bind(&e.id)
        .bind(e.occurred_at)
        .bind(&e.tenant_id)
        .bind(&e.event_type)
        .bind(&e.outcome)
        .bind(&e.method)
        .bind(&e.user_id)
        .bind(&e.actor_id)
        .bind(&e.client_ip)
        .bind(&e.user_agent)
        .bind(&e.reason)
        .bind(&e.details)
}

async fn insert_refresh(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: &str,
    r: &NewRefresh,
) -> Result<(), StoreError> {
    bind_refresh(sqlx::query(INSERT_REFRESH), session_id, r)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(db)
}

/// Binds a refresh token of `session_id` to [`INSERT_REFRESH`]'s parameters.
fn bind_refresh<'q>(q: Statement<'q>, session_id: &'q str, r: &'q NewRefresh) -> Statement<'q> {
    q.bind(&r.token_hash)
        .bind(session_id)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.access_expires_at)
}

/// Binds one statement's arguments.
type Binder<'q> = Box<dyn FnOnce(Statement<'q>) -> Statement<'q> + Send + 'q>;

/// The statements of one transaction with their arguments, sent in one round trip. On SQLite
/// the transaction's whole text, `BEGIN IMMEDIATE` and `COMMIT` included, goes to the
/// connection's thread as one text; on Postgres, whose extended protocol takes one statement
/// per query, the statements become one: all but the last in a `WITH` of data-modifying
/// statements, which Postgres runs atomically as a single statement (foreign keys checked at
/// its end) instead of `BEGIN`, each statement and `COMMIT` as round trips of their own. Every
/// statement's `$n` is renumbered after the previous statements' (both number them across the
/// whole text). The statements must not touch the same row twice: in one Postgres statement
/// they all see the snapshot it began with.
#[derive(Default)]
struct Batch<'q> {
    parts: Vec<(&'static str, Binder<'q>)>,
}

impl<'q> Batch<'q> {
    /// Adds `sql` with the arguments `bind` gives it (numbered from `$1` in `sql`).
    fn push(
        &mut self,
        sql: &'static str,
        bind: impl FnOnce(Statement<'q>) -> Statement<'q> + Send + 'q,
    ) {
        self.parts.push((sql, Box::new(bind)));
    }

    /// The one text to send on `backend`.
    fn joined(&self, backend: Backend) -> String {
        let statements = renumbered(self.parts.iter().map(|(sql, _)| *sql));
        match backend {
            Backend::Sqlite => format!("BEGIN IMMEDIATE; {}; COMMIT", statements.join("; ")),
            Backend::Postgres => {
                let Some((last, first)) = statements.split_last() else {
                    return String::new();
                };
                if first.is_empty() {
                    return last.clone();
                }
                let with = first
                    .iter()
                    .enumerate()
                    .map(|(i, sql)| format!("w{} AS ({sql})", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("WITH {with} {last}")
            }
        }
    }

    /// Runs `joined` (from [`Batch::joined`] for `store`'s backend) with the statements'
    /// arguments as one transaction, and keeps the connection.
    async fn execute(self, store: &SqlStore, joined: &'q str) -> Result<(), StoreError> {
        let bind = |q: Statement<'q>| self.parts.into_iter().fold(q, |q, (_, bind)| bind(q));
        match store.backend {
            Backend::Sqlite => {
                let q = bind(sqlx::query(joined));
                store
                    .conn()
                    .await?
                    .run_transaction_text(q)
                    .await
                    .map_err(db)
            }
            // One statement, atomic on its own.
            Backend::Postgres => store.affected(joined, bind).await.map(drop),
        }
    }
}

/// The statements, each one's `$n` raised by the number of parameters before it.
fn renumbered<'a>(statements: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut all = Vec::new();
    let mut offset = 0;
    for sql in statements {
        let mut out = String::new();
        let mut highest = 0;
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(n) = rest[..digits].parse::<usize>() {
                highest = highest.max(n);
                out.push_str(&(n + offset).to_string());
                rest = &rest[digits..];
            }
        }
        out.push_str(rest);
        offset += highest;
        all.push(out);
    }
    all
}

/// The column an identity of `kind` is stored in.
fn identity_column(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Username => "username",
        IdentityKind::Email => "email",
        IdentityKind::Phone => "phone",
    }
}

/// Removes a password from an error message that may quote the URL.
fn redact(message: &str, url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
    {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((_, password)) if !password.is_empty() => message.replace(password, "***"),
            _ => message.to_owned(),
        },
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_statements_number_their_parameters_one_after_another() {
        let joined = renumbered(
            [
                "INSERT INTO a (x, y) VALUES ($1, $2)",
                "UPDATE b SET x = $2 WHERE y = $1 AND z = '$'",
                "SELECT 1",
                "INSERT INTO c VALUES ($1, $10)",
            ]
            .into_iter(),
        )
        .join("; ");
        assert_eq!(
            joined,
            "INSERT INTO a (x, y) VALUES ($1, $2); UPDATE b SET x = $4 WHERE y = $3 AND z = '$'; \
             SELECT 1; INSERT INTO c VALUES ($5, $14)"
        );
        let batch = |parts: &[&'static str]| {
            let mut b = Batch::default();
            for sql in parts {
                b.push(sql, |q| q);
            }
            b
        };
        let two = batch(&[INSERT_SESSION, INSERT_REFRESH]);
        let joined = two.joined(Backend::Sqlite);
        assert!(
            joined.starts_with("BEGIN IMMEDIATE; INSERT INTO sessions"),
            "{joined}"
        );
        assert!(joined.contains("($1, $2, $3, $4, $5, $6, $7); INSERT INTO refresh_tokens"));
        assert!(
            joined.ends_with("VALUES ($8, $9, $10, $11, $12); COMMIT"),
            "{joined}"
        );
        let joined =
            batch(&[INSERT_SESSION, INSERT_REFRESH, INSERT_AUDIT]).joined(Backend::Postgres);
        assert!(
            joined.starts_with("WITH w1 AS (INSERT INTO sessions"),
            "{joined}"
        );
        assert!(
            joined.contains("($1, $2, $3, $4, $5, $6, $7)), w2 AS (INSERT INTO refresh_tokens"),
            "{joined}"
        );
        assert!(
            joined.contains("VALUES ($8, $9, $10, $11, $12)) INSERT INTO audit_events"),
            "{joined}"
        );
        assert!(joined.ends_with("$23, $24)"), "{joined}");
        assert_eq!(
            batch(&[INSERT_SESSION]).joined(Backend::Postgres),
            INSERT_SESSION
        );
    }
}
