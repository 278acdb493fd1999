//! Revocation events (R16): written in the transaction of every change that
//! narrows someone's access, read by `AuthService.WatchRevocations` on any
//! replica. The id is an increasing integer, so a watcher resumes exactly
//! after the last event it saw.

use super::db_err;
use super::entity::revocation_event as rev;
use crate::domain::DomainError;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, NotSet, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

pub use rev::Model as RevocationEvent;

/// What a revocation covers.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub user_id: &'a str,
    pub organization_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
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
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub async fn after<C: ConnectionTrait>(
    conn: &C,
    after_id: i64,
    limit: u64,
) -> Result<Vec<RevocationEvent>, DomainError> {
    rev::Entity::find()
        .filter(rev::Column::Id.gt(after_id))
        .order_by_asc(rev::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)
}

pub async fn latest_id<C: ConnectionTrait>(conn: &C) -> Result<i64, DomainError> {
    Ok(rev::Entity::find()
        .order_by_desc(rev::Column::Id)
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|r| r.id)
        .unwrap_or(0))
}
