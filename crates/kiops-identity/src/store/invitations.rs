//! Invitations (R9). A token is consumed by one conditional UPDATE on
//! `id AND token_hash AND status = 'pending' AND expires_at > now`, so two
//! racing accepts cannot both win and a resend that committed first kills
//! the old token; expiry is computed from the clock at read time. The
//! lifecycle itself is `domain::invitation`; this module applies it.
//!
//! Rules: H10 (docs/rules.md).

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::db_err;
use super::entity::invitation as inv;
use super::keyset::keyset_after;
use super::memberships::{self, parse_role};
use super::users::{self, NewUser};
use crate::domain::invitation::{Decision, InvitationStatus};
use crate::domain::model::Role;
use crate::domain::DomainError;
use sea_orm::sea_query::{Cond, Expr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::{json, Value};

pub use crate::domain::invitation::Invitation;

const PENDING: &str = "pending";

impl From<inv::Model> for Invitation {
    fn from(m: inv::Model) -> Self {
        Invitation {
            role: parse_role(&m.role),
            status: InvitationStatus::from_stored(&m.status),
            id: m.id,
            organization_id: m.organization_id,
            email: m.email,
            inviter_id: m.inviter_id,
            token_hash: m.token_hash,
            created_at_ms: m.created_at,
            expires_at_ms: m.expires_at,
            decided_at_ms: m.decided_at,
            name: m.name,
            permissions: u8::try_from(m.permissions).unwrap_or(0) & 0x7f,
            template_id: m.template_id,
            delivery: None,
        }
    }
}

fn snapshot(i: &Invitation, now: i64) -> Value {
    json!({
        "email": i.email,
        "role": i.role.as_str(),
        "status": i.status_at(now).as_str(),
        "expires_at": i.expires_at_ms,
        "name": i.name,
        "permissions": permission_names(i.permissions),
        "template_id": i.template_id,
    })
}

/// Audit form of a permission set.
pub fn permission_names(bits: u8) -> Vec<&'static str> {
    kiops_token::Permission::from_bits(bits)
        .into_iter()
        .map(|p| p.as_str())
        .collect()
}

pub struct NewInvitation {
    pub organization_id: String,
    pub email: String,
    pub role: Role,
    pub inviter_id: String,
    pub token_hash: String,
    pub ttl_ms: i64,
    pub name: Option<String>,
    pub permissions: u8,
    pub template_id: Option<String>,
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    n: NewInvitation,
    now: i64,
) -> Result<Invitation, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let i: Invitation = inv::ActiveModel {
        id: Set(id.clone()),
        organization_id: Set(n.organization_id.clone()),
        email: Set(n.email),
        role: Set(n.role.as_str().to_string()),
        inviter_id: Set(n.inviter_id),
        status: Set(PENDING.into()),
        token_hash: Set(n.token_hash),
        created_at: Set(now),
        expires_at: Set(now + n.ttl_ms),
        decided_at: Set(None),
        name: Set(n.name),
        permissions: Set(i32::from(n.permissions)),
        template_id: Set(n.template_id),
    }
    .insert(conn)
    .await
    .map_err(db_err)?
    .into();
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
    Ok(inv::Entity::find_by_id(id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .map(Into::into))
}

pub async fn find_by_token_hash<C: ConnectionTrait>(
    conn: &C,
    hash: &str,
) -> Result<Option<Invitation>, DomainError> {
    Ok(inv::Entity::find()
        .filter(inv::Column::TokenHash.eq(hash))
        .one(conn)
        .await
        .map_err(db_err)?
        .map(Into::into))
}

/// Whether a live (pending, unexpired) invitation of `email` into `org` exists.
pub async fn live_exists<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    email: &str,
    now: i64,
) -> Result<bool, DomainError> {
    Ok(inv::Entity::find()
        .filter(inv::Column::OrganizationId.eq(org))
        .filter(inv::Column::Email.eq(email))
        .filter(inv::Column::Status.eq(PENDING))
        .filter(inv::Column::ExpiresAt.gt(now))
        .one(conn)
        .await
        .map_err(db_err)?
        .is_some())
}

/// Newest first; keyset on (created_at, id).
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    org: &str,
    status: Option<InvitationStatus>,
    after: Option<(i64, String)>,
    limit: u64,
    now: i64,
) -> Result<(Vec<Invitation>, u64), DomainError> {
    let mut cond = Cond::all().add(inv::Column::OrganizationId.eq(org));
    cond = match status {
        None => cond,
        Some(InvitationStatus::Pending) => cond
            .add(inv::Column::Status.eq(PENDING))
            .add(inv::Column::ExpiresAt.gt(now)),
        Some(InvitationStatus::Expired) => cond
            .add(inv::Column::Status.eq(PENDING))
            .add(inv::Column::ExpiresAt.lte(now)),
        Some(s) => cond.add(inv::Column::Status.eq(s.as_str())),
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
    Ok((rows.into_iter().map(Into::into).collect(), total))
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
        .filter(inv::Column::Status.eq(PENDING))
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

/// Revokes a pending invitation (expired or not); false if it was decided
/// already.
pub async fn revoke<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    i: &Invitation,
    now: i64,
) -> Result<bool, DomainError> {
    decide(conn, meta, actor, i, Decision::Revoke, now).await
}

/// Declines with the token `i` was found by; false if it was not consumed.
pub async fn decline<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    i: &Invitation,
    now: i64,
) -> Result<bool, DomainError> {
    decide(conn, meta, Actor::Anonymous, i, Decision::Decline, now).await
}

/// The account that accepts.
pub enum Acceptor {
    /// The invited email's account, logged in.
    Account { id: String, email: String },
    /// An account to create for the invited email.
    NewAccount { name: String, password_hash: String },
}

/// Accepts with the token `i` was found by, and applies what accepting
/// means: the account is created (or its address marked proven: the link
/// reached it, H8) and joins the organization in the
/// invitation's role. Returns the member's user id, or None if the token was
/// not consumed.
pub async fn accept<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    i: &Invitation,
    acceptor: Acceptor,
    now: i64,
) -> Result<Option<String>, DomainError> {
    if !transition(conn, i, Decision::Accept, now).await? {
        return Ok(None);
    }
    let (user_id, actor) = match acceptor {
        Acceptor::NewAccount {
            name,
            password_hash,
        } => {
            let u = users::create(
                conn,
                meta,
                Actor::Anonymous,
                NewUser {
                    email: i.email.clone(),
                    name,
                    password_hash,
                    platform_admin: false,
                    email_verified: true,
                },
                now,
            )
            .await?;
            let actor = Actor::User {
                id: u.id.clone(),
                email: u.email.clone(),
            };
            (u.id, actor)
        }
        Acceptor::Account { id, email } => {
            let actor = Actor::User {
                id: id.clone(),
                email,
            };
            if users::mark_email_verified(conn, &id, now).await? {
                audit::record(
                    conn,
                    meta,
                    AuditEntry::new(actor.clone(), "user.email_verified", "user", &id)
                        .details(json!({"by": "invitation", "invitation_id": i.id})),
                    now,
                )
                .await?;
            }
            (id, actor)
        }
    };
    audit_decision(conn, meta, actor.clone(), i, Decision::Accept, now).await?;
    memberships::add_granted(
        conn,
        meta,
        actor,
        &i.organization_id,
        &user_id,
        i.role,
        i.permissions,
        now,
    )
    .await?;
    Ok(Some(user_id))
}

async fn decide<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    i: &Invitation,
    d: Decision,
    now: i64,
) -> Result<bool, DomainError> {
    if !transition(conn, i, d, now).await? {
        return Ok(false);
    }
    audit_decision(conn, meta, actor, i, d, now).await?;
    Ok(true)
}

/// Moves a pending invitation to the decision's status, under the
/// decision's conditions (`Decision::by_token`). Returns whether this call
/// made the change.
async fn transition<C: ConnectionTrait>(
    conn: &C,
    i: &Invitation,
    d: Decision,
    now: i64,
) -> Result<bool, DomainError> {
    let mut q = inv::Entity::update_many()
        .col_expr(inv::Column::Status, Expr::value(d.to().as_str()))
        .col_expr(inv::Column::DecidedAt, Expr::value(now))
        .filter(inv::Column::Id.eq(&i.id))
        .filter(inv::Column::Status.eq(PENDING));
    if d.by_token() {
        q = q
            .filter(inv::Column::ExpiresAt.gt(now))
            .filter(inv::Column::TokenHash.eq(&i.token_hash));
    }
    Ok(q.exec(conn).await.map_err(db_err)?.rows_affected == 1)
}

async fn audit_decision<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    i: &Invitation,
    d: Decision,
    now: i64,
) -> Result<(), DomainError> {
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, d.action(), "invitation", &i.id)
            .org(&i.organization_id)
            .details(json!({
                "before": {"status": i.status_at(now).as_str()},
                "after": {"status": d.to().as_str()},
                "email": i.email,
                "permissions": permission_names(i.permissions),
                "template_id": i.template_id,
            })),
        now,
    )
    .await
}
