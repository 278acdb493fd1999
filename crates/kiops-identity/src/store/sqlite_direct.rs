//! SQLite point reads run on the calling thread, for the hottest reads:
//! CheckPermission, which sits on other services' request paths, and the
//! read half of Refresh.
//!
//! sqlx runs every SQLite statement on a worker thread owned by the
//! connection and hands the rows back through channels: two thread switches
//! per statement. For a point read of cached pages that costs more than the
//! read (a profile of CheckPermission showed 35% of the server's samples in
//! futex wake/wait), so these reads use their own small set of rusqlite
//! connections to the same file and run the statement inline.
//!
//! Why this cannot block the runtime: in WAL mode a reader never waits for
//! the writer, and these connections have no busy timeout, so the rare case
//! where SQLite does want a reader to wait (WAL recovery, a checkpoint
//! resetting the log) comes back at once as SQLITE_BUSY. Any error at all
//! returns `None` and the caller takes the ordinary sqlx path, which waits
//! where it may and classifies failures; this path only ever answers from a
//! successful read of the same database. What it can still do is read a
//! page from disk when neither its cache nor the OS has it: a few index
//! pages, once, the same cost any `std::fs` read on a runtime thread has.

use super::entity::user;
use super::memberships::{org_claims, CheckFacts, CHECK_FACTS_SQL};
use super::rotation::{RefreshCandidate, REFRESH_CANDIDATE_SQL};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The same read as on the pool, pinned to the covering indexes of
/// migration 4: SQLite's planner prefers the primary keys' unique indexes
/// (one row either way) and would then read the wide table rows too. Should
/// an index be missing, preparing fails and the pool path answers.
static DIRECT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CHECK_FACTS_SQL
        .replace('$', "?")
        .replace("users c ", "users c INDEXED BY users_access_facts_idx ")
        .replace("users s ", "users s INDEXED BY users_access_facts_idx ")
        .replace(
            "memberships cm ",
            "memberships cm INDEXED BY memberships_access_facts_idx ",
        )
        .replace(
            "memberships sm ",
            "memberships sm INDEXED BY memberships_access_facts_idx ",
        )
        .replace(
            "sessions cs ",
            "sessions cs INDEXED BY sessions_access_facts_idx ",
        )
});

/// Idle connections kept; one per runtime thread in use is what a burst
/// needs, since a read holds its connection only while it runs inline.
/// The columns of `DIRECT_SQL` in order, as `check_facts` reads them.
#[cfg(test)]
const CHECK_FACTS_COLUMNS: [&str; 12] = [
    "caller_email",
    "caller_status",
    "caller_platform_admin",
    "caller_role",
    "subject_exists",
    "subject_status",
    "subject_platform_admin",
    "subject_role",
    "subject_permissions",
    "caller_session_id",
    "caller_session_revoked_at",
    "caller_session_expires_at",
];

const MAX_IDLE: usize = 8;

pub struct DirectReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for DirectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DirectReader {
    /// For the database file at `path` (which must exist: the server opens
    /// its pools and migrates first). Connections open lazily.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // No busy handler (see module docs), set first: rusqlite's default
        // waits 5 s, and even the pragmas below read the schema, which
        // needs a lock. Read-only by construction.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        // A cache large enough for the covering indexes the read walks
        // (migration 4: about 60 bytes per user and 90 per membership), so
        // a warm read makes no system call; SQLite's default of 2 MiB made
        // a pread and a copy of most pages (a tenth of the server's time).
        // A bounded private cache rather than a memory map of the file:
        // a map would count every page it ever touched in the process's
        // memory, and turns a disk error into SIGBUS.
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -16384")?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection; `None` on any error (the caller
    /// falls back to the sqlx path). A connection that failed is dropped
    /// rather than returned, in case its state is the problem.
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match pooled {
            Some(c) => c,
            None => match self.open() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "direct SQLite read: open failed, using the pool");
                    return None;
                }
            },
        };
        match f(&conn) {
            Ok(v) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Some(v)
            }
            Err(e) => {
                tracing::debug!(error = %e, "direct SQLite read failed, using the pool");
                None
            }
        }
    }

    /// `memberships::check_facts` on the calling thread: `Some(answer)`, or
    /// `None` when the caller must ask the pool instead.
    pub fn check_facts(
        &self,
        caller_id: &str,
        caller_session: &str,
        subject_id: &str,
        org: &str,
    ) -> Option<Option<CheckFacts>> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(&DIRECT_SQL)?;
            let mut rows = stmt.query([caller_id, subject_id, org, caller_session])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            // By position (`CHECK_FACTS_COLUMNS`, pinned by a test): a lookup
            // by name scans the column names on every get, 9 per check.
            Ok(Some(CheckFacts {
                caller_email: row.get(0)?,
                caller_status: row.get(1)?,
                caller_platform_admin: row.get(2)?,
                caller_role: row.get(3)?,
                subject_exists: row.get(4)?,
                subject_status: row.get(5)?,
                subject_platform_admin: row.get(6)?,
                subject_role: row.get(7)?,
                subject_permissions: row.get(8)?,
                caller_session_id: row.get(9)?,
                caller_session_revoked_at: row.get(10)?,
                caller_session_expires_at: row.get(11)?,
            }))
        })
    }
}

impl DirectReader {
    /// Refresh's read (`rotation`) on the calling thread, same contract:
    /// `Some(answer)`, or `None` when the caller must ask the pool instead.
    /// The write that follows (`rotation`'s claim) re-checks
    /// everything this read saw, so it may be stale by a commit.
    pub fn refresh_candidate(
        &self,
        presented_hash: &str,
        only_org: Option<&str>,
        now: i64,
    ) -> Option<Option<RefreshCandidate>> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| REFRESH_CANDIDATE_SQL.replace('$', "?"));
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(&SQL)?;
            let mut rows = stmt.query(rusqlite::params![presented_hash, now, only_org])?;
            let mut first = None;
            let mut memberships = Vec::new();
            while let Some(row) = rows.next()? {
                if first.is_none() {
                    first = Some((
                        row.get::<_, String>("rotating_session_id")?,
                        row.get::<_, i64>("rotating_session_expires_at")?,
                        user::Model {
                            id: row.get("id")?,
                            email: row.get("email")?,
                            name: row.get("name")?,
                            name_lower: row.get("name_lower")?,
                            phone: row.get("phone")?,
                            avatar_url: row.get("avatar_url")?,
                            password_hash: row.get("password_hash")?,
                            status: row.get("status")?,
                            platform_admin: row.get("platform_admin")?,
                            failed_login_count: row.get("failed_login_count")?,
                            locked_until: row.get("locked_until")?,
                            created_at: row.get("created_at")?,
                            updated_at: row.get("updated_at")?,
                            email_verified: row.get("email_verified")?,
                        },
                    ));
                }
                if let Some(org) = row.get::<_, Option<String>>("member_org")? {
                    memberships.push((
                        org,
                        row.get("member_role")?,
                        row.get("member_permissions")?,
                    ));
                }
            }
            Ok(
                first.map(|(session_id, session_expires_at, user)| RefreshCandidate {
                    session_id,
                    session_expires_at,
                    orgs: org_claims(user.platform_admin, memberships),
                    user,
                }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(path: &Path, journal: &str) -> Connection {
        let c = Connection::open(path).expect("open");
        c.execute_batch(&format!(
            "PRAGMA journal_mode = {journal};
             CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, status TEXT NOT NULL,
                                 platform_admin BOOLEAN NOT NULL);
             CREATE TABLE memberships (organization_id TEXT NOT NULL, user_id TEXT NOT NULL,
                                       role TEXT NOT NULL, permissions INTEGER NOT NULL,
                                       PRIMARY KEY (organization_id, user_id));
             CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL,
                                    revoked_at BIGINT, expires_at BIGINT NOT NULL);
             CREATE INDEX users_access_facts_idx ON users (id, status, platform_admin, email);
             CREATE INDEX sessions_access_facts_idx
                 ON sessions (id, user_id, revoked_at, expires_at);
             CREATE INDEX memberships_access_facts_idx
                 ON memberships (organization_id, user_id, role, permissions);
             INSERT INTO users VALUES ('c', 'c@x.io', 'active', 0), ('s', 's@x.io', 'active', 0);
             INSERT INTO memberships VALUES ('o', 'c', 'manager', 0), ('o', 's', 'member', 5);
             INSERT INTO sessions VALUES ('cs', 'c', NULL, 1000), ('ss', 's', 7, 1000);"
        ))
        .expect("schema");
        c
    }

    #[test]
    fn reads_the_same_facts_as_the_query_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let _owner = schema(&path, "wal");
        let r = DirectReader::new(&path);
        let f = r
            .check_facts("c", "cs", "s", "o")
            .expect("read")
            .expect("row");
        assert_eq!(f.caller_role.as_deref(), Some("manager"));
        assert_eq!(
            f.caller_session(),
            crate::domain::model::SessionState {
                found: true,
                revoked_at_ms: None,
                expires_at_ms: Some(1000)
            }
        );
        // Another user's session is not the caller's.
        let f = r
            .check_facts("c", "ss", "s", "o")
            .expect("read")
            .expect("row");
        assert!(!f.caller_session().found);
        assert_eq!(f.subject_role.as_deref(), Some("member"));
        assert_eq!(f.subject_permissions, Some(5));
        assert_eq!(f.subject_exists.as_deref(), Some("s"));
        // Unknown subject: the row is there, the subject's columns are NULL.
        let f = r
            .check_facts("c", "cs", "nobody", "o")
            .expect("read")
            .expect("row");
        assert_eq!(f.subject_exists, None);
        // Unknown caller: no row.
        assert!(r
            .check_facts("nobody", "cs", "s", "o")
            .expect("read")
            .is_none());
        // The connection went back to the pool and is reused.
        assert_eq!(r.idle.lock().map(|v| v.len()).unwrap_or(0), 1);
    }

    #[test]
    fn columns_are_read_by_the_positions_the_query_gives_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        let stmt = owner.prepare(&DIRECT_SQL).expect("prepare");
        assert_eq!(stmt.column_names(), CHECK_FACTS_COLUMNS);
    }

    #[test]
    fn the_read_walks_only_the_covering_indexes() {
        assert_eq!(DIRECT_SQL.matches(" INDEXED BY ").count(), 5);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        let plan: Vec<String> = owner
            .prepare(&format!("EXPLAIN QUERY PLAN {}", *DIRECT_SQL))
            .and_then(|mut s| {
                s.query_map(["c", "s", "o", "cs"], |r| r.get::<_, String>(3))?
                    .collect()
            })
            .expect("plan");
        assert_eq!(plan.len(), 5, "{plan:?}");
        assert!(
            plan.iter().all(|p| p.contains("COVERING INDEX")),
            "{plan:?}"
        );
    }

    #[test]
    fn without_the_indexes_the_pool_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        owner
            .execute_batch("DROP INDEX users_access_facts_idx")
            .expect("drop");
        assert!(DirectReader::new(&path)
            .check_facts("c", "cs", "s", "o")
            .is_none());
    }

    #[test]
    fn a_locked_database_hands_the_read_back_at_once() {
        // A rollback-journal database with an exclusive writer is the one
        // way to make a reader wait deterministically; in WAL mode the same
        // SQLITE_BUSY comes from recovery or a log reset.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "delete");
        owner
            .execute_batch("BEGIN EXCLUSIVE; UPDATE users SET status = 'inactive';")
            .expect("lock");
        let r = DirectReader::new(&path);
        let t = std::time::Instant::now();
        assert!(r.check_facts("c", "cs", "s", "o").is_none());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        owner.execute_batch("ROLLBACK").expect("unlock");
        assert!(r.check_facts("c", "cs", "s", "o").is_some());
    }

    #[test]
    fn a_missing_file_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sqlite");
        let r = DirectReader::new(&path);
        assert!(r.check_facts("c", "cs", "s", "o").is_none());
        assert!(!path.exists());
    }
}
