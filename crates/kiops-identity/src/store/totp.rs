//! The TOTP second factor (R30): each user's credential (sealed secret,
//! pending until confirmed, the last accepted time step), their hashed
//! recovery codes, and the hashed challenges of logins waiting for a code.
//! Every use of a code or a challenge is one conditional UPDATE, so of
//! racing uses only one wins; each write records its audit event (R19) in
//! the caller's transaction.

use super::{audit, db_err};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::DomainError;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, Value};
use serde_json::json;

/// A user's TOTP credential.
#[derive(Debug, Clone)]
pub struct Credential {
    pub sealed_secret: String,
    pub confirmed: bool,
}

/// A login waiting for its second factor.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub user_id: String,
    /// SHA-256 of the password hash the login verified: a password change
    /// since then voids the challenge.
    pub password_digest: String,
    pub organization_id: Option<String>,
}

fn statement<C: ConnectionTrait>(conn: &C, pg: &str, values: Vec<Value>) -> Statement {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Postgres => pg.to_string(),
        _ => pg.replace('$', "?"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

async fn exec<C: ConnectionTrait>(
    conn: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, DomainError> {
    Ok(conn
        .execute_raw(statement(conn, sql, values))
        .await
        .map_err(db_err)?
        .rows_affected())
}

async fn record<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    action: &'static str,
    user_id: &str,
    details: serde_json::Value,
    now: i64,
) -> Result<(), DomainError> {
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, action, "user", user_id).details(details),
        now,
    )
    .await
}

/// The credential of `user_id`, pending or confirmed.
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<Option<Credential>, DomainError> {
    let row = conn
        .query_one_raw(statement(
            conn,
            "SELECT sealed_secret, confirmed_at FROM totp_credentials WHERE user_id = $1",
            vec![user_id.into()],
        ))
        .await
        .map_err(db_err)?;
    row.map(|r| {
        Ok(Credential {
            sealed_secret: r.try_get("", "sealed_secret").map_err(db_err)?,
            confirmed: r
                .try_get::<Option<i64>>("", "confirmed_at")
                .map_err(db_err)?
                .is_some(),
        })
    })
    .transpose()
}

/// Starts (or restarts) an enrollment with a new sealed secret; false
/// (nothing written) when TOTP is already enabled.
pub async fn start<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    sealed_secret: &str,
    now: i64,
) -> Result<bool, DomainError> {
    // One statement: a confirmed credential is never replaced, even by a
    // racing start.
    let n = exec(
        conn,
        "INSERT INTO totp_credentials (user_id, sealed_secret, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET sealed_secret = $2, created_at = $3, \
         last_step = NULL WHERE totp_credentials.confirmed_at IS NULL",
        vec![user_id.into(), sealed_secret.into(), now.into()],
    )
    .await?;
    if n != 1 {
        return Ok(false);
    }
    record(
        conn,
        meta,
        actor,
        "user.totp_enrollment_started",
        user_id,
        json!({}),
        now,
    )
    .await?;
    Ok(true)
}

/// Enables a pending credential with the step of its first code; false
/// when it is no longer pending.
pub async fn confirm<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    step: i64,
    now: i64,
) -> Result<bool, DomainError> {
    let n = exec(
        conn,
        "UPDATE totp_credentials SET confirmed_at = $2, last_step = $3 \
         WHERE user_id = $1 AND confirmed_at IS NULL",
        vec![user_id.into(), now.into(), step.into()],
    )
    .await?;
    if n != 1 {
        return Ok(false);
    }
    record(
        conn,
        meta,
        actor,
        "user.totp_enabled",
        user_id,
        json!({}),
        now,
    )
    .await?;
    Ok(true)
}

/// Uses the time step `step` of a confirmed credential: only a step
/// strictly after the last one accepted, so a code works once.
pub async fn accept_step<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    step: i64,
) -> Result<bool, DomainError> {
    let n = exec(
        conn,
        "UPDATE totp_credentials SET last_step = $2 WHERE user_id = $1 \
         AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $2)",
        vec![user_id.into(), step.into()],
    )
    .await?;
    Ok(n == 1)
}

/// Replaces the user's recovery codes by `hashes`.
pub async fn replace_recovery_codes<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    hashes: &[String],
    now: i64,
) -> Result<(), DomainError> {
    exec(
        conn,
        "DELETE FROM totp_recovery_codes WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    for h in hashes {
        exec(
            conn,
            "INSERT INTO totp_recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)",
            vec![h.as_str().into(), user_id.into(), now.into()],
        )
        .await?;
    }
    Ok(())
}

/// `user.recovery_codes_regenerated`.
pub async fn record_regenerated<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    record(
        conn,
        meta,
        actor,
        "user.recovery_codes_regenerated",
        user_id,
        json!({}),
        now,
    )
    .await
}

/// Uses one unused recovery code of the user (`user.recovery_code_used`);
/// false when it is unknown or already used.
pub async fn use_recovery_code<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    hash: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = exec(
        conn,
        "UPDATE totp_recovery_codes SET used_at = $3 \
         WHERE code_hash = $1 AND user_id = $2 AND used_at IS NULL",
        vec![hash.into(), user_id.into(), now.into()],
    )
    .await?;
    if n != 1 {
        return Ok(false);
    }
    let left = unused_recovery_codes(conn, user_id).await?;
    record(
        conn,
        meta,
        actor,
        "user.recovery_code_used",
        user_id,
        json!({"remaining": left}),
        now,
    )
    .await?;
    Ok(true)
}

async fn unused_recovery_codes<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<i64, DomainError> {
    let row = conn
        .query_one_raw(statement(
            conn,
            "SELECT COUNT(*) AS n FROM totp_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
            vec![user_id.into()],
        ))
        .await
        .map_err(db_err)?;
    row.map(|r| r.try_get::<i64>("", "n").map_err(db_err))
        .transpose()
        .map(|n| n.unwrap_or(0))
}

/// Erases the user's credential (pending or confirmed), recovery codes and
/// challenges, auditing `action` ("user.totp_disabled",
/// "user.second_factor_reset"); false when there was no credential.
pub async fn remove<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    action: &'static str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = exec(
        conn,
        "DELETE FROM totp_credentials WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    exec(
        conn,
        "DELETE FROM totp_recovery_codes WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    exec(
        conn,
        "DELETE FROM second_factor_challenges WHERE user_id = $1",
        vec![user_id.into()],
    )
    .await?;
    if n != 1 {
        return Ok(false);
    }
    record(conn, meta, actor, action, user_id, json!({}), now).await?;
    Ok(true)
}

/// A challenge for the login of `user_id` (`auth.second_factor_required`).
pub async fn create_challenge<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    challenge_hash: &str,
    c: &Challenge,
    now: i64,
    expires_at: i64,
) -> Result<(), DomainError> {
    // Expired ones of this user go, so the table stays small.
    exec(
        conn,
        "DELETE FROM second_factor_challenges WHERE user_id = $1 AND expires_at <= $2",
        vec![c.user_id.as_str().into(), now.into()],
    )
    .await?;
    exec(
        conn,
        "INSERT INTO second_factor_challenges \
         (challenge_hash, user_id, password_digest, organization_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            challenge_hash.into(),
            c.user_id.as_str().into(),
            c.password_digest.as_str().into(),
            c.organization_id.clone().into(),
            now.into(),
            expires_at.into(),
        ],
    )
    .await?;
    record(
        conn,
        meta,
        actor,
        "auth.second_factor_required",
        &c.user_id,
        json!({"organization_id": c.organization_id}),
        now,
    )
    .await
}

/// The challenge of `challenge_hash` if still usable (unused, unexpired).
pub async fn find_challenge<C: ConnectionTrait>(
    conn: &C,
    challenge_hash: &str,
    now: i64,
) -> Result<Option<Challenge>, DomainError> {
    let row = conn
        .query_one_raw(statement(
            conn,
            "SELECT user_id, password_digest, organization_id FROM second_factor_challenges \
             WHERE challenge_hash = $1 AND used_at IS NULL AND expires_at > $2",
            vec![challenge_hash.into(), now.into()],
        ))
        .await
        .map_err(db_err)?;
    row.map(|r| {
        Ok(Challenge {
            user_id: r.try_get("", "user_id").map_err(db_err)?,
            password_digest: r.try_get("", "password_digest").map_err(db_err)?,
            organization_id: r.try_get("", "organization_id").map_err(db_err)?,
        })
    })
    .transpose()
}

/// Uses the challenge if still usable; false when a racing call used it
/// first, or it expired.
pub async fn use_challenge<C: ConnectionTrait>(
    conn: &C,
    challenge_hash: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = exec(
        conn,
        "UPDATE second_factor_challenges SET used_at = $2 \
         WHERE challenge_hash = $1 AND used_at IS NULL AND expires_at > $2",
        vec![challenge_hash.into(), now.into()],
    )
    .await?;
    Ok(n == 1)
}
