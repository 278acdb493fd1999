//! Join requests (R7, R8). One PENDING request per (user, organization) is a
//! partial unique index; a decision is one conditional UPDATE on
//! `status = 'pending'`, so two racing approvals cannot both win. The
//! statuses and the approval rule are `domain::join_request`.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{join_request as jr, user};
use super::keyset::{keyset_after, Count};
use super::{db_err, taken};
use crate::domain::error::reason;
use crate::domain::join_request::{JoinRequestStatus, JoinRequestView};
use crate::domain::model::Role;
use crate::domain::DomainError;
use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, Order, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, Set,
};
use serde_json::json;

pub use crate::domain::join_request::JoinRequest;

const PENDING: JoinRequestStatus = JoinRequestStatus::Pending;

impl From<jr::Model> for JoinRequest {
    fn from(m: jr::Model) -> Self {
        JoinRequest {
            status: JoinRequestStatus::from_stored(&m.status),
            id: m.id,
            user_id: m.user_id,
            organization_id: m.organization_id,
            requested_at_ms: m.requested_at,
            decided_at_ms: m.decided_at,
            decided_by: m.decided_by,
            reason: m.reason,
        }
    }
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    org: &str,
    now: i64,
) -> Result<JoinRequest, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let m = jr::ActiveModel {
        id: Set(id.clone()),
        user_id: Set(user_id.to_string()),
        organization_id: Set(org.to_string()),
        status: Set(PENDING.as_str().into()),
        requested_at: Set(now),
        decided_at: Set(None),
        decided_by: Set(None),
        reason: Set(None),
    }
    .insert(conn)
    .await
    .map_err(taken(
        reason::JOIN_REQUEST_PENDING,
        "a request to join this organization is already pending",
    ))?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "join_request.created", "join_request", &id).org(org),
        now,
    )
    .await?;
    Ok(m.into())
}

pub async fn find<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<JoinRequest>, DomainError> {
    Ok(jr::Entity::find_by_id(id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .map(Into::into))
}

/// Approves or rejects a pending request; false if it was not pending any more.
#[allow(clippy::too_many_arguments)]
pub async fn decide<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    req: &JoinRequest,
    approve: bool,
    decided_by: &str,
    why: Option<String>,
    now: i64,
) -> Result<bool, DomainError> {
    let to = JoinRequestStatus::decided(approve);
    let n = jr::Entity::update_many()
        .col_expr(jr::Column::Status, Expr::value(to.as_str()))
        .col_expr(jr::Column::DecidedAt, Expr::value(now))
        .col_expr(jr::Column::DecidedBy, Expr::value(decided_by))
        .col_expr(jr::Column::Reason, Expr::value(why.clone()))
        .filter(jr::Column::Id.eq(&req.id))
        .filter(jr::Column::Status.eq(PENDING.as_str()))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if n != 1 {
        return Ok(false);
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, to.decision_action(), "join_request", &req.id)
            .org(&req.organization_id)
            .details(json!({
                    "before": {"status": PENDING.as_str()},
                    "after": {"status": to.as_str(), "reason": why},
                "user_id": req.user_id,
            })),
        now,
    )
    .await?;
    Ok(true)
}

/// A request joined with its requester, as read.
#[derive(Debug, Clone, FromQueryResult)]
struct Row {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub organization_id: String,
    pub status: String,
    pub requested_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub email_verified: bool,
}

impl From<Row> for JoinRequestView {
    fn from(r: Row) -> Self {
        JoinRequestView {
            status: JoinRequestStatus::from_stored(&r.status),
            id: r.id,
            user_id: r.user_id,
            email: r.email,
            name: r.name,
            organization_id: r.organization_id,
            requested_at_ms: r.requested_at,
            decided_at_ms: r.decided_at,
            decided_by: r.decided_by,
            reason: r.reason,
            email_verified: r.email_verified,
        }
    }
}

pub struct JoinRequestQuery {
    /// None: every organization (PlatformAdmin); Some(list): only those.
    pub organizations: Option<Vec<String>>,
    pub status: JoinRequestStatus,
    pub since: Option<i64>,
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

fn jcol(c: jr::Column) -> Expr {
    Expr::col((jr::Entity, c))
}

/// Newest first, with the total for the "Pending Approval (N)" badge.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    q: JoinRequestQuery,
) -> Result<(Vec<JoinRequestView>, u64), DomainError> {
    let mut cond = Cond::all().add(jcol(jr::Column::Status).eq(q.status.as_str()));
    if let Some(orgs) = &q.organizations {
        if orgs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        cond = cond.add(jcol(jr::Column::OrganizationId).is_in(orgs.clone()));
    }
    if let Some(since) = q.since {
        cond = cond.add(jcol(jr::Column::RequestedAt).gte(since));
    }
    let backend = conn.get_database_backend();
    let join = Expr::col((user::Entity, user::Column::Id)).equals((jr::Entity, jr::Column::UserId));
    let count = Query::select()
        .expr_as(jcol(jr::Column::Id).count(), Alias::new("n"))
        .from(jr::Entity)
        .inner_join(user::Entity, join.clone())
        .cond_where(cond.clone())
        .to_owned();
    let total = Count::find_by_statement(backend.build(&count))
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|c| Ord::max(c.n, 0) as u64)
        .unwrap_or(0);
    if let Some((t, id)) = q.after {
        cond = cond.add(keyset_after(
            jcol(jr::Column::RequestedAt),
            jcol(jr::Column::Id),
            json!(t),
            id,
            true,
        ));
    }
    let stmt = Query::select()
        .expr_as(jcol(jr::Column::Id), Alias::new("id"))
        .expr_as(jcol(jr::Column::UserId), Alias::new("user_id"))
        .expr_as(
            Expr::col((user::Entity, user::Column::Email)),
            Alias::new("email"),
        )
        .expr_as(
            Expr::col((user::Entity, user::Column::Name)),
            Alias::new("name"),
        )
        .expr_as(
            jcol(jr::Column::OrganizationId),
            Alias::new("organization_id"),
        )
        .expr_as(jcol(jr::Column::Status), Alias::new("status"))
        .expr_as(jcol(jr::Column::RequestedAt), Alias::new("requested_at"))
        .expr_as(jcol(jr::Column::DecidedAt), Alias::new("decided_at"))
        .expr_as(jcol(jr::Column::DecidedBy), Alias::new("decided_by"))
        .expr_as(jcol(jr::Column::Reason), Alias::new("reason"))
        .expr_as(
            Expr::col((user::Entity, user::Column::EmailVerified)),
            Alias::new("email_verified"),
        )
        .from(jr::Entity)
        .inner_join(user::Entity, join)
        .cond_where(cond)
        .order_by_expr(jcol(jr::Column::RequestedAt), Order::Desc)
        .order_by_expr(jcol(jr::Column::Id), Order::Desc)
        .limit(q.limit)
        .to_owned();
    let rows = Row::find_by_statement(backend.build(&stmt))
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok((rows.into_iter().map(Into::into).collect(), total))
}

/// The request `id` with its requester (None if either is gone).
pub async fn row<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<JoinRequestView>, DomainError> {
    let Some(m) = find(conn, id).await? else {
        return Ok(None);
    };
    let u = user::Entity::find_by_id(m.user_id.clone())
        .one(conn)
        .await
        .map_err(db_err)?;
    Ok(u.map(|u| JoinRequestView {
        id: m.id,
        user_id: m.user_id,
        email: u.email,
        name: u.name,
        organization_id: m.organization_id,
        status: m.status,
        requested_at_ms: m.requested_at_ms,
        decided_at_ms: m.decided_at_ms,
        decided_by: m.decided_by,
        reason: m.reason,
        email_verified: u.email_verified,
    }))
}

/// Organizations where `user_id` is a Manager.
pub async fn managed_orgs<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<Vec<String>, DomainError> {
    use super::entity::membership;
    Ok(membership::Entity::find()
        .filter(membership::Column::UserId.eq(user_id))
        .filter(membership::Column::Role.eq(Role::Manager.as_str()))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| m.organization_id)
        .collect())
}
