//! Invitations (R9). A token is consumed by one conditional UPDATE on
//! `id AND token_hash AND status = 'pending' AND expires_at > now`, so two
//! racing accepts cannot both win and a resend that committed first kills
//! the old token; expiry is computed from the clock at read time.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::db_err;
use super::entity::invitation as inv;
use super::keyset::keyset_after;
use crate::domain::model::Role;
use crate::domain::DomainError;
use sea_orm::sea_query::{Cond, Expr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::{json, Value};

pub use inv::Model as Invitation;

/// Status as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Accepted,
    Expired,
    Rejected,
    Revoked,
}

impl Status {
    pub fn proto_number(self) -> i32 {
        match self {
            Status::Pending => 1,
            Status::Accepted => 2,
            Status::Expired => 3,
            Status::Rejected => 4,
            Status::Revoked => 5,
        }
    }

    pub fn from_proto_number(n: i32) -> Option<Self> {
        [
            Status::Pending,
            Status::Accepted,
            Status::Expired,
            Status::Rejected,
            Status::Revoked,
        ]
        .into_iter()
        .find(|s| s.proto_number() == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Accepted => "accepted",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
        }
    }
}

pub fn status_of(i: &Invitation, now: i64) -> Status {
    match i.status.as_str() {
        "pending" if i.expires_at <= now => Status::Expired,
        "pending" => Status::Pending,
        "accepted" => Status::Accepted,
        "rejected" => Status::Rejected,
        _ => Status::Revoked,
    }
}

fn snapshot(i: &Invitation, now: i64) -> Value {
    json!({"email": i.email, "role": i.role, "status": status_of(i, now).name(), "expires_at": i.expires_at})
}

pub struct NewInvitation {
    pub organization_id: String,
    pub email: String,
    pub role: Role,
    pub inviter_id: String,
    pub token_hash: String,
    pub ttl_ms: i64,
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    n: NewInvitation,
    now: i64,
) -> Result<Invitation, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let i = inv::ActiveModel {
        id: Set(id.clone()),
        organization_id: Set(n.organization_id.clone()),
        email: Set(n.email),
        role: Set(n.role.as_str().to_string()),
        inviter_id: Set(n.inviter_id),
        status: Set("pending".into()),
        token_hash: Set(n.token_hash),
        created_at: Set(now),
        expires_at: Set(now + n.ttl_ms),
        decided_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "invitation.created", "invitation", &id)
            .org(&n.organization_id)
            .details(json!({"after": snapshot(&i, now)})),
        now,
    )
    .await?;
    Ok(i)
}

pub async fn find<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<Invitation>, DomainError> {
    inv::Entity::find_by_id(id.to_string())
        .one(conn)
        .await
        .map_err(db_err)
}

pub async fn find_by_token_hash<C: ConnectionTrait>(
    conn: &C,
    hash: &str,
) -> Result<Option<Invitation>, DomainError> {
    inv::Entity::find()
        .filter(inv::Column::TokenHash.eq(hash))
        .one(conn)
        .await
        .map_err(db_err)
}

/// A live (pending, unexpired) invitation of `email` into `org`.
pub async fn find_live<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    email: &str,
    now: i64,
) -> Result<Option<Invitation>, DomainError> {
    inv::Entity::find()
        .filter(inv::Column::OrganizationId.eq(org))
        .filter(inv::Column::Email.eq(email))
        .filter(inv::Column::Status.eq("pending"))
        .filter(inv::Column::ExpiresAt.gt(now))
        .one(conn)
        .await
        .map_err(db_err)
}

/// Newest first; keyset on (created_at, id).
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    status: Option<Status>,
    after: Option<(i64, String)>,
    limit: u64,
    now: i64,
) -> Result<(Vec<Invitation>, u64), DomainError> {
    let mut cond = Cond::all().add(inv::Column::OrganizationId.eq(org));
    cond = match status {
        None => cond,
        Some(Status::Pending) => cond
            .add(inv::Column::Status.eq("pending"))
            .add(inv::Column::ExpiresAt.gt(now)),
        Some(Status::Expired) => cond
            .add(inv::Column::Status.eq("pending"))
            .add(inv::Column::ExpiresAt.lte(now)),
        Some(s) => cond.add(inv::Column::Status.eq(s.name())),
    };
    let total = inv::Entity::find()
        .filter(cond.clone())
        .count(conn)
        .await
        .map_err(db_err)?;
    if let Some((t, id)) = after {
        cond = cond.add(keyset_after(
            Expr::col((inv::Entity, inv::Column::CreatedAt)),
            Expr::col((inv::Entity, inv::Column::Id)),
            json!(t),
            id,
            true,
        ));
    }
    let rows = inv::Entity::find()
        .filter(cond)
        .order_by_desc(inv::Column::CreatedAt)
        .order_by_desc(inv::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok((rows, total))
}

/// Resend: a new token and a new window; the old token stops working because
/// its hash is replaced. Conditional on the row still being pending with the
/// token `before` read (checked row count): an accept that committed in
/// between wins, and this returns None instead of re-opening a used
/// invitation.
pub async fn renew<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &Invitation,
    token_hash: String,
    ttl_ms: i64,
    now: i64,
) -> Result<Option<Invitation>, DomainError> {
    let n = inv::Entity::update_many()
        .col_expr(inv::Column::TokenHash, Expr::value(token_hash))
        .col_expr(inv::Column::ExpiresAt, Expr::value(now + ttl_ms))
        .filter(inv::Column::Id.eq(&before.id))
        .filter(inv::Column::Status.eq("pending"))
        .filter(inv::Column::TokenHash.eq(&before.token_hash))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if n != 1 {
        return Ok(None);
    }
    let Some(after) = find(conn, &before.id).await? else {
        return Ok(None);
    };
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "invitation.resent", "invitation", &before.id)
            .org(&before.organization_id)
            .details(json!({"before": snapshot(before, now), "after": snapshot(&after, now)})),
        now,
    )
    .await?;
    Ok(Some(after))
}

/// Moves a pending invitation to `to`; `unexpired_only` also requires it not
/// to have expired, and `token_hash` (accept, decline) that the presented
/// token is still the current one, so a resend that committed first kills
/// it. Returns whether this call made the change.
pub async fn transition<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    to: Status,
    unexpired_only: bool,
    token_hash: Option<&str>,
    now: i64,
) -> Result<bool, DomainError> {
    let mut q = inv::Entity::update_many()
        .col_expr(inv::Column::Status, Expr::value(to.name()))
        .col_expr(inv::Column::DecidedAt, Expr::value(now))
        .filter(inv::Column::Id.eq(id))
        .filter(inv::Column::Status.eq("pending"));
    if unexpired_only {
        q = q.filter(inv::Column::ExpiresAt.gt(now));
    }
    if let Some(h) = token_hash {
        q = q.filter(inv::Column::TokenHash.eq(h));
    }
    Ok(q.exec(conn).await.map_err(db_err)?.rows_affected == 1)
}

pub async fn audit_transition<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    i: &Invitation,
    action: &'static str,
    to: Status,
    now: i64,
) -> Result<(), DomainError> {
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, action, "invitation", &i.id)
            .org(&i.organization_id)
            .details(json!({
                "before": {"status": status_of(i, now).name()},
                "after": {"status": to.name()},
                "email": i.email,
            })),
        now,
    )
    .await
}
