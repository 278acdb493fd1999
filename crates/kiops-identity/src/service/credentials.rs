//! Checking a password against the lockout rule (R11, R12) and queueing a
//! password-reset email: steps that several use cases share.
//!
//! Rules: H2, R12 (docs/rules.md).

use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::DomainError;
use crate::store::users::{self, User};
use crate::store::{logins, outbox, password_resets, WriteTx};

/// Password-reset tokens.
pub const RESET_TOKEN_PREFIX: &str = "kp";

/// Reserves an attempt (`users::reserve_login_attempt`), then verifies
/// the password: the user when it is right and the attempt was admitted;
/// otherwise the failure is recorded and None. A refused attempt (unknown,
/// inactive, locked or full account) is hashed against the dummy hash, so
/// it takes the time of a wrong password without evaluating the real one.
/// The caller that gets a user must still call `users::finish_login`
/// (rows affected checked) in the transaction that acts on it.
pub async fn check_password(
    app: &App,
    meta: &RequestMeta,
    email: &str,
    password: String,
    now: i64,
) -> Result<Option<User>, DomainError> {
    // A full hashing queue refuses before the reservation: an overloaded
    // server must not count failures against the account.
    let permit = app.hasher.admit()?;
    let reserved = users::reserve_login_attempt(
        app.store.writer(),
        email,
        app.settings.lockout_threshold,
        now,
        now - app.settings.lockout_ms,
    )
    .await?;
    let ok = app
        .hasher
        .verify_admitted(
            permit,
            password,
            reserved.as_ref().map(|u| u.password_hash.clone()),
        )
        .await?;
    match reserved {
        Some(user) if ok => Ok(Some(user)),
        reserved => {
            let failure = match reserved {
                Some(_) => users::Failure::WrongPassword,
                None => users::Failure::Refused,
            };
            record_failed_login(app, meta, email, failure, now).await?;
            Ok(None)
        }
    }
}

/// Records a failed attempt and audits it (`logins::fail`); the wrong
/// password that reaches the threshold locks the account. The same
/// statements run for known and unknown emails, evaluated or refused (same
/// work, R12).
pub async fn record_failed_login(
    app: &App,
    meta: &RequestMeta,
    email: &str,
    failure: users::Failure,
    now: i64,
) -> Result<(), DomainError> {
    let evaluated = failure == users::Failure::WrongPassword;
    let lockout = logins::Lockout {
        threshold: app.settings.lockout_threshold,
        lock_ms: app.settings.lockout_ms,
    };
    let tx = app.store.begin_write().await?;
    let failed = logins::fail(&tx, meta, email, failure, lockout, now).await?;
    tx.commit().await?;
    let result = if failed.locked_now {
        "locked"
    } else if !evaluated && failed.known {
        // Refused without evaluating the password (locked, inactive).
        "refused"
    } else {
        "failure"
    };
    app.metrics.logins.with_label_values(&[result]).inc();
    Ok(())
}

/// Creates a reset token for `user` and queues the email, inside the
/// caller's transaction.
pub async fn queue_password_reset(
    app: &App,
    conn: &WriteTx,
    meta: &RequestMeta,
    actor: Actor,
    user: &User,
    by_manager: bool,
    now: i64,
) -> Result<(), DomainError> {
    let token = random_token(RESET_TOKEN_PREFIX);
    let ttl_ms = crate::mail::messages::RESET_TTL_MINUTES * 60_000;
    password_resets::create(
        conn,
        meta,
        actor,
        &user.id,
        hash_token(&token),
        ttl_ms,
        by_manager,
        now,
    )
    .await?;
    outbox::enqueue(
        conn,
        crate::mail::messages::password_reset(
            &app.mail,
            &user.email,
            &token,
            now + ttl_ms,
            by_manager,
        ),
        now,
    )
    .await?;
    Ok(())
}
