//! `UserService`: self-service and PlatformAdmin account actions.

use super::context::{self, request_meta};
use super::convert;
use crate::app::App;
use crate::domain::error::reason;
use crate::domain::error::Violations;
use crate::domain::model::StoredStatus;
use crate::domain::page_token;
use crate::domain::{access, password_policy, validate, Caller, DomainError};
use crate::store::audit::{self, AuditEntry, RequestMeta};
use crate::store::memberships::{self, StatusFilter};
use crate::store::revocations::{self, Scope};
use crate::store::sessions;
use crate::store::users::{self, NewUser, ProfileChanges, User, UserOrder, UserQuery};

fn user_scope(user_id: &str) -> Scope<'_> {
    Scope {
        user_id,
        organization_id: None,
        session_id: None,
    }
}
use kiops_proto::v1::user_service_server::UserService;
use kiops_proto::v1::*;
use serde_json::json;
use tonic::{Request, Response, Status};

pub struct UserApi {
    app: App,
}

impl UserApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl App {
    /// Creates an account after validating every field and the password
    /// policy; the hash is computed on the bounded hashing pool.
    pub async fn create_user(
        &self,
        meta: &RequestMeta,
        actor: crate::store::audit::Actor,
        email: &str,
        name: &str,
        password: &str,
        platform_admin: bool,
    ) -> Result<User, DomainError> {
        let mut v = Violations::new();
        let email = validate::email("email", email);
        let name = validate::name("name", name);
        if let Err(e) = &email {
            v.push(e.clone());
        }
        if let Err(e) = &name {
            v.push(e.clone());
        }
        v.check(password_policy::check(
            "password",
            password,
            email.as_deref().unwrap_or(""),
        ));
        v.into_result()?;
        let (Ok(email), Ok(name)) = (email, name) else {
            return Err(DomainError::internal("validated fields missing"));
        };
        let password_hash = self.hasher.hash(password.to_string()).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let user = users::create(
            &tx,
            meta,
            actor,
            NewUser {
                email,
                name,
                password_hash,
                platform_admin,
                // Made by a PlatformAdmin (or the bootstrap): trusted.
                email_verified: true,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn get_me(&self, caller: &Caller) -> Result<User, DomainError> {
        users::find_by_id(self.store.conn(), &caller.user_id)
            .await?
            .ok_or_else(|| DomainError::not_found("user"))
    }

    /// Checks the caller's current password on the hashing pool. A wrong one
    /// counts toward lockout like a failed login (every path that takes a
    /// password does), and a locked account is refused.
    async fn verify_current_password(
        &self,
        meta: &RequestMeta,
        user: &User,
        password: &str,
    ) -> Result<String, DomainError> {
        validate::password_input("current_password", password)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        self.throttle.check(&meta.peer, Some(&user.email))?;
        let now = self.clock.now_ms();
        // The same reserved, exact lockout as Login (`check_password`).
        if let Some(u) = crate::service::credentials::check_password(
            self,
            meta,
            &user.email,
            password.to_string(),
            now,
        )
        .await?
        {
            if users::finish_login(self.store.writer(), &u.id, &u.password_hash, now).await? {
                return Ok(u.password_hash);
            }
            crate::service::credentials::record_failed_login(
                self,
                meta,
                &user.email,
                users::Failure::RefusedAfterCheck,
                now,
            )
            .await?;
        }
        Err(DomainError::denied(
            reason::INVALID_CURRENT_PASSWORD,
            "the current password is wrong",
        ))
    }

    async fn update_me(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: UpdateMeRequest,
    ) -> Result<User, DomainError> {
        let mut v = Violations::new();
        let paths = v.take(crate::service::parse::mask(
            "update_mask",
            r.update_mask.as_ref(),
            &["name", "phone", "avatar_url"],
            &["name", "phone", "avatar_url"],
        ));
        let mut changes = ProfileChanges::default();
        for p in &paths {
            match p.as_str() {
                "name" => changes.name = Some(v.take(validate::name("name", &r.name))),
                "phone" => changes.phone = Some(v.take(validate::phone("phone", &r.phone))),
                "avatar_url" => {
                    changes.avatar_url =
                        Some(v.take(validate::avatar_url("avatar_url", &r.avatar_url)))
                }
                _ => {}
            }
        }
        v.into_result()?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let before = users::find_by_id(&tx, &caller.user_id)
            .await?
            .ok_or_else(|| DomainError::not_found("user"))?;
        let after = users::update_profile(&tx, meta, caller.actor(), before, changes, now).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn change_password(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: ChangePasswordRequest,
    ) -> Result<(), DomainError> {
        let user = self.get_me(caller).await?;
        password_policy::check("new_password", &r.new_password, &user.email)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let verified = self
            .verify_current_password(meta, &user, &r.current_password)
            .await?;
        let hash = self.hasher.hash(r.new_password).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        // Only over the password that was verified: a reset or another
        // change committed while this one hashed wins, or a stolen password
        // could undo the owner's reset.
        if !users::replace_password(&tx, &user.id, &verified, hash, now).await? {
            return Err(password_changed_meanwhile());
        }
        let revoked = sessions::revoke_all_for_user(
            &tx,
            &user.id,
            caller.session_id.as_deref(),
            "password_changed",
            now,
        )
        .await?;
        revocations::record(&tx, user_scope(&user.id), "password_changed", now).await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(caller.actor(), "user.password_changed", "user", &user.id)
                .details(json!({"other_sessions_revoked": revoked})),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an account (R14 DeleteMe, R11 DeleteUser), refusing with the
    /// organizations it would leave without a Manager (R5).
    async fn delete_account(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        user: &User,
        verified_password: Option<&str>,
    ) -> Result<(), DomainError> {
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        // DeleteMe: only with the password that was verified (a reset in
        // between wins).
        if let Some(verified) = verified_password {
            if !users::holds_password(&tx, &user.id, verified).await? {
                return Err(password_changed_meanwhile());
            }
        }
        let sole = memberships::sole_manager_of(&tx, &user.id).await?;
        access::check_not_sole_manager(&sole)?;
        // Organizations first, then the PlatformAdmins: every path that can
        // shrink the set of active PlatformAdmins locks in this order.
        let admins = users::lock_active_platform_admins(&tx).await?;
        access::check_keeps_a_platform_admin(&admins, &user.id)?;
        if caller.user_id != user.id {
            // DeleteUser: the caller must still be a PlatformAdmin.
            access::require_still_platform_admin(caller, &admins)?;
        }
        memberships::remove_all_for_deleted_account(&tx, meta, caller.actor(), &user.id, now)
            .await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(caller.actor(), "user.deleted", "user", &user.id)
                .details(json!({"before": {"email": user.email, "name": user.name, "platform_admin": user.platform_admin}})),
            now,
        )
        .await?;
        users::delete(&tx, &user.id).await?;
        revocations::record(&tx, user_scope(&user.id), "deleted", now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_me(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: DeleteMeRequest,
    ) -> Result<(), DomainError> {
        let user = self.get_me(caller).await?;
        let verified = self
            .verify_current_password(meta, &user, &r.current_password)
            .await?;
        self.delete_account(meta, caller, &user, Some(&verified))
            .await
    }

    /// The target of a PlatformAdmin account action.
    async fn admin_target(
        &self,
        caller: &Caller,
        id: &str,
        not_self: bool,
    ) -> Result<User, DomainError> {
        access::require_platform_admin(caller)?;
        let id = validate::id("user_id", id).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        if not_self {
            access::require_not_self(caller, &id)?;
        }
        users::find_by_id(self.store.conn(), &id)
            .await?
            .ok_or_else(|| DomainError::not_found("user"))
    }

    async fn set_active(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
        active: bool,
    ) -> Result<User, DomainError> {
        let target = self.admin_target(caller, id, true).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let is_active = target.status == StoredStatus::Active.as_str();
        if is_active != active {
            if active {
                users::set_status(&tx, &target.id, StoredStatus::Active, now).await?;
                audit::record(
                    &tx,
                    meta,
                    AuditEntry::new(caller.actor(), "user.reactivated", "user", &target.id),
                    now,
                )
                .await?;
            } else {
                let sole = memberships::sole_manager_of(&tx, &target.id).await?;
                access::check_not_sole_manager(&sole)?;
                let admins = users::lock_active_platform_admins(&tx).await?;
                access::check_keeps_a_platform_admin(&admins, &target.id)?;
                access::require_still_platform_admin(caller, &admins)?;
                users::set_status(&tx, &target.id, StoredStatus::Inactive, now).await?;
                let revoked =
                    sessions::revoke_all_for_user(&tx, &target.id, None, "deactivated", now)
                        .await?;
                revocations::record(&tx, user_scope(&target.id), "deactivated", now).await?;
                audit::record(
                    &tx,
                    meta,
                    AuditEntry::new(caller.actor(), "user.deactivated", "user", &target.id)
                        .details(json!({"sessions_revoked": revoked})),
                    now,
                )
                .await?;
            }
        }
        let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
        tx.commit().await?;
        Ok(after)
    }

    async fn unlock_user(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
    ) -> Result<User, DomainError> {
        let target = self.admin_target(caller, id, false).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        users::reset_failed_logins(&tx, &target.id).await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(caller.actor(), "user.unlocked", "user", &target.id)
                .details(json!({"before": {"failed_login_count": target.failed_login_count, "locked_until": target.locked_until}})),
            now,
        )
        .await?;
        let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
        tx.commit().await?;
        Ok(after)
    }

    async fn set_platform_admin(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: SetPlatformAdminRequest,
    ) -> Result<User, DomainError> {
        access::check_set_platform_admin(caller, &r.user_id)?;
        let target = self.admin_target(caller, &r.user_id, false).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        if target.platform_admin != r.platform_admin {
            if !r.platform_admin {
                let admins = users::lock_active_platform_admins(&tx).await?;
                access::check_keeps_a_platform_admin(&admins, &target.id)?;
                access::require_still_platform_admin(caller, &admins)?;
            }
            users::set_platform_admin(&tx, &target.id, r.platform_admin, now).await?;
            if !r.platform_admin {
                revocations::record(&tx, user_scope(&target.id), "platform_admin_revoked", now)
                    .await?;
            }
            audit::record(
                &tx,
                meta,
                AuditEntry::new(caller.actor(), "user.platform_admin_changed", "user", &target.id)
                    .details(json!({"before": {"platform_admin": target.platform_admin}, "after": {"platform_admin": r.platform_admin}})),
                now,
            )
            .await?;
        }
        let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
        tx.commit().await?;
        Ok(after)
    }

    async fn list_users(
        &self,
        caller: &Caller,
        r: ListUsersRequest,
    ) -> Result<ListUsersResponse, DomainError> {
        access::require_platform_admin(caller)?;
        let mut v = Violations::new();
        let query = v.take(crate::service::parse::query("query", &r.query));
        let (order, descending) = v
            .take(user_order("order_by", &r.order_by).map(Some))
            .unwrap_or((UserOrder::Email, false));
        let mut status = v.take(crate::service::parse::status_filter("status", r.status));
        let (filter_status, platform_admin) = v.take(parse_filter("filter", &r.filter));
        if let Some(fs) = filter_status {
            if status.is_some_and(|s| s != fs) {
                v.push(crate::domain::FieldViolation::new(
                    "filter",
                    "contradicts the status field",
                ));
            }
            status = Some(fs);
        }
        let size = v.take(validate::page_size("page_size", r.page_size));
        let fp = page_token::fingerprint(&[
            "users",
            &query,
            &format!("{order:?}/{descending}/{status:?}/{platform_admin:?}"),
        ]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let now = self.clock.now_ms();
        let snapshot = self.store.begin_listing().await?;
        let (rows, total) = users::list(
            &snapshot,
            UserQuery {
                query: &query,
                status,
                platform_admin,
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
            (true, Some(l)) => page_token::encode(&key, &fp, vec![order.key(l), json!(l.id)]),
            _ => String::new(),
        };
        Ok(ListUsersResponse {
            users: rows.iter().map(|u| convert::user(u, now)).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }
}

/// `"email"`, `"name"` or `"create_time"`, optionally with ` desc`.
pub fn user_order(
    field: &str,
    s: &str,
) -> Result<(UserOrder, bool), crate::domain::FieldViolation> {
    let bad = || {
        crate::domain::FieldViolation::new(
            field,
            "must be \"email\", \"name\" or \"create_time\", optionally followed by \" desc\"",
        )
    };
    let mut words = s.split_whitespace();
    let order = match words.next() {
        None => return Ok((UserOrder::Email, false)),
        Some("email") => UserOrder::Email,
        Some("name") => UserOrder::Name,
        Some("create_time") => UserOrder::CreateTime,
        Some(_) => return Err(bad()),
    };
    let desc = match words.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(bad()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    Ok((order, desc))
}

/// A small AIP-160 subset: `status=ACTIVE|INACTIVE|LOCKED` and
/// `platform_admin=true|false`, joined by ` AND `.
pub fn parse_filter(
    field: &str,
    s: &str,
) -> Result<(Option<StatusFilter>, Option<bool>), crate::domain::FieldViolation> {
    let bad = |t: &str| {
        crate::domain::FieldViolation::new(field, format!("unsupported term {t:?}; use status=ACTIVE|INACTIVE|LOCKED and platform_admin=true|false joined by AND"))
    };
    let (mut status, mut pa) = (None, None);
    if s.trim().is_empty() {
        return Ok((None, None));
    }
    for term in s.split(" AND ") {
        let t = term.trim();
        let (k, val) = t.split_once('=').ok_or_else(|| bad(t))?;
        match (k.trim(), val.trim()) {
            ("status", "ACTIVE") => status = Some(StatusFilter::Active),
            ("status", "INACTIVE") => status = Some(StatusFilter::Inactive),
            ("status", "LOCKED") => status = Some(StatusFilter::Locked),
            ("platform_admin", "true") => pa = Some(true),
            ("platform_admin", "false") => pa = Some(false),
            _ => return Err(bad(t)),
        }
    }
    Ok((status, pa))
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_me(
        &self,
        request: Request<GetMeRequest>,
    ) -> Result<Response<GetMeResponse>, Status> {
        let caller = context::authenticate(&self.app, &request).await?;
        let user = self.app.get_me(&caller).await?;
        Ok(Response::new(GetMeResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn update_me(
        &self,
        request: Request<UpdateMeRequest>,
    ) -> Result<Response<UpdateMeResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = self.app.update_me(&meta, &caller, r).await?;
        Ok(Response::new(UpdateMeResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        self.app.change_password(&meta, &caller, r).await?;
        Ok(Response::new(ChangePasswordResponse {}))
    }

    async fn delete_me(
        &self,
        request: Request<DeleteMeRequest>,
    ) -> Result<Response<DeleteMeResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        self.app.delete_me(&meta, &caller, r).await?;
        Ok(Response::new(DeleteMeResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(self.app.list_users(&caller, r).await?))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let user = self.app.admin_target(&caller, &r.user_id, false).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn deactivate_user(
        &self,
        request: Request<DeactivateUserRequest>,
    ) -> Result<Response<DeactivateUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = self
            .app
            .set_active(&meta, &caller, &r.user_id, false)
            .await?;
        Ok(Response::new(DeactivateUserResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn reactivate_user(
        &self,
        request: Request<ReactivateUserRequest>,
    ) -> Result<Response<ReactivateUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = self
            .app
            .set_active(&meta, &caller, &r.user_id, true)
            .await?;
        Ok(Response::new(ReactivateUserResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn unlock_user(
        &self,
        request: Request<UnlockUserRequest>,
    ) -> Result<Response<UnlockUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = self.app.unlock_user(&meta, &caller, &r.user_id).await?;
        Ok(Response::new(UnlockUserResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let target = self.app.admin_target(&caller, &r.user_id, true).await?;
        self.app
            .delete_account(&meta, &caller, &target, None)
            .await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn set_platform_admin(
        &self,
        request: Request<SetPlatformAdminRequest>,
    ) -> Result<Response<SetPlatformAdminResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = self.app.set_platform_admin(&meta, &caller, r).await?;
        Ok(Response::new(SetPlatformAdminResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let meta = request_meta(&request);
        let caller = context::authenticate(&self.app, &request).await?;
        access::require_platform_admin(&caller)?;
        let r = request.into_inner();
        let user = self
            .app
            .create_user(
                &meta,
                caller.actor(),
                &r.email,
                &r.name,
                &r.password,
                r.platform_admin,
            )
            .await?;
        Ok(Response::new(CreateUserResponse {
            user: Some(convert::user(&user, self.app.clock.now_ms())),
        }))
    }
}

/// The current password was right when checked, but the account's password
/// changed before this change could commit.
fn password_changed_meanwhile() -> DomainError {
    DomainError::denied(
        reason::INVALID_CURRENT_PASSWORD,
        "the password changed meanwhile; sign in again",
    )
}
