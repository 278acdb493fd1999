//! `AuditService` use cases (R19): reading the append-only trail. Who reads
//! what is `domain::audit::{reader_scope, require_audit_permission}`; no
//! use case edits or deletes an event. The export's streaming stays in
//! `api::audit`; its reads and its authorisation are here.

use super::{Cursor, Page};
use crate::app::App;
use crate::domain::audit::{self, AuditEvent, RequestMeta};
use crate::domain::error::Violations;
use crate::domain::page_token;
use crate::domain::service_account::{self, Scope};
use crate::domain::{validate, Caller, DomainError, FieldViolation};
use crate::store::audit::{self as audit_store, AuditFilter};
use crate::store::memberships;
use kiops_proto::v1::{self, ExportAuditEventsRequest, ListAuditEventsRequest};
use serde_json::json;

/// The filter of a list or an export request (they carry the same fields),
/// validated into `AuditFilter`.
macro_rules! request_filter {
    ($v:expr, $r:expr) => {
        filter(
            $v,
            $r.organization_id.as_deref(),
            $r.start_time.as_ref(),
            $r.end_time.as_ref(),
            &$r.actor_id,
            &$r.action,
            &$r.target_id,
        )
    };
}

/// Rows read per database round trip during an export.
const EXPORT_BATCH: u64 = 500;

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    JsonLines,
    Csv,
}

/// A validated, authorised export: what to read and how to write it.
#[derive(Debug, Clone)]
pub struct Export {
    pub filter: AuditFilter,
    pub format: ExportFormat,
}

/// R19 visibility of `organization` (every organization when None) for
/// `caller`, from current state: asked when a list or an export starts, and
/// again while an export streams.
pub async fn authorize(
    app: &App,
    caller: &Caller,
    organization: Option<&str>,
) -> Result<(), DomainError> {
    if let Some(service) = &caller.service {
        // audit.read (R25), asked again while an export streams, in the
        // organizations its owner covers; the whole trail is a platform read.
        service_account::require_scope(caller, Some(Scope::AuditRead))?;
        return match organization {
            Some(org) => service_account::require_service_sees(service, org),
            None => service_account::require_platform_account(service),
        };
    }
    let Some(org) = audit::reader_scope(caller, organization)? else {
        return Ok(());
    };
    let m = memberships::find(app.store.conn(), org, &caller.user_id).await?;
    let role =
        memberships::gated_role(app.store.conn(), org, caller, m.as_ref().map(|m| m.role)).await?;
    let bits = m.map(|m| m.permissions).unwrap_or(0);
    audit::require_audit_permission(caller, role, bits)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListAuditEventsRequest,
) -> Result<Page<AuditEvent>, DomainError> {
    let mut v = Violations::new();
    let f = request_filter!(&mut v, r);
    let size = v.take(validate::page_size("page_size", r.page_size));
    let fp = page_token::fingerprint(&["audit", &caller.user_id, &format!("{f:?}")]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    authorize(app, caller, f.organization_id.as_deref()).await?;
    let after = cursor.after_ms_and_id();
    let (rows, total) = audit_store::list(app.store.conn(), &f, after, size + 1, true).await?;
    Ok(cursor.page(rows, size, total, |l| {
        vec![json!(l.occurred_at_ms), json!(l.id)]
    }))
}

/// Validates an export request and authorises its caller; a service
/// account's export is audited before it starts.
pub async fn export(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    r: ExportAuditEventsRequest,
) -> Result<Export, DomainError> {
    let mut v = Violations::new();
    let f = request_filter!(&mut v, r);
    let format = match v1::ExportFormat::try_from(r.format) {
        Ok(v1::ExportFormat::JsonLines) => ExportFormat::JsonLines,
        Ok(v1::ExportFormat::Csv) => ExportFormat::Csv,
        _ => {
            v.push(FieldViolation::new(
                "format",
                "must be EXPORT_FORMAT_JSON_LINES or EXPORT_FORMAT_CSV",
            ));
            ExportFormat::JsonLines
        }
    };
    v.into_result()?;
    authorize(app, caller, f.organization_id.as_deref()).await?;
    if caller.service.is_some() {
        let tx = app.store.begin_write().await?;
        let name = match format {
            ExportFormat::JsonLines => "json_lines",
            ExportFormat::Csv => "csv",
        };
        audit_store::record_export(&tx, meta, caller.actor(), &f, name, app.clock.now_ms()).await?;
        tx.commit().await?;
    }
    Ok(Export { filter: f, format })
}

/// The next batch of an export, newest first, after the last event of the
/// previous batch; true when it is the last.
pub async fn export_batch(
    app: &App,
    f: &AuditFilter,
    after: Option<(i64, String)>,
) -> Result<(Vec<AuditEvent>, bool), DomainError> {
    let (rows, _) = audit_store::list(app.store.conn(), f, after, EXPORT_BATCH, false).await?;
    let last = (rows.len() as u64) < EXPORT_BATCH;
    Ok((rows, last))
}

fn ms(field: &str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, FieldViolation> {
    match t {
        None => Ok(None),
        Some(t)
            if t.seconds < 0
                || t.seconds > 253_402_300_799
                || !(0..1_000_000_000).contains(&t.nanos) =>
        {
            Err(FieldViolation::new(
                field,
                "must be a valid timestamp between 1970 and 9999",
            ))
        }
        Some(t) => Ok(Some(t.seconds * 1000 + (t.nanos / 1_000_000) as i64)),
    }
}

fn opt_id(v: &mut Violations, field: &str, raw: &str) -> Option<String> {
    if raw.is_empty() {
        None
    } else {
        Some(v.take(validate::id(field, raw)))
    }
}

#[allow(clippy::too_many_arguments)]
fn filter(
    v: &mut Violations,
    org: Option<&str>,
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    actor: &str,
    action: &str,
    target: &str,
) -> AuditFilter {
    let organization_id = match org {
        Some(o) if !o.is_empty() => Some(v.take(validate::id("organization_id", o))),
        _ => None,
    };
    let start_ms = v.take(ms("start_time", start));
    let end_ms = v.take(ms("end_time", end));
    if let (Some(s), Some(e)) = (start_ms, end_ms) {
        if s > e {
            v.push(FieldViolation::new(
                "end_time",
                "must not be before start_time",
            ));
        }
    }
    let action_prefix = if action.is_empty() {
        None
    } else if action.len() > 100
        || !action
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    {
        v.push(FieldViolation::new(
            "action",
            "must be a dotted action name or prefix, e.g. membership.",
        ));
        None
    } else {
        Some(action.to_string())
    };
    let target_id = if target.is_empty() {
        None
    } else if target.len() > 200 {
        v.push(FieldViolation::new(
            "target_id",
            "must be at most 200 characters",
        ));
        None
    } else {
        Some(target.to_string())
    };
    AuditFilter {
        organization_id,
        start_ms,
        end_ms,
        actor_id: opt_id(v, "actor_id", actor),
        action_prefix,
        target_id,
    }
}
