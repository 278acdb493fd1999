//! Organizations (R18).

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{membership, organization, service_account};
use super::{db_err, like_contains, taken};
use crate::domain::error::reason;
use crate::domain::DomainError;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, Unchanged,
};
use serde_json::json;

pub use crate::domain::organization::{NewOrganization, Organization, OrganizationChanges};

impl From<organization::Model> for Organization {
    fn from(m: organization::Model) -> Self {
        Organization {
            id: m.id,
            name: m.name,
            code: m.code,
            description: m.description,
            created_at_ms: m.created_at,
            updated_at_ms: m.updated_at,
            second_factor_required: m.second_factor_required,
        }
    }
}

fn code_taken(e: sea_orm::DbErr) -> DomainError {
    taken(
        reason::ORGANIZATION_CODE_TAKEN,
        "an organization with this code already exists",
    )(e)
}

fn snapshot(o: &Organization) -> serde_json::Value {
    json!({"name": o.name, "code": o.code, "description": o.description})
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    new: NewOrganization,
    now: i64,
) -> Result<Organization, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let org: Organization = organization::ActiveModel {
        id: Set(id.clone()),
        name: Set(new.name),
        code: Set(new.code),
        description: Set(new.description),
        created_at: Set(now),
        updated_at: Set(now),
        second_factor_required: Set(false),
    }
    .insert(conn)
    .await
    .map_err(code_taken)?
    .into();
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "organization.created", "organization", &id)
            .org(&id)
            .details(json!({"after": snapshot(&org)})),
        now,
    )
    .await?;
    Ok(org)
}

pub async fn find<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<Organization>, DomainError> {
    organization::Entity::find_by_id(id.to_string())
        .one(conn)
        .await
        .map(|m| m.map(Organization::from))
        .map_err(db_err)
}

/// Reads the organization row and, on PostgreSQL, locks it until the end of
/// the transaction. Every change that can affect R5 (the last Manager) takes
/// this lock first, so such changes to one organization are serialized; on
/// SQLite the `BEGIN IMMEDIATE` of the write transaction already is.
pub async fn lock<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<Organization>, DomainError> {
    let mut q = organization::Entity::find_by_id(id.to_string());
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    q.one(conn)
        .await
        .map(|m| m.map(Organization::from))
        .map_err(db_err)
}

/// One page of organizations, ordered by code; `member_of` restricts to the
/// organizations of that user (None: all, for a PlatformAdmin).
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    member_of: Option<&str>,
    query: &str,
    after_code: Option<&str>,
    limit: u64,
) -> Result<(Vec<Organization>, u64), DomainError> {
    let mut cond = Condition::all();
    if let Some(user_id) = member_of {
        cond = cond.add(
            organization::Column::Id.in_subquery(
                Query::select()
                    .column(membership::Column::OrganizationId)
                    .from(membership::Entity)
                    .and_where(membership::Column::UserId.eq(user_id))
                    .to_owned(),
            ),
        );
    }
    let q = query.trim().to_lowercase();
    if !q.is_empty() {
        let pattern = like_contains(&q);
        cond = cond.add(
            Condition::any()
                .add(
                    Expr::expr(Func::lower(Expr::col(organization::Column::Name)))
                        .like(LikeExpr::new(pattern.clone()).escape('\\')),
                )
                .add(
                    Expr::col(organization::Column::Code).like(LikeExpr::new(pattern).escape('\\')),
                ),
        );
    }
    let total = organization::Entity::find()
        .filter(cond.clone())
        .count(conn)
        .await
        .map_err(db_err)?;
    let mut page = organization::Entity::find().filter(cond);
    if let Some(after) = after_code {
        page = page.filter(organization::Column::Code.gt(after));
    }
    let rows = page
        .order_by_asc(organization::Column::Code)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok((rows.into_iter().map(Organization::from).collect(), total))
}

pub async fn update<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: Organization,
    changes: OrganizationChanges,
    now: i64,
) -> Result<Organization, DomainError> {
    if changes.name.is_none() && changes.code.is_none() && changes.description.is_none() {
        return Ok(before);
    }
    let mut am = organization::ActiveModel {
        id: Unchanged(before.id.clone()),
        ..Default::default()
    };
    if let Some(n) = changes.name {
        am.name = Set(n);
    }
    if let Some(c) = changes.code {
        am.code = Set(c);
    }
    if let Some(d) = changes.description {
        am.description = Set(d);
    }
    am.updated_at = Set(now);
    let after: Organization = am.update(conn).await.map_err(code_taken)?.into();
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "organization.updated", "organization", &after.id)
            .org(&after.id)
            .details(json!({"before": snapshot(&before), "after": snapshot(&after)})),
        now,
    )
    .await?;
    Ok(after)
}

/// Deletes the organization; its memberships, invitations, join requests,
/// templates and service accounts (with their credentials) go with it (ON
/// DELETE CASCADE), each service account's tokens revoked by an event of
/// its own. Its audit events stay.
pub async fn delete<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    org: Organization,
    now: i64,
) -> Result<(), DomainError> {
    let members = membership::Entity::find()
        .filter(membership::Column::OrganizationId.eq(&org.id))
        .count(conn)
        .await
        .map_err(db_err)?;
    let service_accounts = revoke_service_accounts(conn, &org.id, now).await?;
    organization::Entity::delete_by_id(org.id.clone())
        .exec(conn)
        .await
        .map_err(db_err)?;
    super::revocations::record(
        conn,
        super::revocations::Scope::membership("", &org.id),
        "organization_deleted",
        now,
    )
    .await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "organization.deleted", "organization", &org.id)
            .org(&org.id)
            .details(json!({
                "before": snapshot(&org),
                "memberships_removed": members,
                "service_accounts_removed": service_accounts,
            })),
        now,
    )
    .await?;
    Ok(())
}

/// Before the organization row goes (its service accounts and their
/// credentials then go by ON DELETE CASCADE): one revocation event per
/// service account of `org`, as DeleteServiceAccount writes (R25). Read
/// here rather than through `service_accounts`, which reads memberships.
async fn revoke_service_accounts<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    now: i64,
) -> Result<u64, DomainError> {
    let ids: Vec<String> = service_account::Entity::find()
        .select_only()
        .column(service_account::Column::Id)
        .filter(service_account::Column::OrganizationId.eq(org))
        .order_by_asc(service_account::Column::Id)
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    for id in &ids {
        super::revocations::record(
            conn,
            super::revocations::Scope::user(id),
            "service_account_deleted",
            now,
        )
        .await?;
    }
    Ok(ids.len() as u64)
}
