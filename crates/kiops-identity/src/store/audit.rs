//! Audit events (R19): written always inside the transaction of the change
//! they describe (by the store function that applies it), read newest first.

use super::db_err;
use super::entity::audit_event;
use crate::domain::DomainError;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

pub use crate::domain::audit::{Actor, AuditEntry, AuditEvent, RequestMeta};

pub async fn record<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    entry: AuditEntry,
    now_ms: i64,
) -> Result<(), DomainError> {
    let (actor_type, actor_id, actor_email) = match entry.actor {
        Actor::User { id, email } => ("user", Some(id), Some(email)),
        Actor::Service { id, .. } => ("service", Some(id), None),
        Actor::Anonymous => ("anonymous", None, None),
        Actor::System => ("system", None, None),
    };
    audit_event::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        occurred_at: Set(now_ms),
        actor_type: Set(actor_type.to_string()),
        actor_id: Set(actor_id),
        actor_email: Set(actor_email),
        organization_id: Set(entry.organization_id),
        action: Set(entry.action.to_string()),
        target_type: Set(entry.target_type.to_string()),
        target_id: Set(entry.target_id),
        details: Set(entry.details.to_string()),
        request_id: Set(meta.request_id.clone()),
        peer_address: Set(meta.peer.clone()),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl From<audit_event::Model> for AuditEvent {
    fn from(m: audit_event::Model) -> Self {
        AuditEvent {
            id: m.id,
            occurred_at_ms: m.occurred_at,
            actor_type: m.actor_type,
            actor_id: m.actor_id,
            actor_email: m.actor_email,
            organization_id: m.organization_id,
            action: m.action,
            target_type: m.target_type,
            target_id: m.target_id,
            details: m.details,
            request_id: m.request_id,
            peer_address: m.peer_address,
        }
    }
}

/// Which events to read (R19). All fields optional; `organization_id` None
/// means every organization (PlatformAdmin only, decided by the caller).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub organization_id: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub actor_id: Option<String>,
    /// Prefix of the dotted action name, matched literally.
    pub action_prefix: Option<String>,
    pub target_id: Option<String>,
}

impl AuditFilter {
    fn condition(&self) -> sea_orm::Condition {
        use sea_orm::sea_query::{Expr, ExprTrait, LikeExpr};
        use sea_orm::ColumnTrait;
        let mut c = sea_orm::Condition::all();
        if let Some(o) = &self.organization_id {
            c = c.add(audit_event::Column::OrganizationId.eq(o.clone()));
        }
        if let Some(t) = self.start_ms {
            c = c.add(audit_event::Column::OccurredAt.gte(t));
        }
        if let Some(t) = self.end_ms {
            c = c.add(audit_event::Column::OccurredAt.lt(t));
        }
        if let Some(a) = &self.actor_id {
            c = c.add(audit_event::Column::ActorId.eq(a.clone()));
        }
        if let Some(t) = &self.target_id {
            c = c.add(audit_event::Column::TargetId.eq(t.clone()));
        }
        if let Some(p) = &self.action_prefix {
            let mut pattern = super::like_contains(p);
            pattern.remove(0); // prefix match: no leading wildcard
            c = c.add(
                Expr::col((audit_event::Entity, audit_event::Column::Action))
                    .like(LikeExpr::new(pattern).escape('\\')),
            );
        }
        c
    }
}

/// Newest first; keyset on (occurred_at, id), both descending.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    filter: &AuditFilter,
    after: Option<(i64, String)>,
    limit: u64,
    with_total: bool,
) -> Result<(Vec<AuditEvent>, u64), DomainError> {
    use sea_orm::sea_query::Expr;
    use sea_orm::{EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
    let cond = filter.condition();
    let total = if with_total {
        audit_event::Entity::find()
            .filter(cond.clone())
            .count(conn)
            .await
            .map_err(db_err)?
    } else {
        0
    };
    let mut q = audit_event::Entity::find().filter(cond);
    if let Some((t, id)) = after {
        q = q.filter(super::keyset::keyset_after(
            Expr::col((audit_event::Entity, audit_event::Column::OccurredAt)),
            Expr::col((audit_event::Entity, audit_event::Column::Id)),
            serde_json::json!(t),
            id,
            true,
        ));
    }
    let rows = q
        .order_by_desc(audit_event::Column::OccurredAt)
        .order_by_desc(audit_event::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok((rows.into_iter().map(Into::into).collect(), total))
}

/// An export of the trail by a service account (R25: a service's export is
/// audited, actor_type "service"): which selection, in which format. One
/// statement, written when the export starts.
/// `mail.test_sent`: a PlatformAdmin's test email and its outcome.
pub async fn record_test_email<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    to: &str,
    delivered: bool,
    smtp_code: Option<u16>,
    now_ms: i64,
) -> Result<(), DomainError> {
    record(
        conn,
        meta,
        AuditEntry::new(actor, "mail.test_sent", "email", to).details(serde_json::json!({
            "to": to,
            "delivered": delivered,
            "smtp_code": smtp_code,
        })),
        now_ms,
    )
    .await
}

pub async fn record_export<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    filter: &AuditFilter,
    format: &str,
    now_ms: i64,
) -> Result<(), DomainError> {
    let organization = filter.organization_id.clone().unwrap_or_default();
    let mut entry = AuditEntry::new(actor, "audit.exported", "audit_events", organization).details(
        serde_json::json!({
            "format": format,
            "start_time_ms": filter.start_ms,
            "end_time_ms": filter.end_ms,
            "actor_id": filter.actor_id,
            "action_prefix": filter.action_prefix,
            "target_id": filter.target_id,
        }),
    );
    entry.organization_id = filter.organization_id.clone();
    record(conn, meta, entry, now_ms).await
}
