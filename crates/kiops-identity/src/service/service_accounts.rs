//! `ServiceAccountService` use cases (R25): accounts and their credentials.
//! Who manages an account is `domain::service_account::{check_create,
//! check_manage}`; every change runs in one transaction that first locks
//! the account row, so the credential limit holds under concurrency.

use super::{parse, Cursor, Page};
use crate::app::App;
use crate::auth::secrets;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::error::{reason, FieldViolation, Violations};
use crate::domain::model::Role;
use crate::domain::page_token;
use crate::domain::service_account::{
    check_create, check_manage, validate_certificate_identity, validate_name, AccountStatus,
    Credential, Owner, Scope, ServiceAccount, MAX_CREDENTIALS,
};
use crate::domain::{validate, Caller, DomainError};
use crate::store::service_accounts::{
    self as accounts, NewServiceAccount, ServiceAccountChanges, Visible,
};
use crate::store::service_credentials::{self as credentials, NewCredential};
use crate::store::{memberships, organizations, Store};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use kiops_proto::v1::{
    AddServiceAccountKeyRequest, CreateServiceAccountRequest, ListServiceAccountsRequest,
    UpdateServiceAccountRequest,
};
use kiops_token::service_account::{generate_key, public_key_from_pem, KeyFile};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// Prefix of client secrets: tells a leaked one's kind to secret scanners.
pub const SECRET_PREFIX: &str = "kiops_sa";

const UPDATE_PATHS: [&str; 4] = ["name", "description", "scopes", "certificate_identity"];

/// A key credential just added; the private key only when the server made it.
#[derive(Debug, Clone)]
pub struct AddedKey {
    pub credential: Credential,
    pub private_key_pem: Option<String>,
    pub key_file_json: Option<String>,
}

/// A secret credential just added, with its secret (shown once).
#[derive(Debug, Clone)]
pub struct AddedSecret {
    pub credential: Credential,
    pub secret: String,
}

/// SHA-256 of the public key or the secret, base64url, first 16
/// characters: tells credentials apart, reveals nothing usable.
pub fn fingerprint(material: &[u8]) -> String {
    let mut s = URL_SAFE_NO_PAD.encode(Sha256::digest(material));
    s.truncate(16);
    s
}

/// The account if `caller` manages it; NOT_FOUND otherwise (R4).
fn managed(
    caller: &Caller,
    found: Option<(ServiceAccount, Option<Role>)>,
) -> Result<ServiceAccount, DomainError> {
    let (account, role) = found.ok_or_else(|| DomainError::not_found("service account"))?;
    check_manage(caller, role, &account.owner)?;
    Ok(account)
}

fn certificate_identity(v: &mut Violations, field: &str, raw: &str) -> Option<String> {
    v.check(validate_certificate_identity(field, raw));
    (!raw.is_empty()).then(|| raw.to_string())
}

fn owner(v: &mut Violations, field: &str, organization_id: &str) -> Owner {
    if organization_id.is_empty() {
        Owner::Platform
    } else {
        Owner::Organization(v.take(validate::id(field, organization_id)))
    }
}

/// A new account as the command line and the RPC make it: validated.
pub fn new_account(
    r: CreateServiceAccountRequest,
    created_by: Option<String>,
) -> Result<NewServiceAccount, DomainError> {
    let mut v = Violations::new();
    let owner = owner(&mut v, "organization_id", &r.organization_id);
    v.check(validate_name("name", &r.name));
    let description = v.take(validate::text(
        "description",
        &r.description,
        MAX_DESCRIPTION_CHARS,
    ));
    let scopes = v.take(Scope::parse_list("scopes", &r.scopes));
    let certificate_identity =
        certificate_identity(&mut v, "certificate_identity", &r.certificate_identity);
    v.into_result()?;
    Ok(NewServiceAccount {
        owner,
        name: r.name,
        description,
        scopes,
        certificate_identity,
        created_by,
    })
}

pub async fn create(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: CreateServiceAccountRequest,
) -> Result<ServiceAccount, DomainError> {
    let new = new_account(r, Some(caller.user_id.clone()))?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let role = match new.owner.org_id() {
        Some(org) => memberships::caller_role(&tx, org, &caller).await?,
        None => None,
    };
    check_create(&caller, role, &new.owner)?;
    if let Some(org) = new.owner.org_id() {
        // A PlatformAdmin may name any organization: it must exist.
        organizations::find(&tx, org)
            .await?
            .ok_or_else(|| DomainError::not_found("organization"))?;
    }
    let account = accounts::create(&tx, &meta, caller.actor(), new, now).await?;
    tx.commit().await?;
    Ok(account)
}

pub async fn get(app: &App, caller: &Caller, id: &str) -> Result<ServiceAccount, DomainError> {
    let id = validate::id("service_account_id", id)?;
    let conn = app.store.conn();
    managed(caller, accounts::with_role(conn, &id, caller, false).await?)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListServiceAccountsRequest,
) -> Result<Page<ServiceAccount>, DomainError> {
    let mut v = Violations::new();
    let size = v.take(validate::page_size("page_size", r.page_size));
    let query = v.take(parse::query("query", &r.query));
    let org = (!r.organization_id.is_empty())
        .then(|| v.take(validate::id("organization_id", &r.organization_id)));
    let conn = app.store.conn();
    let (visible, scope_key) = match (&org, caller.platform_admin) {
        (Some(o), _) => (Visible::Organization(o), format!("org:{o}")),
        (None, true) => (Visible::All, "*".to_string()),
        (None, false) => (
            Visible::ManagedBy {
                user_id: &caller.user_id,
                second_factor: caller.second_factor,
            },
            format!("managed:{}", caller.user_id),
        ),
    };
    let fp = page_token::fingerprint(&["service_accounts", &scope_key, &query]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    match &org {
        Some(o) => {
            let role = memberships::caller_role(conn, o, caller).await?;
            check_manage(caller, role, &Owner::Organization(o.clone()))?;
        }
        // Nobody else reaches this: `context::start` refuses services.
        None if caller.service.is_some() => check_manage(caller, None, &Owner::Platform)?,
        None => {}
    }
    let after = cursor.after.as_ref().and_then(|k| {
        Some((
            k.first()?.as_str()?.to_string(),
            k.get(1)?.as_str()?.to_string(),
        ))
    });
    let (rows, total) = accounts::list(
        conn,
        visible,
        &query,
        after.as_ref().map(|(n, i)| (n.as_str(), i.as_str())),
        size + 1,
    )
    .await?;
    Ok(cursor.page(rows, size, total, |last| {
        vec![json!(last.name), json!(last.id)]
    }))
}

pub async fn update(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: UpdateServiceAccountRequest,
) -> Result<ServiceAccount, DomainError> {
    let a = r.service_account.unwrap_or_default();
    let mut v = Violations::new();
    let id = v.take(validate::id(
        "service_account.service_account_id",
        &a.service_account_id,
    ));
    let paths = v.take(parse::mask(
        "update_mask",
        r.update_mask.as_ref(),
        &UPDATE_PATHS,
        &UPDATE_PATHS,
    ));
    let mut changes = ServiceAccountChanges::default();
    for p in &paths {
        match p.as_str() {
            "name" => {
                v.check(validate_name("service_account.name", &a.name));
                changes.name = Some(a.name.clone());
            }
            "description" => {
                changes.description = Some(v.take(validate::text(
                    "service_account.description",
                    &a.description,
                    MAX_DESCRIPTION_CHARS,
                )))
            }
            "scopes" => {
                changes.scopes =
                    Some(v.take(Scope::parse_list("service_account.scopes", &a.scopes)))
            }
            "certificate_identity" => {
                changes.certificate_identity = Some(certificate_identity(
                    &mut v,
                    "service_account.certificate_identity",
                    &a.certificate_identity,
                ))
            }
            _ => {}
        }
    }
    v.into_result()?;
    let tx = app.store.begin_write().await?;
    let before = managed(&caller, accounts::with_role(&tx, &id, &caller, true).await?)?;
    // After the lock: a revocation is never dated before a token an
    // exchange holding the lock minted (offline verifiers compare times).
    let now = app.clock.now_ms();
    let revoke = revokes_tokens(&before, &changes).then_some(accounts::REASON_SCOPES_CHANGED);
    let after = accounts::update(&tx, &meta, caller.actor(), before, changes, revoke, now).await?;
    tx.commit().await?;
    Ok(after)
}

/// R25: tokens carry the scopes and the certificate binding of their
/// exchange, so narrowing the one or changing the other ends them; widening
/// needs a new token anyway.
fn revokes_tokens(before: &ServiceAccount, changes: &ServiceAccountChanges) -> bool {
    let narrowed = changes
        .scopes
        .as_ref()
        .is_some_and(|new| before.scopes.iter().any(|s| !new.contains(s)));
    let rebound = changes
        .certificate_identity
        .as_ref()
        .is_some_and(|c| *c != before.certificate_identity);
    narrowed || rebound
}

pub async fn set_status(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
    status: AccountStatus,
) -> Result<ServiceAccount, DomainError> {
    let id = validate::id("service_account_id", &id)?;
    let tx = app.store.begin_write().await?;
    let before = managed(&caller, accounts::with_role(&tx, &id, &caller, true).await?)?;
    // After the lock: a revocation is never dated before a token an
    // exchange holding the lock minted (offline verifiers compare times).
    let now = app.clock.now_ms();
    let after = accounts::set_status(&tx, &meta, caller.actor(), before, status, now).await?;
    tx.commit().await?;
    Ok(after)
}

pub async fn delete(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<(), DomainError> {
    let id = validate::id("service_account_id", &id)?;
    let tx = app.store.begin_write().await?;
    let account = managed(&caller, accounts::with_role(&tx, &id, &caller, true).await?)?;
    // After the lock: a revocation is never dated before a token an
    // exchange holding the lock minted (offline verifiers compare times).
    let now = app.clock.now_ms();
    accounts::delete(&tx, &meta, caller.actor(), account, now).await?;
    tx.commit().await
}

/// Adds `new` to the account `id` the caller manages, within the limit.
async fn add_credential(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    id: &str,
    new: NewCredential,
) -> Result<(ServiceAccount, Credential), DomainError> {
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    // The lock makes count-then-insert atomic per account.
    let account = managed(caller, accounts::with_role(&tx, id, caller, true).await?)?;
    if credentials::count(&tx, &account.id).await? >= MAX_CREDENTIALS as u64 {
        return Err(DomainError::precondition(
            reason::TOO_MANY_CREDENTIALS,
            format!(
                "a service account has at most {MAX_CREDENTIALS} credentials; remove one first"
            ),
        ));
    }
    let credential = credentials::add(&tx, meta, caller.actor(), &account, new, now).await?;
    tx.commit().await?;
    Ok((account, credential))
}

/// What is stored of a raw Ed25519 public key.
pub fn key_credential(raw: &[u8; 32]) -> NewCredential {
    NewCredential::Key {
        public_key_b64: STANDARD.encode(raw),
        fingerprint: fingerprint(raw),
    }
}

pub async fn add_key(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: AddServiceAccountKeyRequest,
) -> Result<AddedKey, DomainError> {
    let mut v = Violations::new();
    let id = v.take(validate::id("service_account_id", &r.service_account_id));
    let key = if r.public_key_pem.is_empty() {
        None
    } else {
        let raw = v.take(public_key_from_pem(&r.public_key_pem).map_err(|_| {
            FieldViolation::new(
                "public_key_pem",
                "must be the PEM (\"PUBLIC KEY\", SPKI) of an Ed25519 public key",
            )
        }));
        Some(raw)
    };
    v.into_result()?;
    let (raw, private_key_pem) = match key {
        Some(raw) => (raw, None),
        None => {
            let (pem, raw) =
                generate_key().map_err(|e| DomainError::internal(format!("key: {e}")))?;
            (raw, Some(pem))
        }
    };
    let (account, credential) =
        add_credential(&app, &meta, &caller, &id, key_credential(&raw)).await?;
    let key_file_json = match &private_key_pem {
        Some(pem) => Some(
            KeyFile::new(&account.id, &credential.id, app.tokens.issuer(), pem)
                .to_json()
                .map_err(|e| DomainError::internal(format!("key file: {e}")))?,
        ),
        None => None,
    };
    Ok(AddedKey {
        credential,
        private_key_pem,
        key_file_json,
    })
}

pub async fn add_secret(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<AddedSecret, DomainError> {
    let id = validate::id("service_account_id", &id)?;
    let secret = secrets::random_token(SECRET_PREFIX);
    let new = NewCredential::Secret {
        secret_hash: secrets::hash_token(&secret),
        fingerprint: fingerprint(secret.as_bytes()),
    };
    let (_, credential) = add_credential(&app, &meta, &caller, &id, new).await?;
    Ok(AddedSecret { credential, secret })
}

pub async fn list_credentials(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<Vec<Credential>, DomainError> {
    let id = validate::id("service_account_id", id)?;
    let conn = app.store.conn();
    let account = managed(caller, accounts::with_role(conn, &id, caller, false).await?)?;
    credentials::list(conn, &account.id).await
}

pub async fn remove_credential(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
    credential_id: String,
) -> Result<(), DomainError> {
    let mut v = Violations::new();
    let id = v.take(validate::id("service_account_id", &id));
    let credential_id = v.take(validate::id("credential_id", &credential_id));
    v.into_result()?;
    let tx = app.store.begin_write().await?;
    let account = managed(&caller, accounts::with_role(&tx, &id, &caller, true).await?)?;
    // After the lock: a revocation is never dated before a token an
    // exchange holding the lock minted (offline verifiers compare times).
    let now = app.clock.now_ms();
    credentials::remove(&tx, &meta, caller.actor(), &account, &credential_id, now).await?;
    tx.commit().await
}

/// An account with a server-generated key, as the command line makes it
/// (`kiops-identity service-accounts create`): no caller, audited as the
/// system. `owner` is "platform" or an organization code.
pub struct Bootstrapped {
    pub account: ServiceAccount,
    pub credential: Credential,
    /// The key file JSON (holds the private key).
    pub key_file_json: String,
}

pub async fn create_with_key(
    store: &Store,
    meta: &RequestMeta,
    owner: &str,
    mut r: CreateServiceAccountRequest,
    issuer: &str,
    now: i64,
) -> Result<Bootstrapped, DomainError> {
    let (private_key_pem, raw) =
        generate_key().map_err(|e| DomainError::internal(format!("key: {e}")))?;
    let tx = store.begin_write().await?;
    r.organization_id = if owner == "platform" {
        String::new()
    } else {
        accounts::organization_id_by_code(&tx, owner)
            .await?
            .ok_or_else(|| DomainError::not_found("organization"))?
    };
    let new = new_account(r, None)?;
    let account = accounts::create(&tx, meta, Actor::System, new, now).await?;
    let credential = credentials::add(
        &tx,
        meta,
        Actor::System,
        &account,
        key_credential(&raw),
        now,
    )
    .await?;
    tx.commit().await?;
    let key_file_json = KeyFile::new(&account.id, &credential.id, issuer, &private_key_pem)
        .to_json()
        .map_err(|e| DomainError::internal(format!("key file: {e}")))?;
    Ok(Bootstrapped {
        account,
        credential,
        key_file_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_16_base64url_characters() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 16);
        assert!(f
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(f, fingerprint(b"y"));
    }
}
