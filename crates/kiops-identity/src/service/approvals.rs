//! `ApprovalService` use cases (R7, R8): a user asks to join an
//! organization; its Managers list, approve or reject the requests. The
//! statuses and the approval rule are `domain::join_request`.

use super::{Cursor, Page};
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::{reason, Violations};
use crate::domain::join_request::{self, JoinRequestStatus, JoinRequestView, Period};
use crate::domain::membership::Member;
use crate::domain::model::Role;
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError, FieldViolation};
use crate::mail::messages;
use crate::store::join_requests::{self, JoinRequestQuery};
use crate::store::memberships;
use crate::store::{organizations, outbox, second_factor, users};
use kiops_proto::v1::{self, ListJoinRequestsRequest};
use serde_json::json;

/// A decided request, and for an approval the new membership, both read in
/// the deciding transaction.
#[derive(Debug, Clone)]
pub struct Decided {
    pub join_request: JoinRequestView,
    pub member: Option<Member>,
    /// The moment they were read (a member's shown status depends on it).
    pub now_ms: i64,
}

pub async fn request_to_join(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    org: String,
) -> Result<JoinRequestView, DomainError> {
    let org = validate::id("organization_id", &org)?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    if organizations::find(&tx, &org).await?.is_none() {
        return Err(DomainError::not_found("organization"));
    }
    if memberships::find(&tx, &org, &caller.user_id)
        .await?
        .is_some()
    {
        return Err(DomainError::exists(
            reason::ALREADY_MEMBER,
            "you are already a member",
        ));
    }
    let jr = join_requests::create(&tx, &meta, caller.actor(), &caller.user_id, &org, now).await?;
    // Read inside the transaction: after commit a concurrent deletion of the
    // organization could make a created request look failed.
    let view = join_requests::row(&tx, &jr.id)
        .await?
        .ok_or_else(|| DomainError::internal("join request just created"))?;
    tx.commit().await?;
    Ok(view)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    r: ListJoinRequestsRequest,
) -> Result<Page<JoinRequestView>, DomainError> {
    let mut v = Violations::new();
    let org = match r.organization_id.as_deref() {
        Some(o) if !o.is_empty() => Some(v.take(validate::id("organization_id", o))),
        _ => None,
    };
    let size = v.take(validate::page_size("page_size", r.page_size));
    let status = status_filter("status", r.status).unwrap_or_else(|e| {
        v.push(e);
        JoinRequestStatus::Pending
    });
    let now = app.clock.now_ms();
    let since = period("period", r.period)
        .unwrap_or_else(|e| {
            v.push(e);
            Period::All
        })
        .since(now);
    let fp = page_token::fingerprint(&[
        "join-requests",
        &caller.user_id,
        org.as_deref().unwrap_or("*"),
        status.as_str(),
        &r.period.to_string(),
    ]);
    let cursor = Cursor::decode(app, &mut v, fp, &r.page_token);
    v.into_result()?;
    let conn = app.store.conn();
    let organizations = match &org {
        Some(o) => {
            let role = memberships::caller_role(conn, o, caller).await?;
            access::require_manager(caller, role)?;
            Some(vec![o.clone()])
        }
        None if caller.platform_admin => None,
        None => {
            let mut managed = join_requests::managed_orgs(conn, &caller.user_id).await?;
            // R31: not those whose policy the session does not meet.
            if !caller.second_factor {
                let ids: Vec<&str> = managed.iter().map(String::as_str).collect();
                let gated = second_factor::orgs_requiring(conn, &ids).await?;
                managed.retain(|o| !gated.contains(o));
            }
            Some(managed)
        }
    };
    let after = cursor.after_ms_and_id();
    let (rows, total) = join_requests::list(
        conn,
        JoinRequestQuery {
            organizations,
            status,
            since,
            after,
            limit: size + 1,
        },
    )
    .await?;
    Ok(cursor.page(rows, size, total, |l| {
        vec![json!(l.requested_at_ms), json!(l.id)]
    }))
}

pub async fn approve(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
) -> Result<Decided, DomainError> {
    decide(app, meta, caller, id, true, None).await
}

pub async fn reject(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
    why: Option<String>,
) -> Result<JoinRequestView, DomainError> {
    Ok(decide(app, meta, caller, id, false, why)
        .await?
        .join_request)
}

/// Approve or reject. The organization row is locked and the request is
/// decided by a conditional UPDATE, so of two racing approvals exactly one
/// wins and exactly one membership exists.
async fn decide(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    id: String,
    approve: bool,
    why: Option<String>,
) -> Result<Decided, DomainError> {
    let mut v = Violations::new();
    let id = v.take(validate::id("join_request_id", &id));
    let why = match why {
        Some(w) if !w.trim().is_empty() => Some(v.take(validate::text("reason", w.trim(), 500))),
        _ => None,
    };
    v.into_result()?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let jr = join_requests::find(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::not_found("join request"))?;
    let org = organizations::lock(&tx, &jr.organization_id)
        .await?
        .ok_or_else(|| DomainError::not_found("join request"))?;
    let role = memberships::caller_role(&tx, &org.id, &caller).await?;
    if !caller.platform_admin && role.is_none() {
        return Err(DomainError::not_found("join request"));
    }
    access::require_manager(&caller, role)?;
    let requester = users::find_by_id(&tx, &jr.user_id).await?;
    join_request::check_decision(
        approve,
        jr.status,
        requester.as_ref().map(|u| u.email_verified),
    )?;
    if !join_requests::decide(
        &tx,
        &meta,
        caller.actor(),
        &jr,
        approve,
        &caller.user_id,
        why.clone(),
        now,
    )
    .await?
    {
        return Err(join_request::not_pending());
    }
    if approve
        && memberships::find(&tx, &org.id, &jr.user_id)
            .await?
            .is_none()
    {
        memberships::add(
            &tx,
            &meta,
            caller.actor(),
            &org.id,
            &jr.user_id,
            Role::Member,
            now,
        )
        .await?;
    }
    if let Some(u) = &requester {
        outbox::enqueue(
            &tx,
            messages::join_decided(&u.email, &org.name, approve, why.as_deref()),
            now,
        )
        .await?;
    }
    // The reply is read inside the transaction: after commit a concurrent
    // removal could hide a decision that happened.
    let view = join_requests::row(&tx, &id)
        .await?
        .ok_or_else(|| DomainError::internal("join request just decided"))?;
    let member = if approve {
        memberships::get_member(&tx, &org.id, &jr.user_id).await?
    } else {
        None
    };
    tx.commit().await?;
    app.mail_wakeup.notify_one();
    Ok(Decided {
        join_request: view,
        member,
        now_ms: now,
    })
}

/// ListJoinRequests' status; UNSPECIFIED means pending.
fn status_filter(field: &str, n: i32) -> Result<JoinRequestStatus, FieldViolation> {
    use v1::JoinRequestStatus as P;
    match P::try_from(n) {
        Ok(P::Unspecified | P::Pending) => Ok(JoinRequestStatus::Pending),
        Ok(P::Approved) => Ok(JoinRequestStatus::Approved),
        Ok(P::Rejected) => Ok(JoinRequestStatus::Rejected),
        Err(_) => Err(FieldViolation::new(field, "unknown join request status")),
    }
}

/// ListJoinRequests' period; UNSPECIFIED means all.
fn period(field: &str, n: i32) -> Result<Period, FieldViolation> {
    use v1::JoinRequestPeriod as P;
    match P::try_from(n) {
        Ok(P::Unspecified | P::All) => Ok(Period::All),
        Ok(P::Last7Days) => Ok(Period::Last7Days),
        Ok(P::Last30Days) => Ok(Period::Last30Days),
        Err(_) => Err(FieldViolation::new(field, "unknown period")),
    }
}
