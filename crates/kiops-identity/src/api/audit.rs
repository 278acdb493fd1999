//! `AuditService` over gRPC (R19): decode, call `service::audit`, encode.
//! ExportAuditEvents streams: its task reads batches through the service
//! and writes them as JSON lines or CSV.

use super::context;
use super::convert::timestamp;
use super::streams::{GuardedSender, StreamGuard, StreamKind, StreamRight};
use crate::app::App;
use crate::domain::audit::AuditEvent as Row;
use crate::domain::service_account::{require_scope, Scope};
use crate::overload::CallPermit;
use crate::service::audit::{self, Export, ExportFormat};
use kiops_proto::v1::audit_service_server::AuditService;
use kiops_proto::v1::*;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

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

fn to_proto(e: &Row) -> AuditEvent {
    AuditEvent {
        event_id: e.id.clone(),
        event_time: Some(timestamp(e.occurred_at_ms)),
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
    let time = rfc3339(e.occurred_at_ms);
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
        "event_time": rfc3339(e.occurred_at_ms),
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
        let (_, caller, r) =
            context::start_scoped(&self.app, request, Some(Scope::AuditRead)).await?;
        let page = audit::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListAuditEventsResponse {
            audit_events: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
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
        let meta = context::request_meta(&request);
        let call = request.extensions().get::<CallPermit>().cloned();
        let caller = context::caller_of(&self.app, claims.clone()).await?;
        require_scope(&caller, Some(Scope::AuditRead))?;
        let export = audit::export(&self.app, &caller, request.into_inner()).await?;
        let right = StreamRight::Audit {
            organization: export.filter.organization_id.clone(),
        };
        let slot = self
            .app
            .streams
            .open(StreamKind::AuditExport, &caller, call.as_ref())?;
        audit::export_started(&self.app, &meta, &caller, &export).await?;
        let guard = StreamGuard::new(self.app.clone(), claims, right, slot);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ExportAuditEventsResponse, Status>>(4);
        tokio::spawn(stream_export(
            self.app.clone(),
            GuardedSender::new(tx, guard),
            export,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// An export's task: reads the selection in keyset batches and sends it in
/// chunks, re-checking the caller's right as it goes.
async fn stream_export(
    app: App,
    mut out: GuardedSender<ExportAuditEventsResponse>,
    export: Export,
) {
    let csv = export.format == ExportFormat::Csv;
    let mut buf = String::with_capacity(CHUNK_BYTES + 4096);
    if csv {
        buf.push_str(CSV_HEADER);
    }
    let mut after: Option<(i64, String)> = None;
    loop {
        let (batch, done) = match audit::export_batch(&app, &export.filter, after.clone()).await {
            Ok(b) => b,
            Err(e) => return out.fail(e).await,
        };
        after = batch.last().map(|l| (l.occurred_at_ms, l.id.clone()));
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
