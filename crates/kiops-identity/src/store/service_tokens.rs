//! What a token exchange (R25) reads and writes: the account and the
//! credential presented, locked in that order (account row, then
//! credential row, as the management writes take them) so that a disable
//! or a credential removal commits either before the exchange (which then
//! fails) or after the token is minted (whose `iat` is then not after the
//! revocation); the single-use `jti`s of assertions; the secret lockout.

use super::{audit, db_err};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::service_account::{AccountStatus, CredentialKind, Owner, Scope};
use crate::domain::DomainError;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use serde_json::json;

fn statement<C: ConnectionTrait, const N: usize>(
    conn: &C,
    pg: &str,
    values: [sea_orm::Value; N],
) -> Statement {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Postgres => pg.to_string(),
        _ => pg.replace('$', "?"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// A service account as the exchange needs it, read under its row lock.
#[derive(Debug, Clone)]
pub struct ExchangeAccount {
    pub id: String,
    pub name: String,
    pub owner: Owner,
    pub scopes: Vec<Scope>,
    pub status: AccountStatus,
    pub certificate_identity: Option<String>,
    pub failed_attempts: i32,
    pub locked_until_ms: Option<i64>,
}

/// One credential of the account, with what verifies it.
#[derive(Debug, Clone)]
pub struct ExchangeCredential {
    pub id: String,
    pub kind: CredentialKind,
    /// Raw Ed25519 public key (keys).
    pub public_key: Option<[u8; 32]>,
    /// Hex SHA-256 of the secret (secrets).
    pub secret_hash: Option<String>,
}

/// Locks the account row (PostgreSQL `FOR UPDATE`; a SQLite write
/// transaction holds the database lock already). `None` when it does not exist.
pub async fn lock_account<C: ConnectionTrait>(
    conn: &C,
    account_id: &str,
) -> Result<Option<ExchangeAccount>, DomainError> {
    let lock = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE",
        _ => "",
    };
    let sql = format!(
        "SELECT id, name, organization_id, scopes, status, certificate_identity, \
         failed_attempts, locked_until FROM service_accounts WHERE id = $1{lock}"
    );
    let Some(row) = conn
        .query_one_raw(statement(conn, &sql, [account_id.into()]))
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let org: Option<String> = row.try_get("", "organization_id").map_err(db_err)?;
    let scopes: String = row.try_get("", "scopes").map_err(db_err)?;
    let status: String = row.try_get("", "status").map_err(db_err)?;
    let identity: Option<String> = row.try_get("", "certificate_identity").map_err(db_err)?;
    Ok(Some(ExchangeAccount {
        id: row.try_get("", "id").map_err(db_err)?,
        name: row.try_get("", "name").map_err(db_err)?,
        owner: Owner::from_org_id(org.as_deref()),
        scopes: Scope::split(&scopes),
        status: AccountStatus::parse(&status)?,
        certificate_identity: identity.filter(|i| !i.is_empty()),
        failed_attempts: row.try_get("", "failed_attempts").map_err(db_err)?,
        locked_until_ms: row.try_get("", "locked_until").map_err(db_err)?,
    }))
}

/// The account's credentials of `kind` (at most `MAX_CREDENTIALS`),
/// locked on PostgreSQL so a removal waits for the exchange.
pub async fn credentials<C: ConnectionTrait>(
    conn: &C,
    account_id: &str,
    kind: CredentialKind,
) -> Result<Vec<ExchangeCredential>, DomainError> {
    let lock = match conn.get_database_backend() {
        DatabaseBackend::Postgres => " FOR UPDATE",
        _ => "",
    };
    let sql = format!(
        "SELECT id, kind, public_key, secret_hash FROM service_account_credentials \
         WHERE service_account_id = $1 AND kind = $2 ORDER BY id{lock}"
    );
    let rows = conn
        .query_all_raw(statement(
            conn,
            &sql,
            [account_id.into(), kind.as_str().into()],
        ))
        .await
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("", "kind").map_err(db_err)?;
        let public_key: Option<String> = row.try_get("", "public_key").map_err(db_err)?;
        out.push(ExchangeCredential {
            id: row.try_get("", "id").map_err(db_err)?,
            kind: CredentialKind::parse(&kind)?,
            public_key: public_key.as_deref().map(decode_public_key).transpose()?,
            secret_hash: row.try_get("", "secret_hash").map_err(db_err)?,
        });
    }
    Ok(out)
}

fn decode_public_key(b64: &str) -> Result<[u8; 32], DomainError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| DomainError::internal("stored public key is not base64"))?;
    raw.try_into()
        .map_err(|_| DomainError::internal("stored public key is not 32 bytes"))
}

/// Records `jti` as used until `expires_at_ms`; false when it was used
/// before (a replay). Drops the account's expired `jti`s first: an
/// assertion past its `exp` is refused before it gets here.
pub async fn use_jti<C: ConnectionTrait>(
    conn: &C,
    account_id: &str,
    jti: &str,
    expires_at_ms: i64,
    now_ms: i64,
) -> Result<bool, DomainError> {
    conn.execute_raw(statement(
        conn,
        "DELETE FROM service_assertion_jtis WHERE service_account_id = $1 AND expires_at < $2",
        [account_id.into(), now_ms.into()],
    ))
    .await
    .map_err(db_err)?;
    let inserted = conn
        .execute_raw(statement(
            conn,
            "INSERT INTO service_assertion_jtis (service_account_id, jti, expires_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [account_id.into(), jti.into(), expires_at_ms.into()],
        ))
        .await
        .map_err(db_err)?;
    Ok(inserted.rows_affected() == 1)
}

/// A successful exchange: the credential's last use, the failure count
/// reset, and the audit event, in the exchange's transaction.
pub async fn record_exchange<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    account: &ExchangeAccount,
    credential: &ExchangeCredential,
    now_ms: i64,
) -> Result<(), DomainError> {
    conn.execute_raw(statement(
        conn,
        "UPDATE service_account_credentials SET last_used_at = $1 WHERE id = $2",
        [now_ms.into(), credential.id.clone().into()],
    ))
    .await
    .map_err(db_err)?;
    if account.failed_attempts != 0 || account.locked_until_ms.is_some() {
        conn.execute_raw(statement(
            conn,
            "UPDATE service_accounts SET failed_attempts = 0, locked_until = NULL WHERE id = $1",
            [account.id.clone().into()],
        ))
        .await
        .map_err(db_err)?;
    }
    let actor = Actor::Service {
        id: account.id.clone(),
        name: account.name.clone(),
    };
    let mut entry = AuditEntry::new(
        actor,
        "service_account.token_issued",
        "service_account",
        &account.id,
    )
    .details(json!({
        "credential_id": credential.id,
        "credential_type": credential.kind.as_str(),
        "scopes": Scope::join(&account.scopes),
    }));
    if let Some(org) = account.owner.org_id() {
        entry = entry.org(org);
    }
    audit::record(conn, meta, entry, now_ms).await
}

/// A refused exchange of an existing account: audited; for a wrong secret
/// the failure also counts toward the lockout (`lock_for_ms` once
/// `threshold` failures are reached).
pub async fn record_refusal<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    account: &ExchangeAccount,
    why: &'static str,
    counts: Option<(i32, i64)>,
    now_ms: i64,
) -> Result<(), DomainError> {
    if let Some((threshold, lock_for_ms)) = counts {
        let failures = account.failed_attempts + 1;
        let (failures, locked_until) = if failures >= threshold {
            (0, Some(now_ms + lock_for_ms))
        } else {
            (failures, None)
        };
        conn.execute_raw(statement(
            conn,
            "UPDATE service_accounts SET failed_attempts = $1, \
             locked_until = COALESCE($2, locked_until) WHERE id = $3",
            [
                failures.into(),
                locked_until.into(),
                account.id.clone().into(),
            ],
        ))
        .await
        .map_err(db_err)?;
    }
    let mut entry = AuditEntry::new(
        Actor::Anonymous,
        "service_account.token_refused",
        "service_account",
        &account.id,
    )
    .details(json!({ "reason": why }));
    if let Some(org) = account.owner.org_id() {
        entry = entry.org(org);
    }
    audit::record(conn, meta, entry, now_ms).await
}
