//! Permission template use cases of `MembershipService` (R6): a Manager's
//! named bundles of categories. Applying one is `memberships::apply_template`.

use super::memberships::lock_org;
use super::{parse, Cursor, Page};
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::Violations;
use crate::domain::membership::Template;
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError, FieldViolation};
use crate::store::{memberships, templates};
use kiops_proto::v1::{
    CreatePermissionTemplateRequest, DeletePermissionTemplateRequest,
    ListPermissionTemplatesRequest, UpdatePermissionTemplateRequest,
};
use serde_json::json;

pub const MAX_NAME_CHARS: usize = 64;

fn template_name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let n = validate::name(field, raw)?;
    if n.chars().count() > MAX_NAME_CHARS {
        return Err(FieldViolation::new(field, "must be at most 64 characters"));
    }
    Ok(n)
}

pub async fn create(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: CreatePermissionTemplateRequest,
) -> Result<Template, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let name = v.take(template_name("name", &r.name));
    let bits = v.take(parse::permission_bits("permissions", &r.permissions));
    v.into_result()?;
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::require_manager(&caller, caller_role)?;
    let t = templates::create(&tx, &meta, caller.actor(), &org, name, bits, now).await?;
    tx.commit().await?;
    Ok(t)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListPermissionTemplatesRequest,
) -> Result<Page<Template>, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let size = v.take(validate::page_size("page_size", r.page_size));
    let fp = page_token::fingerprint(&["templates", &org]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let conn = app.store.conn();
    let caller_role = memberships::caller_role(conn, &org, caller).await?;
    access::require_manager(caller, caller_role)?;
    let (rows, total) = templates::list(conn, &org, cursor.after_str(), size + 1).await?;
    Ok(cursor.page(rows, size, total, |last| vec![json!(last.name)]))
}

pub async fn update(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: UpdatePermissionTemplateRequest,
) -> Result<Template, DomainError> {
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
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::require_manager(&caller, caller_role)?;
    let before = find(&tx, &org, &id).await?;
    let after = templates::update(&tx, &meta, caller.actor(), before, name, bits, now).await?;
    tx.commit().await?;
    Ok(after)
}

pub async fn delete(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: DeletePermissionTemplateRequest,
) -> Result<(), DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let id = v.take(validate::id("template_id", &r.template_id));
    v.into_result()?;
    let now = app.clock.now_ms();
    let (tx, caller_role) = lock_org(&app, &caller, &org).await?;
    access::require_manager(&caller, caller_role)?;
    let t = find(&tx, &org, &id).await?;
    templates::delete(&tx, &meta, caller.actor(), t, now).await?;
    tx.commit().await
}

/// The template of `org`, or NOT_FOUND.
pub(super) async fn find(
    tx: &crate::store::WriteTx,
    org: &str,
    id: &str,
) -> Result<Template, DomainError> {
    templates::find(tx, org, id)
        .await?
        .ok_or_else(|| DomainError::not_found("permission template"))
}
