//! Password-reset tokens (R14): single use, valid one hour, only a hash
//! stored. Consumed by one conditional UPDATE, so two racing resets with the
//! same token cannot both succeed.

use super::db_err;
use super::entity::password_reset_token as prt;
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    token_hash: String,
    ttl_ms: i64,
    now: i64,
) -> Result<(), DomainError> {
    prt::ActiveModel {
        token_hash: Set(token_hash),
        user_id: Set(user_id.to_string()),
        created_at: Set(now),
        expires_at: Set(now + ttl_ms),
        used_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Uses the token; returns its user if it was valid (unused, unexpired).
/// Every other outstanding token of that user dies with it.
pub async fn consume<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    let n = prt::Entity::update_many()
        .col_expr(prt::Column::UsedAt, Expr::value(now))
        .filter(prt::Column::TokenHash.eq(token_hash))
        .filter(prt::Column::UsedAt.is_null())
        .filter(prt::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if n != 1 {
        return Ok(None);
    }
    let Some(row) = prt::Entity::find_by_id(token_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    prt::Entity::update_many()
        .col_expr(prt::Column::UsedAt, Expr::value(now))
        .filter(prt::Column::UserId.eq(&row.user_id))
        .filter(prt::Column::UsedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(Some(row.user_id))
}

/// The user of a still-usable token, without using it.
pub async fn owner<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    Ok(prt::Entity::find_by_id(token_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .filter(|t| t.used_at.is_none() && t.expires_at > now)
        .map(|t| t.user_id))
}
