//! Email-verification tokens (H8): single use, valid 24 hours,
//! only a SHA-256 stored. A token is used by one conditional UPDATE, and
//! issuing a new one kills every older one in the same transaction, so of a
//! resend and a verification with the old token at the same instant only
//! one can win (both also lock the user row first, see `users::lock`).
//! Each write records its audit event (R19).

use super::entity::email_verification_token as evt;
use super::{audit, db_err, users};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use serde_json::json;

pub const TTL_MS: i64 = 24 * 3600 * 1000;

/// Kills the user's outstanding tokens and stores a new one
/// (`user.verification_email_sent`, or `…_resent` for a resend).
pub async fn replace<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    token_hash: String,
    resend: bool,
    now: i64,
) -> Result<(), DomainError> {
    kill_all(conn, user_id, now).await?;
    evt::ActiveModel {
        token_hash: Set(token_hash),
        user_id: Set(user_id.to_string()),
        created_at: Set(now),
        expires_at: Set(now + TTL_MS),
        used_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    let action = if resend {
        "user.verification_email_resent"
    } else {
        "user.verification_email_sent"
    };
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, action, "user", user_id),
        now,
    )
    .await
}

async fn kill_all<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    evt::Entity::update_many()
        .col_expr(evt::Column::UsedAt, Expr::value(now))
        .filter(evt::Column::UserId.eq(user_id))
        .filter(evt::Column::UsedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The user of a token that is still usable, without using it.
pub async fn owner<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    Ok(evt::Entity::find_by_id(token_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .filter(|t| t.used_at.is_none() && t.expires_at > now)
        .map(|t| t.user_id))
}

/// Uses the token of `user` and marks the address proven
/// (`user.email_verified`). False (nothing written) when the token is not
/// usable, or no longer this user's.
pub async fn verify<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    user: &users::User,
    token_hash: &str,
    now: i64,
) -> Result<bool, DomainError> {
    if !consume(conn, token_hash, &user.id, now).await? {
        return Ok(false);
    }
    users::mark_email_verified(conn, &user.id, now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(
            Actor::User {
                id: user.id.clone(),
                email: user.email.clone(),
            },
            "user.email_verified",
            "user",
            &user.id,
        )
        .details(json!({"by": "verification_link"})),
        now,
    )
    .await?;
    Ok(true)
}

/// Uses the token of `user_id` (checked row count: unused, unexpired, and
/// still this user's); every other token of the user dies with it.
async fn consume<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    user_id: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = evt::Entity::update_many()
        .col_expr(evt::Column::UsedAt, Expr::value(now))
        .filter(evt::Column::TokenHash.eq(token_hash))
        .filter(evt::Column::UserId.eq(user_id))
        .filter(evt::Column::UsedAt.is_null())
        .filter(evt::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if n != 1 {
        return Ok(false);
    }
    kill_all(conn, user_id, now).await?;
    Ok(true)
}
