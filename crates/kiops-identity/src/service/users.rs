//! `UserService` use cases: self-service (R14) and the PlatformAdmin's
//! account actions and "All Users" list (R11, R17).
//!
//! Every path that takes the current password counts a wrong one toward
//! lockout like a failed login (R12). Every change that can shrink the set
//! of active PlatformAdmins locks it (`users::lock_active_platform_admins`)
//! after the organizations it touches, and decides on what it read under
//! that lock.

use super::{credentials, parse, Cursor, Page};
use crate::app::App;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::error::{reason, Violations};
use crate::domain::service_account;
use crate::domain::user::{NewUser, ProfileChanges, StoredStatus, User};
use crate::domain::{
    access, page_token, password_policy, validate, Caller, DomainError, FieldViolation,
};
use crate::store::memberships::{self, StatusFilter};
use crate::store::users::{self, UserOrder, UserQuery};
use kiops_proto::v1::{
    ChangePasswordRequest, CreateUserRequest, DeleteMeRequest, ListUsersRequest,
    SetPlatformAdminRequest, UpdateMeRequest,
};
use serde_json::json;

/// CreateUser (R11): a PlatformAdmin makes an account.
pub async fn create(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: CreateUserRequest,
) -> Result<User, DomainError> {
    access::require_platform_admin(&caller)?;
    create_account(
        &app,
        &meta,
        caller.actor(),
        &r.email,
        &r.name,
        &r.password,
        r.platform_admin,
    )
    .await
}

/// Creates an account after validating every field and the password policy
/// (R13); the hash is computed on the bounded hashing pool. Made by a
/// PlatformAdmin or the bootstrap, so the address counts as verified.
pub async fn create_account(
    app: &App,
    meta: &RequestMeta,
    actor: Actor,
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
    let password_hash = app.hasher.hash(password.to_string()).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let user = users::create(
        &tx,
        meta,
        actor,
        NewUser {
            email,
            name,
            password_hash,
            platform_admin,
            email_verified: true,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// GetMe (R14).
pub async fn get_me(app: &App, caller: &Caller) -> Result<User, DomainError> {
    users::find_by_id(app.store.conn(), &caller.user_id)
        .await?
        .ok_or_else(|| DomainError::not_found("user"))
}

/// UpdateMe (R14): name, phone, avatar_url.
pub async fn update_me(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: UpdateMeRequest,
) -> Result<User, DomainError> {
    let mut v = Violations::new();
    let paths = v.take(parse::mask(
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
                changes.avatar_url = Some(v.take(validate::avatar_url("avatar_url", &r.avatar_url)))
            }
            _ => {}
        }
    }
    v.into_result()?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let before = users::find_by_id(&tx, &caller.user_id)
        .await?
        .ok_or_else(|| DomainError::not_found("user"))?;
    let after = users::update_profile(&tx, &meta, caller.actor(), before, changes, now).await?;
    tx.commit().await?;
    Ok(after)
}

/// Checks the caller's current password on the hashing pool and returns the
/// hash it matched. A wrong one counts toward lockout like a failed login,
/// and a locked account is refused (R12).
pub(super) async fn verify_current_password(
    app: &App,
    meta: &RequestMeta,
    user: &User,
    password: &str,
) -> Result<String, DomainError> {
    validate::password_input("current_password", password)?;
    app.throttle.check(&meta.peer, Some(&user.email))?;
    let now = app.clock.now_ms();
    // The same reserved, exact lockout as Login (`check_password`).
    if let Some(u) =
        credentials::check_password(app, meta, &user.email, password.to_string(), now).await?
    {
        if users::finish_login(app.store.writer(), &u.id, &u.password_hash, now).await? {
            return Ok(u.password_hash);
        }
        credentials::record_failed_login(
            app,
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

/// The current password was right when checked, but the account's password
/// changed before this change could commit.
fn password_changed_meanwhile() -> DomainError {
    DomainError::denied(
        reason::INVALID_CURRENT_PASSWORD,
        "the password changed meanwhile; sign in again",
    )
}

/// ChangePassword (R14): the caller's other sessions end.
pub async fn change_password(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: ChangePasswordRequest,
) -> Result<(), DomainError> {
    let user = get_me(&app, &caller).await?;
    password_policy::check("new_password", &r.new_password, &user.email)?;
    let verified = verify_current_password(&app, &meta, &user, &r.current_password).await?;
    let hash = app.hasher.hash(r.new_password).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    // Only over the password that was verified: a reset or another change
    // committed while this one hashed wins, or a stolen password could undo
    // the owner's reset.
    if !users::change_password(&tx, &meta, &caller, &user.id, &verified, hash, now).await? {
        return Err(password_changed_meanwhile());
    }
    tx.commit().await
}

/// DeleteMe (R14): with the current password.
pub async fn delete_me(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: DeleteMeRequest,
) -> Result<(), DomainError> {
    let user = get_me(&app, &caller).await?;
    let verified = verify_current_password(&app, &meta, &user, &r.current_password).await?;
    delete_account(&app, &meta, &caller, &user, Some(&verified)).await
}

/// DeleteUser (R11): a PlatformAdmin deletes another account.
pub async fn delete_user(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<(), DomainError> {
    let target = admin_target(&app, &caller, &id, true).await?;
    delete_account(&app, &meta, &caller, &target, None).await
}

/// Deletes an account (R14 DeleteMe, R11 DeleteUser), refusing with the
/// organizations it would leave without a Manager (R5).
async fn delete_account(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    user: &User,
    verified_password: Option<&str>,
) -> Result<(), DomainError> {
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    // DeleteMe: only with the password that was verified (a reset in
    // between wins).
    if let Some(verified) = verified_password {
        if !users::holds_password(&tx, &user.id, verified).await? {
            return Err(password_changed_meanwhile());
        }
    }
    let sole = memberships::sole_manager_of(&tx, &user.id).await?;
    access::check_not_sole_manager(&sole)?;
    // Organizations first, then the PlatformAdmins.
    let admins = users::lock_active_platform_admins(&tx).await?;
    access::check_keeps_a_platform_admin(&admins, &user.id)?;
    if caller.user_id != user.id {
        // DeleteUser: the caller must still be a PlatformAdmin.
        access::require_still_platform_admin(caller, &admins)?;
    }
    users::delete(&tx, meta, caller.actor(), user, now).await?;
    tx.commit().await
}

/// The target of a PlatformAdmin account action (R11).
pub(super) async fn admin_target(
    app: &App,
    caller: &Caller,
    id: &str,
    not_self: bool,
) -> Result<User, DomainError> {
    access::require_platform_admin(caller)?;
    let id = validate::id("user_id", id)?;
    if not_self {
        access::require_not_self(caller, &id)?;
    }
    users::find_by_id(app.store.conn(), &id)
        .await?
        .ok_or_else(|| DomainError::not_found("user"))
}

/// GetUser (R11). A service account (users.read, R25) must be a platform
/// account: reading accounts is a PlatformAdmin's, which no organization's
/// Manager may do (members.read is what an organization's account reads).
pub async fn get_user(app: &App, caller: &Caller, id: &str) -> Result<User, DomainError> {
    if caller.service.is_none() {
        return admin_target(app, caller, id, false).await;
    }
    service_account::require_platform_reader(caller)?;
    let id = validate::id("user_id", id)?;
    users::find_by_id(app.store.conn(), &id)
        .await?
        .ok_or_else(|| DomainError::not_found("user"))
}

/// DeactivateUser (R11): refused if an organization would lose its last
/// Manager (R5) or the platform its last active PlatformAdmin.
pub async fn deactivate(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<User, DomainError> {
    set_active(&app, &meta, &caller, &id, false).await
}

/// ReactivateUser (R11).
pub async fn reactivate(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<User, DomainError> {
    set_active(&app, &meta, &caller, &id, true).await
}

/// Deactivates or reactivates; an account already so is left as it is.
async fn set_active(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    id: &str,
    active: bool,
) -> Result<User, DomainError> {
    let target = admin_target(app, caller, id, true).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let is_active = target.status == StoredStatus::Active;
    if is_active != active {
        if active {
            users::reactivate(&tx, meta, caller.actor(), &target.id, now).await?;
        } else {
            let sole = memberships::sole_manager_of(&tx, &target.id).await?;
            access::check_not_sole_manager(&sole)?;
            let admins = users::lock_active_platform_admins(&tx).await?;
            access::check_keeps_a_platform_admin(&admins, &target.id)?;
            access::require_still_platform_admin(caller, &admins)?;
            users::deactivate(&tx, meta, caller.actor(), &target.id, now).await?;
        }
    }
    let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
    tx.commit().await?;
    Ok(after)
}

/// UnlockUser (R11, R12).
pub async fn unlock(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<User, DomainError> {
    let target = admin_target(&app, &caller, &id, false).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    users::unlock(&tx, &meta, caller.actor(), &target, now).await?;
    let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
    tx.commit().await?;
    Ok(after)
}

/// SetPlatformAdmin (R2, R3): never one's own flag; the platform keeps an
/// active PlatformAdmin.
pub async fn set_platform_admin(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: SetPlatformAdminRequest,
) -> Result<User, DomainError> {
    access::check_set_platform_admin(&caller, &r.user_id)?;
    let target = admin_target(&app, &caller, &r.user_id, false).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    if target.platform_admin != r.platform_admin {
        if !r.platform_admin {
            let admins = users::lock_active_platform_admins(&tx).await?;
            access::check_keeps_a_platform_admin(&admins, &target.id)?;
            access::require_still_platform_admin(&caller, &admins)?;
        }
        users::set_platform_admin(&tx, &meta, caller.actor(), &target, r.platform_admin, now)
            .await?;
    }
    let after = users::find_by_id(&tx, &target.id).await?.unwrap_or(target);
    tx.commit().await?;
    Ok(after)
}

/// ListUsers, "All Users" (R11, R17): search, sort, filter and keyset pages;
/// LOCKED is judged at `now`.
pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListUsersRequest,
    now: i64,
) -> Result<Page<User>, DomainError> {
    service_account::require_platform_reader(caller)?;
    let mut v = Violations::new();
    let query = v.take(parse::query("query", &r.query));
    let (order, descending) = v
        .take(user_order("order_by", &r.order_by).map(Some))
        .unwrap_or((UserOrder::Email, false));
    let mut status = v.take(parse::status_filter("status", r.status));
    let (filter_status, platform_admin) = v.take(parse_filter("filter", &r.filter));
    if let Some(fs) = filter_status {
        if status.is_some_and(|s| s != fs) {
            v.push(FieldViolation::new(
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
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let snapshot = app.store.begin_listing().await?;
    let (rows, total) = users::list(
        &snapshot,
        UserQuery {
            query: &query,
            status,
            platform_admin,
            order,
            descending,
            after: cursor.after.clone(),
            limit: size + 1,
            now,
        },
    )
    .await?;
    snapshot.close().await?;
    Ok(cursor.page(rows, size, total, |l| vec![order.key(l), json!(l.id)]))
}

/// `"email"`, `"name"` or `"create_time"`, optionally with ` desc`.
pub fn user_order(field: &str, s: &str) -> Result<(UserOrder, bool), FieldViolation> {
    parse::order_by(
        field,
        s,
        &[
            ("email", UserOrder::Email),
            ("name", UserOrder::Name),
            ("create_time", UserOrder::CreateTime),
        ],
    )
}

/// A small AIP-160 subset: `status=ACTIVE|INACTIVE|LOCKED` and
/// `platform_admin=true|false`, joined by ` AND `.
pub fn parse_filter(
    field: &str,
    s: &str,
) -> Result<(Option<StatusFilter>, Option<bool>), FieldViolation> {
    let bad = |t: &str| {
        FieldViolation::new(field, format!("unsupported term {t:?}; use status=ACTIVE|INACTIVE|LOCKED and platform_admin=true|false joined by AND"))
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
