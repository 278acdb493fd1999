//! Password-reset tokens (R14): single use, valid one hour, only a hash
//! stored. Consumed by one conditional UPDATE, so two racing resets with the
//! same token cannot both succeed. A reset revokes every session of the
//! account (R15, R16). Each write records its audit event (R19).

use super::entity::password_reset_token as prt;
use super::{audit, db_err, revocations, sessions, single_use, users};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::DomainError;
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};
use serde_json::json;

/// A new reset token (`user.password_reset_requested`).
#[allow(clippy::too_many_arguments)]
pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    token_hash: String,
    ttl_ms: i64,
    by_manager: bool,
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
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.password_reset_requested", "user", user_id)
            .details(json!({"by_manager": by_manager})),
        now,
    )
    .await
}

/// Uses the token and sets the new password hash: the account is unlocked,
/// every session revoked, with the revocation event and
/// `user.password_reset`. False (nothing written) when the token was not
/// usable.
pub async fn reset<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    token_hash: &str,
    new_hash: String,
    now: i64,
) -> Result<bool, DomainError> {
    let Some(user_id) = consume(conn, token_hash, now).await? else {
        return Ok(false);
    };
    users::set_password(conn, &user_id, new_hash, now).await?;
    let revoked =
        sessions::revoke_all_for_user(conn, &user_id, None, "password_reset", now).await?;
    revocations::record(
        conn,
        revocations::Scope::user(&user_id),
        "password_changed",
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.password_reset", "user", &user_id)
            .details(json!({"sessions_revoked": revoked, "unlocked": true})),
        now,
    )
    .await?;
    Ok(true)
}

/// Uses the token; returns its user if it was valid (unused, unexpired).
/// Every other outstanding token of that user dies with it.
async fn consume<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    if !single_use::use_one::<prt::Entity, _>(conn, token_hash, None, now).await? {
        return Ok(None);
    }
    let Some(row) = prt::Entity::find_by_id(token_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    single_use::use_all::<prt::Entity, _>(conn, &row.user_id, now).await?;
    Ok(Some(row.user_id))
}

/// The user of a still-usable token, without using it.
pub async fn owner<C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError> {
    single_use::owner::<prt::Entity, _>(conn, token_hash, now).await
}
