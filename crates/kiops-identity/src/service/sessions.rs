//! Sessions a user can see and end (issue 24): their own, and for a
//! PlatformAdmin anyone's. Ending one takes effect on the next call here
//! (callers are loaded from current state) and reaches downstream
//! verifiers as a revocation event naming the session.

use super::users::admin_target;
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::session::{SessionInfo, MAX_LISTED_SESSIONS};
use crate::domain::{validate, Caller, DomainError, FieldViolation};
use crate::store::{sessions, WriteTx};

/// ListMySessions: the caller's live sessions, newest first.
pub async fn list_mine(app: &App, caller: &Caller) -> Result<Vec<SessionInfo>, DomainError> {
    let now = app.clock.now_ms();
    sessions::list_live(app.store.conn(), &caller.user_id, now, MAX_LISTED_SESSIONS).await
}

/// ListUserSessions: a PlatformAdmin reads any account's live sessions.
pub async fn list_for_user(
    app: &App,
    caller: &Caller,
    user_id: &str,
) -> Result<Vec<SessionInfo>, DomainError> {
    let target = admin_target(app, caller, user_id, false).await?;
    let now = app.clock.now_ms();
    sessions::list_live(app.store.conn(), &target.id, now, MAX_LISTED_SESSIONS).await
}

/// RevokeSession: one of the caller's own live sessions; any other id is
/// NOT_FOUND, so nobody learns whether another's session exists.
pub async fn revoke(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    session_id: String,
) -> Result<(), DomainError> {
    let id = validate::id("session_id", &session_id)?;
    let tx = app.store.begin_write().await?;
    if !sessions::end(&tx, &meta, caller.actor(), &caller.user_id, &id, &app.clock).await? {
        return Err(DomainError::not_found("session"));
    }
    tx.commit().await
}

/// RevokeOtherSessions: every live session of the caller but the calling
/// token's. Returns how many this call ended.
pub async fn revoke_others(
    app: App,
    meta: RequestMeta,
    caller: Caller,
) -> Result<u64, DomainError> {
    let Some(current) = caller.session_id.clone() else {
        return Err(
            FieldViolation::new("authorization", "the access token names no session").into(),
        );
    };
    end_all(&app, &meta, &caller, &caller.user_id, Some(&current)).await
}

/// RevokeUserSessions: a PlatformAdmin ends every live session of an
/// account (theirs included, when it is theirs).
pub async fn revoke_for_user(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    user_id: String,
) -> Result<u64, DomainError> {
    let target = admin_target(&app, &caller, &user_id, false).await?;
    end_all(&app, &meta, &caller, &target.id, None).await
}

/// Ends the live sessions of `user_id` but `keep`, each with its own event,
/// in one transaction. A session a racing call ended first is not counted
/// (and gets no second event).
async fn end_all(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    user_id: &str,
    keep: Option<&str>,
) -> Result<u64, DomainError> {
    let tx = app.store.begin_write().await?;
    let ended = end_all_of(&tx, app, meta, caller, user_id, keep).await?;
    tx.commit().await?;
    Ok(ended)
}

/// `end_all` inside the caller's transaction.
pub(super) async fn end_all_of(
    tx: &WriteTx,
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    user_id: &str,
    keep: Option<&str>,
) -> Result<u64, DomainError> {
    let now = app.clock.now_ms();
    let mut ended = 0;
    for id in sessions::live_ids(tx, user_id, now).await? {
        if Some(id.as_str()) != keep
            && sessions::end(tx, meta, caller.actor(), user_id, &id, &app.clock).await?
        {
            ended += 1;
        }
    }
    Ok(ended)
}
