//! Login sessions and their rotating refresh tokens (R15). Opening and
//! ending a session records its audit event (R19), and ending one its
//! revocation event (R16), in the caller's transaction. Refresh's rotation
//! is `rotation`'s.
//!
//! Rules: H1 (docs/rules.md).

use super::entity::{refresh_token, session};
use super::{audit, db_err, revocations};
use crate::clock::Clock;
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::session::{Session, SessionInfo};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde_json::json;

impl From<session::Model> for Session {
    fn from(s: session::Model) -> Self {
        Self {
            id: s.id,
            user_id: s.user_id,
            expires_at: s.expires_at,
        }
    }
}

/// `amr` of a session opened with a password.
pub const AMR_PASSWORD: &str = "pwd";
/// `amr` of a session opened with a password and a TOTP code (R30).
pub const AMR_PASSWORD_OTP: &str = "pwd otp";

impl From<session::Model> for SessionInfo {
    fn from(s: session::Model) -> Self {
        Self {
            amr: s.amr.split_whitespace().map(str::to_string).collect(),
            id: s.id,
            user_id: s.user_id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
            peer_address: s.peer_address,
        }
    }
}

pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub refresh_hash: String,
    pub now: i64,
    pub session_ttl_ms: i64,
    pub refresh_ttl_ms: i64,
    /// The organization the login's token is scoped to, for the audit event.
    pub organization_id: Option<&'a str>,
    /// How it was authenticated (`AMR_PASSWORD`, `AMR_PASSWORD_OTP`).
    pub amr: &'a str,
}

/// A login's session and its first refresh token (`auth.login_succeeded`).
pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
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
        user_agent: Set(meta.user_agent.clone()),
        peer_address: Set(meta.peer.clone()),
        amr: Set(s.amr.to_string()),
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
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "auth.login_succeeded", "session", &id)
            .details(json!({"organization_id": s.organization_id})),
        s.now,
    )
    .await?;
    Ok(model.into())
}

/// Ends `session` (Logout): revoked, with its revocation event and
/// `auth.logout`. False (nothing written) when a racing call ended it
/// after the caller read it live: on PostgreSQL that read does not lock,
/// and a second event for one session would be counted twice.
pub async fn logout<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    session: &Session,
    clock: &Clock,
) -> Result<bool, DomainError> {
    let now = clock.now_ms();
    if !revoke(conn, &session.id, "logout", now).await? {
        return Ok(false);
    }
    // Dated once the row is ours: a Refresh that held it committed first,
    // and its token is older than the event for offline verifiers too.
    let now = clock.now_ms().max(now);
    revocations::record(
        conn,
        revocations::Scope::session(&session.user_id, &session.id),
        "logout",
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "auth.logout", "session", &session.id),
        now,
    )
    .await?;
    Ok(true)
}

pub(super) async fn insert_refresh<C: ConnectionTrait>(
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
    Ok(sess.filter(|s| s.revoked_at.is_none()).map(Session::from))
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

/// The live sessions of `user_id` at `now`, newest first, at most `limit`.
pub async fn list_live<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    now: i64,
    limit: u64,
) -> Result<Vec<SessionInfo>, DomainError> {
    let rows = session::Entity::find()
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .order_by_desc(session::Column::CreatedAt)
        .order_by_desc(session::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(rows.into_iter().map(SessionInfo::from).collect())
}

/// Ids of the live sessions of `user_id` at `now`.
pub async fn live_ids<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    now: i64,
) -> Result<Vec<String>, DomainError> {
    session::Entity::find()
        .select_only()
        .column(session::Column::Id)
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .into_tuple::<String>()
        .all(conn)
        .await
        .map_err(db_err)
}

/// Ends the live session `session_id` of `user_id` on request
/// (RevokeSession and the like): revoked, with its revocation event and
/// `session.revoked`, together. False when `user_id` has no such live
/// session (another's, unknown, or ended by a racing call: no second event).
pub async fn end<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    session_id: &str,
    clock: &Clock,
) -> Result<bool, DomainError> {
    let now = clock.now_ms();
    let n = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(SESSION_REVOKED))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if n == 0 {
        return Ok(false);
    }
    // Dated once the row is ours, as Logout's.
    let now = clock.now_ms().max(now);
    revocations::record(
        conn,
        revocations::Scope::session(user_id, session_id),
        SESSION_REVOKED,
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "session.revoked", "session", session_id)
            .details(json!({"user_id": user_id})),
        now,
    )
    .await?;
    Ok(true)
}

/// Reason of the revocation events of sessions ended on request.
const SESSION_REVOKED: &str = "session_revoked";

/// The `amr` stored for `session_id` (space-separated), if it exists.
pub async fn amr<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
) -> Result<Option<String>, DomainError> {
    Ok(session::Entity::find_by_id(session_id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|s| s.amr))
}

/// Records that `session_id` of `user_id` proved a second factor
/// (ConfirmTotpEnrollment): its `amr` becomes `AMR_PASSWORD_OTP`, and
/// the tokens it mints from then on say so.
pub async fn upgrade_amr<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    session_id: &str,
) -> Result<(), DomainError> {
    session::Entity::update_many()
        .col_expr(session::Column::Amr, Expr::value(AMR_PASSWORD_OTP))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::UserId.eq(user_id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
