//! Email-verification tokens (H8): single use, valid 24 hours,
//! only a SHA-256 stored. A token is used by one conditional UPDATE, and
//! issuing a new one kills every older one in the same transaction, so of a
//! resend and a verification with the old token at the same instant only
//! one can win (both also lock the user row first, see `users::lock`).
//! Each write records its audit event (R19).

use super::entity::email_verification_token as evt;
use super::{audit, db_err, single_use, users};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::DomainError;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
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
    single_use::use_all::<evt::Entity, _>(conn, user_id, now).await?;
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

/// The user of a token that is still usable, without using it.
pub async fn owner<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    single_use::owner::<evt::Entity, _>(conn, token_hash, now).await
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
    if !single_use::use_one::<evt::Entity, _>(conn, token_hash, Some(user_id), now).await? {
        return Ok(false);
    }
    single_use::use_all::<evt::Entity, _>(conn, user_id, now).await?;
    Ok(true)
}
