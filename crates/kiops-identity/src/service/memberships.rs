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
    caller_from_state, grant_is_a_change, subject_answer, subject_holds, CallerState, Member,
    Membership, PermissionAnswer, SubjectGate,
};
use crate::domain::model::Permission;
use crate::domain::model::Role;
use crate::domain::organization::Organization;
use crate::domain::page_token;
use crate::domain::second_factor as second_factor_rule;
use crate::domain::service_account;
use crate::domain::{access, validate, Caller, DomainError};
use crate::store::check_facts::CheckKey;
use crate::store::memberships::{self, MemberOrder, MemberQuery};
use crate::store::{organizations, second_factor, users, WriteTx};
use kiops_proto::v1::{
    AddMemberRequest, ApplyPermissionTemplateRequest, ChangeRoleRequest, CheckPermissionRequest,
    CheckPermissionsRequest, LeaveOrganizationRequest, ListMembersRequest,
    ListMyMembershipsRequest, RemoveMemberRequest, SetPermissionsRequest,
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
    let caller_role = memberships::caller_role(&tx, org, caller).await?;
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
    // A service account (members.read) lists the organizations its owner
    // covers (R25); a person as a Manager of it or a PlatformAdmin.
    let platform_wide = match &caller.service {
        Some(service) => {
            service_account::require_service_sees(service, &org)?;
            true
        }
        None => {
            let caller_role = memberships::caller_role(conn, &org, caller).await?;
            access::require_manager(caller, caller_role)?;
            caller.platform_admin
        }
    };
    if platform_wide && organizations::find(conn, &org).await?.is_none() {
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
    if let Some(service) = &caller.service {
        // members.read, in the organizations its owner covers (R25).
        service_account::require_service_sees(service, &org)?;
    } else if user != caller.user_id {
        let caller_role = memberships::caller_role(conn, &org, caller).await?;
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

/// Who asks CheckPermission(s): a person, by the verified claims of their
/// token (authenticated by the read that answers), or a service account
/// already authenticated and holding `permissions.check` (R25), whose
/// account is not a user the read could find.
#[derive(Debug, Clone)]
pub enum Asker {
    Person(kiops_token::Claims),
    Service(Caller),
}

/// Answers from current state (R16), authenticating and answering in one
/// read (`Store::check_facts`); the decisions are the same as on every
/// other RPC: `caller_from_state`, then R4/R1 via
/// `check_may_query_permission`. The caller is authenticated before the
/// request's fields are judged.
pub async fn check_permission(
    app: &App,
    asker: Asker,
    r: CheckPermissionRequest,
) -> Result<PermissionAnswer, DomainError> {
    let claims = match asker {
        Asker::Person(claims) => claims,
        Asker::Service(caller) => return check_permission_as_service(app, &caller, r).await,
    };
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
            org: org.clone(),
        })
        .await?;
    let (state, caller_role) = match &facts {
        Some(f) => (Some(f.caller.clone()), f.caller_role),
        None => (None, None),
    };
    let now = app.clock.now_ms();
    let mut caller = caller_from_state(claims.sub.clone(), claims.sid.clone(), state.clone(), now)?;
    v.into_result()?;
    let (Some(perm), Some(facts), Some(state)) = (perm, facts, state) else {
        return Err(DomainError::internal("permission validated"));
    };
    let about_other = user != caller.user_id;
    // R31: read only when a policy could change the answer or the caller's
    // right to ask.
    let holds = subject_holds(facts.subject.as_ref(), perm);
    if !(holds || about_other && (state.platform_admin || caller_role.is_some())) {
        if about_other {
            access::check_may_query_permission(&caller, caller_role, &user)?;
        }
        return Ok(PermissionAnswer {
            allowed: false,
            denial_reason: None,
        });
    }
    let sid = claims.sid.as_deref();
    let gate = second_factor::gate_facts(app.store.conn(), &[&org], &[&user], sid, now).await?;
    caller = caller_from_state(
        claims.sub,
        claims.sid,
        Some(CallerState {
            second_factor: gate.caller_session,
            platform_second_factor_required: gate.platform_required,
            ..state
        }),
        now,
    )?;
    if about_other && !caller.platform_admin {
        let caller_role =
            second_factor_rule::caller_role(&caller, &org, caller_role, gate.org_required(&org))?;
        access::check_may_query_permission(&caller, caller_role, &user)?;
    }
    Ok(subject_answer(
        facts.subject.as_ref(),
        perm,
        subject_gate(
            &gate,
            &org,
            &user,
            (!about_other).then_some(caller.second_factor),
        ),
    ))
}

/// R31's facts about `user` in `org`; `own_session` is the asking session's
/// second factor when the subject is the asker (their token's session
/// decides), else any live session of the subject holding one does.
fn subject_gate(
    gate: &second_factor::GateFacts,
    org: &str,
    user: &str,
    own_session: Option<bool>,
) -> SubjectGate {
    SubjectGate {
        org_required: gate.org_required(org),
        platform_required: gate.platform_required,
        second_factor: own_session.unwrap_or_else(|| gate.users_with_second_factor.contains(user)),
    }
}

/// CheckPermission by a service account (R25): about anyone in the
/// organizations its owner covers; the subject's facts in one read.
async fn check_permission_as_service(
    app: &App,
    caller: &Caller,
    r: CheckPermissionRequest,
) -> Result<PermissionAnswer, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let user = v.take(validate::id("user_id", &r.user_id));
    let perm = v.take(parse::permission("permission", r.permission).map(Some));
    v.into_result()?;
    let perm = perm.ok_or_else(|| DomainError::internal("permission validated"))?;
    service_account::check_permission_query(caller, None, &org, &user)?;
    let facts = app.store.check_many((None, &[(&user, &org)])).await?;
    let subject = facts.keys.first().and_then(Option::as_ref);
    if !subject_holds(subject, perm) {
        return Ok(PermissionAnswer {
            allowed: false,
            denial_reason: None,
        });
    }
    let now = app.clock.now_ms();
    let gate = second_factor::gate_facts(app.store.conn(), &[&org], &[&user], None, now).await?;
    Ok(subject_answer(
        subject,
        perm,
        subject_gate(&gate, &org, &user, None),
    ))
}

/// Most checks in one CheckPermissions call.
pub const MAX_CHECKS: usize = 100;

/// One validated item of a CheckPermissions call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckItem {
    org: String,
    user: String,
    perm: Permission,
}

/// The items of a CheckPermissions call, each bad field named with its
/// item (`items[3].user_id`).
fn check_items(items: &[CheckPermissionRequest]) -> Result<Vec<CheckItem>, DomainError> {
    if items.is_empty() || items.len() > MAX_CHECKS {
        return Err(DomainError::invalid(
            "items",
            format!("must hold 1 to {MAX_CHECKS} checks"),
        ));
    }
    let mut v = Violations::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let org = v.take(validate::id(
            &format!("items[{i}].organization_id"),
            &item.organization_id,
        ));
        let user = v.take(validate::id(&format!("items[{i}].user_id"), &item.user_id));
        let perm =
            v.take(parse::permission(&format!("items[{i}].permission"), item.permission).map(Some));
        if let Some(perm) = perm {
            out.push(CheckItem { org, user, perm });
        }
    }
    v.into_result()?;
    Ok(out)
}

/// The distinct (user, organization) keys a call reads, and per item where
/// its subject's key is and, when the asking person's role in the
/// organization may decide, where theirs is.
#[derive(Debug, Default)]
struct KeyPlan<'a> {
    keys: Vec<(&'a str, &'a str)>,
    items: Vec<(Option<usize>, usize)>,
}

/// The keys of `items` asked by `person` (None for a service account,
/// which has no role). A person's role decides only about others; whether
/// they are a PlatformAdmin, whose role decides nothing, is read in the
/// same read, so their role is read in any case.
fn key_plan<'a>(person: Option<&'a str>, items: &'a [CheckItem]) -> KeyPlan<'a> {
    let mut index = std::collections::HashMap::with_capacity(items.len() + 1);
    let mut keys = Vec::with_capacity(items.len() + 1);
    let mut at = |key: (&'a str, &'a str)| {
        *index.entry(key).or_insert_with(|| {
            keys.push(key);
            keys.len() - 1
        })
    };
    let items = items
        .iter()
        .map(|item| {
            let subject = at((item.user.as_str(), item.org.as_str()));
            let role = person
                .filter(|p| *p != item.user)
                .map(|p| at((p, item.org.as_str())));
            (role, subject)
        })
        .collect();
    KeyPlan { keys, items }
}

/// CheckPermissions: every item authorised as CheckPermission would be, in
/// order, and the whole call refused with the first refusal, naming its
/// item (AIP-231: no partial answers). One snapshot answers the call
/// (`Store::check_many`): the asking person's account and session, their
/// role in each organization asked about, and every subject, each distinct
/// (user, organization) read once. As with CheckPermission, the caller is
/// authenticated before the items are judged.
pub async fn check_permissions(
    app: &App,
    asker: Asker,
    r: CheckPermissionsRequest,
) -> Result<Vec<PermissionAnswer>, DomainError> {
    let items = check_items(&r.items);
    let person = match &asker {
        Asker::Person(claims) => Some((
            claims.sub.as_str(),
            claims.sid.as_deref().unwrap_or_default(),
        )),
        Asker::Service(_) => None,
    };
    let plan = match &items {
        Ok(items) => key_plan(person.map(|p| p.0), items),
        // Bad items: the caller is still authenticated first.
        Err(_) => KeyPlan::default(),
    };
    let facts = app.store.check_many((person, &plan.keys)).await?;
    let now = app.clock.now_ms();
    let caller = match &asker {
        Asker::Person(claims) => caller_from_state(
            claims.sub.clone(),
            claims.sid.clone(),
            facts.caller.clone(),
            now,
        )?,
        Asker::Service(caller) => caller.clone(),
    };
    let items = items.as_ref().map_err(Clone::clone)?;
    // R31, one more read for the whole call: the organizations and subjects
    // asked about, and the asking session.
    let orgs: Vec<&str> = plan.keys.iter().map(|k| k.1).collect();
    let users: Vec<&str> = plan.keys.iter().map(|k| k.0).collect();
    let sid = person.map(|p| p.1);
    let gate = second_factor::gate_facts(app.store.conn(), &orgs, &users, sid, now).await?;
    let caller = match (&asker, facts.caller) {
        (Asker::Person(claims), Some(state)) => caller_from_state(
            claims.sub.clone(),
            claims.sid.clone(),
            Some(CallerState {
                second_factor: gate.caller_session,
                platform_second_factor_required: gate.platform_required,
                ..state
            }),
            now,
        )?,
        _ => caller,
    };
    let fact = |k: usize| facts.keys.get(k).and_then(Option::as_ref);
    items
        .iter()
        .zip(&plan.items)
        .enumerate()
        .map(|(i, (item, &(role, subject)))| {
            let caller_role = role.and_then(fact).and_then(|s| s.role);
            let caller_role = if caller.service.is_none() && item.user != caller.user_id {
                second_factor_rule::caller_role(
                    &caller,
                    &item.org,
                    caller_role,
                    gate.org_required(&item.org),
                )
                .map_err(|e| e.at_item(i))?
            } else {
                caller_role
            };
            service_account::check_permission_query(&caller, caller_role, &item.org, &item.user)
                .map_err(|e| e.at_item(i))?;
            let own = (caller.service.is_none() && item.user == caller.user_id)
                .then_some(caller.second_factor);
            Ok(subject_answer(
                fact(subject),
                item.perm,
                subject_gate(&gate, &item.org, &item.user, own),
            ))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const O1: &str = "01900000-0000-7000-8000-000000000001";
    const O2: &str = "01900000-0000-7000-8000-000000000002";
    const U1: &str = "01900000-0000-7000-8000-00000000000a";

    fn item(user: &str, org: &str, permission: i32) -> CheckPermissionRequest {
        CheckPermissionRequest {
            user_id: user.into(),
            organization_id: org.into(),
            permission,
        }
    }

    fn fields(e: DomainError) -> Vec<String> {
        match e {
            DomainError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn items_are_one_to_a_hundred_and_each_bad_field_names_its_item() {
        assert_eq!(fields(check_items(&[]).unwrap_err()), ["items"]);
        let many = vec![item(U1, O1, 1); MAX_CHECKS + 1];
        assert_eq!(fields(check_items(&many).unwrap_err()), ["items"]);
        assert_eq!(
            check_items(&vec![item(U1, O1, 1); MAX_CHECKS])
                .expect("valid")
                .len(),
            MAX_CHECKS
        );
        let bad = [
            item(U1, O1, 1),
            item("nope", O1, 1),
            item(U1, O2, 1),
            item(U1, "", 0),
        ];
        assert_eq!(
            fields(check_items(&bad).unwrap_err()),
            [
                "items[1].user_id",
                "items[3].organization_id",
                "items[3].permission"
            ]
        );
    }

    #[test]
    fn each_key_is_read_once_and_the_callers_role_only_when_it_decides() {
        const ME: &str = "01900000-0000-7000-8000-00000000000b";
        let items = check_items(&[
            item(U1, O1, 1),
            item(U1, O1, 2),
            item(ME, O1, 1),
            item(U1, O2, 1),
        ])
        .expect("valid");
        let p = key_plan(Some(ME), &items);
        assert_eq!(p.keys, [(U1, O1), (ME, O1), (U1, O2), (ME, O2)]);
        // About oneself: no role needed; the caller's key is also a subject's.
        assert_eq!(
            p.items,
            [(Some(1), 0), (Some(1), 0), (None, 1), (Some(3), 2)]
        );
        // A service account has no role to read.
        let p = key_plan(None, &items);
        assert_eq!(p.keys, [(U1, O1), (ME, O1), (U1, O2)]);
        assert!(p.items.iter().all(|(role, _)| role.is_none()));
    }
}
