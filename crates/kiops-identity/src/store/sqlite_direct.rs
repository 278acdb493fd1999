//! SQLite point reads run on the calling thread, for the hottest reads:
//! CheckPermission (`check_facts`), which sits on other services' request
//! paths, and the read half of Refresh.
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
use super::memberships::token_facts;
use super::rotation::{RefreshCandidate, REFRESH_CANDIDATE_SQL};
use super::users::User;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Idle connections kept; one per runtime thread in use is what a burst
/// needs, since a read holds its connection only while it runs inline.
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
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
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
            let mut platform_required = None;
            while let Some(row) = rows.next()? {
                if first.is_none() {
                    first = Some((
                        row.get::<_, String>("rotating_session_id")?,
                        row.get::<_, i64>("rotating_session_expires_at")?,
                        row.get::<_, String>("rotating_session_amr")?,
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
                if platform_required.is_none() {
                    platform_required = Some(row.get::<_, Option<bool>>("platform_second_factor")?);
                }
                if let Some(org) = row.get::<_, Option<String>>("member_org")? {
                    memberships.push((
                        org,
                        row.get("member_role")?,
                        row.get("member_permissions")?,
                        row.get::<_, Option<bool>>("member_org_second_factor")?
                            .unwrap_or(false),
                    ));
                }
            }
            let Some((session_id, session_expires_at, session_amr, row)) = first else {
                return Ok(None);
            };
            // An unreadable row goes to the pool path, which reports it.
            let user = User::try_from(row).map_err(|_| rusqlite::Error::InvalidQuery)?;
            Ok(Some(RefreshCandidate {
                session_id,
                session_expires_at,
                orgs: {
                    let platform_required = platform_required.flatten();
                    token_facts(
                        user.platform_admin,
                        platform_required.unwrap_or(false),
                        &session_amr,
                        memberships,
                    )
                },
                session_amr,
                user,
            }))
        })
    }
}

#[cfg(test)]
impl DirectReader {
    /// Connections waiting for the next read.
    pub(super) fn idle_len(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}
