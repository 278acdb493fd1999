//! `AuditService` (R19): reading the append-only trail. PlatformAdmins read
//! everything; holders of the `audit` permission read their organization's
//! events. No RPC edits or deletes an event.

use super::context;
use super::convert::timestamp;
use super::streams::{GuardedSender, StreamGuard, StreamKind, StreamRight};
use crate::app::App;
use crate::domain::error::{reason, Violations};
use crate::domain::model::effective_permissions;
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError, FieldViolation, Permission};
use crate::overload::CallPermit;
use crate::store::audit::{self as audit_store, AuditEvent as Row, AuditFilter};
use crate::store::memberships::{self, parse_role};
use kiops_proto::v1::audit_service_server::AuditService;
use kiops_proto::v1::*;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Rows read per database round trip during an export.
const EXPORT_BATCH: u64 = 500;
/// Bytes per streamed chunk (roughly).
const CHUNK_BYTES: usize = 64 * 1024;

pub struct AuditApi {
    app: App,
}

impl AuditApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
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

/// The filter of a list or export request, validated.
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

impl App {
    /// R19 visibility: everything for a PlatformAdmin; one organization for a
    /// holder of its `audit` permission (Managers have it); NOT_FOUND outside
    /// one's organizations (R4).
    pub(crate) async fn authorize_audit(
        &self,
        caller: &Caller,
        org: Option<&str>,
    ) -> Result<(), DomainError> {
        if caller.platform_admin {
            return Ok(());
        }
        let Some(org) = org else {
            return Err(DomainError::denied(
                reason::PLATFORM_ADMIN_REQUIRED,
                "only a PlatformAdmin reads every organization's events; set organization_id",
            ));
        };
        let role = memberships::role_of(self.store.conn(), org, &caller.user_id).await?;
        access::require_org_visible(caller, role)?;
        let bits = memberships::find(self.store.conn(), org, &caller.user_id)
            .await?
            .map(|m| m.permissions)
            .unwrap_or(0);
        let role = role.map(|r| parse_role(r.as_str()));
        if effective_permissions(false, role, bits).contains(&Permission::Audit) {
            Ok(())
        } else {
            Err(DomainError::denied(
                reason::AUDIT_PERMISSION_REQUIRED,
                "audit permission required",
            ))
        }
    }
}

fn to_proto(e: &Row) -> AuditEvent {
    AuditEvent {
        event_id: e.id.clone(),
        event_time: Some(timestamp(e.occurred_at)),
        actor_id: e.actor_id.clone().unwrap_or_default(),
        actor_email: e.actor_email.clone().unwrap_or_default(),
        actor_type: e.actor_type.clone(),
        organization_id: e.organization_id.clone().unwrap_or_default(),
        action: e.action.clone(),
        target_type: e.target_type.clone(),
        target_id: e.target_id.clone(),
        details_json: e.details.clone(),
        request_id: e.request_id.clone(),
        peer_address: e.peer_address.clone(),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

const CSV_HEADER: &str = "event_id,event_time,actor_type,actor_id,actor_email,organization_id,action,target_type,target_id,details_json,request_id,peer_address\n";

/// One CSV cell, always quoted (RFC 4180). A cell a spreadsheet would read
/// as a formula (OWASP CSV injection: first character `=`, `+`, `-`, `@`,
/// tab or carriage return; emails and request ids can start so) also gets a
/// leading `'`, which makes it text. The quotes matter too: unquoted, a
/// spreadsheet in a locale whose separator is `;` splits `r;=1+2` and runs
/// the second half.
fn csv_field(out: &mut String, s: &str) {
    out.push('"');
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    out.push_str(&s.replace('"', "\"\""));
    out.push('"');
}

fn write_csv(out: &mut String, e: &Row) {
    let time = rfc3339(e.occurred_at);
    let fields = [
        e.id.as_str(),
        time.as_str(),
        e.actor_type.as_str(),
        e.actor_id.as_deref().unwrap_or(""),
        e.actor_email.as_deref().unwrap_or(""),
        e.organization_id.as_deref().unwrap_or(""),
        e.action.as_str(),
        e.target_type.as_str(),
        e.target_id.as_str(),
        e.details.as_str(),
        e.request_id.as_str(),
        e.peer_address.as_str(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push('\n');
}

fn write_json_line(out: &mut String, e: &Row) {
    let details: serde_json::Value =
        serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null);
    let line = json!({
        "event_id": e.id,
        "event_time": rfc3339(e.occurred_at),
        "actor_type": e.actor_type,
        "actor_id": e.actor_id,
        "actor_email": e.actor_email,
        "organization_id": e.organization_id,
        "action": e.action,
        "target_type": e.target_type,
        "target_id": e.target_id,
        "details": details,
        "request_id": e.request_id,
        "peer_address": e.peer_address,
    });
    out.push_str(&line.to_string());
    out.push('\n');
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let mut v = Violations::new();
        let f = filter(
            &mut v,
            r.organization_id.as_deref(),
            r.start_time.as_ref(),
            r.end_time.as_ref(),
            &r.actor_id,
            &r.action,
            &r.target_id,
        );
        let size = v.take(validate::page_size("page_size", r.page_size));
        let fp = page_token::fingerprint(&["audit", &caller.user_id, &format!("{f:?}")]);
        let key = self.app.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        self.app
            .authorize_audit(&caller, f.organization_id.as_deref())
            .await?;
        let after =
            after.and_then(|k| Some((k.first()?.as_i64()?, k.get(1)?.as_str()?.to_string())));
        let (rows, total) =
            audit_store::list(self.app.store.conn(), &f, after, size + 1, true).await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(l)) => {
                page_token::encode(&key, &fp, vec![json!(l.occurred_at), json!(l.id)])
            }
            _ => String::new(),
        };
        Ok(Response::new(ListAuditEventsResponse {
            audit_events: rows.iter().map(to_proto).collect(),
            next_page_token,
            total_size: total as i64,
        }))
    }

    /// Streams the selection in batches read by keyset, through a bounded
    /// channel: memory stays constant however many events match, and a slow
    /// or gone client stops the reading.
    async fn export_audit_events(
        &self,
        request: Request<ExportAuditEventsRequest>,
    ) -> Result<Response<BoxStream<ExportAuditEventsResponse>>, Status> {
        let claims = context::verify_bearer(&self.app, &request)?;
        let call = request.extensions().get::<CallPermit>().cloned();
        let caller = context::caller_of(&self.app, claims.clone()).await?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let f = filter(
            &mut v,
            r.organization_id.as_deref(),
            r.start_time.as_ref(),
            r.end_time.as_ref(),
            &r.actor_id,
            &r.action,
            &r.target_id,
        );
        let csv = match r.format {
            1 => false,
            2 => true,
            _ => {
                v.push(FieldViolation::new(
                    "format",
                    "must be EXPORT_FORMAT_JSON_LINES or EXPORT_FORMAT_CSV",
                ));
                false
            }
        };
        v.into_result()?;
        let right = StreamRight::Audit {
            organization: f.organization_id.clone(),
        };
        self.app.authorize_stream(&caller, &right).await?;
        let slot = self
            .app
            .streams
            .open(StreamKind::AuditExport, &caller, call.as_ref())?;
        let guard = StreamGuard::new(self.app.clone(), claims, right, slot);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ExportAuditEventsResponse, Status>>(4);
        tokio::spawn(export(
            self.app.clone(),
            GuardedSender::new(tx, guard),
            f,
            csv,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An export's task: reads the selection in keyset batches and sends it in
/// chunks, re-checking the caller's right as it goes.
async fn export(
    app: App,
    mut out: GuardedSender<ExportAuditEventsResponse>,
    f: AuditFilter,
    csv: bool,
) {
    let mut buf = String::with_capacity(CHUNK_BYTES + 4096);
    if csv {
        buf.push_str(CSV_HEADER);
    }
    let mut after: Option<(i64, String)> = None;
    loop {
        let batch =
            match audit_store::list(app.store.conn(), &f, after.clone(), EXPORT_BATCH, false).await
            {
                Ok((rows, _)) => rows,
                Err(e) => return out.fail(e).await,
            };
        let done = (batch.len() as u64) < EXPORT_BATCH;
        after = batch.last().map(|l| (l.occurred_at, l.id.clone()));
        for e in &batch {
            if csv {
                write_csv(&mut buf, e);
            } else {
                write_json_line(&mut buf, e);
            }
            if buf.len() >= CHUNK_BYTES {
                let chunk = std::mem::replace(&mut buf, String::with_capacity(CHUNK_BYTES + 4096));
                let msg = ExportAuditEventsResponse {
                    chunk: chunk.into_bytes(),
                };
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        }
        if done {
            break;
        }
    }
    if !buf.is_empty() {
        let _ = out
            .send(ExportAuditEventsResponse {
                chunk: buf.into_bytes(),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_every_cell() {
        let mut s = String::new();
        csv_field(&mut s, "plain");
        s.push('|');
        csv_field(&mut s, r#"{"a":1,"b":"x"}"#);
        assert_eq!(s, r#""plain"|"{""a"":1,""b"":""x""}""#);
    }

    #[test]
    fn csv_neutralises_formulas() {
        let cell = |v: &str| {
            let mut s = String::new();
            csv_field(&mut s, v);
            s
        };
        assert_eq!(cell("=1+1"), "\"'=1+1\"");
        assert_eq!(cell("+1"), "\"'+1\"");
        assert_eq!(cell("-1"), "\"'-1\"");
        assert_eq!(cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(cell("\tx"), "\"'\tx\"");
        assert_eq!(cell("\rx"), "\"'\rx\"");
        assert_eq!(cell("=A1,\"b\""), "\"'=A1,\"\"b\"\"\"");
        // Behind a separator of another locale: one quoted cell, not split.
        assert_eq!(cell("r;=1+2"), "\"r;=1+2\"");
        assert_eq!(cell("a=1"), "\"a=1\"");
        assert_eq!(cell(""), "\"\"");
    }
}
