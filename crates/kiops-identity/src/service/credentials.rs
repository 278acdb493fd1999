//! Checking a password against the lockout rule (R11, R12) and queueing a
//! password-reset email: steps that several use cases share.

use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::model::StoredStatus;
use crate::domain::DomainError;
use crate::store::users::{self, User};
use crate::store::{audit, WriteTx};
use serde_json::json;

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

/// Records a failed attempt and audits it; the wrong password that
/// reaches the threshold locks the account. The same statements run for
/// known and unknown emails, evaluated or refused (same work, R12).
/// Attempts refused because of the account's state are audited with
/// `"reason": "locked"` (or `"inactive"`): they do not count as wrong
/// passwords.
pub async fn record_failed_login(
    app: &App,
    meta: &RequestMeta,
    email: &str,
    failure: users::Failure,
    now: i64,
) -> Result<(), DomainError> {
    let evaluated = failure == users::Failure::WrongPassword;
    let tx = app.store.begin_write().await?;
    let locked_now = users::fail_login(
        &tx,
        email,
        failure,
        app.settings.lockout_threshold,
        app.settings.lockout_ms,
        now,
    )
    .await?;
    let user = users::find_by_email(&tx, email).await?;
    let (actor, target) = match &user {
        Some(u) => (
            Actor::User {
                id: u.id.clone(),
                email: u.email.clone(),
            },
            u.id.clone(),
        ),
        None => (Actor::Anonymous, String::new()),
    };
    let details = match &user {
        Some(u) if !evaluated => json!({
            "email": email,
            "reason": if u.status == StoredStatus::Inactive { "inactive" } else { "locked" },
        }),
        _ => json!({"email": email}),
    };
    audit::record(
        &tx,
        meta,
        AuditEntry::new(actor.clone(), "auth.login_failed", "user", &target).details(details),
        now,
    )
    .await?;
    if locked_now {
        audit::record(
            &tx,
            meta,
            AuditEntry::new(actor, "user.locked", "user", &target).details(json!({
                "after": {"locked_until": now + app.settings.lockout_ms}
            })),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    let result = if locked_now {
        "locked"
    } else if !evaluated && user.is_some() {
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
    crate::store::password_resets::create(
        conn,
        &user.id,
        hash_token(&token),
        crate::mail::messages::RESET_TTL_MINUTES * 60_000,
        now,
    )
    .await?;
    crate::store::outbox::enqueue(
        conn,
        crate::mail::messages::password_reset(
            &app.mail,
            &user.email,
            &token,
            now + crate::mail::messages::RESET_TTL_MINUTES * 60_000,
            by_manager,
        ),
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.password_reset_requested", "user", &user.id)
            .details(json!({"by_manager": by_manager})),
        now,
    )
    .await
}
