//! Login sessions and their rotating refresh tokens (R15).

use super::db_err;
use super::entity::{refresh_token, session};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

pub use session::Model as Session;

pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub refresh_hash: String,
    pub now: i64,
    pub session_ttl_ms: i64,
    pub refresh_ttl_ms: i64,
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    s: NewSession<'_>,
) -> Result<Session, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let model = session::ActiveModel {
        id: Set(id.clone()),
        user_id: Set(s.user_id.to_string()),
        created_at: Set(s.now),
        last_used_at: Set(s.now),
        expires_at: Set(s.now + s.session_ttl_ms),
        revoked_at: Set(None),
        revoke_reason: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    insert_refresh(
        conn,
        &id,
        s.refresh_hash,
        s.now,
        (s.now + s.refresh_ttl_ms).min(model.expires_at),
    )
    .await?;
    Ok(model)
}

async fn insert_refresh<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
    hash: String,
    now: i64,
    expires_at: i64,
) -> Result<(), DomainError> {
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        token_hash: Set(hash),
        session_id: Set(session_id.to_string()),
        created_at: Set(now),
        expires_at: Set(expires_at),
        used_at: Set(None),
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current; `session` continues with the new token.
    Rotated { session: Session },
    /// The token had already been rotated (or raced with itself): it leaked,
    /// and the whole session has now been revoked.
    Reused { session: Session },
    /// Unknown, expired, or of a revoked or expired session.
    Invalid,
}

/// Rotates `presented_hash` to `new_hash` inside the caller's write
/// transaction. The conditional UPDATE on `used_at IS NULL` makes the token
/// single-use even when two requests present it at once.
pub async fn rotate<C: ConnectionTrait>(
    conn: &C,
    presented_hash: &str,
    new_hash: String,
    now: i64,
    refresh_ttl_ms: i64,
) -> Result<Rotation, DomainError> {
    // Fast path, three statements: claim the token if it is current, touch
    // its session if that is live, store the successor. Refresh runs on
    // every client every few minutes and all writes on SQLite share one
    // connection, so round trips are the cost. Anything unusual (unknown,
    // used, expired, revoked) falls through to the classifying path below;
    // the caller rolls the transaction back on every outcome but Rotated, so
    // a claim made here for a dead session does not stick.
    let claimed = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::TokenHash.eq(presented_hash))
        .filter(refresh_token::Column::UsedAt.is_null())
        .filter(refresh_token::Column::ExpiresAt.gt(now))
        .exec_with_returning(conn)
        .await
        .map_err(db_err)?;
    if let Some(token) = claimed.into_iter().next() {
        let live = session::Entity::update_many()
            .col_expr(session::Column::LastUsedAt, Expr::value(now))
            .filter(session::Column::Id.eq(&token.session_id))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(now))
            .exec_with_returning(conn)
            .await
            .map_err(db_err)?;
        let Some(sess) = live.into_iter().next() else {
            return Ok(Rotation::Invalid);
        };
        insert_refresh(
            conn,
            &sess.id,
            new_hash,
            now,
            (now + refresh_ttl_ms).min(sess.expires_at),
        )
        .await?;
        return Ok(Rotation::Rotated { session: sess });
    }
    let Some(token) = refresh_token::Entity::find_by_id(presented_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(Rotation::Invalid);
    };
    let Some(sess) = session::Entity::find_by_id(token.session_id.clone())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(Rotation::Invalid);
    };
    if sess.revoked_at.is_some() || sess.expires_at <= now {
        return Ok(Rotation::Invalid);
    }
    if token.used_at.is_some() {
        revoke(conn, &sess.id, "refresh_token_reused", now).await?;
        return Ok(Rotation::Reused { session: sess });
    }
    if token.expires_at <= now {
        return Ok(Rotation::Invalid);
    }
    let won = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::TokenHash.eq(presented_hash))
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected
        == 1;
    if !won {
        revoke(conn, &sess.id, "refresh_token_reused", now).await?;
        return Ok(Rotation::Reused { session: sess });
    }
    insert_refresh(
        conn,
        &sess.id,
        new_hash,
        now,
        (now + refresh_ttl_ms).min(sess.expires_at),
    )
    .await?;
    session::Entity::update_many()
        .col_expr(session::Column::LastUsedAt, Expr::value(now))
        .filter(session::Column::Id.eq(&sess.id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(Rotation::Rotated { session: sess })
}

/// The live session a refresh token belongs to, without using it (Logout).
pub async fn find_by_refresh<C: ConnectionTrait>(
    conn: &C,
    presented_hash: &str,
) -> Result<Option<Session>, DomainError> {
    let Some(token) = refresh_token::Entity::find_by_id(presented_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let sess = session::Entity::find_by_id(token.session_id)
        .one(conn)
        .await
        .map_err(db_err)?;
    Ok(sess.filter(|s| s.revoked_at.is_none()))
}

/// Revokes one session; returns whether it was live.
pub async fn revoke<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(n > 0)
}

/// Revokes every live session of a user, optionally sparing one.
pub async fn revoke_all_for_user<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    except_session: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<u64, DomainError> {
    let mut q = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = except_session {
        q = q.filter(session::Column::Id.ne(keep));
    }
    Ok(q.exec(conn).await.map_err(db_err)?.rows_affected)
}
