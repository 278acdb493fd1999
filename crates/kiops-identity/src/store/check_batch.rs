//! CheckPermission reads on PostgreSQL, answered many to a statement (the
//! statement itself is `check_facts::read_batch`).
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

use super::check_facts::{read_batch, CheckKey};
use super::DomainError;
use crate::domain::membership::CheckFacts;
use sea_orm::sqlx;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgPool, Postgres};
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

type Reply = Result<Option<CheckFacts>, Arc<sqlx::Error>>;

struct Pending {
    key: CheckKey,
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

    /// The same answer as the single statement, read together with
    /// whatever other checks are waiting.
    pub async fn check_facts(&self, key: CheckKey) -> Result<Option<CheckFacts>, DomainError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { key, reply };
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
            let keys: Vec<&CheckKey> = batch.iter().map(|p| &p.key).collect();
            read_batch(c, &keys).await
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
