//! Service-account credentials (R25): the `service_account_credentials`
//! table of migration 10. A key row holds the raw Ed25519 public key
//! (standard base64 of its 32 bytes) in `public_key`; a secret row the hex
//! SHA-256 of the secret in `secret_hash`, never the secret. Adding and
//! removing record their audit event; removing also the revocation event of
//! the tokens exchanged for the credential (session_id = credential id).

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::db_err;
use super::entity::service_account_credential as cred;
use super::revocations::{self, Scope as Revoked};
use crate::domain::service_account::{Credential, CredentialKind, ServiceAccount};
use crate::domain::DomainError;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};
use serde_json::json;

/// Revocation reason of a removed credential (auth.proto).
pub const REASON_REMOVED: &str = "credential_removed";

/// What is stored of a new credential.
#[derive(Debug, Clone)]
pub enum NewCredential {
    /// Standard base64 of the raw public key.
    Key {
        public_key_b64: String,
        fingerprint: String,
    },
    /// Hex SHA-256 of the secret.
    Secret {
        secret_hash: String,
        fingerprint: String,
    },
}

impl TryFrom<cred::Model> for Credential {
    type Error = DomainError;

    fn try_from(m: cred::Model) -> Result<Self, DomainError> {
        Ok(Credential {
            kind: CredentialKind::parse(&m.kind)?,
            id: m.id,
            service_account_id: m.service_account_id,
            fingerprint: m.fingerprint,
            created_at_ms: m.created_at,
            last_used_at_ms: m.last_used_at,
        })
    }
}

fn entry(actor: Actor, action: &'static str, account: &ServiceAccount) -> AuditEntry {
    let e = AuditEntry::new(actor, action, "service_account", &account.id);
    match account.owner.org_id() {
        Some(org) => e.org(org),
        None => e,
    }
}

/// How many credentials the account has. Call it after
/// `service_accounts::lock` so the count holds until commit.
pub async fn count<C: ConnectionTrait>(conn: &C, account_id: &str) -> Result<u64, DomainError> {
    cred::Entity::find()
        .filter(cred::Column::ServiceAccountId.eq(account_id))
        .count(conn)
        .await
        .map_err(db_err)
}

pub async fn add<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    account: &ServiceAccount,
    new: NewCredential,
    now: i64,
) -> Result<Credential, DomainError> {
    let (kind, public_key, secret_hash, fingerprint) = match new {
        NewCredential::Key {
            public_key_b64,
            fingerprint,
        } => (CredentialKind::Key, Some(public_key_b64), None, fingerprint),
        NewCredential::Secret {
            secret_hash,
            fingerprint,
        } => (CredentialKind::Secret, None, Some(secret_hash), fingerprint),
    };
    let credential: Credential = cred::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        service_account_id: Set(account.id.clone()),
        kind: Set(kind.as_str().to_string()),
        public_key: Set(public_key),
        secret_hash: Set(secret_hash),
        fingerprint: Set(fingerprint),
        created_at: Set(now),
        last_used_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?
    .try_into()?;
    audit::record(
        conn,
        meta,
        entry(actor, "service_account.credential_added", account).details(json!({
            "credential_id": credential.id,
            "type": kind.as_str(),
            "fingerprint": credential.fingerprint,
        })),
        now,
    )
    .await?;
    Ok(credential)
}

/// The account's credentials, newest first.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    account_id: &str,
) -> Result<Vec<Credential>, DomainError> {
    cred::Entity::find()
        .filter(cred::Column::ServiceAccountId.eq(account_id))
        .order_by_desc(cred::Column::CreatedAt)
        .order_by_desc(cred::Column::Id)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(Credential::try_from)
        .collect()
}

/// Removes one credential of `account` and revokes the tokens exchanged
/// for it; NOT_FOUND when the account has no such credential.
pub async fn remove<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    account: &ServiceAccount,
    credential_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    let found = cred::Entity::find_by_id(credential_id.to_string())
        .filter(cred::Column::ServiceAccountId.eq(&account.id))
        .one(conn)
        .await
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("credential"))?;
    cred::Entity::delete_by_id(found.id.clone())
        .exec(conn)
        .await
        .map_err(db_err)?;
    revocations::record(
        conn,
        Revoked::session(&account.id, &found.id),
        REASON_REMOVED,
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        entry(actor, "service_account.credential_removed", account).details(json!({
            "credential_id": found.id,
            "type": found.kind,
            "fingerprint": found.fingerprint,
        })),
        now,
    )
    .await?;
    Ok(())
}
