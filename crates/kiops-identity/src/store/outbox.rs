//! The email outbox (R20): emails are inserted in the transaction of the change
//! that causes them, and delivered later by `mail::sender`. A message is
//! claimed with a conditional UPDATE (a lease), so several replicas never
//! send the same message at once, and a crash before `mark_sent` only delays
//! it until the lease runs out.
//!
//! No usable secret at rest (H3): a message that carries a
//! single-use token (invitation, password reset, email verification) stores
//! its text with a placeholder and the token in `secret`. The sender puts
//! the token in at delivery; the UPDATE that records the delivery erases it,
//! and so does the sweep when the token expires undelivered. A copy of the
//! database then holds no link that works; the token itself is only stored
//! hashed in its own table.

use super::db_err;
use super::entity::email_outbox as outbox;
use crate::domain::invitation::Delivery;
use crate::domain::DomainError;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

/// A queued message, as the sender reads it.
#[derive(Clone)]
pub struct OutboxEmail {
    pub id: String,
    pub to_address: String,
    pub subject: String,
    /// The text, with a placeholder where `secret` goes.
    pub body_text: String,
    pub kind: String,
    pub attempts: i32,
    /// The token, sealed (`mail::seal`).
    pub secret: Option<String>,
}

/// The text and the token may hold a single-use link: never printed.
impl std::fmt::Debug for OutboxEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEmail")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempts", &self.attempts)
            .field("has_secret", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl From<outbox::Model> for OutboxEmail {
    fn from(m: outbox::Model) -> Self {
        OutboxEmail {
            id: m.id,
            to_address: m.to_address,
            subject: m.subject,
            body_text: m.body_text,
            kind: m.kind,
            attempts: m.attempts,
            secret: m.secret,
        }
    }
}

pub struct NewEmail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// invitation, join_approved, join_rejected, password_reset, …
    pub kind: &'static str,
    /// The single-use token `body` refers to (see `mail::messages`).
    pub secret: Option<EmailSecret>,
}

/// A token kept apart from the text, until `expires_at` (ms) at most.
pub struct EmailSecret {
    pub token: String,
    pub expires_at: i64,
}

/// `next_attempt_at` of a message that will never be sent (its token
/// expired before it could be delivered).
pub const NEVER: i64 = i64::MAX;

pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    e: NewEmail,
    now: i64,
) -> Result<String, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    outbox::ActiveModel {
        id: Set(id.clone()),
        to_address: Set(e.to),
        subject: Set(e.subject),
        body_text: Set(e.body),
        kind: Set(e.kind.to_string()),
        created_at: Set(now),
        attempts: Set(0),
        next_attempt_at: Set(now),
        sent_at: Set(None),
        last_error: Set(None),
        secret_expires_at: Set(e.secret.as_ref().map(|s| s.expires_at)),
        secret: Set(e.secret.map(|s| s.token)),
        invitation_id: Set(None),
        last_attempt_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(id)
}

/// Messages due for a (re)try, oldest first.
pub async fn due<C: ConnectionTrait>(
    conn: &C,
    now: i64,
    limit: u64,
) -> Result<Vec<OutboxEmail>, DomainError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::SentAt.is_null())
        .filter(outbox::Column::NextAttemptAt.lte(now))
        .order_by_asc(outbox::Column::NextAttemptAt)
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// Takes a lease on one message; false if another sender has it.
pub async fn claim<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    now: i64,
    lease_ms: i64,
) -> Result<bool, DomainError> {
    let n = outbox::Entity::update_many()
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(now + lease_ms))
        .col_expr(outbox::Column::LastAttemptAt, Expr::value(now))
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .filter(outbox::Column::Id.eq(id))
        .filter(outbox::Column::SentAt.is_null())
        .filter(outbox::Column::NextAttemptAt.lte(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(n == 1)
}

/// Records the delivery and, in the same UPDATE, erases the token. True if
/// the text of an older message had to go as well.
pub async fn mark_sent<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    now: i64,
) -> Result<bool, DomainError> {
    outbox::Entity::update_many()
        .col_expr(outbox::Column::SentAt, Expr::value(now))
        .col_expr(
            outbox::Column::LastError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(outbox::Column::Secret, Expr::value(Option::<String>::None))
        .filter(outbox::Column::Id.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    // A message queued before the secret column existed has its token in
    // the text: drop the text once delivered (the migration did so for
    // those already delivered).
    let legacy = outbox::Entity::update_many()
        .col_expr(outbox::Column::BodyText, Expr::value(LEGACY_REMOVED))
        .filter(outbox::Column::Id.eq(id))
        .filter(outbox::Column::SecretExpiresAt.is_null())
        .filter(outbox::Column::Kind.is_in(["invitation", "password_reset"]))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(legacy > 0)
}

/// The text left of a delivered message that held its token in the text.
pub const LEGACY_REMOVED: &str = "(removed after delivery: it held a single-use link)";

pub async fn mark_failed<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    retry_at: i64,
    error: &str,
) -> Result<(), DomainError> {
    failed(conn, id, false, retry_at, error).await
}

/// Records the failure of one delivery: its error, its next attempt, and
/// with `erase_secret` its token erased.
async fn failed<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    erase_secret: bool,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), DomainError> {
    let mut q = outbox::Entity::update_many();
    if erase_secret {
        q = q.col_expr(outbox::Column::Secret, Expr::value(Option::<String>::None));
    }
    q.col_expr(outbox::Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(
            outbox::Column::LastError,
            Expr::value(error.chars().take(500).collect::<String>()),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Undelivered messages whose token has expired: the token is erased and
/// the message given up (a link that no longer works is not worth sending).
/// Returns how many.
pub async fn abandon_expired<C: ConnectionTrait>(conn: &C, now: i64) -> Result<u64, DomainError> {
    Ok(outbox::Entity::update_many()
        .col_expr(outbox::Column::Secret, Expr::value(Option::<String>::None))
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(NEVER))
        .col_expr(
            outbox::Column::LastError,
            Expr::value("its link expired before it could be delivered"),
        )
        .filter(outbox::Column::SentAt.is_null())
        .filter(outbox::Column::Secret.is_not_null())
        .filter(outbox::Column::SecretExpiresAt.lte(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected)
}

/// Gives one message up for good, erasing its token.
pub async fn abandon<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    error: &str,
) -> Result<(), DomainError> {
    failed(conn, id, true, NEVER, error).await
}

/// Messages not yet delivered nor given up (for metrics).
pub async fn backlog<C: ConnectionTrait>(conn: &C) -> Result<u64, DomainError> {
    outbox::Entity::find()
        .filter(outbox::Column::SentAt.is_null())
        .filter(outbox::Column::NextAttemptAt.lt(NEVER))
        .count(conn)
        .await
        .map_err(db_err)
}

/// Marks message `id` as the email of invitation `invitation_id` (R32), in
/// the transaction that queued it.
pub async fn link_invitation<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    invitation_id: &str,
) -> Result<(), DomainError> {
    outbox::Entity::update_many()
        .col_expr(outbox::Column::InvitationId, Expr::value(invitation_id))
        .filter(outbox::Column::Id.eq(id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// R32: the delivery record of the newest email of each invitation of
/// `ids` (a resend's email replaces the earlier one's state).
pub async fn invitation_deliveries<C: ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Delivery>, DomainError> {
    let mut out = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = outbox::Entity::find()
        .filter(outbox::Column::InvitationId.is_in(ids.iter().cloned()))
        .order_by_desc(outbox::Column::CreatedAt)
        .order_by_desc(outbox::Column::Id)
        .all(conn)
        .await
        .map_err(db_err)?;
    for m in rows {
        let Some(inv) = m.invitation_id.clone() else {
            continue;
        };
        out.entry(inv).or_insert_with(|| {
            Delivery::derive(
                m.attempts,
                m.sent_at,
                m.last_error,
                m.last_attempt_at,
                (m.next_attempt_at != NEVER).then_some(m.next_attempt_at),
            )
        });
    }
    Ok(out)
}
