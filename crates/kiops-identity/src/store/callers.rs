//! The authenticated caller's current state: account and session, one read
//! (the rule that decides on it is `domain::membership::caller_from_state`).
//!
//! Rules: H1 (docs/rules.md).

use super::db_err;
use crate::domain::membership::CallerState;
use crate::domain::model::{SessionState, StoredStatus};
use crate::domain::second_factor::amr_has_second_factor;
use crate::domain::service_account::{AccountStatus, Owner, Scope, ServiceCallerState};
use crate::domain::DomainError;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

/// One statement for both, so every authenticated call costs one round trip
/// as before the session was checked. The session must belong to the user: a
/// token cannot borrow another account's live session.
const CALLER_SQL: &str = "SELECT u.email, u.status, u.platform_admin, \
     s.id AS session_id, s.revoked_at, s.expires_at, s.amr, \
     (SELECT p.platform_admin_second_factor_required FROM platform_settings p \
       WHERE p.id = 1) AS platform_second_factor \
     FROM users u LEFT JOIN sessions s ON s.id = $2 AND s.user_id = u.id \
     WHERE u.id = $1";

/// `None` when the account does not exist.
pub async fn caller_state<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    session_id: &str,
) -> Result<Option<CallerState>, DomainError> {
    static SQLITE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| CALLER_SQL.replace('$', "?"));
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Sqlite => SQLITE.clone(),
        _ => CALLER_SQL.to_string(),
    };
    let stmt = Statement::from_sql_and_values(backend, sql, [user_id.into(), session_id.into()]);
    let Some(row) = conn.query_one_raw(stmt).await.map_err(db_err)? else {
        return Ok(None);
    };
    let found: Option<String> = row.try_get("", "session_id").map_err(db_err)?;
    let status: String = row.try_get("", "status").map_err(db_err)?;
    let amr: Option<String> = row.try_get("", "amr").map_err(db_err)?;
    let platform_required: Option<bool> =
        row.try_get("", "platform_second_factor").map_err(db_err)?;
    Ok(Some(CallerState {
        email: row.try_get("", "email").map_err(db_err)?,
        status: StoredStatus::parse(&status),
        platform_admin: row.try_get("", "platform_admin").map_err(db_err)?,
        session: SessionState {
            found: found.is_some(),
            revoked_at_ms: row.try_get("", "revoked_at").map_err(db_err)?,
            expires_at_ms: row.try_get("", "expires_at").map_err(db_err)?,
        },
        second_factor: amr.as_deref().is_some_and(amr_has_second_factor),
        platform_second_factor_required: platform_required.unwrap_or(false),
    }))
}

/// The service account of a service token and whether the token's
/// credential still belongs to it, one statement (R25).
const SERVICE_SQL: &str = "SELECT a.name, a.organization_id, a.scopes, a.status, \
     a.tokens_not_before, \
     c.id AS credential_id \
     FROM service_accounts a \
     LEFT JOIN service_account_credentials c ON c.id = $2 AND c.service_account_id = a.id \
     WHERE a.id = $1";

/// `None` when the account does not exist.
pub async fn service_caller_state<C: ConnectionTrait>(
    conn: &C,
    account_id: &str,
    credential_id: &str,
) -> Result<Option<ServiceCallerState>, DomainError> {
    static SQLITE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| SERVICE_SQL.replace('$', "?"));
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Sqlite => SQLITE.clone(),
        _ => SERVICE_SQL.to_string(),
    };
    let stmt =
        Statement::from_sql_and_values(backend, sql, [account_id.into(), credential_id.into()]);
    let Some(row) = conn.query_one_raw(stmt).await.map_err(db_err)? else {
        return Ok(None);
    };
    let org: Option<String> = row.try_get("", "organization_id").map_err(db_err)?;
    let scopes: String = row.try_get("", "scopes").map_err(db_err)?;
    let status: String = row.try_get("", "status").map_err(db_err)?;
    let credential: Option<String> = row.try_get("", "credential_id").map_err(db_err)?;
    Ok(Some(ServiceCallerState {
        name: row.try_get("", "name").map_err(db_err)?,
        owner: Owner::from_org_id(org.as_deref()),
        scopes: Scope::split(&scopes),
        status: AccountStatus::parse(&status)?,
        credential_found: credential.is_some(),
        tokens_not_before_ms: row.try_get("", "tokens_not_before").map_err(db_err)?,
    }))
}
