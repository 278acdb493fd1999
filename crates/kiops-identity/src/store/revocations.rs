//! Revocation events (R16): written in the transaction of every change that
//! narrows someone's access, read by `AuthService.WatchRevocations` on any
//! replica.
//!
//! Watchers resume by `seq`, not by `id`. An `id` is taken when the row is
//! inserted, so on PostgreSQL a smaller id can commit after a larger one and
//! a watcher already past it would skip it for good. `seq` is given only to
//! committed rows, by one sequencer at a time (`sequence`), so what any
//! reader sees is always a prefix of `seq` order: resuming after the last
//! `seq` seen cannot skip an event.
//!
//! Rules: H6 (docs/rules.md).

use super::db_err;
use super::entity::revocation_event as rev;
use crate::clock::Clock;
use crate::domain::session::RevocationEvent;
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, NotSet,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement,
};

impl From<rev::Model> for RevocationEvent {
    fn from(e: rev::Model) -> Self {
        Self {
            seq: e.seq,
            user_id: e.user_id,
            organization_id: e.organization_id,
            session_id: e.session_id,
            revoked_at: e.revoked_at,
            reason: e.reason,
        }
    }
}

/// What a revocation covers.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub user_id: &'a str,
    pub organization_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// Every access of a user.
    pub fn user(user_id: &'a str) -> Self {
        Scope {
            user_id,
            ..Scope::default()
        }
    }

    /// A user's access in one organization (every user's, with `user_id` "").
    pub fn membership(user_id: &'a str, organization_id: &'a str) -> Self {
        Scope {
            user_id,
            organization_id: Some(organization_id),
            session_id: None,
        }
    }

    /// One session of a user.
    pub fn session(user_id: &'a str, session_id: &'a str) -> Self {
        Scope {
            user_id,
            organization_id: None,
            session_id: Some(session_id),
        }
    }
}

pub async fn record<C: ConnectionTrait>(
    conn: &C,
    scope: Scope<'_>,
    reason: &str,
    now: i64,
) -> Result<(), DomainError> {
    rev::ActiveModel {
        id: NotSet,
        user_id: Set(scope.user_id.to_string()),
        organization_id: Set(scope.organization_id.map(str::to_string)),
        revoked_at: Set(now),
        reason: Set(reason.to_string()),
        session_id: Set(scope.session_id.map(str::to_string)),
        seq: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Any replica may sequence; PostgreSQL serialises them with this
/// transaction-scoped advisory lock, SQLite with its single writer.
const SEQUENCER_LOCK: i64 = 0x6b69_6f70_7372_6571; // "kiopsreq"

/// Numbers every committed, unnumbered event after the largest `seq` so far,
/// in id order. Held under the lock until commit, so a later run's numbers
/// are always larger and become visible after this run's. Returns how many
/// were numbered.
///
/// Numbering also dates each event no earlier than `clock`'s now, read after
/// the numbering: an event is numbered only once its transaction committed,
/// so after every Refresh or Login that read the state it revokes, however
/// long that transaction waited after it was dated. A token minted from the
/// old state is then older than the event for offline verifiers too (H6).
pub async fn sequence(store: &super::Store, clock: &Clock) -> Result<u64, DomainError> {
    let pending = rev::Entity::find()
        .select_only()
        .column(rev::Column::Id)
        .filter(rev::Column::Seq.is_null())
        .limit(1)
        .into_tuple::<i64>()
        .one(store.conn())
        .await
        .map_err(db_err)?;
    if pending.is_none() {
        return Ok(0);
    }
    let tx = store.begin_write().await?;
    let backend = tx.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            [SEQUENCER_LOCK.into()],
        ))
        .await
        .map_err(db_err)?;
    }
    // The statement's snapshot is taken after the lock is held, so it sees
    // every earlier run's numbers.
    let base = latest_seq(&tx).await?;
    let n = tx
        .execute_unprepared(
            "UPDATE revocation_events SET seq = p.base + p.rn \
             FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn, \
                     (SELECT COALESCE(MAX(seq), 0) FROM revocation_events) AS base \
                   FROM revocation_events WHERE seq IS NULL) AS p \
             WHERE revocation_events.id = p.id",
        )
        .await
        .map_err(db_err)?
        .rows_affected();
    // Read after the numbering's snapshot, so after every numbered commit.
    let now = clock.now_ms();
    rev::Entity::update_many()
        .col_expr(rev::Column::RevokedAt, Expr::value(now))
        .filter(rev::Column::Seq.gt(base))
        .filter(rev::Column::RevokedAt.lt(now))
        .exec(&tx)
        .await
        .map_err(db_err)?;
    tx.commit().await?;
    Ok(n)
}

/// Numbered events after `after_seq`, in `seq` order.
pub async fn after<C: ConnectionTrait>(
    conn: &C,
    after_seq: i64,
    limit: u64,
) -> Result<Vec<RevocationEvent>, DomainError> {
    Ok(rev::Entity::find()
        .filter(rev::Column::Seq.gt(after_seq))
        .order_by_asc(rev::Column::Seq)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(RevocationEvent::from)
        .collect())
}

/// The largest `seq` given so far (0 for none).
pub async fn latest_seq<C: ConnectionTrait>(conn: &C) -> Result<i64, DomainError> {
    Ok(rev::Entity::find()
        .select_only()
        .column_as(rev::Column::Seq.max(), "m")
        .into_tuple::<Option<i64>>()
        .one(conn)
        .await
        .map_err(db_err)?
        .flatten()
        .unwrap_or(0))
}
