//! `InvitationService` use cases (R9): Managers invite by email, the
//! invited person accepts or declines with the emailed token. The lifecycle
//! and who may accept are `domain::invitation`.

use super::{parse, Cursor, Page};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::RequestMeta;
use crate::domain::error::{reason, Violations};
use crate::domain::invitation::{
    self, unusable, Acceptance, Delivery, Invitation, InvitationStatus,
};
use crate::domain::membership::Member;
use crate::domain::model::Role;
use crate::domain::page_token;
use crate::domain::{access, password_policy, validate, Caller, DomainError, FieldViolation};
use crate::mail::messages::{self, INVITATION_TTL_DAYS};
use crate::store::invitations::{self, Acceptor, NewInvitation};
use crate::store::memberships;
use crate::store::{organizations, outbox, users, WriteTx};
use kiops_proto::v1::{
    self, AcceptInvitationRequest, CreateInvitationRequest, ListInvitationsRequest,
};
use serde_json::json;
use subtle::ConstantTimeEq;

pub const INVITATION_TOKEN_PREFIX: &str = "ki";
const TTL_MS: i64 = INVITATION_TTL_DAYS * 24 * 3600 * 1000;

/// An accepted invitation: the new membership, read in its transaction.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub organization_id: String,
    pub member: Member,
    /// The moment the member was read (its shown status depends on it).
    pub now_ms: i64,
}

pub async fn create(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: CreateInvitationRequest,
) -> Result<Invitation, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let email = v.take(validate::email("email", &r.email));
    let role = v.take(parse::role("role", r.role).map(Some));
    let name = r.name.as_deref().map(|n| v.take(validate::name("name", n)));
    let bits = v.take(strict_permissions("permissions", &r.permissions));
    let template_id = r
        .template_id
        .as_deref()
        .map(|t| v.take(validate::id("template_id", t)));
    let role = role.unwrap_or(Role::Member);
    let grants = !r.permissions.is_empty() || template_id.is_some();
    if !r.permissions.is_empty() && r.template_id.is_some() {
        v.check(Err(FieldViolation::new(
            "template_id",
            "give permissions or template_id, not both",
        )));
    }
    if grants && role == Role::Manager {
        let field = if r.template_id.is_some() {
            "template_id"
        } else {
            "permissions"
        };
        v.check(Err(FieldViolation::new(
            field,
            "a Manager holds every permission: invite ROLE_MANAGER without permissions",
        )));
    }
    v.into_result()?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let o = organizations::lock(&tx, &org).await?;
    let caller_role = memberships::caller_role(&tx, &org, &caller).await?;
    access::require_manager(&caller, caller_role)?;
    access::require_may_grant(&caller, role)?;
    let o = o.ok_or_else(|| DomainError::not_found("organization"))?;
    // R6 templates are copied now: the invitation shows what accepting gives.
    let bits = match &template_id {
        Some(t) => {
            crate::service::templates::find(&tx, &org, t)
                .await?
                .permissions
        }
        None => bits,
    };
    if let Some(existing) = users::find_by_email(&tx, &email).await? {
        invitation::check_grants(&caller.user_id, &existing.id, grants)?;
        if memberships::find(&tx, &org, &existing.id).await?.is_some() {
            return Err(DomainError::exists(
                reason::ALREADY_MEMBER,
                "this person is already a member",
            ));
        }
    }
    if invitations::live_exists(&tx, &org, &email, now).await? {
        return Err(DomainError::exists(
            reason::INVITATION_PENDING,
            "a pending invitation for this email exists; resend it instead",
        ));
    }
    let token = random_token(INVITATION_TOKEN_PREFIX);
    let inv = invitations::create(
        &tx,
        &meta,
        caller.actor(),
        NewInvitation {
            organization_id: org,
            email,
            role,
            inviter_id: caller.user_id.clone(),
            token_hash: hash_token(&token),
            ttl_ms: TTL_MS,
            name,
            permissions: bits,
            template_id,
        },
        now,
    )
    .await?;
    send(&app, tx, &inv, &o.name, &caller, &token, now).await?;
    Ok(with_queued(inv).seen_at(now))
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListInvitationsRequest,
) -> Result<Page<Invitation>, DomainError> {
    let mut v = Violations::new();
    let org = v.take(validate::id("organization_id", &r.organization_id));
    let size = v.take(validate::page_size("page_size", r.page_size));
    let status = v.take(status_filter("status", r.status));
    let fp = page_token::fingerprint(&["invitations", &org, &r.status.to_string()]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let conn = app.store.conn();
    let role = memberships::caller_role(conn, &org, caller).await?;
    access::require_manager(caller, role)?;
    let after = cursor.after_ms_and_id();
    let now = app.clock.now_ms();
    let (rows, total) = invitations::list(conn, &org, status, after, size + 1, now).await?;
    let ids: Vec<String> = rows.iter().map(|i| i.id.clone()).collect();
    let mut deliveries = outbox::invitation_deliveries(conn, &ids).await?;
    let page = cursor.page(rows, size, total, |l| {
        vec![json!(l.created_at_ms), json!(l.id)]
    });
    Ok(page.map(|mut i| {
        i.delivery = deliveries.remove(&i.id);
        i.seen_at(now)
    }))
}

pub async fn resend(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<Invitation, DomainError> {
    let (tx, inv, now) = begin_for_manager(&app, &caller, &id).await?;
    access::require_may_grant(&caller, inv.role)?;
    inv.require_renewable(now)?;
    let org = organizations::find(&tx, &inv.organization_id)
        .await?
        .ok_or_else(|| DomainError::not_found("invitation"))?;
    let token = random_token(INVITATION_TOKEN_PREFIX);
    let Some(after) = invitations::renew(
        &tx,
        &meta,
        caller.actor(),
        &inv,
        hash_token(&token),
        TTL_MS,
        now,
    )
    .await?
    else {
        // An accept or decline committed since the read: it won.
        let current = invitations::find(&tx, &inv.id).await?.unwrap_or(inv);
        return Err(unusable(current.status_at(now)));
    };
    send(&app, tx, &after, &org.name, &caller, &token, now).await?;
    Ok(with_queued(after).seen_at(now))
}

pub async fn revoke(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<Invitation, DomainError> {
    let (tx, inv, now) = begin_for_manager(&app, &caller, &id).await?;
    if !invitations::revoke(&tx, &meta, caller.actor(), &inv, now).await? {
        return Err(unusable(inv.status_at(now)));
    }
    let mut after = invitations::find(&tx, &inv.id).await?.unwrap_or(inv);
    after.delivery = outbox::invitation_deliveries(&tx, std::slice::from_ref(&after.id))
        .await?
        .remove(&after.id);
    tx.commit().await?;
    Ok(after.seen_at(now))
}

/// Accepting, by the invited email's account or by whoever creates it
/// (`domain::invitation::who_accepts`).
pub async fn accept(
    app: App,
    meta: RequestMeta,
    caller: Option<Caller>,
    r: AcceptInvitationRequest,
) -> Result<Accepted, DomainError> {
    app.throttle.check(&meta.peer, None)?;
    let inv = by_token(&app, &r.token).await?;
    let now = app.clock.now_ms();
    inv.require_usable(now)?;
    let existing = users::find_by_email(app.store.conn(), &inv.email).await?;
    let acceptor = match invitation::who_accepts(
        existing.as_ref().map(|u| u.id.as_str()),
        caller.as_ref().map(|c| c.user_id.as_str()),
    )? {
        Acceptance::AccountOwner => {
            let u = existing.ok_or_else(|| DomainError::internal("accept without account"))?;
            invitation::check_grants(&inv.inviter_id, &u.id, inv.permissions != 0)?;
            Acceptor::Account {
                id: u.id,
                email: u.email,
            }
        }
        Acceptance::LoginRequired => {
            // The account may be the one a concurrent accept of this same
            // invitation has just created (in the transaction that used the
            // invitation): then the invitation is what is no longer usable,
            // as the loser of that race must hear.
            if let Some(current) = invitations::find(app.store.conn(), &inv.id).await? {
                current.require_usable(now)?;
            }
            return Err(invitation::login_required());
        }
        Acceptance::NewAccount => {
            let mut v = Violations::new();
            // The invitation's name when the acceptor gives none.
            let given = r.name.as_deref().or(inv.name.as_deref()).unwrap_or("");
            let name = v.take(validate::name("name", given));
            let password = r.password.unwrap_or_default();
            v.check(password_policy::check("password", &password, &inv.email));
            v.into_result()?;
            let password_hash = app.hasher.hash(password).await?;
            Acceptor::NewAccount {
                name,
                password_hash,
            }
        }
    };
    let tx = app.store.begin_write().await?;
    // The organization row first, as resend and revoke take it: the
    // membership insert needs a key-share lock on it, and taking the
    // invitation row before it deadlocked against a resend.
    organizations::lock(&tx, &inv.organization_id).await?;
    let Some(user_id) = invitations::accept(&tx, &meta, &inv, acceptor, now).await? else {
        return Err(not_consumed(&tx, inv, now).await);
    };
    // Read inside the transaction, as for every change's reply.
    let member = memberships::get_member(&tx, &inv.organization_id, &user_id)
        .await?
        .ok_or_else(|| DomainError::internal("membership just created"))?;
    tx.commit().await?;
    Ok(Accepted {
        organization_id: inv.organization_id,
        member,
        now_ms: now,
    })
}

pub async fn decline(app: App, meta: RequestMeta, token: String) -> Result<(), DomainError> {
    let inv = by_token(&app, &token).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    if !invitations::decline(&tx, &meta, &inv, now).await? {
        return Err(not_consumed(&tx, inv, now).await);
    }
    tx.commit().await
}

/// The invitation as the transaction that queued its new email sees it.
fn with_queued(mut i: Invitation) -> Invitation {
    i.delivery = Some(Delivery::queued());
    i
}

/// Invitation permissions: the seven categories, each at most once
/// (a repeated one is a caller's mistake worth naming).
fn strict_permissions(field: &str, list: &[i32]) -> Result<u8, FieldViolation> {
    let mut bits = 0u8;
    for (n, p) in list.iter().enumerate() {
        let b = parse::permission(&format!("{field}[{n}]"), *p)?.bit();
        if bits & b != 0 {
            return Err(FieldViolation::new(
                format!("{field}[{n}]"),
                "repeated permission",
            ));
        }
        bits |= b;
    }
    Ok(bits)
}

/// ListInvitations' status filter; UNSPECIFIED means any.
fn status_filter(field: &str, n: i32) -> Result<Option<InvitationStatus>, FieldViolation> {
    use v1::InvitationStatus as P;
    match P::try_from(n) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Pending) => Ok(Some(InvitationStatus::Pending)),
        Ok(P::Accepted) => Ok(Some(InvitationStatus::Accepted)),
        Ok(P::Expired) => Ok(Some(InvitationStatus::Expired)),
        Ok(P::Rejected) => Ok(Some(InvitationStatus::Rejected)),
        Ok(P::Revoked) => Ok(Some(InvitationStatus::Revoked)),
        Err(_) => Err(FieldViolation::new(field, "unknown invitation status")),
    }
}

/// Queues the invitation email with its token, commits, and wakes the sender.
async fn send(
    app: &App,
    tx: WriteTx,
    inv: &Invitation,
    org_name: &str,
    inviter: &Caller,
    token: &str,
    now: i64,
) -> Result<(), DomainError> {
    let email_id = outbox::enqueue(
        &tx,
        messages::invitation(
            &app.mail,
            &inv.email,
            org_name,
            &inviter.email,
            inv.role.as_str(),
            token,
            inv.expires_at_ms,
        ),
        now,
    )
    .await?;
    outbox::link_invitation(&tx, &email_id, &inv.id).await?;
    tx.commit().await?;
    app.mail_wakeup.notify_one();
    Ok(())
}

/// The invitation of a secret token. The database finds the row by hash;
/// the stored hash is then compared in constant time as well.
async fn by_token(app: &App, token: &str) -> Result<Invitation, DomainError> {
    validate::opaque_token("token", token)?;
    let hash = hash_token(token);
    let inv = invitations::find_by_token_hash(app.store.conn(), &hash)
        .await?
        .ok_or_else(|| DomainError::not_found("invitation"))?;
    if !bool::from(inv.token_hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(DomainError::not_found("invitation"));
    }
    Ok(inv)
}

/// A write transaction and in it the invitation `id`, read under its
/// organization's lock, for a Manager of that organization; NOT_FOUND for
/// anyone who cannot see that organization (R4).
async fn begin_for_manager(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<(WriteTx, Invitation, i64), DomainError> {
    let id = validate::id("invitation_id", id)?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let inv = invitations::find(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("invitation"))?;
    organizations::lock(&tx, &inv.organization_id).await?;
    // Read again under the lock: a resend that committed while we waited
    // for it has changed the token.
    let inv = invitations::find(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("invitation"))?;
    let role = memberships::caller_role(&tx, &inv.organization_id, caller).await?;
    if !caller.platform_admin && role.is_none() {
        return Err(DomainError::not_found("invitation"));
    }
    access::require_manager(caller, role)?;
    Ok((tx, inv, now))
}

/// Why the conditional UPDATE on (id, token hash) changed nothing: the
/// invitation was decided or expired meanwhile, or a resend replaced the
/// presented token (then it is unknown, as any dead token is).
async fn not_consumed(tx: &WriteTx, inv: Invitation, now: i64) -> DomainError {
    match invitations::find(tx, &inv.id).await {
        Ok(Some(current)) if current.token_hash != inv.token_hash => {
            DomainError::not_found("invitation")
        }
        Ok(Some(current)) => unusable(current.status_at(now)),
        Ok(None) => DomainError::not_found("invitation"),
        Err(e) => e,
    }
}
