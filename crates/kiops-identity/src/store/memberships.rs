//! Memberships: who belongs to which organization, with which role and
//! granted permissions (R1–R6, R10, R17). Every write records its audit
//! event (R19) and, where the change revokes (R16, `domain::membership`), its
//! revocation in the caller's transaction. Roles and statuses are read
//! into their domain enums here, once.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{membership, organization, user};
use super::keyset::{keyset_after, Count};
use super::{db_err, like_contains, taken};
use crate::domain::error::reason;
use crate::domain::membership::{demotion_revokes, narrowing_revokes};
use crate::domain::model::{effective_permissions, Role, StoredStatus};
use crate::domain::second_factor::{
    amr_has_second_factor, membership_counts, platform_admin_counts,
};
use crate::domain::DomainError;
use crate::domain::{second_factor, Caller};
use kiops_token::{OrgClaims, Permission};
use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, LikeExpr, Order, Query, SelectStatement};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, Set,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::domain::membership::Template;
pub use crate::domain::membership::{Member, Membership};

impl From<membership::Model> for Membership {
    fn from(m: membership::Model) -> Self {
        Membership {
            role: parse_role(&m.role),
            permissions: m.permissions as u8,
            organization_id: m.organization_id,
            user_id: m.user_id,
            joined_at_ms: m.joined_at,
        }
    }
}

/// A role as stored. The one place its text is read.
pub fn parse_role(s: &str) -> Role {
    if s == "manager" {
        Role::Manager
    } else {
        Role::Member
    }
}

fn perm_names(bits: u8) -> Vec<&'static str> {
    Permission::from_bits(bits)
        .into_iter()
        .map(Permission::as_str)
        .collect()
}

/// What an access token says of a user's roles (R31 applied): the
/// PlatformAdmin flag as it counts for the session, the organizations that
/// count, and those left out because they require a second factor the
/// session lacks.
#[derive(Debug, Clone, Default)]
pub struct TokenOrgs {
    pub platform_admin: bool,
    pub orgs: BTreeMap<String, OrgClaims>,
    pub gated: Vec<String>,
}

/// `TokenOrgs` from stored facts: the account's flag, the platform policy,
/// the session's `amr`, and the memberships (organization, role, granted
/// bits, whether the organization requires a second factor).
pub fn token_facts(
    platform_admin_flag: bool,
    platform_required: bool,
    amr: &str,
    rows: impl IntoIterator<Item = (String, String, i32, bool)>,
) -> TokenOrgs {
    let second_factor = amr_has_second_factor(amr);
    let platform_admin =
        platform_admin_counts(platform_admin_flag, platform_required, second_factor);
    let mut gated = Vec::new();
    let mut counted = Vec::new();
    for (org, role, granted, required) in rows {
        if platform_admin || membership_counts(required, second_factor) {
            counted.push((org, role, granted));
        } else {
            gated.push(org);
        }
    }
    TokenOrgs {
        platform_admin,
        orgs: org_claims(platform_admin, counted),
        gated,
    }
}

/// Role and effective permissions of `user_id` in each of their
/// organizations (or only in `only_org`), as they go into an access token
/// for `session_id` (R31: its second factor, the policies).
pub async fn token_orgs<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    platform_admin_flag: bool,
    session_id: &str,
    only_org: Option<&str>,
) -> Result<TokenOrgs, DomainError> {
    let mut q = membership::Entity::find().filter(membership::Column::UserId.eq(user_id));
    if let Some(org) = only_org {
        q = q.filter(membership::Column::OrganizationId.eq(org));
    }
    let rows = q.all(conn).await.map_err(db_err)?;
    let ids: Vec<&str> = rows.iter().map(|m| m.organization_id.as_str()).collect();
    let requiring = super::second_factor::orgs_requiring(conn, &ids).await?;
    let platform_required =
        platform_admin_flag && super::second_factor::platform_required(conn).await?;
    let amr = super::second_factor::session_amr(conn, session_id).await?;
    Ok(token_facts(
        platform_admin_flag,
        platform_required,
        &amr,
        rows.into_iter().map(|m| {
            let required = requiring.contains(&m.organization_id);
            (m.organization_id, m.role, m.permissions, required)
        }),
    ))
}

/// Token claims from stored memberships (organization, role, granted bits),
/// however they were read.
pub fn org_claims(
    platform_admin: bool,
    rows: impl IntoIterator<Item = (String, String, i32)>,
) -> BTreeMap<String, OrgClaims> {
    rows.into_iter()
        .map(|(org, role, granted)| {
            let role = parse_role(&role);
            let perms = effective_permissions(platform_admin, Some(role), granted as u8);
            (org, OrgClaims { role, perms })
        })
        .collect()
}

pub async fn find<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    user_id: &str,
) -> Result<Option<Membership>, DomainError> {
    Ok(
        membership::Entity::find_by_id((org.to_string(), user_id.to_string()))
            .one(conn)
            .await
            .map_err(db_err)?
            .map(Membership::from),
    )
}

/// The role of `user_id` in `org`, if a member.
pub async fn role_of<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    user_id: &str,
) -> Result<Option<Role>, DomainError> {
    Ok(find(conn, org, user_id).await?.map(|m| m.role))
}

/// The caller's role in `org` as it may authorise: R31 refuses a member
/// whose session lacks the second factor `org` requires
/// (`domain::second_factor::caller_role`).
pub async fn caller_role<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    caller: &Caller,
) -> Result<Option<Role>, DomainError> {
    let role = role_of(conn, org, &caller.user_id).await?;
    gated_role(conn, org, caller, role).await
}

/// `role`, the caller's stored role in `org`, as it may authorise (R31), for
/// a use case that read the membership itself.
pub async fn gated_role<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    caller: &Caller,
    role: Option<Role>,
) -> Result<Option<Role>, DomainError> {
    if role.is_none() || caller.second_factor || caller.platform_admin {
        return Ok(role);
    }
    let required = !super::second_factor::orgs_requiring(conn, &[org])
        .await?
        .is_empty();
    second_factor::caller_role(caller, org, role, required)
}

/// Active Managers of `org` (a deactivated Manager does not count: they
/// cannot act). Call it after `organizations::lock` for R5.
pub async fn count_managers<C: ConnectionTrait>(conn: &C, org: &str) -> Result<u64, DomainError> {
    let stmt = Query::select()
        .expr_as(mcol(membership::Column::UserId).count(), Alias::new("n"))
        .from(membership::Entity)
        .inner_join(
            user::Entity,
            Expr::col((user::Entity, user::Column::Id))
                .equals((membership::Entity, membership::Column::UserId)),
        )
        .and_where(mcol(membership::Column::OrganizationId).eq(org))
        .and_where(mcol(membership::Column::Role).eq(Role::Manager.as_str()))
        .and_where(ucol(user::Column::Status).eq("active"))
        .to_owned();
    Ok(
        Count::find_by_statement(conn.get_database_backend().build(&stmt))
            .one(conn)
            .await
            .map_err(db_err)?
            .map(|c| Ord::max(c.n, 0) as u64)
            .unwrap_or(0),
    )
}

/// Organizations (id, code) where `user_id` is an active Manager and the only
/// one: what R5 would break if the user lost access. Locks each of those
/// organizations first (in id order, so concurrent callers cannot deadlock).
pub async fn sole_manager_of<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<Vec<String>, DomainError> {
    let mut orgs: Vec<String> = membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .filter(membership::Column::Role.eq(Role::Manager.as_str()))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| m.organization_id)
        .collect();
    orgs.sort();
    let mut sole = Vec::new();
    for org in orgs {
        let Some(o) = super::organizations::lock(conn, &org).await? else {
            continue;
        };
        let active = user::Entity::find_by_id(user_id.to_string())
            .one(conn)
            .await
            .map_err(db_err)?
            .is_some_and(|u| u.status == "active");
        if active && count_managers(conn, &org).await? <= 1 {
            sole.push(o.code);
        }
    }
    Ok(sole)
}

/// Whether this member counts toward R5 (an active account).
pub async fn is_active_user<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<bool, DomainError> {
    Ok(user::Entity::find_by_id(user_id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .is_some_and(|u| u.status == "active"))
}

pub async fn add<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    org: &str,
    user_id: &str,
    role: Role,
    now: i64,
) -> Result<(), DomainError> {
    add_granted(conn, meta, actor, org, user_id, role, 0, now).await
}

/// A new membership that starts with the granted permissions `bits` (an
/// accepted invitation's).
#[allow(clippy::too_many_arguments)]
pub async fn add_granted<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    org: &str,
    user_id: &str,
    role: Role,
    bits: u8,
    now: i64,
) -> Result<(), DomainError> {
    let person = user::Entity::find_by_id(user_id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .ok_or_else(|| DomainError::not_found("user"))?;
    membership::ActiveModel {
        organization_id: Set(org.to_string()),
        user_id: Set(user_id.to_string()),
        role: Set(role.as_str().to_string()),
        permissions: Set(i32::from(bits)),
        joined_at: Set(now),
        email: Set(person.email),
        name_lower: Set(person.name_lower),
    }
    .insert(conn)
    .await
    .map_err(taken(
        reason::ALREADY_MEMBER,
        "the user is already a member",
    ))?;
    let names: Vec<&str> = kiops_token::Permission::from_bits(bits)
        .into_iter()
        .map(|p| p.as_str())
        .collect();
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "membership.added", "user", user_id)
            .org(org)
            .details(json!({"after": {"role": role.as_str(), "permissions": names}})),
        now,
    )
    .await
}

/// Sets one column of the membership row of `m`.
async fn set_column<C: ConnectionTrait>(
    conn: &C,
    m: &Membership,
    column: membership::Column,
    value: impl Into<sea_orm::Value>,
) -> Result<(), DomainError> {
    membership::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .filter(membership::Column::OrganizationId.eq(&m.organization_id))
        .filter(membership::Column::UserId.eq(&m.user_id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Revokes what `m` gave its user in its organization (R16).
async fn revoke_membership<C: ConnectionTrait>(
    conn: &C,
    m: &Membership,
    reason: &str,
    now: i64,
) -> Result<(), DomainError> {
    super::revocations::record(
        conn,
        super::revocations::Scope::membership(&m.user_id, &m.organization_id),
        reason,
        now,
    )
    .await
}

pub async fn set_role<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &Membership,
    role: Role,
    now: i64,
) -> Result<(), DomainError> {
    set_column(conn, before, membership::Column::Role, role.as_str()).await?;
    if demotion_revokes(before.role, role) {
        revoke_membership(conn, before, "role_demoted", now).await?;
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "membership.role_changed", "user", &before.user_id)
            .org(&before.organization_id)
            .details(json!({
                "before": {"role": before.role.as_str()},
                "after": {"role": role.as_str()},
            })),
        now,
    )
    .await
}

/// Replaces the granted set, directly or from `template` (R6); revokes when
/// a category is taken away (R16).
pub async fn set_permissions<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &Membership,
    bits: u8,
    template: Option<&Template>,
    now: i64,
) -> Result<(), DomainError> {
    set_column(conn, before, membership::Column::Permissions, bits as i32).await?;
    if narrowing_revokes(before.permissions, bits) {
        revoke_membership(conn, before, "permissions_revoked", now).await?;
    }
    let mut details = json!({
        "before": {"permissions": perm_names(before.permissions)},
        "after": {"permissions": perm_names(bits)},
    });
    let action = match (template, details.as_object_mut()) {
        (Some(t), Some(d)) => {
            d.insert("template_id".into(), json!(t.id));
            d.insert("template_name".into(), json!(t.name));
            "membership.template_applied"
        }
        _ => "membership.permissions_changed",
    };
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, action, "user", &before.user_id)
            .org(&before.organization_id)
            .details(details),
        now,
    )
    .await
}

/// Removes the membership and, with it, every grant in that organization
/// (R10). `action` is `membership.removed` or `membership.left`.
pub async fn remove<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &Membership,
    action: &'static str,
    now: i64,
) -> Result<(), DomainError> {
    remove_with(conn, meta, actor, before, action, json!({}), now).await
}

/// Removes every membership of a user whose account is being deleted, each
/// exactly as RemoveMember would (revocation and `membership.removed` event
/// in that organization's trail, so its Managers see who left), with the
/// cause in the details. Call it in the deletion's transaction.
pub async fn remove_all_for_deleted_account<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    now: i64,
) -> Result<usize, DomainError> {
    use sea_orm::{QueryOrder, QuerySelect};
    // PostgreSQL: hold the account row first, so a membership added
    // concurrently either commits before this listing (and is audited here)
    // or waits on its foreign-key check until the account is gone.
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        user::Entity::find_by_id(user_id.to_string())
            .lock_exclusive()
            .one(conn)
            .await
            .map_err(db_err)?;
    }
    let rows: Vec<Membership> = membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .order_by_asc(membership::Column::OrganizationId)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(Membership::from)
        .collect();
    for m in &rows {
        remove_with(
            conn,
            meta,
            actor.clone(),
            m,
            "membership.removed",
            json!({"cause": "account_deleted"}),
            now,
        )
        .await?;
    }
    Ok(rows.len())
}

async fn remove_with<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &Membership,
    action: &'static str,
    extra: Value,
    now: i64,
) -> Result<(), DomainError> {
    membership::Entity::delete_by_id((before.organization_id.clone(), before.user_id.clone()))
        .exec(conn)
        .await
        .map_err(db_err)?;
    revoke_membership(conn, before, "membership_removed", now).await?;
    let mut details = json!({"before": {
        "role": before.role.as_str(),
        "permissions": perm_names(before.permissions),
    }});
    if let (Some(d), Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, action, "user", &before.user_id)
            .org(&before.organization_id)
            .details(details),
        now,
    )
    .await
}

/// A `Member` as read, before its role and status are decoded.
#[derive(Debug, Clone, FromQueryResult)]
struct MemberRow {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub platform_admin: bool,
    pub status: String,
    pub locked_until: Option<i64>,
    pub role: String,
    pub permissions: i32,
    pub joined_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOrder {
    Email,
    Role,
    JoinTime,
}

/// Status filter as the API defines it (LOCKED is derived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Active,
    Inactive,
    Locked,
}

pub struct MemberQuery<'a> {
    pub organization_id: &'a str,
    /// Lower-cased substring of email or name; matched literally.
    pub query: &'a str,
    pub role: Option<Role>,
    pub status: Option<StatusFilter>,
    pub order: MemberOrder,
    pub descending: bool,
    /// Sort key of the last row of the previous page.
    pub after: Option<Vec<Value>>,
    pub limit: u64,
    pub now: i64,
}

fn ucol(c: user::Column) -> Expr {
    Expr::col((user::Entity, c))
}

fn mcol(c: membership::Column) -> Expr {
    Expr::col((membership::Entity, c))
}

fn member_select() -> SelectStatement {
    Query::select()
        .expr_as(ucol(user::Column::Id), Alias::new("user_id"))
        .expr_as(ucol(user::Column::Email), Alias::new("email"))
        .expr_as(ucol(user::Column::Name), Alias::new("name"))
        .expr_as(
            ucol(user::Column::PlatformAdmin),
            Alias::new("platform_admin"),
        )
        .expr_as(ucol(user::Column::Status), Alias::new("status"))
        .expr_as(ucol(user::Column::LockedUntil), Alias::new("locked_until"))
        .expr_as(mcol(membership::Column::Role), Alias::new("role"))
        .expr_as(
            mcol(membership::Column::Permissions),
            Alias::new("permissions"),
        )
        .expr_as(mcol(membership::Column::JoinedAt), Alias::new("joined_at"))
        .from(membership::Entity)
        .inner_join(
            user::Entity,
            Expr::col((user::Entity, user::Column::Id))
                .equals((membership::Entity, membership::Column::UserId)),
        )
        .to_owned()
}

/// `email` or `name` contains `query` literally (`%` and `_` escaped);
/// `query` is already lower-case like the stored columns.
fn substring_conditions(query: &str, email: Expr, name_lower: Expr) -> Cond {
    if query.is_empty() {
        return Cond::all();
    }
    let pattern = like_contains(query);
    Cond::any()
        .add(email.like(LikeExpr::new(pattern.clone()).escape('\\')))
        .add(name_lower.like(LikeExpr::new(pattern).escape('\\')))
}

/// Conditions shared by a search over users (members or All Users).
pub fn user_search_conditions(query: &str, status: Option<StatusFilter>, now: i64) -> Cond {
    let mut cond = Cond::all().add(substring_conditions(
        query,
        ucol(user::Column::Email),
        ucol(user::Column::NameLower),
    ));
    match status {
        None => {}
        Some(StatusFilter::Inactive) => {
            cond = cond.add(ucol(user::Column::Status).eq("inactive"));
        }
        Some(StatusFilter::Locked) => {
            cond = cond
                .add(ucol(user::Column::Status).eq("active"))
                .add(ucol(user::Column::LockedUntil).gt(now));
        }
        Some(StatusFilter::Active) => {
            cond = cond.add(ucol(user::Column::Status).eq("active")).add(
                Cond::any()
                    .add(ucol(user::Column::LockedUntil).is_null())
                    .add(ucol(user::Column::LockedUntil).lte(now)),
            );
        }
    }
    cond
}

impl From<MemberRow> for Member {
    fn from(r: MemberRow) -> Self {
        Member {
            role: parse_role(&r.role),
            status: StoredStatus::parse(&r.status),
            permissions: r.permissions as u8,
            user_id: r.user_id,
            email: r.email,
            name: r.name,
            platform_admin: r.platform_admin,
            locked_until_ms: r.locked_until,
            joined_at_ms: r.joined_at,
        }
    }
}

/// The sort key of `m` for `order`, as a page token stores it (the
/// columns' stored values, which the next page's keyset compares with).
pub fn sort_key(m: &Member, order: MemberOrder) -> Vec<Value> {
    let k = match order {
        MemberOrder::Email => json!(m.email),
        MemberOrder::Role => json!(m.role.as_str()),
        MemberOrder::JoinTime => json!(m.joined_at_ms),
    };
    vec![k, json!(m.user_id)]
}

/// One page of members and the total matching the filters.
pub async fn list_members<C: ConnectionTrait>(
    conn: &C,
    q: MemberQuery<'_>,
) -> Result<(Vec<Member>, u64), DomainError> {
    // Search and email order use the membership's copies of email and name
    // (see migration 3), so both queries stay inside one organization's
    // slice of `memberships_org_search_idx`; only a status filter needs users.
    let mut cond = Cond::all()
        .add(mcol(membership::Column::OrganizationId).eq(q.organization_id))
        .add(substring_conditions(
            q.query,
            mcol(membership::Column::Email),
            mcol(membership::Column::NameLower),
        ))
        .add(user_search_conditions("", q.status, q.now));
    if let Some(role) = q.role {
        cond = cond.add(mcol(membership::Column::Role).eq(role.as_str()));
    }

    let backend = conn.get_database_backend();
    let mut count_stmt = Query::select()
        .expr_as(
            Expr::col((membership::Entity, membership::Column::UserId)).count(),
            Alias::new("n"),
        )
        .from(membership::Entity)
        .to_owned();
    if q.status.is_some() {
        count_stmt.inner_join(
            user::Entity,
            Expr::col((user::Entity, user::Column::Id))
                .equals((membership::Entity, membership::Column::UserId)),
        );
    }
    let count_stmt = count_stmt.cond_where(cond.clone()).to_owned();
    let total = Count::find_by_statement(backend.build(&count_stmt))
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|c| Ord::max(c.n, 0) as u64)
        .unwrap_or(0);

    let key = match q.order {
        MemberOrder::Email => mcol(membership::Column::Email),
        MemberOrder::Role => mcol(membership::Column::Role),
        MemberOrder::JoinTime => mcol(membership::Column::JoinedAt),
    };
    let id = mcol(membership::Column::UserId);
    if let Some(after) = q.after {
        let mut it = after.into_iter();
        let k = it.next().unwrap_or(Value::Null);
        let i = it
            .next()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        cond = cond.add(keyset_after(key.clone(), id.clone(), k, i, q.descending));
    }
    let dir = if q.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let stmt = member_select()
        .cond_where(cond)
        .order_by_expr(key, dir.clone())
        .order_by_expr(id, dir)
        .limit(q.limit)
        .to_owned();
    let rows = MemberRow::find_by_statement(backend.build(&stmt))
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok((rows.into_iter().map(Member::from).collect(), total))
}

pub async fn get_member<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    user_id: &str,
) -> Result<Option<Member>, DomainError> {
    let stmt = member_select()
        .and_where(mcol(membership::Column::OrganizationId).eq(org))
        .and_where(mcol(membership::Column::UserId).eq(user_id))
        .to_owned();
    Ok(
        MemberRow::find_by_statement(conn.get_database_backend().build(&stmt))
            .one(conn)
            .await
            .map_err(db_err)?
            .map(Member::from),
    )
}

/// The caller's own memberships with their organizations, ordered by code.
pub async fn list_for_user<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    after_code: Option<&str>,
    limit: u64,
) -> Result<(Vec<(Membership, super::organizations::Organization)>, u64), DomainError> {
    use sea_orm::{QueryOrder, QuerySelect};
    let total = membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .count(conn)
        .await
        .map_err(db_err)?;
    let mut q = organization::Entity::find()
        .filter(
            organization::Column::Id.in_subquery(
                Query::select()
                    .column(membership::Column::OrganizationId)
                    .from(membership::Entity)
                    .and_where(membership::Column::UserId.eq(user_id))
                    .to_owned(),
            ),
        )
        .order_by_asc(organization::Column::Code);
    if let Some(after) = after_code {
        q = q.filter(organization::Column::Code.gt(after));
    }
    let orgs = q.limit(limit).all(conn).await.map_err(db_err)?;
    // A person has a handful of memberships: one query for all of them.
    let mut mine: BTreeMap<String, Membership> = membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| (m.organization_id.clone(), Membership::from(m)))
        .collect();
    Ok((
        orgs.into_iter()
            .filter_map(|o| mine.remove(&o.id).map(|m| (m, o.into())))
            .collect(),
        total,
    ))
}
