//! Storage: the only module that builds SQL or touches sea-orm.
//!
//! Every change is applied in one transaction together with its audit event
//! (`audit::record`). Write transactions start with `Store::begin_write`,
//! which on SQLite is `BEGIN IMMEDIATE` (SQLite has no row locks, and a
//! deferred transaction that reads then writes fails with SQLITE_BUSY at once)
//! and on PostgreSQL a normal transaction in which the caller locks the rows
//! its decision depends on (`SELECT … FOR UPDATE`).

pub mod audit;
pub mod callers;
mod check_batch;
pub mod check_facts;
mod claim_batch;
pub mod email_verifications;
pub mod entity;
pub mod invitations;
pub mod join_requests;
pub mod keys;
pub mod keyset;
pub mod logins;
pub mod memberships;
pub mod organizations;
pub mod outbox;
pub mod password_resets;
pub mod revocations;
pub mod rotation;
pub mod second_factor;
pub mod service_accounts;
pub mod service_credentials;
pub mod service_tokens;
pub mod sessions;
mod single_use;
mod sqlite_direct;
pub mod templates;
pub mod totp;
mod tx;
pub mod users;

pub use tx::{ReadTx, WriteTx};

use crate::domain::DomainError;
use kiops_migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseBackend, DatabaseConnection, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use std::time::Duration;

/// The database handle shared by all requests.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite only: a one-connection pool that every write goes through.
    /// SQLite admits one writer at a time; letting many pooled connections
    /// race for the lock makes the losers sleep in SQLite's busy handler
    /// (backing off up to 100 ms per try), which under load turned
    /// millisecond transactions into seconds. Queueing on the pool instead
    /// is FIFO and wakes the next writer the moment the lock is free.
    /// Readers keep the main pool (WAL lets them run beside the writer).
    writer: Option<DatabaseConnection>,
    /// SQLite only: point reads on the calling thread (`sqlite_direct`).
    direct: Option<std::sync::Arc<sqlite_direct::DirectReader>>,
    /// PostgreSQL only: CheckPermission's reads, batched (`check_batch`).
    checks: Option<check_batch::CheckBatcher>,
    /// Refresh's rotations, committed together (`claim_batch`, behind
    /// `rotation::rotate`); none for an in-memory SQLite database.
    claims: Option<claim_batch::ClaimBatcher>,
}

/// How to open the database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
}

impl Store {
    /// Opens the pool. SQLite files are created if missing and run in WAL mode
    /// with a busy timeout, so concurrent writers queue instead of failing.
    pub async fn connect(opts: &StoreOptions) -> Result<Self, DbErr> {
        let mut co = ConnectOptions::new(opts.url.clone());
        co.max_connections(opts.max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false)
            // sqlx pings a pooled connection on every checkout by default:
            // a second round trip for every one-statement read, which on
            // CheckPermission was as costly as the query itself. A file
            // database cannot drop a connection; a server can, but only an
            // idle one plausibly has (a restart, a proxy's idle cut), so
            // PostgreSQL pings only connections idle for a while, and a
            // connection that still fails is discarded on its error.
            .test_before_acquire_if_idle_for(Duration::from_secs(10))
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    // Freed row space is zeroed, so an erased outbox token
                    // does not linger in the file (H3).
                    .pragma("secure_delete", "ON")
            })
            // A transaction whose request was dropped half-way can reach
            // the pool still open (seen after refreshes cut short by client
            // deadlines), and a later statement on that connection then
            // holds its locks with it: PostgreSQL ends such a session after
            // 2 s idle in a transaction, so no row stays locked for good.
            // Every transaction here runs its statements back to back.
            .map_sqlx_postgres_opts(|o| o.options([("idle_in_transaction_session_timeout", "2s")]));
        let writer = if opts.url.starts_with("sqlite:") {
            let mut wo = co.clone();
            // Wait as long as a write may legitimately queue under load.
            wo.max_connections(1)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10));
            Some(Database::connect(wo).await?)
        } else {
            None
        };
        let db = Database::connect(co).await?;
        let direct = sqlite_file(&opts.url)
            .map(|path| std::sync::Arc::new(sqlite_direct::DirectReader::new(&path)));
        let checks = (db.get_database_backend() == DatabaseBackend::Postgres)
            .then(|| check_batch::CheckBatcher::start(db.get_postgres_connection_pool().clone()));
        let claims = match (&writer, sqlite_file(&opts.url)) {
            (Some(w), Some(path)) => Some(claim_batch::Writer::sqlite(
                path,
                w.get_sqlite_connection_pool().clone(),
            )),
            _ if db.get_database_backend() == DatabaseBackend::Postgres => Some(
                claim_batch::Writer::Postgres(db.get_postgres_connection_pool().clone()),
            ),
            _ => None,
        }
        .map(claim_batch::ClaimBatcher::start);
        Ok(Self {
            db,
            writer,
            direct,
            checks,
            claims,
        })
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    /// TESTS ONLY (`--unsafe-test-statement-log`): logs the SQL text (never
    /// the values) of every statement run through the pools, inside the
    /// request's span, so a test can compare the database work of two calls.
    pub fn log_statements(&mut self) {
        let log = |i: &sea_orm::metric::Info<'_>| {
            tracing::info!(sql = %i.statement.sql, "statement");
        };
        self.db.set_metric_callback(log);
        if let Some(w) = self.writer.as_mut() {
            w.set_metric_callback(log);
        }
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The connection for writes outside `begin_write` (single statements
    /// such as the outbox's claims); see `writer`.
    pub fn writer(&self) -> &DatabaseConnection {
        self.writer.as_ref().unwrap_or(&self.db)
    }

    /// Connections of each pool, for `/metrics`: a pool that stays at its
    /// maximum with nothing idle is the first sign of database saturation.
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        let mut out = vec![pool_usage("main", &self.db)];
        if let Some(w) = &self.writer {
            out.push(pool_usage("writer", w));
        }
        out
    }

    /// (transactions, rotations) of Refresh's batched rotations.
    pub fn claim_batch_totals(&self) -> Option<(u64, u64)> {
        self.claims.as_ref().map(claim_batch::ClaimBatcher::totals)
    }

    /// PostgreSQL: (statements, reads) of CheckPermission's batched reads.
    pub fn check_batch_totals(&self) -> Option<(u64, u64)> {
        self.checks.as_ref().map(check_batch::CheckBatcher::totals)
    }

    /// CheckPermission's one read (`check_facts`), on this backend's path.
    pub async fn check_facts(
        &self,
        key: check_facts::CheckKey,
    ) -> Result<Option<crate::domain::membership::CheckFacts>, DomainError> {
        if let Some(facts) = self
            .direct
            .as_deref()
            .and_then(|d| check_facts::read_inline(d, &key))
        {
            return Ok(facts);
        }
        if let Some(batch) = &self.checks {
            return batch.check_facts(key).await;
        }
        check_facts::read_pooled(&self.db, &key).await
    }

    /// CheckPermissions' one read (`check_facts::many_sql`): the asking
    /// person's state, when a person asks, and every key's facts, in one
    /// statement. On a SQLite file it runs inline on the calling thread
    /// (any error falls back to the pool), as CheckPermission's does.
    pub async fn check_many(
        &self,
        key: check_facts::ManyKey<'_>,
    ) -> Result<check_facts::ManyFacts, DomainError> {
        if let Some(facts) = self
            .direct
            .as_deref()
            .and_then(|d| check_facts::read_many_inline(d, key))
        {
            return Ok(facts);
        }
        check_facts::read_many(&self.db, key).await
    }

    /// Cheap liveness check for `/readyz`.
    /// SQLite: copies the WAL into the database file and truncates it, so
    /// the older versions of rows (e.g. an outbox token just erased) leave
    /// the files. False when a reader kept it from completing (try again
    /// later). Nothing to do on PostgreSQL.
    pub async fn scrub_wal(&self) -> Result<bool, DomainError> {
        use sea_orm::ConnectionTrait;
        if self.backend() != DatabaseBackend::Sqlite {
            return Ok(true);
        }
        let row = self
            .writer()
            .query_one_raw(sea_orm::Statement::from_string(
                DatabaseBackend::Sqlite,
                "PRAGMA wal_checkpoint(TRUNCATE)",
            ))
            .await
            .map_err(db_err)?;
        let busy: i32 = match row {
            Some(r) => r.try_get_by_index(0).map_err(db_err)?,
            None => 1,
        };
        Ok(busy == 0)
    }

    pub async fn ping(&self) -> Result<(), DomainError> {
        self.db.ping().await.map_err(db_err)
    }

    /// Starts a transaction that will write (see module docs).
    pub async fn begin_write(&self) -> Result<WriteTx, DomainError> {
        let opts = match self.backend() {
            DatabaseBackend::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            },
            _ => TransactionOptions::default(),
        };
        let tx = self
            .writer()
            .begin_with_options(opts)
            .await
            .map_err(db_err)?;
        Ok(WriteTx::new(tx))
    }

    /// A read-only transaction for a search page and its total: both see
    /// one snapshot (the total matches the page). On PostgreSQL it also
    /// asks for plans made with the actual values: a prepared statement
    /// switches to a generic plan after five runs, and for a keyset page
    /// (`email >= $4`) the generic plan sorted every match of a 20,000-member
    /// organization (30 ms) where the value-aware plan walks the index and
    /// stops after one page (0.4 ms). Planning costs about 0.3 ms here.
    pub async fn begin_listing(&self) -> Result<ReadTx, DomainError> {
        if self.backend() == DatabaseBackend::Sqlite {
            return self.db.begin().await.map(ReadTx::new).map_err(db_err);
        }
        let opts = TransactionOptions {
            access_mode: Some(sea_orm::AccessMode::ReadOnly),
            ..Default::default()
        };
        let tx = self.db.begin_with_options(opts).await.map_err(db_err)?;
        use sea_orm::ConnectionTrait;
        tx.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await
            .map_err(db_err)?;
        Ok(ReadTx::new(tx))
    }

    pub async fn close(self) {
        if let Some(w) = self.writer {
            let _ = w.close().await;
        }
        let _ = self.db.close().await;
    }
}

/// The file behind a SQLite URL, when it is a plain file (not in-memory or
/// shared-cache, which only sqlx's own connections could see).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use sea_orm::sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let o = SqliteConnectOptions::from_str(url).ok()?;
    let path = o.get_filename();
    (!path.as_os_str().is_empty()).then(|| path.to_path_buf())
}

/// The driver's own view of a failure, where it has one. A pooled
/// connection that the server or the network dropped is only found out when
/// a statement fails on it (connections are not pinged on every checkout):
/// that failure is the database being unreachable, not a bug.
fn classify_driver_error(e: &sea_orm::sqlx::Error) -> Option<DomainError> {
    use sea_orm::sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => Some(DomainError::Unavailable),
        E::Database(db) => match db.code().as_deref() {
            // serialization_failure, deadlock_detected: retryable; SQLite's
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6) and their extended codes
            // (low byte 5 or 6) once its busy timeout ran out: retryable too.
            Some("40001") | Some("40P01") => Some(DomainError::Aborted),
            Some(code) if is_sqlite(db.as_ref()) && sqlite_busy(code) => Some(DomainError::Aborted),
            // connection_exception (08…), admin/crash shutdown and
            // cannot_connect_now (57P01–57P03): the server is going away.
            Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                Some(DomainError::Unavailable)
            }
            _ => None,
        },
        _ => None,
    }
}

fn is_sqlite(e: &dyn sea_orm::sqlx::error::DatabaseError) -> bool {
    e.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
}

/// SQLite's primary result code is the low byte of the extended one.
fn sqlite_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// One pool's connections at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub pool: &'static str,
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

fn pool_usage(pool: &'static str, db: &DatabaseConnection) -> PoolUsage {
    // The typed getters panic on the other backend: match it first.
    let (open, idle, max) = match db.get_database_backend() {
        DatabaseBackend::Sqlite => {
            let p = db.get_sqlite_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        DatabaseBackend::Postgres => {
            let p = db.get_postgres_connection_pool();
            (p.size(), p.num_idle(), p.options().get_max_connections())
        }
        _ => (0, 0, 0),
    };
    PoolUsage {
        pool,
        open,
        idle: u32::try_from(idle).unwrap_or(u32::MAX),
        max,
    }
}

/// Maps a database error to the domain by its kind, never by its text:
/// lost connections are UNAVAILABLE, serialization failures, deadlocks and
/// a busy SQLite ABORTED (retryable), a row deleted under a concurrent change
/// ABORTED, the rest INTERNAL with the detail kept for the log only.
pub fn db_err(e: DbErr) -> DomainError {
    use sea_orm::RuntimeErr;
    match &e {
        DbErr::Query(RuntimeErr::SqlxError(inner))
        | DbErr::Exec(RuntimeErr::SqlxError(inner))
        | DbErr::Conn(RuntimeErr::SqlxError(inner)) => {
            if let Some(classified) = classify_driver_error(inner) {
                return classified;
            }
        }
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return DomainError::Unavailable,
        _ => {}
    }
    if matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
    ) {
        return DomainError::Aborted;
    }
    match e {
        DbErr::Conn(_) => DomainError::Unavailable,
        other => DomainError::Internal(other.to_string()),
    }
}

/// Whether `e` is a unique-constraint violation.
pub fn is_unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Maps a unique-constraint violation to ALREADY_EXISTS with `reason` and
/// `message`, any other error as [`db_err`] does.
pub fn taken(reason: &'static str, message: &'static str) -> impl Fn(DbErr) -> DomainError {
    move |e| {
        if is_unique_violation(&e) {
            DomainError::exists(reason, message)
        } else {
            db_err(e)
        }
    }
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE … ESCAPE '\'`
/// pattern, so user input is matched literally (R17).
pub fn like_contains(needle: &str) -> String {
    let mut s = String::with_capacity(needle.len() + 2);
    s.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dropped_connection_is_unavailable_not_internal() {
        use crate::domain::DomainError;
        use sea_orm::{sqlx, DbErr, RuntimeErr};
        let wrap = |e: sqlx::Error| DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(e)));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(matches!(
            super::db_err(wrap(sqlx::Error::Io(reset))),
            DomainError::Unavailable
        ));
        assert!(matches!(
            super::db_err(wrap(sqlx::Error::Protocol("unexpected EOF".into()))),
            DomainError::Unavailable
        ));
        assert!(matches!(
            super::db_err(wrap(sqlx::Error::PoolTimedOut)),
            DomainError::Unavailable
        ));
        assert!(matches!(
            super::db_err(DbErr::Custom("some bug".into())),
            DomainError::Internal(_)
        ));
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(super::like_contains("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}
