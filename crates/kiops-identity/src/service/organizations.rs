//! `OrganizationService` use cases (R18).

use super::{parse, Cursor, Page};
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::{reason, Violations};
use crate::domain::organization::{NewOrganization, Organization, OrganizationChanges};
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError};
use crate::store::{memberships, organizations, second_factor, service_accounts};
use kiops_proto::v1::{
    CreateOrganizationRequest, ListOrganizationsRequest, UpdateOrganizationRequest,
};
use serde_json::json;

pub const MAX_DESCRIPTION_CHARS: usize = 1000;

pub async fn create(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: CreateOrganizationRequest,
) -> Result<Organization, DomainError> {
    access::require_platform_admin(&caller)?;
    let mut v = Violations::new();
    let name = v.take(validate::name("name", &r.name));
    let code = v.take(validate::org_code("code", &r.code));
    let description = v.take(validate::text(
        "description",
        &r.description,
        MAX_DESCRIPTION_CHARS,
    ));
    v.into_result()?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let org = organizations::create(
        &tx,
        &meta,
        caller.actor(),
        NewOrganization {
            name,
            code,
            description,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(org)
}

pub async fn get(app: &App, caller: &Caller, id: &str) -> Result<Organization, DomainError> {
    let id = validate::id("organization_id", id)?;
    let conn = app.store.conn();
    let role = memberships::caller_role(conn, &id, caller).await?;
    access::require_org_visible(caller, role)?;
    organizations::find(conn, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("organization"))
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListOrganizationsRequest,
) -> Result<Page<Organization>, DomainError> {
    let mut v = Violations::new();
    let size = v.take(validate::page_size("page_size", r.page_size));
    let query = v.take(parse::query("query", &r.query));
    let member_of = (!caller.platform_admin).then_some(caller.user_id.as_str());
    let fp = page_token::fingerprint(&["organizations", member_of.unwrap_or("*"), &query]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let (rows, total) = organizations::list(
        app.store.conn(),
        member_of,
        &query,
        cursor.after_str(),
        size + 1,
    )
    .await?;
    Ok(cursor.page(rows, size, total, |last| vec![json!(last.code)]))
}

pub async fn update(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: UpdateOrganizationRequest,
) -> Result<Organization, DomainError> {
    let o = r.organization.unwrap_or_default();
    let mut v = Violations::new();
    let id = v.take(validate::id(
        "organization.organization_id",
        &o.organization_id,
    ));
    let paths = v.take(parse::mask(
        "update_mask",
        r.update_mask.as_ref(),
        &["name", "description", "code", "second_factor_required"],
        &["name", "description"],
    ));
    let mut changes = OrganizationChanges::default();
    for p in &paths {
        match p.as_str() {
            "name" => changes.name = Some(v.take(validate::name("organization.name", &o.name))),
            "description" => {
                changes.description = Some(v.take(validate::text(
                    "organization.description",
                    &o.description,
                    MAX_DESCRIPTION_CHARS,
                )))
            }
            "code" => changes.code = Some(v.take(validate::org_code("organization.code", &o.code))),
            "second_factor_required" => {
                changes.second_factor_required = Some(o.second_factor_required)
            }
            _ => {}
        }
    }
    v.into_result()?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let role = memberships::caller_role(&tx, &id, &caller).await?;
    access::require_manager(&caller, role)?;
    if changes.code.is_some() && !caller.platform_admin {
        return Err(DomainError::denied(
            reason::PLATFORM_ADMIN_REQUIRED,
            "only a PlatformAdmin can change an organization's code",
        ));
    }
    let before = organizations::lock(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("organization"))?;
    let policy = changes.second_factor_required.take();
    let mut after = organizations::update(&tx, &meta, caller.actor(), before, changes, now).await?;
    if let Some(required) = policy {
        let was = after.second_factor_required;
        // Dated under the organization's lock: the events of parallel
        // changes are in the order they were made, and the revocation is
        // after any token a login minted under the old policy.
        let now = app.clock.now_ms();
        second_factor::set_org(&tx, &meta, caller.actor(), &id, was, required, now).await?;
        after.second_factor_required = required;
    }
    tx.commit().await?;
    Ok(after)
}

pub async fn delete(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<(), DomainError> {
    access::require_platform_admin(&caller)?;
    let id = validate::id("organization_id", &id)?;
    let tx = app.store.begin_write().await?;
    let org = organizations::lock(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("organization"))?;
    service_accounts::lock_owned_by(&tx, &org.id).await?;
    // After the locks: the revocations of its service accounts are never
    // dated before a token one of their exchanges minted.
    let now = app.clock.now_ms();
    organizations::delete(&tx, &meta, caller.actor(), org, now).await?;
    tx.commit().await
}
