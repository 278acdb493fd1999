//! Permission templates (R6): named bundles of categories per organization.
//! Applying one sets a member's granted permissions; it is not a role.
//! Every write records its own audit event.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::permission_template as tpl;
use super::{db_err, taken};
use crate::domain::error::reason;
use crate::domain::DomainError;
use kiops_token::Permission;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, Unchanged,
};
use serde_json::json;

pub use crate::domain::membership::Template;

impl From<tpl::Model> for Template {
    fn from(t: tpl::Model) -> Self {
        Template {
            permissions: t.permissions as u8,
            id: t.id,
            organization_id: t.organization_id,
            name: t.name,
            created_at_ms: t.created_at,
            updated_at_ms: t.updated_at,
        }
    }
}

fn name_taken(e: sea_orm::DbErr) -> DomainError {
    taken(
        reason::ALREADY_EXISTS,
        "a template with this name already exists in the organization",
    )(e)
}

fn snapshot(t: &Template) -> serde_json::Value {
    json!({
        "name": t.name,
        "permissions": Permission::from_bits(t.permissions)
            .into_iter()
            .map(Permission::as_str)
            .collect::<Vec<_>>(),
    })
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    org: &str,
    name: String,
    bits: u8,
    now: i64,
) -> Result<Template, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let t: Template = tpl::ActiveModel {
        id: Set(id.clone()),
        organization_id: Set(org.to_string()),
        name: Set(name),
        permissions: Set(bits as i32),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await
    .map_err(name_taken)?
    .into();
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "template.created", "permission_template", &id)
            .org(org)
            .details(json!({"after": snapshot(&t)})),
        now,
    )
    .await?;
    Ok(t)
}

/// The template, only if it belongs to `org` (no cross-tenant lookups).
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    id: &str,
) -> Result<Option<Template>, DomainError> {
    Ok(tpl::Entity::find_by_id(id.to_string())
        .filter(tpl::Column::OrganizationId.eq(org))
        .one(conn)
        .await
        .map_err(db_err)?
        .map(Template::from))
}

pub async fn list<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    after_name: Option<&str>,
    limit: u64,
) -> Result<(Vec<Template>, u64), DomainError> {
    let total = tpl::Entity::find()
        .filter(tpl::Column::OrganizationId.eq(org))
        .count(conn)
        .await
        .map_err(db_err)?;
    let mut q = tpl::Entity::find()
        .filter(tpl::Column::OrganizationId.eq(org))
        .order_by_asc(tpl::Column::Name);
    if let Some(after) = after_name {
        q = q.filter(tpl::Column::Name.gt(after));
    }
    let rows = q.limit(limit).all(conn).await.map_err(db_err)?;
    Ok((rows.into_iter().map(Template::from).collect(), total))
}

pub async fn update<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: Template,
    name: Option<String>,
    bits: Option<u8>,
    now: i64,
) -> Result<Template, DomainError> {
    let mut am = tpl::ActiveModel {
        id: Unchanged(before.id.clone()),
        organization_id: Unchanged(before.organization_id.clone()),
        name: Unchanged(before.name.clone()),
        permissions: Unchanged(before.permissions as i32),
        created_at: Unchanged(before.created_at_ms),
        updated_at: Unchanged(before.updated_at_ms),
    };
    if let Some(n) = name {
        am.name = Set(n);
    }
    if let Some(b) = bits {
        am.permissions = Set(b as i32);
    }
    am.updated_at = Set(now);
    let after: Template = am.update(conn).await.map_err(name_taken)?.into();
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "template.updated", "permission_template", &after.id)
            .org(&after.organization_id)
            .details(json!({"before": snapshot(&before), "after": snapshot(&after)})),
        now,
    )
    .await?;
    Ok(after)
}

pub async fn delete<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    t: Template,
    now: i64,
) -> Result<(), DomainError> {
    tpl::Entity::delete_by_id(t.id.clone())
        .exec(conn)
        .await
        .map_err(db_err)?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "template.deleted", "permission_template", &t.id)
            .org(&t.organization_id)
            .details(json!({"before": snapshot(&t)})),
        now,
    )
    .await
}
