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
/// Then one row per distinct session of the batch's callers (the tokens'
/// `sid`), its index negated, from the covering index of migration 5: a
/// token of an ended session is refused here as on every RPC. Sessions are
/// few (a caller's checks share its token), so they are read apart from
/// the keys rather than joined to every key row.
const BATCH_SQL: &str = "SELECT q.i, u.email, u.status, u.platform_admin, m.role, m.permissions, \
     NULL::text, NULL::bigint, NULL::bigint \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(user_id, org_id, i) \
     JOIN users u ON u.id = q.user_id \
     LEFT JOIN memberships m ON (m.organization_id, m.user_id) = (q.org_id, q.user_id) \
     UNION ALL \
     SELECT -q.i, NULL, NULL, NULL, NULL, NULL, s.user_id, s.revoked_at, s.expires_at \
     FROM unnest($3::text[]) WITH ORDINALITY AS q(sid, i) \
     JOIN sessions s ON s.id = q.sid";

/// One key's row of `BATCH_SQL`: an account that exists, and its
/// membership in the key's organization (`None`, `None` outside it).
#[derive(Debug, Clone)]
struct KeyFacts {
    email: String,
    status: String,
    platform_admin: bool,
    role: Option<String>,
    permissions: Option<i32>,
}

/// One session's row of `BATCH_SQL`.
#[derive(Debug, Clone)]
struct SessionFacts {
    user_id: String,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
}

/// A user's id and an organization's: one row of `BATCH_SQL`.
type Key<'a> = (&'a str, &'a str);

/// What a batch reads once each, and for each check where its parts are.
#[derive(Debug, Default)]
struct Distinct<'a> {
    keys: Vec<Key<'a>>,
    sessions: Vec<&'a str>,
    /// Per check: its caller's key, its subject's key, its caller's session.
    checks: Vec<(usize, usize, usize)>,
}

fn position<K: std::hash::Hash + Eq + Copy>(
    list: &mut Vec<K>,
    index: &mut HashMap<K, usize>,
    item: K,
) -> usize {
    *index.entry(item).or_insert_with(|| {
        list.push(item);
        list.len() - 1
    })
}

/// The batch's distinct keys and sessions.
fn distinct(batch: &[Pending]) -> Distinct<'_> {
    let mut d = Distinct {
        keys: Vec::with_capacity(batch.len() + 1),
        sessions: Vec::new(),
        checks: Vec::with_capacity(batch.len()),
    };
    let mut keys = HashMap::with_capacity(batch.len() + 1);
    let mut sessions = HashMap::new();
    for p in batch {
        let caller = position(
            &mut d.keys,
            &mut keys,
            (p.caller_id.as_str(), p.org.as_str()),
        );
        let subject = position(
            &mut d.keys,
            &mut keys,
            (p.subject_id.as_str(), p.org.as_str()),
        );
        let session = position(&mut d.sessions, &mut sessions, p.caller_session.as_str());
        d.checks.push((caller, subject, session));
    }
    d
}

/// A check's answer from its two keys' rows and its caller's session row:
/// what `memberships::check_facts` returns for the same state (`None` when
/// the caller's account does not exist; no session unless it is the
/// caller's).
fn assemble(
    caller_id: &str,
    subject_id: &str,
    session_id: &str,
    caller: Option<&KeyFacts>,
    subject: Option<&KeyFacts>,
    session: Option<&SessionFacts>,
) -> Option<CheckFacts> {
    let caller = caller?;
    let session = session.filter(|s| s.user_id == caller_id);
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
        caller_session_id: session.map(|_| session_id.to_string()),
        caller_session_revoked_at: session.and_then(|s| s.revoked_at),
        caller_session_expires_at: session.and_then(|s| s.expires_at),
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
    let d = distinct(batch);
    let users: Vec<&str> = d.keys.iter().map(|k| k.0).collect();
    let orgs: Vec<&str> = d.keys.iter().map(|k| k.1).collect();
    let rows = sqlx::query(BATCH_SQL)
        .bind(users)
        .bind(orgs)
        .bind(&d.sessions)
        .fetch_all(conn)
        .await?;
    let mut facts: Vec<Option<KeyFacts>> = vec![None; d.keys.len()];
    let mut sessions: Vec<Option<SessionFacts>> = vec![None; d.sessions.len()];
    let out_of_range = |i: i64| sqlx::Error::Decode(format!("batch row {i} out of range").into());
    for row in rows {
        // By position, in `BATCH_SQL`'s order (a name lookup per column
        // per row was measurable at this rate).
        let i: i64 = row.try_get(0)?;
        if i > 0 {
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| facts.get_mut(i))
                .ok_or_else(|| out_of_range(i))?;
            *slot = Some(KeyFacts {
                email: row.try_get(1)?,
                status: row.try_get(2)?,
                platform_admin: row.try_get(3)?,
                role: row.try_get(4)?,
                permissions: row.try_get(5)?,
            });
        } else {
            let slot = usize::try_from(-i - 1)
                .ok()
                .and_then(|i| sessions.get_mut(i))
                .ok_or_else(|| out_of_range(i))?;
            *slot = Some(SessionFacts {
                user_id: row.try_get(6)?,
                revoked_at: row.try_get(7)?,
                expires_at: row.try_get(8)?,
            });
        }
    }
    let facts_of = |k: usize| facts.get(k).and_then(Option::as_ref);
    Ok(batch
        .iter()
        .zip(&d.checks)
        .map(|(p, &(caller, subject, session))| {
            assemble(
                &p.caller_id,
                &p.subject_id,
                &p.caller_session,
                facts_of(caller),
                facts_of(subject),
                sessions.get(session).and_then(Option::as_ref),
            )
        })
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
    fn each_key_and_session_is_read_once_per_batch() {
        let batch = [
            pending("svc", "a", "o1"),
            pending("svc", "b", "o1"),
            pending("a", "a", "o1"),
            pending("svc", "a", "o2"),
            pending("b", "svc", "o1"),
        ];
        let d = distinct(&batch);
        assert_eq!(
            d.keys,
            [
                ("svc", "o1"),
                ("a", "o1"),
                ("b", "o1"),
                ("svc", "o2"),
                ("a", "o2")
            ]
        );
        assert_eq!(d.sessions, ["svc-session", "a-session", "b-session"]);
        assert_eq!(
            d.checks,
            [(0, 1, 0), (0, 2, 0), (1, 1, 1), (3, 4, 0), (2, 0, 2)]
        );
        // Every check's parts are the ones it asked about.
        for (p, (c, s, sess)) in batch.iter().zip(&d.checks) {
            assert_eq!(d.keys[*c], (p.caller_id.as_str(), p.org.as_str()));
            assert_eq!(d.keys[*s], (p.subject_id.as_str(), p.org.as_str()));
            assert_eq!(d.sessions[*sess], p.caller_session);
        }
    }

    fn key(status: &str, admin: bool, role: Option<&str>, permissions: Option<i32>) -> KeyFacts {
        KeyFacts {
            email: format!("{status}@example.com"),
            status: status.into(),
            platform_admin: admin,
            role: role.map(Into::into),
            permissions,
        }
    }

    fn session(user: &str) -> SessionFacts {
        SessionFacts {
            user_id: user.into(),
            revoked_at: None,
            expires_at: Some(9),
        }
    }

    #[test]
    fn answers_match_the_single_read() {
        let caller = key("active", false, Some("manager"), Some(3));
        let subject = key("inactive", true, Some("member"), Some(64));
        let f = assemble(
            "c",
            "s",
            "sid",
            Some(&caller),
            Some(&subject),
            Some(&session("c")),
        )
        .expect("caller exists");
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
        // The caller's session: live until it expires.
        assert_eq!(f.caller_session_id.as_deref(), Some("sid"));
        assert!(f.caller_session().is_live(8));
        assert!(!f.caller_session().is_live(9));
        // Another user's session is no session of the caller's.
        let f = assemble("c", "s", "sid", Some(&caller), None, Some(&session("x")))
            .expect("caller exists");
        assert!(!f.caller_session().found);

        // A subject outside the organization: the account, no membership.
        let outsider = key("active", false, None, None);
        let f =
            assemble("c", "s", "sid", Some(&caller), Some(&outsider), None).expect("caller exists");
        assert_eq!(f.subject_exists.as_deref(), Some("s"));
        assert_eq!((f.subject_role, f.subject_permissions), (None, None));

        // No such subject: every subject fact is absent.
        let f = assemble("c", "s", "sid", Some(&caller), None, None).expect("caller exists");
        assert_eq!(
            (f.subject_exists, f.subject_status, f.subject_platform_admin),
            (None, None, None)
        );
        assert_eq!((f.subject_role, f.subject_permissions), (None, None));

        // No such caller: no answer at all, as the single read's inner join.
        assert!(assemble("c", "s", "sid", None, Some(&subject), None).is_none());
    }
}
