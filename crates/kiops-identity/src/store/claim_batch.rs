//! Refresh-token rotations that arrive together commit together: the
//! fast path's write behind `rotation::rotate` (R15).
//!
//! Every Refresh ends in a small write (use the presented token, touch the
//! session, insert its successor). On SQLite, which takes one writer at a
//! time, one transaction per refresh made the writer the bottleneck: each
//! rotation paid a `BEGIN IMMEDIATE`, a commit with its WAL frames, and
//! thread hops (to sqlx's worker and back, then the pool handing the
//! connection to the next task) during which the write lock sat idle. With
//! one runtime thread busy with other requests those hops stretched to
//! milliseconds, and refresh fell to two thirds of its target. On
//! PostgreSQL each rotation was a commit with its own WAL flush.
//!
//! Here the rotations waiting at the same moment run as one transaction:
//! on SQLite on a blocking thread, statement after statement with no hop
//! between them; on PostgreSQL as one statement over arrays. Each rotation
//! gets its own answer, the one it would get alone (on SQLite in queue
//! order); two uses of one token in a batch still have one winner. Nothing
//! waits to fill a batch: a lone rotation goes out at once. If a batch
//! fails, its rotations are retried one transaction each, so one bad
//! rotation cannot fail the rest.
//!
//! On SQLite the transaction runs on a connection of its own (rusqlite,
//! which `sqlite_direct` reads with), not sqlx's: sqlx binds numbered parameters
//! wrongly in a long multi-statement query (a statement that skips low
//! numbers shifts its own arguments), and one round trip to sqlx's worker
//! per statement would bring the hops back. It still takes its turn on the
//! writer pool: the worker holds the pool's one connection while it writes,
//! so it never races the other writers of this process for SQLite's lock.

use super::DomainError;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use sea_orm::sqlx::{PgPool, SqlitePool};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest batch: at 32 concurrent callers batches stay far below it, and
/// it bounds how long one transaction holds the write lock (tens of µs a
/// rotation).
const MAX_BATCH: usize = 64;
/// Rotations queued beyond this wait to be queued (backpressure).
const QUEUE: usize = 4096;
/// As long as the sqlx writer waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const USE_TOKEN: &str = "UPDATE refresh_tokens SET used_at = ?3 \
     WHERE token_hash = ?1 AND session_id = ?2 AND used_at IS NULL AND expires_at > ?3 \
     AND EXISTS (SELECT 1 FROM sessions \
         WHERE id = ?2 AND revoked_at IS NULL AND expires_at > ?3)";
const TOUCH_SESSION: &str = "UPDATE sessions SET last_used_at = ?2 \
     WHERE id = ?1 AND revoked_at IS NULL AND expires_at > ?2";
const INSERT_SUCCESSOR: &str = "INSERT INTO refresh_tokens \
     (token_hash, session_id, created_at, expires_at, used_at) VALUES (?1, ?2, ?3, ?4, NULL)";

/// One rotation: the presented token's hash, its session, the time, the
/// successor's hash and the successor's expiry.
#[derive(Debug, Clone)]
pub struct Claim {
    pub presented_hash: String,
    pub session_id: String,
    pub now: i64,
    pub new_hash: String,
    pub expires: i64,
}

type Reply = Result<bool, DomainError>;

struct Pending {
    claim: Claim,
    reply: oneshot::Sender<Reply>,
}

/// The queue in front of the rotation worker; cheap to share.
#[derive(Clone)]
pub struct ClaimBatcher {
    queue: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
}

/// Totals since start, for `/metrics`: rotations ÷ transactions is the mean
/// batch size.
#[derive(Default)]
struct Stats {
    transactions: AtomicU64,
    claims: AtomicU64,
}

impl std::fmt::Debug for ClaimBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimBatcher").finish_non_exhaustive()
    }
}

impl ClaimBatcher {
    /// Starts the worker on the current runtime. It stops when the last
    /// `ClaimBatcher` is dropped and the queue has drained.
    pub fn start(writer: Writer) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        tokio::spawn(work(writer, rx, stats.clone()));
        Self { queue, stats }
    }

    /// (transactions, rotations) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.stats.transactions.load(Ordering::Relaxed),
            self.stats.claims.load(Ordering::Relaxed),
        )
    }

    /// Whether the rotation applied: the token was unused and unexpired and
    /// its session live. The write finishes or rolls back whatever happens
    /// to the caller, since it runs in the worker.
    pub async fn claim(&self, claim: Claim) -> Result<bool, DomainError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { claim, reply }).await.is_err() {
            return Err(DomainError::Unavailable);
        }
        // A worker gone with the request means the runtime is shutting down.
        answer.await.unwrap_or(Err(DomainError::Unavailable))
    }
}

/// Where the rotations are written.
pub enum Writer {
    /// The database file, written on a connection of the batcher's own,
    /// in turns taken on `turns` (the one-connection pool every SQLite
    /// write queues on).
    Sqlite {
        path: PathBuf,
        turns: SqlitePool,
        conn: Arc<Mutex<Option<Connection>>>,
    },
    /// One statement a batch (`PG_BATCH_SQL`), so one commit and one WAL
    /// flush for all its rotations.
    Postgres(PgPool),
}

impl Writer {
    pub fn sqlite(path: PathBuf, turns: SqlitePool) -> Self {
        Self::Sqlite {
            path,
            turns,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// The whole batch as one transaction; one answer per claim, in order.
    async fn run(&self, claims: Vec<Claim>) -> Result<Vec<bool>, DomainError> {
        match self {
            Self::Sqlite { path, turns, conn } => run_sqlite(path, conn, turns, claims).await,
            Self::Postgres(pool) => run_postgres(pool, &claims).await,
        }
    }
}

async fn work(writer: Writer, mut rx: mpsc::Receiver<Pending>, stats: Arc<Stats>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let claims: Vec<Claim> = batch.iter().map(|p| p.claim.clone()).collect();
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .claims
            .fetch_add(claims.len() as u64, Ordering::Relaxed);
        match writer.run(claims).await {
            Ok(rotated) => {
                for (p, r) in batch.into_iter().zip(rotated) {
                    let _ = p.reply.send(Ok(r));
                }
            }
            Err(e) if batch.len() == 1 => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            Err(_) => {
                for p in batch {
                    stats.transactions.fetch_add(1, Ordering::Relaxed);
                    let one = writer.run(vec![p.claim.clone()]).await;
                    let _ = p
                        .reply
                        .send(one.map(|r| r.first().copied().unwrap_or(false)));
                }
            }
        }
    }
}

/// SQLite: in its turn on the writer pool, on a blocking thread.
async fn run_sqlite(
    path: &std::path::Path,
    conn: &Arc<Mutex<Option<Connection>>>,
    turns: &SqlitePool,
    claims: Vec<Claim>,
) -> Result<Vec<bool>, DomainError> {
    let turn = turns
        .acquire()
        .await
        .map_err(|_| DomainError::Unavailable)?;
    let (path, conn) = (path.to_path_buf(), conn.clone());
    let done = tokio::task::spawn_blocking(move || {
        let mut guard = conn
            .lock()
            .map_err(|_| DomainError::internal("refresh writer lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(open(&path).map_err(sqlite_err)?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(DomainError::internal("refresh writer missing"));
        };
        let result = rotate(c, &claims).map_err(sqlite_err);
        if result.is_err() {
            // A connection that failed is not trusted again (a rollback
            // that could not run leaves it inside a transaction).
            *guard = None;
        }
        result
    })
    .await
    .map_err(|e| DomainError::internal(format!("refresh rotation task: {e}")));
    drop(turn);
    done?
}

/// PostgreSQL: the rotation over arrays. Each
/// session is locked (`FOR UPDATE`) so a concurrent revocation is ordered
/// before or after; a rotation applies only if its token is unused and
/// unexpired and its session live at its own `now`. Two uses of one token
/// in a batch update its row once: one of them is returned, one winner.
const PG_BATCH_SQL: &str = "WITH q AS (\
       SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[]) \
       WITH ORDINALITY AS q(hash, session_id, at, new_hash, expires, i)), \
     live AS (SELECT id, expires_at FROM sessions \
       WHERE id IN (SELECT session_id FROM q) AND revoked_at IS NULL FOR UPDATE), \
     claimed AS (UPDATE refresh_tokens r SET used_at = q.at FROM q \
       WHERE r.token_hash = q.hash AND r.session_id = q.session_id \
       AND r.used_at IS NULL AND r.expires_at > q.at \
       AND EXISTS (SELECT 1 FROM live WHERE live.id = q.session_id AND live.expires_at > q.at) \
       RETURNING q.i, q.session_id, q.at, q.new_hash, q.expires), \
     touched AS (UPDATE sessions s SET last_used_at = c.at FROM claimed c \
       WHERE s.id = c.session_id RETURNING s.id), \
     successors AS (INSERT INTO refresh_tokens \
       (token_hash, session_id, created_at, expires_at, used_at) \
       SELECT new_hash, session_id, at, expires, NULL FROM claimed RETURNING 1) \
     SELECT i FROM claimed";

/// A batch statement that takes longer fails as UNAVAILABLE instead of
/// holding every queued refresh behind a connection that stopped answering
/// (a half-open connection can block a statement until TCP gives up). Like
/// any write whose answer is lost, it may have committed.
const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn run_postgres(pool: &PgPool, claims: &[Claim]) -> Result<Vec<bool>, DomainError> {
    use sea_orm::sqlx::{self, Row};
    let failed = |e: sqlx::Error| {
        super::db_err(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(
            Arc::new(e),
        )))
    };
    let column = |f: fn(&Claim) -> &str| claims.iter().map(f).collect::<Vec<&str>>();
    let times = |f: fn(&Claim) -> i64| claims.iter().map(f).collect::<Vec<i64>>();
    let mut conn = pool.acquire().await.map_err(failed)?;
    let query = sqlx::query(PG_BATCH_SQL)
        .bind(column(|c| &c.presented_hash))
        .bind(column(|c| &c.session_id))
        .bind(times(|c| c.now))
        .bind(column(|c| &c.new_hash))
        .bind(times(|c| c.expires));
    let rows = match tokio::time::timeout(PG_STATEMENT_TIMEOUT, query.fetch_all(&mut *conn)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            // A connection that failed other than by the database refusing
            // the statement may be broken: closed, never pooled again.
            if !matches!(e, sqlx::Error::Database(_)) {
                drop(conn.detach());
            }
            return Err(failed(e));
        }
        Err(_) => {
            drop(conn.detach());
            return Err(DomainError::Unavailable);
        }
    };
    let mut rotated = vec![false; claims.len()];
    for row in rows {
        let i: i64 = row
            .try_get("i")
            .map_err(|e| DomainError::internal(format!("refresh batch row: {e}")))?;
        match usize::try_from(i - 1).ok().and_then(|i| rotated.get_mut(i)) {
            Some(slot) => *slot = true,
            None => return Err(DomainError::internal(format!("refresh batch row {i}"))),
        }
    }
    Ok(rotated)
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The settings sqlx gives its connections (`Store::connect`); both are
    // per connection in SQLite.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON")?;
    Ok(conn)
}

/// Each rotation in order: the token is used only if unused, unexpired and
/// of a live session; then the session is touched and the successor
/// inserted. Dropping the transaction on an
/// error rolls it back.
fn rotate(conn: &mut Connection, claims: &[Claim]) -> rusqlite::Result<Vec<bool>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(claims.len());
    {
        let mut use_token = tx.prepare_cached(USE_TOKEN)?;
        let mut touch = tx.prepare_cached(TOUCH_SESSION)?;
        let mut insert = tx.prepare_cached(INSERT_SUCCESSOR)?;
        for c in claims {
            // The same steps and outcome as PostgreSQL's one statement
            // (`PG_BATCH_SQL`): a dead session's token is left
            // as it was, for the classifying path to answer.
            let used = use_token.execute(params![c.presented_hash, c.session_id, c.now])? == 1;
            let rotated = used && touch.execute(params![c.session_id, c.now])? == 1;
            if rotated {
                insert.execute(params![c.new_hash, c.session_id, c.now, c.expires])?;
            }
            out.push(rotated);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Classified like `db_err` classifies sqlx's errors: a lock not granted
/// in time is ABORTED (retry), anything else INTERNAL; the text stays in
/// the server's log, not in the reply.
fn sqlite_err(e: rusqlite::Error) -> DomainError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            DomainError::Aborted
        }
        Some(rusqlite::ErrorCode::CannotOpen) => DomainError::Unavailable,
        _ => DomainError::Internal(format!("refresh rotation: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sqlx;

    async fn db() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let pool = SqlitePool::connect(&url).await.expect("open");
        sqlx::raw_sql(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, revoked_at INTEGER, \
                 expires_at INTEGER NOT NULL, last_used_at INTEGER);
             CREATE TABLE refresh_tokens (token_hash TEXT PRIMARY KEY, session_id TEXT NOT NULL,
                 created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
             INSERT INTO sessions VALUES ('s1', NULL, 100, NULL), ('s2', NULL, 100, NULL),
                 ('dead', 5, 100, NULL);
             INSERT INTO refresh_tokens VALUES ('t1', 's1', 0, 100, NULL),
                 ('t2', 's2', 0, 100, NULL), ('t3', 'dead', 0, 100, NULL),
                 ('old', 's1', 0, 9, NULL);",
        )
        .execute(&pool)
        .await
        .expect("schema");
        (dir, pool)
    }

    fn claim(hash: &str, session: &str, new_hash: &str) -> Claim {
        Claim {
            presented_hash: hash.into(),
            session_id: session.into(),
            now: 10,
            new_hash: new_hash.into(),
            expires: 90,
        }
    }

    /// Each rotation in a batch gets the answer it would get alone, in
    /// order: a second use of a token in the same batch loses, a revoked
    /// session and an expired token do not rotate, and only winners insert
    /// a successor.
    #[tokio::test]
    async fn each_rotation_in_a_batch_gets_its_own_answer() {
        let (dir, pool) = db().await;
        let mut conn = open(&dir.path().join("t.db")).expect("open");
        let got = rotate(
            &mut conn,
            &[
                claim("t1", "s1", "n1"),
                claim("t3", "dead", "n3"),
                claim("t1", "s1", "n1b"),
                claim("old", "s1", "n4"),
                claim("t2", "s2", "n2"),
                claim("nope", "s2", "n5"),
            ],
        )
        .expect("batch");
        assert_eq!(got, [true, false, false, false, true, false]);
        let dead_token_used: Option<i64> =
            sqlx::query_scalar("SELECT used_at FROM refresh_tokens WHERE token_hash = 't3'")
                .fetch_one(&pool)
                .await
                .expect("read");
        assert_eq!(
            dead_token_used, None,
            "a revoked session's token is left unused"
        );
        let mut successors: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM refresh_tokens WHERE created_at = 10")
                .fetch_all(&pool)
                .await
                .expect("read");
        successors.sort();
        assert_eq!(successors, ["n1", "n2"]);
        let used: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE used_at = 10")
                .fetch_one(&pool)
                .await
                .expect("read");
        assert_eq!(used, 2);
    }

    /// A failing batch (here a successor hash that already exists) rolls
    /// back whole, leaves the connection usable, and through the worker
    /// each rotation is then retried alone: only the bad one fails.
    #[tokio::test]
    async fn a_failing_rotation_fails_alone() {
        let (dir, pool) = db().await;
        let b = ClaimBatcher::start(Writer::sqlite(dir.path().join("t.db"), pool.clone()));
        let (first, bad) = tokio::join!(
            b.claim(claim("t1", "s1", "n1")),
            b.claim(claim("t2", "s2", "t3")),
        );
        assert!(first.expect("first rotates"));
        assert!(bad.is_err(), "{bad:?}");
        let t2_used: Option<i64> =
            sqlx::query_scalar("SELECT used_at FROM refresh_tokens WHERE token_hash = 't2'")
                .fetch_one(&pool)
                .await
                .expect("read");
        assert_eq!(t2_used, None, "the failed rotation rolled back");
        // One batch of two (join! queues both before the worker runs on
        // this single-threaded test runtime), then each alone.
        assert_eq!(b.totals(), (3, 2));
    }
}
