//! `MembershipService`: members, roles, permissions, templates (R1–R6, R10,
//! R16's CheckPermission, R17).
//!
//! Every change runs in one write transaction that first locks the
//! organization row (`organizations::lock`), then reads the caller's and the
//! target's current roles, decides with `domain::access`, applies, and writes
//! the audit event. So two Managers demoting each other at once are
//! serialized, and the second sees the first's result (R5).

use super::context::{self, current_caller};
use super::convert;
use crate::app::App;
use crate::domain::error::Violations;
use crate::domain::model::{effective_permissions, Role, StoredStatus};
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError};
use crate::service::parse;
use crate::store::audit::RequestMeta;
use crate::store::callers::CallerRow;
use crate::store::memberships::{self, parse_role, MemberQuery, Membership};
use crate::store::WriteTx;
use crate::store::{organizations, templates, users};
use kiops_proto::v1::membership_service_server::MembershipService;
use kiops_proto::v1::*;
use serde_json::json;
use tonic::{Request, Response, Status};

pub struct MembershipApi {
    app: App,
}

impl MembershipApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn org_and_user(org: &str, user: &str) -> Result<(String, String), DomainError> {
    let mut v = Violations::new();
    let o = v.take(validate::id("organization_id", org));
    let u = v.take(validate::id("user_id", user));
    v.into_result()?;
    Ok((o, u))
}

/// An open write transaction on one organization, with the caller's role in
/// it read after the lock.
struct OrgTx {
    tx: WriteTx,
    caller_role: Option<Role>,
}

impl App {
    /// Starts a write transaction, locks the organization row and reads the
    /// caller's current role. A missing organization answers exactly like one
    /// the caller cannot see (R4).
    async fn lock_org(&self, caller: &Caller, org: &str) -> Result<OrgTx, DomainError> {
        let tx = self.store.begin_write().await?;
        let exists = organizations::lock(&tx, org).await?.is_some();
        let caller_role = memberships::role_of(&tx, org, &caller.user_id).await?;
        if !exists {
            return Err(DomainError::not_found("organization"));
        }
        Ok(OrgTx { tx, caller_role })
    }

    /// The member as a reply shows it. A change reads it inside its own
    /// transaction, before commit: read afterwards, a concurrent removal
    /// could turn a committed (and audited) change into NOT_FOUND for the
    /// caller, who would then retry a change that happened.
    async fn member_view<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        org: &str,
        user: &str,
    ) -> Result<Member, DomainError> {
        let row = memberships::get_member(conn, org, user)
            .await?
            .ok_or_else(|| DomainError::not_found("member"))?;
        Ok(convert::member(&row, self.clock.now_ms()))
    }

    async fn add_member(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: AddMemberRequest,
    ) -> Result<Member, DomainError> {
        access::require_platform_admin(caller)?;
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        let role =
            parse::role("role", r.role).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, &org).await?;
        if users::find_by_id(&t.tx, &user).await?.is_none() {
            return Err(DomainError::not_found("user"));
        }
        memberships::add(&t.tx, meta, caller.actor(), &org, &user, role, now).await?;
        let member = self.member_view(&t.tx, &org, &user).await?;
        t.tx.commit().await?;
        Ok(member)
    }

    async fn change_role(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: ChangeRoleRequest,
    ) -> Result<Member, DomainError> {
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        let role =
            parse::role("role", r.role).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, &org).await?;
        access::check_role_change(caller, t.caller_role, &user, role)?;
        let target = memberships::find(&t.tx, &org, &user)
            .await?
            .ok_or_else(|| DomainError::not_found("member"))?;
        let before = parse_role(&target.role);
        if before != role {
            let managers = memberships::count_managers(&t.tx, &org).await?;
            let active = memberships::is_active_user(&t.tx, &user).await?;
            access::check_keeps_a_manager(before, Some(role), active, managers)?;
            memberships::set_role(&t.tx, meta, caller.actor(), &target, role, now).await?;
        }
        let member = self.member_view(&t.tx, &org, &user).await?;
        t.tx.commit().await?;
        Ok(member)
    }

    async fn set_grants(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        org: &str,
        user: &str,
        grant: Grant,
    ) -> Result<Member, DomainError> {
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, org).await?;
        access::check_permission_change(caller, t.caller_role, user)?;
        let target = memberships::find(&t.tx, org, user)
            .await?
            .ok_or_else(|| DomainError::not_found("member"))?;
        let (bits, action, extra) = match grant {
            Grant::Bits(b) => (b, "membership.permissions_changed", json!({})),
            Grant::Template(id) => {
                let tpl = templates::find(&t.tx, org, &id)
                    .await?
                    .ok_or_else(|| DomainError::not_found("permission template"))?;
                (
                    tpl.permissions as u8,
                    "membership.template_applied",
                    json!({"template_id": tpl.id, "template_name": tpl.name}),
                )
            }
        };
        if bits != target.permissions as u8 || action == "membership.template_applied" {
            memberships::set_permissions(
                &t.tx,
                meta,
                caller.actor(),
                &target,
                bits,
                action,
                extra,
                now,
            )
            .await?;
        }
        let member = self.member_view(&t.tx, org, user).await?;
        t.tx.commit().await?;
        Ok(member)
    }

    /// RemoveMember and LeaveOrganization: R10, with R5 when the member is a
    /// Manager.
    async fn remove_membership(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        org: &str,
        user: &str,
        leaving: bool,
    ) -> Result<(), DomainError> {
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, org).await?;
        if leaving {
            access::require_org_visible(caller, t.caller_role)?;
        } else {
            access::require_manager(caller, t.caller_role)?;
        }
        let target: Membership = memberships::find(&t.tx, org, user).await?.ok_or_else(|| {
            DomainError::not_found(if leaving { "organization" } else { "member" })
        })?;
        let role = parse_role(&target.role);
        if role == Role::Manager {
            let managers = memberships::count_managers(&t.tx, org).await?;
            let active = memberships::is_active_user(&t.tx, user).await?;
            access::check_keeps_a_manager(role, None, active, managers)?;
        }
        let action = if leaving {
            "membership.left"
        } else {
            "membership.removed"
        };
        memberships::remove(&t.tx, meta, caller.actor(), &target, action, now).await?;
        t.tx.commit().await?;
        Ok(())
    }

    async fn list_members(
        &self,
        caller: &Caller,
        r: ListMembersRequest,
    ) -> Result<ListMembersResponse, DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let query = v.take(parse::query("query", &r.query));
        let (order, descending) = v
            .take(parse::member_order("order_by", &r.order_by).map(Some))
            .unwrap_or((memberships::MemberOrder::Email, false));
        let role = v.take(parse::role_filter("role", r.role));
        let status = v.take(parse::status_filter("status", r.status));
        let size = v.take(validate::page_size("page_size", r.page_size));
        let fp = page_token::fingerprint(&[
            "members",
            &org,
            &query,
            &format!("{order:?}/{descending}/{:?}/{:?}", role, status),
        ]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let conn = self.store.conn();
        let caller_role = memberships::role_of(conn, &org, &caller.user_id).await?;
        access::require_manager(caller, caller_role)?;
        if caller.platform_admin && organizations::find(conn, &org).await?.is_none() {
            return Err(DomainError::not_found("organization"));
        }
        let now = self.clock.now_ms();
        let snapshot = self.store.begin_listing().await?;
        let (rows, total) = memberships::list_members(
            &snapshot,
            MemberQuery {
                organization_id: &org,
                query: &query,
                role,
                status,
                order,
                descending,
                after,
                limit: size + 1,
                now,
            },
        )
        .await?;
        snapshot.close().await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => page_token::encode(&key, &fp, last.sort_key(order)),
            _ => String::new(),
        };
        Ok(ListMembersResponse {
            members: rows.iter().map(|m| convert::member(m, now)).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    async fn get_member(
        &self,
        caller: &Caller,
        r: GetMemberRequest,
    ) -> Result<Member, DomainError> {
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        let caller_role = memberships::role_of(self.store.conn(), &org, &caller.user_id).await?;
        if user != caller.user_id {
            access::require_manager(caller, caller_role)?;
        }
        self.member_view(self.store.conn(), &org, &user).await
    }

    async fn list_my_memberships(
        &self,
        caller: &Caller,
        r: ListMyMembershipsRequest,
    ) -> Result<ListMyMembershipsResponse, DomainError> {
        let mut v = Violations::new();
        let size = v.take(validate::page_size("page_size", r.page_size));
        let fp = page_token::fingerprint(&["my-memberships", &caller.user_id]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let after_code = after
            .as_ref()
            .and_then(|k| k.first())
            .and_then(|c| c.as_str().map(str::to_string));
        let (rows, total) = memberships::list_for_user(
            self.store.conn(),
            &caller.user_id,
            after_code.as_deref(),
            size + 1,
        )
        .await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some((_, org))) => page_token::encode(&key, &fp, vec![json!(org.code)]),
            _ => String::new(),
        };
        Ok(ListMyMembershipsResponse {
            memberships: rows
                .iter()
                .map(|(m, o)| convert::membership(m, o, caller.platform_admin))
                .collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    /// Answers from current state (R16): one read of the user joined with the
    /// membership, plus the caller's role when asking about someone else.
    /// Authenticates and answers in one database round trip (see
    /// `Store::check_facts`); the decisions are the same as on every
    /// other RPC: `current_caller`, then R4/R1 via `check_may_query_permission`.
    pub async fn check_permission(
        &self,
        claims: kiops_token::Claims,
        r: CheckPermissionRequest,
    ) -> Result<bool, DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let user = v.take(validate::id("user_id", &r.user_id));
        let perm = v.take(parse::permission("permission", r.permission).map(Some));
        let session = claims.sid.clone().unwrap_or_default();
        let facts = self
            .store
            .check_facts(&claims.sub, &session, &user, &org)
            .await?;
        let caller_role = facts
            .as_ref()
            .and_then(|f| f.caller_role.as_deref())
            .map(parse_role);
        let caller = current_caller(
            claims,
            facts.as_ref().map(|f| CallerRow {
                email: f.caller_email.clone(),
                status: f.caller_status.clone(),
                platform_admin: f.caller_platform_admin,
                session: f.caller_session(),
            }),
            self.clock.now_ms(),
        )?;
        v.into_result()?;
        let (Some(perm), Some(facts)) = (perm, facts) else {
            return Err(DomainError::internal("permission validated"));
        };
        if user != caller.user_id && !caller.platform_admin {
            access::check_may_query_permission(&caller, caller_role, &user)?;
        }
        let Some(status) = facts.subject_exists.and(facts.subject_status) else {
            return Ok(false);
        };
        if StoredStatus::parse(&status) == StoredStatus::Inactive {
            return Ok(false);
        }
        let role = facts.subject_role.as_deref().map(parse_role);
        let perms = effective_permissions(
            facts.subject_platform_admin.unwrap_or(false),
            role,
            facts.subject_permissions.unwrap_or(0) as u8,
        );
        Ok(perms.contains(&perm))
    }

    async fn create_template(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: CreatePermissionTemplateRequest,
    ) -> Result<PermissionTemplate, DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let name = v.take(template_name("name", &r.name));
        let bits = v.take(parse::permission_bits("permissions", &r.permissions));
        v.into_result()?;
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, &org).await?;
        access::require_manager(caller, t.caller_role)?;
        let tpl = templates::create(&t.tx, meta, caller.actor(), &org, name, bits, now).await?;
        t.tx.commit().await?;
        Ok(convert::template(&tpl))
    }

    async fn list_templates(
        &self,
        caller: &Caller,
        r: ListPermissionTemplatesRequest,
    ) -> Result<ListPermissionTemplatesResponse, DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let size = v.take(validate::page_size("page_size", r.page_size));
        let fp = page_token::fingerprint(&["templates", &org]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let conn = self.store.conn();
        let caller_role = memberships::role_of(conn, &org, &caller.user_id).await?;
        access::require_manager(caller, caller_role)?;
        let after_name = after
            .as_ref()
            .and_then(|k| k.first())
            .and_then(|c| c.as_str().map(str::to_string));
        let (rows, total) = templates::list(conn, &org, after_name.as_deref(), size + 1).await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => page_token::encode(&key, &fp, vec![json!(last.name)]),
            _ => String::new(),
        };
        Ok(ListPermissionTemplatesResponse {
            templates: rows.iter().map(convert::template).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    async fn update_template(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: UpdatePermissionTemplateRequest,
    ) -> Result<PermissionTemplate, DomainError> {
        let t_in = r.template.unwrap_or_default();
        let mut v = Violations::new();
        let org = v.take(validate::id(
            "template.organization_id",
            &t_in.organization_id,
        ));
        let id = v.take(validate::id("template.template_id", &t_in.template_id));
        let paths = v.take(parse::mask(
            "update_mask",
            r.update_mask.as_ref(),
            &["name", "permissions"],
            &["name", "permissions"],
        ));
        let name = if paths.iter().any(|p| p == "name") {
            Some(v.take(template_name("template.name", &t_in.name)))
        } else {
            None
        };
        let bits = if paths.iter().any(|p| p == "permissions") {
            Some(v.take(parse::permission_bits(
                "template.permissions",
                &t_in.permissions,
            )))
        } else {
            None
        };
        v.into_result()?;
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, &org).await?;
        access::require_manager(caller, t.caller_role)?;
        let before = templates::find(&t.tx, &org, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("permission template"))?;
        let after = templates::update(&t.tx, meta, caller.actor(), before, name, bits, now).await?;
        t.tx.commit().await?;
        Ok(convert::template(&after))
    }

    async fn delete_template(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: DeletePermissionTemplateRequest,
    ) -> Result<(), DomainError> {
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let id = v.take(validate::id("template_id", &r.template_id));
        v.into_result()?;
        let now = self.clock.now_ms();
        let t = self.lock_org(caller, &org).await?;
        access::require_manager(caller, t.caller_role)?;
        let tpl = templates::find(&t.tx, &org, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("permission template"))?;
        templates::delete(&t.tx, meta, caller.actor(), tpl, now).await?;
        t.tx.commit().await?;
        Ok(())
    }
}

enum Grant {
    Bits(u8),
    Template(String),
}

fn template_name(field: &str, raw: &str) -> Result<String, crate::domain::FieldViolation> {
    let n = validate::name(field, raw)?;
    if n.chars().count() > 64 {
        return Err(crate::domain::FieldViolation::new(
            field,
            "must be at most 64 characters",
        ));
    }
    Ok(n)
}

#[tonic::async_trait]
impl MembershipService for MembershipApi {
    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let member = self.app.add_member(&meta, &caller, r).await?;
        Ok(Response::new(AddMemberResponse {
            member: Some(member),
        }))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(self.app.list_members(&caller, r).await?))
    }

    async fn get_member(
        &self,
        request: Request<GetMemberRequest>,
    ) -> Result<Response<GetMemberResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let member = self.app.get_member(&caller, r).await?;
        Ok(Response::new(GetMemberResponse {
            member: Some(member),
        }))
    }

    async fn change_role(
        &self,
        request: Request<ChangeRoleRequest>,
    ) -> Result<Response<ChangeRoleResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let member = self.app.change_role(&meta, &caller, r).await?;
        Ok(Response::new(ChangeRoleResponse {
            member: Some(member),
        }))
    }

    async fn set_permissions(
        &self,
        request: Request<SetPermissionsRequest>,
    ) -> Result<Response<SetPermissionsResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        let bits = parse::permission_bits("permissions", &r.permissions)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let member = self
            .app
            .set_grants(&meta, &caller, &org, &user, Grant::Bits(bits))
            .await?;
        Ok(Response::new(SetPermissionsResponse {
            member: Some(member),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        self.app
            .remove_membership(&meta, &caller, &org, &user, false)
            .await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn leave_organization(
        &self,
        request: Request<LeaveOrganizationRequest>,
    ) -> Result<Response<LeaveOrganizationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let org = validate::id("organization_id", &r.organization_id)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let me = caller.user_id.clone();
        self.app
            .remove_membership(&meta, &caller, &org, &me, true)
            .await?;
        Ok(Response::new(LeaveOrganizationResponse {}))
    }

    async fn list_my_memberships(
        &self,
        request: Request<ListMyMembershipsRequest>,
    ) -> Result<Response<ListMyMembershipsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(
            self.app.list_my_memberships(&caller, r).await?,
        ))
    }

    async fn check_permission(
        &self,
        request: Request<CheckPermissionRequest>,
    ) -> Result<Response<CheckPermissionResponse>, Status> {
        let claims = context::verify_bearer(&self.app, &request)?;
        let allowed = self
            .app
            .check_permission(claims, request.into_inner())
            .await?;
        Ok(Response::new(CheckPermissionResponse { allowed }))
    }

    async fn create_permission_template(
        &self,
        request: Request<CreatePermissionTemplateRequest>,
    ) -> Result<Response<CreatePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let template = self.app.create_template(&meta, &caller, r).await?;
        Ok(Response::new(CreatePermissionTemplateResponse {
            template: Some(template),
        }))
    }

    async fn list_permission_templates(
        &self,
        request: Request<ListPermissionTemplatesRequest>,
    ) -> Result<Response<ListPermissionTemplatesResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(self.app.list_templates(&caller, r).await?))
    }

    async fn update_permission_template(
        &self,
        request: Request<UpdatePermissionTemplateRequest>,
    ) -> Result<Response<UpdatePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let template = self.app.update_template(&meta, &caller, r).await?;
        Ok(Response::new(UpdatePermissionTemplateResponse {
            template: Some(template),
        }))
    }

    async fn delete_permission_template(
        &self,
        request: Request<DeletePermissionTemplateRequest>,
    ) -> Result<Response<DeletePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        self.app.delete_template(&meta, &caller, r).await?;
        Ok(Response::new(DeletePermissionTemplateResponse {}))
    }

    async fn send_password_reset(
        &self,
        request: Request<SendPasswordResetRequest>,
    ) -> Result<Response<SendPasswordResetResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (org, user) = org_and_user(&r.organization_id, &r.user_id)?;
        let now = self.app.clock.now_ms();
        let t = self.app.lock_org(&caller, &org).await?;
        access::require_manager(&caller, t.caller_role)?;
        if memberships::find(&t.tx, &org, &user).await?.is_none() {
            return Err(DomainError::not_found("member").into());
        }
        let target = users::find_by_id(&t.tx, &user)
            .await?
            .ok_or_else(|| DomainError::not_found("member"))?;
        crate::service::credentials::queue_password_reset(
            &self.app,
            &t.tx,
            &meta,
            caller.actor(),
            &target,
            true,
            now,
        )
        .await?;
        t.tx.commit().await?;
        self.app.mail_wakeup.notify_one();
        Ok(Response::new(SendPasswordResetResponse {}))
    }

    async fn apply_permission_template(
        &self,
        request: Request<ApplyPermissionTemplateRequest>,
    ) -> Result<Response<ApplyPermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let mut v = Violations::new();
        let org = v.take(validate::id("organization_id", &r.organization_id));
        let user = v.take(validate::id("user_id", &r.user_id));
        let tpl = v.take(validate::id("template_id", &r.template_id));
        v.into_result()?;
        let member = self
            .app
            .set_grants(&meta, &caller, &org, &user, Grant::Template(tpl))
            .await?;
        Ok(Response::new(ApplyPermissionTemplateResponse {
            member: Some(member),
        }))
    }
}
