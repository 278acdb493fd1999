//! Signing keys kept in the database (embedded default and `keys rotate`).

use super::db_err;
use super::entity::signing_key;
use crate::domain::DomainError;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter,
    QueryOrder, Set,
};

pub use signing_key::Model as StoredKey;

/// Keys still published in the JWKS (active and retiring), newest first.
pub async fn published<C: ConnectionTrait>(
    conn: &C,
    now: i64,
) -> Result<Vec<StoredKey>, DomainError> {
    let rows = signing_key::Entity::find()
        .filter(signing_key::Column::Status.ne("retired"))
        .order_by_desc(signing_key::Column::CreatedAt)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .filter(|k| k.status == "active" || k.retire_at.is_none_or(|t| t > now))
        .collect())
}

/// Serializes key creation between replicas starting at once on PostgreSQL
/// (SQLite's BEGIN IMMEDIATE already serializes writers).
pub async fn lock_for_creation<C: ConnectionTrait>(conn: &C) -> Result<(), DomainError> {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        conn.execute_unprepared("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

pub async fn insert_active<C: ConnectionTrait>(
    conn: &C,
    kid: &str,
    pem: String,
    now: i64,
) -> Result<(), DomainError> {
    signing_key::ActiveModel {
        kid: Set(kid.to_string()),
        private_key_pem: Set(pem),
        status: Set("active".into()),
        created_at: Set(now),
        retire_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Every key, newest first (for `keys list`).
pub async fn all<C: ConnectionTrait>(conn: &C) -> Result<Vec<StoredKey>, DomainError> {
    signing_key::Entity::find()
        .order_by_desc(signing_key::Column::CreatedAt)
        .all(conn)
        .await
        .map_err(db_err)
}

/// Makes `kid` the active key; the previous active keys keep being published
/// until `retire_at`, so every token they signed can still be verified.
pub async fn rotate<C: ConnectionTrait>(
    conn: &C,
    kid: &str,
    pem: String,
    retire_at: i64,
    now: i64,
) -> Result<Vec<String>, DomainError> {
    use sea_orm::sea_query::Expr;
    let previous: Vec<String> = signing_key::Entity::find()
        .filter(signing_key::Column::Status.eq("active"))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|k| k.kid)
        .collect();
    signing_key::Entity::update_many()
        .col_expr(signing_key::Column::Status, Expr::value("retiring"))
        .col_expr(signing_key::Column::RetireAt, Expr::value(retire_at))
        .filter(signing_key::Column::Status.eq("active"))
        .exec(conn)
        .await
        .map_err(db_err)?;
    insert_active(conn, kid, pem, now).await?;
    Ok(previous)
}
