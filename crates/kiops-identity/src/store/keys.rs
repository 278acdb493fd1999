//! Signing keys kept in the database (embedded default and `keys rotate`).
//! Creating and rotating a key records its audit event (R19) in the same
//! transaction.

use super::audit;
use super::db_err;
use super::entity::signing_key;
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::session::{KeyStatus, StoredKey};
use crate::domain::DomainError;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter,
    QueryOrder, Set,
};
use serde_json::json;

impl From<signing_key::Model> for StoredKey {
    fn from(k: signing_key::Model) -> Self {
        Self {
            status: KeyStatus::parse(&k.status),
            kid: k.kid,
            private_key_pem: k.private_key_pem,
            created_at: k.created_at,
            retire_at: k.retire_at,
        }
    }
}

/// Keys still published in the JWKS (active and retiring), newest first.
pub async fn published<C: ConnectionTrait>(
    conn: &C,
    now: i64,
) -> Result<Vec<StoredKey>, DomainError> {
    let rows = signing_key::Entity::find()
        .filter(signing_key::Column::Status.ne(KeyStatus::Retired.as_str()))
        .order_by_desc(signing_key::Column::CreatedAt)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(StoredKey::from)
        .filter(|k| k.status.published(k.retire_at, now))
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

async fn insert_active<C: ConnectionTrait>(
    conn: &C,
    kid: &str,
    pem: String,
    now: i64,
) -> Result<(), DomainError> {
    signing_key::ActiveModel {
        kid: Set(kid.to_string()),
        private_key_pem: Set(pem),
        status: Set(KeyStatus::Active.as_str().into()),
        created_at: Set(now),
        retire_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Stores the first active key (`key.generated`).
pub async fn generate<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    kid: &str,
    pem: String,
    now: i64,
) -> Result<(), DomainError> {
    insert_active(conn, kid, pem, now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "key.generated", "signing_key", kid),
        now,
    )
    .await
}

/// Every key, newest first (for `keys list`).
pub async fn all<C: ConnectionTrait>(conn: &C) -> Result<Vec<StoredKey>, DomainError> {
    Ok(signing_key::Entity::find()
        .order_by_desc(signing_key::Column::CreatedAt)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(StoredKey::from)
        .collect())
}

/// Makes `kid` the active key (`key.rotated`); the previous active keys keep
/// being published until `retire_at`, so every token they signed can still
/// be verified. Returns the previous active keys.
pub async fn rotate<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    kid: &str,
    pem: String,
    retire_at: i64,
    now: i64,
) -> Result<Vec<String>, DomainError> {
    use sea_orm::sea_query::Expr;
    let active = KeyStatus::Active.as_str();
    let previous: Vec<String> = signing_key::Entity::find()
        .filter(signing_key::Column::Status.eq(active))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|k| k.kid)
        .collect();
    signing_key::Entity::update_many()
        .col_expr(
            signing_key::Column::Status,
            Expr::value(KeyStatus::Retiring.as_str()),
        )
        .col_expr(signing_key::Column::RetireAt, Expr::value(retire_at))
        .filter(signing_key::Column::Status.eq(active))
        .exec(conn)
        .await
        .map_err(db_err)?;
    insert_active(conn, kid, pem, now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "key.rotated", "signing_key", kid)
            .details(json!({"previous": previous, "previous_retire_at": retire_at})),
        now,
    )
    .await?;
    Ok(previous)
}
