//! The failure halves of a login attempt (R11, R12): each applies its change
//! to the account's counters and records its audit events (R19) in the
//! caller's transaction.
//!
//! Rules: H2 (docs/rules.md).

use super::audit;
use super::users::{self, User};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::model::StoredStatus;
use crate::domain::DomainError;
use sea_orm::ConnectionTrait;
use serde_json::json;

/// The lockout rule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    pub threshold: i32,
    pub lock_ms: i64,
}

/// What a failed attempt did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// This attempt locked the account.
    pub locked_now: bool,
    /// The email is an account's.
    pub known: bool,
}

/// Records a failed attempt (`users::fail_login`) and `auth.login_failed`,
/// plus `user.locked` when it locked the account. Attempts refused because
/// of the account's state are audited with `"reason": "locked"` (or
/// `"inactive"`): they do not count as wrong passwords.
pub async fn fail<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    email: &str,
    failure: users::Failure,
    lockout: Lockout,
    now: i64,
) -> Result<Failed, DomainError> {
    let evaluated = failure == users::Failure::WrongPassword;
    let locked_now = users::fail_login(
        conn,
        email,
        failure,
        lockout.threshold,
        lockout.lock_ms,
        now,
    )
    .await?;
    let user = users::find_by_email(conn, email).await?;
    let (actor, target) = match &user {
        Some(u) => (actor_of(u), u.id.clone()),
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
        conn,
        meta,
        AuditEntry::new(actor.clone(), "auth.login_failed", "user", &target).details(details),
        now,
    )
    .await?;
    if locked_now {
        audit::record(
            conn,
            meta,
            AuditEntry::new(actor, "user.locked", "user", &target).details(json!({
                "after": {"locked_until": now + lockout.lock_ms}
            })),
            now,
        )
        .await?;
    }
    Ok(Failed {
        locked_now,
        known: user.is_some(),
    })
}

/// A failed second-factor code (R30): counted on the same counters as a
/// wrong password (`users::fail_login`, `failure` as there) and audited as
/// `auth.second_factor_failed` with `why` (e.g. "wrong", "replayed",
/// "locked"), plus `user.locked` when it locked the account.
#[allow(clippy::too_many_arguments)]
pub async fn fail_second_factor<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    user: &User,
    failure: users::Failure,
    method: &str,
    why: &str,
    lockout: Lockout,
    now: i64,
) -> Result<bool, DomainError> {
    let locked_now = users::fail_login(
        conn,
        &user.email,
        failure,
        lockout.threshold,
        lockout.lock_ms,
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(
            actor_of(user),
            "auth.second_factor_failed",
            "user",
            &user.id,
        )
        .details(json!({"method": method, "reason": why})),
        now,
    )
    .await?;
    if locked_now {
        audit::record(
            conn,
            meta,
            AuditEntry::new(actor_of(user), "user.locked", "user", &user.id).details(json!({
                "after": {"locked_until": now + lockout.lock_ms}
            })),
            now,
        )
        .await?;
    }
    Ok(locked_now)
}

/// A right password refused for another reason (`why`): the attempt's slot
/// back and `auth.login_refused`.
pub async fn refuse<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    user: &User,
    org: Option<&str>,
    why: &str,
    now: i64,
) -> Result<(), DomainError> {
    users::release_attempt(conn, &user.id).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor_of(user), "auth.login_refused", "user", &user.id)
            .details(json!({"email": user.email, "organization_id": org, "reason": why})),
        now,
    )
    .await
}

/// The account as the actor of its own event.
pub fn actor_of(u: &User) -> Actor {
    Actor::User {
        id: u.id.clone(),
        email: u.email.clone(),
    }
}
