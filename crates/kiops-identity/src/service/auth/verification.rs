//! Email verification (H8): VerifyEmail uses an emailed
//! single-use token; ResendVerificationEmail replaces it.

use super::{for_account_after_answer, VERIFICATION_TOKEN_PREFIX};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::error::reason;
use crate::domain::{validate, DomainError};
use crate::store::logins::actor_of;
use crate::store::users::{self, User};
use crate::store::{email_verifications, outbox, WriteTx};

/// A new verification token for `user` (killing the older ones) and its
/// email, inside the caller's transaction.
pub(super) async fn queue_verification_email(
    app: &App,
    tx: &WriteTx,
    meta: &RequestMeta,
    actor: Actor,
    user: &User,
    resend: bool,
    now: i64,
) -> Result<(), DomainError> {
    let token = random_token(VERIFICATION_TOKEN_PREFIX);
    email_verifications::replace(tx, meta, actor, &user.id, hash_token(&token), resend, now)
        .await?;
    outbox::enqueue(
        tx,
        crate::mail::messages::email_verification(
            &app.mail,
            &user.email,
            &token,
            now + email_verifications::TTL_MS,
        ),
        now,
    )
    .await?;
    Ok(())
}

/// VerifyEmail: uses the token and marks the address proven. The user
/// row is locked first (as `resend_verification_email` does), then the
/// token is used by a conditional UPDATE: a resend that committed first
/// has killed it.
pub async fn verify_email(app: App, meta: RequestMeta, token: String) -> Result<(), DomainError> {
    validate::opaque_token("token", &token)?;
    app.throttle.check(&meta.peer, None)?;
    let invalid = || {
        DomainError::precondition(
            reason::INVALID_VERIFICATION_TOKEN,
            "the verification link is invalid, used, replaced or expired",
        )
    };
    let hash = hash_token(&token);
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let owner = email_verifications::owner(&tx, &hash, now)
        .await?
        .ok_or_else(invalid)?;
    let user = users::lock(&tx, &owner).await?.ok_or_else(invalid)?;
    if !email_verifications::verify(&tx, &meta, &user, &hash, now).await? {
        return Err(invalid());
    }
    tx.commit().await
}

/// Always OK, in the same time whether the email exists or not (no
/// enumeration): throttled per peer and per email, and the lookup and
/// the write happen in a background task after the answer, as for
/// RequestPasswordReset.
pub async fn resend_verification_email(
    app: &App,
    meta: &RequestMeta,
    email: &str,
) -> Result<(), DomainError> {
    let what = "verification email resend failed";
    for_account_after_answer(app, meta, email, what, |app, meta, found| async move {
        if found.email_verified {
            return Ok(());
        }
        let now = app.clock.now_ms();
        let tx = app.store.begin_write().await?;
        // Decided under the row lock VerifyEmail also takes: a
        // verification that committed first makes this a no-op.
        let Some(user) = users::lock(&tx, &found.id)
            .await?
            .filter(|u| !u.email_verified)
        else {
            return Ok(());
        };
        queue_verification_email(&app, &tx, &meta, actor_of(&user), &user, true, now).await?;
        tx.commit().await?;
        app.mail_wakeup.notify_one();
        Ok(())
    })
}
