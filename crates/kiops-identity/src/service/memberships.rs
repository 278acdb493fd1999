//! `MembershipService` use cases: members, roles, permissions (R1–R6, R10,
//! R16's CheckPermission, R17, R22) and the Manager-sent password reset
//! (R20: the mail goes to the outbox in the same transaction).
//!
//! Every change runs in one write transaction that first locks the
//! organization row (`organizations::lock`), then reads the caller's and the
//! target's current roles, decides with `domain::access`, applies, and the
//! store records the audit event. So two Managers demoting each other at
//! once are serialized, and the second sees the first's result (R5).
//!
//! A change reads the member it answers with inside its own transaction,
//! before commit: read afterwards, a concurrent removal could turn a
//! committed (and audited) change into NOT_FOUND for the caller, who would
//! then retry a change that happened.

use super::{parse, Cursor, Page};
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::Violations;
use crate::domain::membership::{
    caller_from_state, grant_is_a_change, subject_holds, Member, Membership,
};
use crate::domain::model::Role;
use crate::domain::organization::Organization;
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError};
use crate::store::check_facts::CheckKey;
use crate::store::memberships::{self, MemberOrder, MemberQuery};
use crate::store::{organizations, users, WriteTx};
use kiops_proto::v1::{
    AddMemberRequest, ApplyPermissionTemplateRequest, ChangeRoleRequest, CheckPermissionRequest,
    LeaveOrganizationRequest, ListMembersRequest, ListMyMembershipsRequest, RemoveMemberRequest,
    SetPermissionsRequest,
};
use serde_json::json;

/// A value and the instant it was read at: a member's LOCKED status is
/// derived from that instant.
#[derive(Debug, Clone)]
pub struct AsOf<T> {
    pub value: T,
    pub now_ms: i64,
}

/// An organization id and a user id, validated together.
pub fn org_and_user(org: &str, user: &str) -> Result<(String, String), DomainError> {
    let mut v = Violations::new();
    let o = v.take(validate::id("organization_id", org));
    let u = v.take(validate::id("user_id", user));
    v.into_result()?;
    Ok((o, u))
}

/// Starts a write transaction, locks the organization row and reads the
/// caller's current role. A missing organization answers exactly like one
/// the caller cannot see (R4).
pub(super) async fn lock_org(
    app: &App,
    caller: &Caller,
    org: &str,
) -> Result<(WriteTx, Option<Role>), DomainError> {
    let tx = app.store.begin_write().await?;
    let exists = organizations::lock(&tx, org).await?.is_some();
    let caller_role = memberships::role_of(&tx, org, &caller.user_id).await?;
    if !exists {
        return Err(DomainError::not_found("organization"));
    }
    Ok((tx, caller_role))
}

/// The member a change answers with, read in its transaction, then commit.
async fn commit_with_member(
    app: &App,
    tx: WriteTx,
    org: &str,
    user: &str,
) -> Result<AsOf<Member>, DomainError> {
    let member = memberships::get_member(&tx, org, user).await?;
    let now_ms = app.clock.now_ms();
    let member = member.ok_or_else(|| DomainError::not_found("member"))?;
    tx.commit().await?;
    Ok(AsOf {
        value: member,
        now_ms,
    })
}

fn target(m: Option<Membership>) -> Result<Membership, DomainError> {
    m.ok_or_else(|| DomainError::not_found("member"))
}

pub async fn add(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: AddMemberRequest,
) -> Result<AsOf<Member>, DomainError> {
    access::require_platform_admin(&caller)?;
    let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
    let role = parse::role("role", r.role)?;
    let now = app.clock.now_ms();
    let (tx, _) = lock_org(&app, &caller, &org).await?;
    if users::find_by_id(&tx, &user).await?.is_none() {
        return Err(DomainError::not_found("user"));
    }
    memberships::add(&tx, &meta, caller.actor(), &org, &user, role, now).await?;
    commit_with_member(&app, tx, &org, &user).await
}

pub async fn change_role(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: ChangeRoleRequest,
) -> Result<AsOf<Member>, DomainError> {
    let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
    let role = parse::role("role", r.role)?;
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::check_role_change(&caller, caller_role, &user, role)?;
    let target = target(memberships::find(&tx, &org, &user).await?)?;
    if target.role != role {
        let managers = memberships::count_managers(&tx, &org).await?;
        let active = memberships::is_active_user(&tx, &user).await?;
        access::check_keeps_a_manager(target.role, Some(role), active, managers)?;
        memberships::set_role(&tx, &meta, caller.actor(), &target, role, now).await?;
    }
    commit_with_member(&app, tx, &org, &user).await
}

/// What SetPermissions and ApplyPermissionTemplate grant.
#[derive(Debug, Clone)]
pub enum Grant {
    Bits(u8),
    /// A template of the organization, by id.
    Template(String),
}

/// SetPermissions (R6, R22).
pub async fn set_permissions(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: SetPermissionsRequest,
) -> Result<AsOf<Member>, DomainError> {
    let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
    let bits = parse::permission_bits("permissions", &r.permissions)?;
    set_grants(app, meta, caller, org, user, Grant::Bits(bits)).await
}

/// ApplyPermissionTemplate (R6, R22).
pub async fn apply_template(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: ApplyPermissionTemplateRequest,
) -> Result<AsOf<Member>, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let user = v.take(validate::id("user_id", &r.user_id));
    let tpl = v.take(validate::id("template_id", &r.template_id));
    v.into_result()?;
    set_grants(app, meta, caller, org, user, Grant::Template(tpl)).await
}

/// SetPermissions and ApplyPermissionTemplate, on validated ids.
async fn set_grants(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    org: String,
    user: String,
    grant: Grant,
) -> Result<AsOf<Member>, DomainError> {
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::check_permission_change(&caller, caller_role, &user)?;
    let target = target(memberships::find(&tx, &org, &user).await?)?;
    let (bits, template) = match grant {
        Grant::Bits(bits) => (bits, None),
        Grant::Template(id) => {
            let t = super::templates::find(&tx, &org, &id).await?;
            (t.permissions, Some(t))
        }
    };
    if grant_is_a_change(target.permissions, bits, template.is_some()) {
        memberships::set_permissions(
            &tx,
            &meta,
            caller.actor(),
            &target,
            bits,
            template.as_ref(),
            now,
        )
        .await?;
    }
    commit_with_member(&app, tx, &org, &user).await
}

/// RemoveMember (`leaving` false) and LeaveOrganization (`leaving` true,
/// `user` the caller): R10, with R5 when the member is a Manager.
/// RemoveMember.
pub async fn remove_member(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: RemoveMemberRequest,
) -> Result<(), DomainError> {
    let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
    remove(app, meta, caller, org, user, false).await
}

/// LeaveOrganization: the caller removes itself.
pub async fn leave(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: LeaveOrganizationRequest,
) -> Result<(), DomainError> {
    let org = validate::id("organization_id", &r.organization_id)?;
    let me = caller.user_id.clone();
    remove(app, meta, caller, org, me, true).await
}

async fn remove(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    org: String,
    user: String,
    leaving: bool,
) -> Result<(), DomainError> {
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    if leaving {
        access::require_org_visible(&caller, caller_role)?;
    } else {
        access::require_manager(&caller, caller_role)?;
    }
    let target = memberships::find(&tx, &org, &user)
        .await?
        .ok_or_else(|| DomainError::not_found(if leaving { "organization" } else { "member" }))?;
    if target.role == Role::Manager {
        let managers = memberships::count_managers(&tx, &org).await?;
        let active = memberships::is_active_user(&tx, &user).await?;
        access::check_keeps_a_manager(target.role, None, active, managers)?;
    }
    let action = if leaving {
        "membership.left"
    } else {
        "membership.removed"
    };
    memberships::remove(&tx, &meta, caller.actor(), &target, action, now).await?;
    tx.commit().await
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListMembersRequest,
) -> Result<AsOf<Page<Member>>, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let query = v.take(parse::query("query", &r.query));
    let (order, descending) = v
        .take(parse::member_order("order_by", &r.order_by).map(Some))
        .unwrap_or((MemberOrder::Email, false));
    let role = v.take(parse::role_filter("role", r.role));
    let status = v.take(parse::status_filter("status", r.status));
    let size = v.take(validate::page_size("page_size", r.page_size));
    let fp = page_token::fingerprint(&[
        "members",
        &org,
        &query,
        &format!("{order:?}/{descending}/{:?}/{:?}", role, status),
    ]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let conn = app.store.conn();
    let caller_role = memberships::role_of(conn, &org, &caller.user_id).await?;
    access::require_manager(caller, caller_role)?;
    if caller.platform_admin && organizations::find(conn, &org).await?.is_none() {
        return Err(DomainError::not_found("organization"));
    }
    let now = app.clock.now_ms();
    let snapshot = app.store.begin_listing().await?;
    let (rows, total) = memberships::list_members(
        &snapshot,
        MemberQuery {
            organization_id: &org,
            query: &query,
            role,
            status,
            order,
            descending,
            after: cursor.after.clone(),
            limit: size + 1,
            now,
        },
    )
    .await?;
    snapshot.close().await?;
    let page = cursor.page(rows, size, total, |last| memberships::sort_key(last, order));
    Ok(AsOf {
        value: page,
        now_ms: now,
    })
}

pub async fn get(
    app: &App,
    caller: &Caller,
    org: &str,
    user: &str,
) -> Result<AsOf<Member>, DomainError> {
    let (org, user) = org_and_user(org, user)?;
    let conn = app.store.conn();
    let caller_role = memberships::role_of(conn, &org, &caller.user_id).await?;
    if user != caller.user_id {
        access::require_manager(caller, caller_role)?;
    }
    let member = memberships::get_member(conn, &org, &user).await?;
    Ok(AsOf {
        now_ms: app.clock.now_ms(),
        value: member.ok_or_else(|| DomainError::not_found("member"))?,
    })
}

/// The caller's own memberships, ordered by organization code.
pub async fn list_mine(
    app: &App,
    caller: &Caller,
    r: ListMyMembershipsRequest,
) -> Result<Page<(Membership, Organization)>, DomainError> {
    let mut v = Violations::new();
    let size = v.take(validate::page_size("page_size", r.page_size));
    let fp = page_token::fingerprint(&["my-memberships", &caller.user_id]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let (rows, total) = memberships::list_for_user(
        app.store.conn(),
        &caller.user_id,
        cursor.after_str(),
        size + 1,
    )
    .await?;
    Ok(cursor.page(rows, size, total, |(_, org)| vec![json!(org.code)]))
}

/// Answers from current state (R16), authenticating and answering in one
/// read (`Store::check_facts`); the decisions are the same as on every
/// other RPC: `caller_from_state`, then R4/R1 via
/// `check_may_query_permission`. The caller is authenticated before the
/// request's fields are judged.
pub async fn check_permission(
    app: &App,
    claims: kiops_token::Claims,
    r: CheckPermissionRequest,
) -> Result<bool, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let user = v.take(validate::id("user_id", &r.user_id));
    let perm = v.take(parse::permission("permission", r.permission).map(Some));
    let facts = app
        .store
        .check_facts(CheckKey {
            caller_id: claims.sub.clone(),
            caller_session: claims.sid.clone().unwrap_or_default(),
            subject_id: user.clone(),
            org,
        })
        .await?;
    let (state, caller_role) = match &facts {
        Some(f) => (Some(f.caller.clone()), f.caller_role),
        None => (None, None),
    };
    let caller = caller_from_state(claims.sub, claims.sid, state, app.clock.now_ms())?;
    v.into_result()?;
    let (Some(perm), Some(facts)) = (perm, facts) else {
        return Err(DomainError::internal("permission validated"));
    };
    if user != caller.user_id && !caller.platform_admin {
        access::check_may_query_permission(&caller, caller_role, &user)?;
    }
    Ok(subject_holds(facts.subject.as_ref(), perm))
}

/// SendPasswordReset: a Manager has a reset link mailed to a member of
/// their organization (the link itself is `credentials::queue_password_reset`).
pub async fn send_password_reset(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    org: String,
    user: String,
) -> Result<(), DomainError> {
    let (org, user) = org_and_user(&org, &user)?;
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::require_manager(&caller, caller_role)?;
    target(memberships::find(&tx, &org, &user).await?)?;
    let account = users::find_by_id(&tx, &user)
        .await?
        .ok_or_else(|| DomainError::not_found("member"))?;
    super::credentials::queue_password_reset(&app, &tx, &meta, caller.actor(), &account, true, now)
        .await?;
    tx.commit().await?;
    app.mail_wakeup.notify_one();
    Ok(())
}
