//! Service accounts (R25): the `service_accounts` table of migration 10.
//! Every change writes its audit event and, when it ends the account's
//! tokens, its revocation event (user_id = account id) in the caller's
//! transaction.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{membership, organization, service_account as sa};
use super::revocations::{self, Scope as Revoked};
use super::{db_err, like_contains, taken};
use crate::domain::error::reason;
use crate::domain::model::{Caller, Role};
use crate::domain::service_account::{AccountStatus, Owner, Scope, ServiceAccount};
use crate::domain::DomainError;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, Unchanged,
};
use serde_json::json;

/// Revocation reasons of the account's own events (auth.proto).
pub const REASON_DISABLED: &str = "service_account_disabled";
pub const REASON_DELETED: &str = "service_account_deleted";
pub const REASON_SCOPES_CHANGED: &str = "scopes_changed";

/// A service account to create.
#[derive(Debug, Clone)]
pub struct NewServiceAccount {
    pub owner: Owner,
    pub name: String,
    pub description: String,
    pub scopes: Vec<Scope>,
    pub certificate_identity: Option<String>,
    /// `None` when made by the command line.
    pub created_by: Option<String>,
}

/// The fields an update sets (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<Scope>>,
    /// `Some(None)` clears it.
    pub certificate_identity: Option<Option<String>>,
}

/// Which accounts a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum Visible<'a> {
    /// Every account, platform accounts included (a PlatformAdmin).
    All,
    /// One organization's.
    Organization(&'a str),
    /// Those of the organizations this user is a Manager of; with
    /// `second_factor` false, not those that require one (R31).
    ManagedBy {
        user_id: &'a str,
        second_factor: bool,
    },
}

impl TryFrom<sa::Model> for ServiceAccount {
    type Error = DomainError;

    fn try_from(m: sa::Model) -> Result<Self, DomainError> {
        Ok(ServiceAccount {
            owner: Owner::from_org_id(m.organization_id.as_deref()),
            scopes: Scope::split(&m.scopes),
            status: AccountStatus::parse(&m.status)?,
            id: m.id,
            name: m.name,
            description: m.description,
            certificate_identity: m.certificate_identity.filter(|c| !c.is_empty()),
            created_by: m.created_by,
            created_at_ms: m.created_at,
            updated_at_ms: m.updated_at,
        })
    }
}

fn convert(m: Option<sa::Model>) -> Result<Option<ServiceAccount>, DomainError> {
    m.map(ServiceAccount::try_from).transpose()
}

fn name_taken(e: sea_orm::DbErr) -> DomainError {
    taken(
        reason::SERVICE_ACCOUNT_NAME_TAKEN,
        "this owner already has a service account of this name",
    )(e)
}

/// What the audit trail keeps of an account (no credentials).
pub fn snapshot(a: &ServiceAccount) -> serde_json::Value {
    json!({
        "name": a.name,
        "description": a.description,
        "organization_id": a.owner.org_id(),
        "scopes": Scope::join(&a.scopes),
        "status": a.status.as_str(),
        "certificate_identity": a.certificate_identity,
    })
}

fn entry(actor: Actor, action: &'static str, a: &ServiceAccount) -> AuditEntry {
    let e = AuditEntry::new(actor, action, "service_account", &a.id);
    match a.owner.org_id() {
        Some(org) => e.org(org),
        None => e,
    }
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    new: NewServiceAccount,
    now: i64,
) -> Result<ServiceAccount, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let org = new.owner.org_id().map(str::to_string);
    let account: ServiceAccount = sa::ActiveModel {
        id: Set(id),
        owner_key: Set(org.clone().unwrap_or_default()),
        organization_id: Set(org),
        name: Set(new.name),
        description: Set(new.description),
        scopes: Set(Scope::join(&new.scopes)),
        status: Set(AccountStatus::Active.as_str().to_string()),
        certificate_identity: Set(new.certificate_identity),
        created_by: Set(new.created_by),
        created_at: Set(now),
        updated_at: Set(now),
        failed_attempts: Set(0),
        locked_until: Set(None),
        tokens_not_before: Set(0),
    }
    .insert(conn)
    .await
    .map_err(name_taken)?
    .try_into()?;
    audit::record(
        conn,
        meta,
        entry(actor, "service_account.created", &account)
            .details(json!({"after": snapshot(&account)})),
        now,
    )
    .await?;
    Ok(account)
}

pub async fn find<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<ServiceAccount>, DomainError> {
    convert(
        sa::Entity::find_by_id(id.to_string())
            .one(conn)
            .await
            .map_err(db_err)?,
    )
}

/// Reads the account and, on PostgreSQL, locks its row until the end of the
/// transaction: changes to one account and to its credentials (the
/// credential limit) are serialized by it; on SQLite the write
/// transaction's `BEGIN IMMEDIATE` already is.
pub async fn lock<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<ServiceAccount>, DomainError> {
    let mut q = sa::Entity::find_by_id(id.to_string());
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    convert(q.one(conn).await.map_err(db_err)?)
}

/// The account (locked as `lock` does when `for_update`) and the role of
/// `caller` in its owner organization (R31 applied, `memberships::caller_role`) (none for a platform account): what
/// `domain::service_account::check_manage` decides on.
pub async fn with_role<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    caller: &Caller,
    for_update: bool,
) -> Result<Option<(ServiceAccount, Option<Role>)>, DomainError> {
    let account = if for_update {
        lock(conn, id).await?
    } else {
        find(conn, id).await?
    };
    let Some(account) = account else {
        return Ok(None);
    };
    let role = match account.owner.org_id() {
        Some(org) => super::memberships::caller_role(conn, org, caller).await?,
        None => None,
    };
    Ok(Some((account, role)))
}

/// One page of accounts ordered by (name, id), and the total that match.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    visible: Visible<'_>,
    query: &str,
    after: Option<(&str, &str)>,
    limit: u64,
) -> Result<(Vec<ServiceAccount>, u64), DomainError> {
    let mut cond = Condition::all();
    match visible {
        Visible::All => {}
        Visible::Organization(org) => cond = cond.add(sa::Column::OrganizationId.eq(org)),
        Visible::ManagedBy {
            user_id,
            second_factor,
        } => {
            if !second_factor {
                cond = cond.add(
                    sa::Column::OrganizationId.not_in_subquery(
                        Query::select()
                            .column(organization::Column::Id)
                            .from(organization::Entity)
                            .and_where(organization::Column::SecondFactorRequired.eq(true))
                            .to_owned(),
                    ),
                );
            }
            cond = cond.add(
                sa::Column::OrganizationId.in_subquery(
                    Query::select()
                        .column(membership::Column::OrganizationId)
                        .from(membership::Entity)
                        .and_where(membership::Column::UserId.eq(user_id))
                        .and_where(membership::Column::Role.eq(Role::Manager.as_str()))
                        .to_owned(),
                ),
            )
        }
    }
    let q = query.trim().to_lowercase();
    if !q.is_empty() {
        let pattern = like_contains(&q);
        let like = |col: sa::Column| {
            Expr::expr(Func::lower(Expr::col(col)))
                .like(LikeExpr::new(pattern.clone()).escape('\\'))
        };
        cond = cond.add(
            Condition::any()
                .add(like(sa::Column::Name))
                .add(like(sa::Column::Description)),
        );
    }
    let total = sa::Entity::find()
        .filter(cond.clone())
        .count(conn)
        .await
        .map_err(db_err)?;
    let mut page = sa::Entity::find().filter(cond);
    if let Some((name, id)) = after {
        page = page.filter(
            Condition::any().add(sa::Column::Name.gt(name)).add(
                Condition::all()
                    .add(sa::Column::Name.eq(name))
                    .add(sa::Column::Id.gt(id)),
            ),
        );
    }
    let rows = page
        .order_by_asc(sa::Column::Name)
        .order_by_asc(sa::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?;
    let accounts = rows
        .into_iter()
        .map(ServiceAccount::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((accounts, total))
}

/// Applies `changes`; `revoke` (a reason) ends the account's tokens in the
/// same transaction.
pub async fn update<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: ServiceAccount,
    changes: ServiceAccountChanges,
    revoke: Option<&'static str>,
    now: i64,
) -> Result<ServiceAccount, DomainError> {
    let mut am = sa::ActiveModel {
        id: Unchanged(before.id.clone()),
        ..Default::default()
    };
    if let Some(n) = changes.name {
        am.name = Set(n);
    }
    if let Some(d) = changes.description {
        am.description = Set(d);
    }
    if let Some(s) = changes.scopes {
        am.scopes = Set(Scope::join(&s));
    }
    if let Some(c) = changes.certificate_identity {
        am.certificate_identity = Set(c);
    }
    am.updated_at = Set(now);
    if revoke.is_some() {
        am.tokens_not_before = Set(now);
    }
    let after: ServiceAccount = am.update(conn).await.map_err(name_taken)?.try_into()?;
    if let Some(reason) = revoke {
        revocations::record(conn, Revoked::user(&after.id), reason, now).await?;
    }
    audit::record(
        conn,
        meta,
        entry(actor, "service_account.updated", &after).details(json!({
            "before": snapshot(&before),
            "after": snapshot(&after),
            "tokens_revoked": revoke.is_some(),
        })),
        now,
    )
    .await?;
    Ok(after)
}

/// Disables (revoking the account's tokens) or enables the account. A
/// status it already has changes nothing and records nothing.
pub async fn set_status<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: ServiceAccount,
    status: AccountStatus,
    now: i64,
) -> Result<ServiceAccount, DomainError> {
    if before.status == status {
        return Ok(before);
    }
    let mut am = sa::ActiveModel {
        id: Unchanged(before.id.clone()),
        status: Set(status.as_str().to_string()),
        updated_at: Set(now),
        ..Default::default()
    };
    if status == AccountStatus::Disabled {
        am.tokens_not_before = Set(now);
    }
    let after: ServiceAccount = am.update(conn).await.map_err(db_err)?.try_into()?;
    let action = match status {
        AccountStatus::Disabled => {
            revocations::record(conn, Revoked::user(&after.id), REASON_DISABLED, now).await?;
            "service_account.disabled"
        }
        AccountStatus::Active => "service_account.enabled",
    };
    audit::record(conn, meta, entry(actor, action, &after), now).await?;
    Ok(after)
}

/// Deletes the account; its credentials go with it (ON DELETE CASCADE) and
/// its tokens are revoked.
pub async fn delete<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    account: ServiceAccount,
    now: i64,
) -> Result<(), DomainError> {
    sa::Entity::delete_by_id(account.id.clone())
        .exec(conn)
        .await
        .map_err(db_err)?;
    revocations::record(conn, Revoked::user(&account.id), REASON_DELETED, now).await?;
    audit::record(
        conn,
        meta,
        entry(actor, "service_account.deleted", &account)
            .details(json!({"before": snapshot(&account)})),
        now,
    )
    .await?;
    Ok(())
}

/// The id of the organization with `code`, for the command line, which
/// names owners by code.
pub async fn organization_id_by_code<C: ConnectionTrait>(
    conn: &C,
    code: &str,
) -> Result<Option<String>, DomainError> {
    organization::Entity::find()
        .select_only()
        .column(organization::Column::Id)
        .filter(organization::Column::Code.eq(code))
        .into_tuple()
        .one(conn)
        .await
        .map_err(db_err)
}

/// Locks the accounts an organization owns (PostgreSQL; a SQLite write
/// transaction holds the database already), so that a deletion of the
/// organization dates its revocations after any exchange of theirs that
/// holds a lock now.
pub async fn lock_owned_by<C: ConnectionTrait>(conn: &C, org: &str) -> Result<(), DomainError> {
    if conn.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    conn.query_all_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT id FROM service_accounts WHERE organization_id = $1 ORDER BY id FOR UPDATE",
        [org.into()],
    ))
    .await
    .map_err(db_err)?;
    Ok(())
}
