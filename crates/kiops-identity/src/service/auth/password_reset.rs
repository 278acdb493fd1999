//! RequestPasswordReset and ResetPassword (R14): single-use emailed tokens;
//! a reset unlocks the account and revokes every session (R15, R16).

use super::for_account_after_answer;
use crate::app::App;
use crate::auth::secrets::hash_token;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::error::reason;
use crate::domain::{password_policy, validate, DomainError};
use crate::service::credentials;
use crate::store::logins::actor_of;
use crate::store::{password_resets, users};
use kiops_proto::v1::ResetPasswordRequest;

/// Always OK, in the same time whether the email exists or not: the
/// lookup and the write happen in a background task after the answer.
pub async fn request_password_reset(
    app: &App,
    meta: &RequestMeta,
    email: &str,
) -> Result<(), DomainError> {
    let what = "password reset request failed";
    for_account_after_answer(app, meta, email, what, |app, meta, user| async move {
        let now = app.clock.now_ms();
        let tx = app.store.begin_write().await?;
        credentials::queue_password_reset(&app, &tx, &meta, Actor::Anonymous, &user, false, now)
            .await?;
        tx.commit().await?;
        app.mail_wakeup.notify_one();
        Ok(())
    })
}

/// Sets a new password with a reset token: unlocks the account and
/// revokes every session.
pub async fn reset_password(
    app: App,
    meta: RequestMeta,
    r: ResetPasswordRequest,
) -> Result<(), DomainError> {
    validate::opaque_token("token", &r.token)?;
    validate::password_input("new_password", &r.new_password)?;
    app.throttle.check(&meta.peer, None)?;
    let invalid = || {
        DomainError::precondition(
            reason::INVALID_RESET_TOKEN,
            "the reset link is invalid, used or expired",
        )
    };
    let hash = hash_token(&r.token);
    let now = app.clock.now_ms();
    // Check the policy against the account's email before hashing.
    let owner = password_resets::owner(app.store.conn(), &hash, now)
        .await?
        .ok_or_else(invalid)?;
    let user = users::find_by_id(app.store.conn(), &owner)
        .await?
        .ok_or_else(invalid)?;
    password_policy::check("new_password", &r.new_password, &user.email)?;
    let new_hash = app.hasher.hash(r.new_password).await?;
    let tx = app.store.begin_write().await?;
    if !password_resets::reset(&tx, &meta, actor_of(&user), &hash, new_hash, now).await? {
        return Err(invalid());
    }
    tx.commit().await
}
