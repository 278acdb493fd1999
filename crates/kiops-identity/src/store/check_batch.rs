//! CheckPermission reads on PostgreSQL, answered many to a statement.
//!
//! Under load, CheckPermission is thousands of one-row reads a second, and
//! on PostgreSQL each one is a round trip whose fixed costs (a pooled
//! connection's checkout and return, Bind/Execute/Sync, a wake-up on each
//! side, the backend's executor start-up) are most of its price: the read
//! itself is four index lookups. Here the reads that are waiting at the same
//! moment go to the database as one statement over arrays (`unnest … WITH
//! ORDINALITY`) that reads each (user, organization) among them once, and
//! each caller gets its own answer back.
//!
//! Why this still answers from current state (R16): a request is only ever
//! answered by a statement that started after the request was queued, so a
//! change committed before a check arrived is always seen, exactly as with a
//! statement of its own. Nothing is kept between batches.
//!
//! Nothing waits to fill a batch: a worker takes whatever is queued when it
//! is free, so a lone request goes out at once (one hop through a channel
//! more than a direct read), and batches grow only while statements are in
//! flight, which is exactly when there is a queue to amortize.

use super::memberships::CheckFacts;
use super::DomainError;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgConnection, PgPool, Postgres};
use sea_orm::sqlx::{self, Row};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

// One worker, so one statement in flight: while it runs, the next batch
// gathers, and the larger the batch the less each read costs. On two cores
// with PostgreSQL beside the server, two or four workers were slower than
// one when first measured (smaller batches, the same fixed cost per
// statement) and no faster after the per-key deduplication (BENCHMARKS.md,
// "Before and after" and "Tried and dropped"). At 128 reads a statement and
// about a millisecond a statement, one worker carries ~100,000 checks a
// second, far beyond what one replica's gRPC stack can take in.
/// A statement that takes longer fails its batch as UNAVAILABLE instead of
/// holding every queued check behind it (a half-open connection can block
/// a read until TCP gives up, minutes later).
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest batch: bounds one statement's rows and the wait of its last
/// caller; at 32 concurrent callers batches stay far below it.
const MAX_BATCH: usize = 128;
/// Checks queued beyond this wait to be queued (backpressure, not memory).
const QUEUE: usize = 4096;

/// One row per distinct (user, organization) key of the batch: the user's
/// account facts and their membership there, if any. A check needs two
/// keys, its caller's and its subject's, and a batch shares most of them:
/// a downstream service checks for many subjects as one caller, and a
/// caller asking about itself is one key, not two. Reading each key once
/// halved PostgreSQL's work per check (about 22 index lookups for 11
/// checks became 12; `pgbench` of the statement alone, 0.41 → 0.34 ms,
/// a round trip of 0.16 ms included).
///
/// The keys come from the array row, so both lookups are index-only scans
/// of the covering indexes `users (id, status, platform_admin, email)` and
/// `memberships (organization_id, user_id, role, permissions)`. One
/// statement, one snapshot: a check's caller and subject are read at the
/// same moment, as in `memberships::check_facts`.
///
/// A caller's key also names the session of its token (a subject's names
/// none, ''), read from the covering index of migration 5 in the same
/// statement: a token of an ended session is refused here as on every RPC.
const BATCH_SQL: &str = "SELECT q.i, u.email, u.status, u.platform_admin, m.role, m.permissions, \
     s.id, s.revoked_at, s.expires_at \
     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(user_id, org_id, sid, i) \
     JOIN users u ON u.id = q.user_id \
     LEFT JOIN memberships m ON (m.organization_id, m.user_id) = (q.org_id, q.user_id) \
     LEFT JOIN sessions s ON s.id = q.sid AND s.user_id = q.user_id";

/// One key's row of `BATCH_SQL`: an account that exists, and its
/// membership in the key's organization (`None`, `None` outside it).
#[derive(Debug, Clone)]
struct KeyFacts {
    email: String,
    status: String,
    platform_admin: bool,
    role: Option<String>,
    permissions: Option<i32>,
    session_id: Option<String>,
    session_revoked_at: Option<i64>,
    session_expires_at: Option<i64>,
}

/// A user's id, an organization's and a session's ('' for a subject): one
/// row of `BATCH_SQL`.
type Key<'a> = (&'a str, &'a str, &'a str);

/// The batch's distinct keys, and for each check the positions of its
/// caller's and its subject's key among them.
fn distinct_keys(batch: &[Pending]) -> (Vec<Key<'_>>, Vec<(usize, usize)>) {
    fn position<'a>(
        keys: &mut Vec<Key<'a>>,
        index: &mut HashMap<Key<'a>, usize>,
        key: Key<'a>,
    ) -> usize {
        *index.entry(key).or_insert_with(|| {
            keys.push(key);
            keys.len() - 1
        })
    }
    let mut keys = Vec::with_capacity(batch.len() + 1);
    let mut index = HashMap::with_capacity(batch.len() + 1);
    let mut checks = Vec::with_capacity(batch.len());
    for p in batch {
        let caller = position(
            &mut keys,
            &mut index,
            (&p.caller_id, &p.org, &p.caller_session),
        );
        let subject = position(&mut keys, &mut index, (&p.subject_id, &p.org, ""));
        checks.push((caller, subject));
    }
    (keys, checks)
}

/// A check's answer from its two keys' rows: what `memberships::check_facts`
/// returns for the same state (`None` when the caller's account does not
/// exist).
fn assemble(
    subject_id: &str,
    caller: Option<&KeyFacts>,
    subject: Option<&KeyFacts>,
) -> Option<CheckFacts> {
    let caller = caller?;
    Some(CheckFacts {
        caller_email: caller.email.clone(),
        caller_status: caller.status.clone(),
        caller_platform_admin: caller.platform_admin,
        caller_role: caller.role.clone(),
        subject_exists: subject.map(|_| subject_id.to_string()),
        subject_status: subject.map(|s| s.status.clone()),
        subject_platform_admin: subject.map(|s| s.platform_admin),
        subject_role: subject.and_then(|s| s.role.clone()),
        subject_permissions: subject.and_then(|s| s.permissions),
        caller_session_id: caller.session_id.clone(),
        caller_session_revoked_at: caller.session_revoked_at,
        caller_session_expires_at: caller.session_expires_at,
    })
}

type Reply = Result<Option<CheckFacts>, Arc<sqlx::Error>>;

struct Pending {
    caller_id: String,
    caller_session: String,
    subject_id: String,
    org: String,
    reply: oneshot::Sender<Reply>,
}

/// The queue in front of the batch worker; cheap to share.
#[derive(Clone)]
pub struct CheckBatcher {
    queue: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
}

/// Totals since start, for `/metrics`: reads ÷ statements is the mean batch
/// size, which tells an operator how much the batching is saving.
#[derive(Default)]
struct Stats {
    statements: AtomicU64,
    reads: AtomicU64,
}

impl std::fmt::Debug for CheckBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckBatcher").finish_non_exhaustive()
    }
}

impl CheckBatcher {
    /// Starts the worker on the current runtime. It stops when the last
    /// `CheckBatcher` is dropped and the queue has drained.
    pub fn start(pool: PgPool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        tokio::spawn(work(pool, rx, stats.clone()));
        Self { queue, stats }
    }

    /// (statements, reads) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.stats.statements.load(Ordering::Relaxed),
            self.stats.reads.load(Ordering::Relaxed),
        )
    }

    /// The same answer `memberships::check_facts` gives, read together with
    /// whatever other checks are waiting.
    pub async fn check_facts(
        &self,
        caller_id: &str,
        caller_session: &str,
        subject_id: &str,
        org: &str,
    ) -> Result<Option<CheckFacts>, DomainError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            caller_id: caller_id.to_string(),
            caller_session: caller_session.to_string(),
            subject_id: subject_id.to_string(),
            org: org.to_string(),
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(DomainError::Unavailable);
        }
        match answer.await {
            Ok(Ok(facts)) => Ok(facts),
            Ok(Err(e)) => Err(super::db_err(sea_orm::DbErr::Query(
                sea_orm::RuntimeErr::SqlxError(e),
            ))),
            // The worker went away with the request (the runtime is
            // shutting down): the same as a lost connection.
            Err(_) => Err(DomainError::Unavailable),
        }
    }
}

/// One worker: gathers what is queued, reads it, answers, and again.
///
/// It keeps one pooled connection for as long as checks keep coming and
/// gives it back the moment the queue is empty. Taking a connection from
/// the pool for every statement cost a spawned task per return, and at the
/// start of a burst the pool opened a new connection for each of the first
/// few statements (the previous one not yet back), about 90 ms apiece on
/// this machine, stalling every queued check behind it. Giving it back when
/// idle matters as well: closing the pool at shutdown waits for every
/// checked-out connection.
async fn work(pool: PgPool, mut rx: mpsc::Receiver<Pending>, stats: Arc<Stats>) {
    use tokio::sync::mpsc::error::TryRecvError;
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        let batch = {
            let first = match rx.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    conn = None;
                    let Some(p) = rx.recv().await else {
                        return;
                    };
                    p
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        // A caller that gave up (deadline, disconnect) needs no read.
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        stats.statements.fetch_add(1, Ordering::Relaxed);
        stats.reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let attempt = tokio::time::timeout(STATEMENT_TIMEOUT, async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(pool.acquire().await?),
            };
            read(c, &batch).await
        })
        .await;
        let answers = attempt.unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "CheckPermission batch statement timed out",
            )))
        });
        match answers {
            Ok(answers) => {
                for (p, facts) in batch.into_iter().zip(answers) {
                    let _ = p.reply.send(Ok(facts));
                }
            }
            Err(e) => {
                // The connection may be broken or stopped mid-statement:
                // closed here, never handed back to the pool.
                if let Some(c) = conn.take() {
                    drop(c.detach());
                }
                let e = Arc::new(e);
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One statement for the whole batch; the answers in the batch's order.
async fn read(
    conn: &mut PgConnection,
    batch: &[Pending],
) -> Result<Vec<Option<CheckFacts>>, sqlx::Error> {
    let (keys, checks) = distinct_keys(batch);
    let users: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let orgs: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let sessions: Vec<&str> = keys.iter().map(|k| k.2).collect();
    let rows = sqlx::query(BATCH_SQL)
        .bind(users)
        .bind(orgs)
        .bind(sessions)
        .fetch_all(conn)
        .await?;
    let mut facts: Vec<Option<KeyFacts>> = vec![None; keys.len()];
    for row in rows {
        // By position, in `BATCH_SQL`'s order (a name lookup per column
        // per row was measurable at this rate).
        let i: i64 = row.try_get(0)?;
        let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| facts.get_mut(i)) else {
            return Err(sqlx::Error::Decode(
                format!("batch row {i} out of range").into(),
            ));
        };
        *slot = Some(KeyFacts {
            email: row.try_get(1)?,
            status: row.try_get(2)?,
            platform_admin: row.try_get(3)?,
            role: row.try_get(4)?,
            permissions: row.try_get(5)?,
            session_id: row.try_get(6)?,
            session_revoked_at: row.try_get(7)?,
            session_expires_at: row.try_get(8)?,
        });
    }
    let facts_of = |k: usize| facts.get(k).and_then(Option::as_ref);
    Ok(batch
        .iter()
        .zip(checks)
        .map(|(p, (caller, subject))| assemble(&p.subject_id, facts_of(caller), facts_of(subject)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(caller: &str, subject: &str, org: &str) -> Pending {
        Pending {
            caller_id: caller.into(),
            caller_session: format!("{caller}-session"),
            subject_id: subject.into(),
            org: org.into(),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn each_key_is_read_once_per_batch() {
        let batch = [
            pending("svc", "a", "o1"),
            pending("svc", "b", "o1"),
            pending("a", "a", "o1"),
            pending("svc", "a", "o2"),
            pending("b", "svc", "o1"),
        ];
        let (keys, checks) = distinct_keys(&batch);
        assert_eq!(
            keys,
            [
                ("svc", "o1", "svc-session"),
                ("a", "o1", ""),
                ("b", "o1", ""),
                ("a", "o1", "a-session"),
                ("svc", "o2", "svc-session"),
                ("a", "o2", ""),
                ("b", "o1", "b-session"),
                ("svc", "o1", ""),
            ]
        );
        assert_eq!(checks, [(0, 1), (0, 2), (3, 1), (4, 5), (6, 7)]);
        // Every check's two keys are the ones it asked about: the caller's
        // with its session, the subject's with none.
        for (p, (c, s)) in batch.iter().zip(&checks) {
            assert_eq!(
                keys[*c],
                (
                    p.caller_id.as_str(),
                    p.org.as_str(),
                    p.caller_session.as_str()
                )
            );
            assert_eq!(keys[*s], (p.subject_id.as_str(), p.org.as_str(), ""));
        }
    }

    fn key(status: &str, admin: bool, role: Option<&str>, permissions: Option<i32>) -> KeyFacts {
        KeyFacts {
            email: format!("{status}@example.com"),
            status: status.into(),
            platform_admin: admin,
            role: role.map(Into::into),
            permissions,
            session_id: Some("sess".into()),
            session_revoked_at: None,
            session_expires_at: Some(9),
        }
    }

    #[test]
    fn answers_match_the_single_read() {
        let caller = key("active", false, Some("manager"), Some(3));
        let subject = key("inactive", true, Some("member"), Some(64));
        let f = assemble("s", Some(&caller), Some(&subject)).expect("caller exists");
        assert_eq!(
            (
                f.caller_email.as_str(),
                f.caller_status.as_str(),
                f.caller_platform_admin
            ),
            ("active@example.com", "active", false)
        );
        assert_eq!(f.caller_role.as_deref(), Some("manager"));
        assert_eq!(f.subject_exists.as_deref(), Some("s"));
        assert_eq!(f.subject_status.as_deref(), Some("inactive"));
        assert_eq!(f.subject_platform_admin, Some(true));
        assert_eq!(f.subject_role.as_deref(), Some("member"));
        assert_eq!(f.subject_permissions, Some(64));
        // The session read with the caller's key is the caller's.
        assert!(f.caller_session().is_live(8));
        assert!(!f.caller_session().is_live(9));

        // A subject outside the organization: the account, no membership.
        let outsider = key("active", false, None, None);
        let f = assemble("s", Some(&caller), Some(&outsider)).expect("caller exists");
        assert_eq!(f.subject_exists.as_deref(), Some("s"));
        assert_eq!((f.subject_role, f.subject_permissions), (None, None));

        // No such subject: every subject fact is absent.
        let f = assemble("s", Some(&caller), None).expect("caller exists");
        assert_eq!(
            (f.subject_exists, f.subject_status, f.subject_platform_admin),
            (None, None, None)
        );
        assert_eq!((f.subject_role, f.subject_permissions), (None, None));

        // No such caller: no answer at all, as the single read's inner join.
        assert!(assemble("s", None, Some(&subject)).is_none());
    }
}
