//! Database connections kept between uses: sqlx's pool pings every connection handed back to
//! it (one more round trip per use, to the database or to SQLite's connection thread), so a
//! connection whose work finished cleanly is kept here instead and handed out again as it is;
//! one that sat idle is pinged before its next use, and one left mid-statement or
//! mid-transaction (an error, a cancelled request) goes back to sqlx, which settles it; one
//! left inside a transaction that sqlx does not know of (begun by a statement's text, or by a
//! `BEGIN` whose answer never came) is closed instead, which rolls that transaction back.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection as _};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a connection may sit unused (kept here or idle in sqlx's pool) before it is
/// pinged on its next use.
pub(super) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How long a connection may sit unused here before it goes back to sqlx's pool, whose idle
/// timeout then closes it.
const RETURN_AFTER_IDLE: Duration = Duration::from_secs(60);

/// How long a connection is kept here at most before it goes back to sqlx's pool, which
/// retires it when it is past its lifetime.
const RETURN_AFTER_KEPT: Duration = Duration::from_secs(600);

/// A connection kept unused.
struct Kept {
    conn: PoolConnection<Any>,
    /// When it was last handed back.
    idle_since: Instant,
    /// When it was first taken from sqlx's pool.
    taken_at: Instant,
}

/// The connections of one store: at most `max` in use at once (the pool's size), the unused
/// ones kept newest last.
pub(super) struct Connections {
    pool: AnyPool,
    kept: Mutex<Vec<Kept>>,
    permits: Semaphore,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("kept", &self.kept_count())
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// A connection in use; [`Conn::keep`] hands it back for the next use, dropping it gives it
/// back to sqlx's pool (which pings it, rolling back what a dropped transaction left), or
/// closes it when its `BEGIN` was not answered ([`Conn::begin`]).
pub(super) struct Conn<'a> {
    /// The connection; `None` only inside [`Conn::keep`] and the close of
    /// [`CloseUnlessKept`], which consume the `Conn`.
    conn: Option<PoolConnection<Any>>,
    taken_at: Instant,
    home: &'a Connections,
    _permit: SemaphorePermit<'a>,
    /// A `BEGIN` was sent and its answer not yet read ([`Conn::begin`]).
    beginning: bool,
}

impl Connections {
    /// Connections of `pool`, at most `max` at once (`max` must be the pool's own size), a
    /// wait for one bounded by `acquire_timeout`. A background task returns connections
    /// unused for a while to sqlx's pool; it ends with the store.
    pub(super) fn new(pool: AnyPool, max: usize, acquire_timeout: Duration) -> Arc<Self> {
        let conns = Arc::new(Self {
            pool,
            kept: Mutex::new(Vec::new()),
            permits: Semaphore::new(max),
            acquire_timeout,
        });
        let weak = Arc::downgrade(&conns);
        tokio::spawn(return_unused(weak));
        conns
    }

    /// A connection: a kept one when there is one (pinged first when it sat idle), else one
    /// from sqlx's pool.
    pub(super) async fn get(&self) -> Result<Conn<'_>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let next = self.lock().pop();
            let Some(mut kept) = next else { break };
            if kept.taken_at.elapsed() >= RETURN_AFTER_KEPT {
                continue; // dropped: back to sqlx's pool
            }
            if kept.idle_since.elapsed() >= PING_AFTER_IDLE && kept.conn.ping().await.is_err() {
                // Broken (a database restart): sqlx's pool closes it when its own ping fails.
                continue;
            }
            return Ok(Conn {
                conn: Some(kept.conn),
                taken_at: kept.taken_at,
                home: self,
                _permit: permit,
                beginning: false,
            });
        }
        // Within the permits sqlx's pool has room: every connection taken from it is in use
        // (holding a permit) or kept here, and none is kept now.
        let conn = self.pool.acquire().await?;
        Ok(Conn {
            conn: Some(conn),
            taken_at: Instant::now(),
            home: self,
            _permit: permit,
            beginning: false,
        })
    }

    /// Gives every kept connection back to sqlx's pool and refuses new uses (shutdown).
    pub(super) fn close(&self) {
        // Closed before the list is cleared: a `keep` that takes the lock later sees it.
        self.permits.close();
        self.lock().clear();
    }

    /// How many connections are kept unused now (for `Debug`).
    fn kept_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives back to sqlx's pool the connections unused for [`RETURN_AFTER_IDLE`] (the
    /// oldest are first in the list).
    fn return_unused(&self) {
        let mut kept = self.lock();
        let stale = kept
            .iter()
            .take_while(|k| k.idle_since.elapsed() >= RETURN_AFTER_IDLE)
            .count();
        kept.drain(..stale);
    }
}

/// Every few seconds, gives unused connections back to sqlx's pool; ends with the store.
async fn return_unused(conns: Weak<Connections>) {
    let mut tick = tokio::time::interval(RETURN_AFTER_IDLE / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conns) = conns.upgrade() else { return };
        conns.return_unused();
    }
}

impl Conn<'_> {
    /// Hands the connection back for the next use. Call it only when the connection's work
    /// is done: every statement finished and any transaction committed or rolled back.
    pub(super) fn keep(mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut kept = self.home.lock();
        // After `close` a kept connection would hold up sqlx's pool close: it goes back.
        if !self.home.permits.is_closed() {
            kept.push(Kept {
                conn,
                idle_since: Instant::now(),
                taken_at: self.taken_at,
            });
        }
        drop(kept);
        // The permit goes only now (with `self`), the connection already kept for its next
        // user.
    }

    /// Begins a transaction, as `sqlx::Connection::begin` does, but safe to cancel. sqlx
    /// sends `BEGIN` and counts the transaction only once the database has answered:
    /// cancelled in between (a client that went away), the connection is inside a
    /// transaction that sqlx neither knows of nor rolls back, and its next user's writes
    /// would run inside it, acknowledged but never committed, holding their locks. A
    /// connection whose `BEGIN` was not answered is therefore closed when dropped, which
    /// ends that transaction.
    pub(super) async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Any>, sqlx::Error> {
        let Conn {
            conn, beginning, ..
        } = self;
        let Some(conn) = conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        *beginning = true;
        let tx = sqlx::Connection::begin(&mut **conn).await?;
        *beginning = false;
        Ok(tx)
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && self.beginning
        {
            conn.close_on_drop();
        }
    }
}

impl Conn<'_> {
    /// Runs `query`, a text that begins a transaction and commits it, and keeps the
    /// connection. When the text fails or the call is cancelled before its end, that
    /// transaction may still be open, and sqlx (which did not begin it) would hand the
    /// connection to its next user inside it: the connection is closed instead, which rolls
    /// the transaction back, and sqlx's pool opens another when one is needed.
    pub(super) async fn run_transaction_text<'q>(
        self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<(), sqlx::Error> {
        let mut open = CloseUnlessKept(Some(self));
        if let Some(c) = open.0.as_mut() {
            query.execute(&mut **c).await?;
        }
        if let Some(c) = open.0.take() {
            c.keep();
        }
        Ok(())
    }
}

/// A connection that is closed when dropped, unless taken out to be kept.
struct CloseUnlessKept<'a>(Option<Conn<'a>>);

impl Drop for CloseUnlessKept<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take().and_then(|mut c| c.conn.take()) {
            // Dropped outside the pool, the connection closes: SQLite's connection thread
            // ends the statement under way, then closes the database, rolling back.
            drop(conn.detach());
        }
    }
}

// `conn` is `Some` for as long as a `Conn` can be used: only `keep` and `CloseUnlessKept`,
// which consume it, take the connection out.
#[allow(clippy::expect_used)]
impl Deref for Conn<'_> {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        self.conn.as_ref().expect("a connection in use")
    }
}

#[allow(clippy::expect_used)]
impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn.as_mut().expect("a connection in use")
    }
}
