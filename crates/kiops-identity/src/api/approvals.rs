//! `ApprovalService` (R7, R8) and the join-request half of SignUp.

use super::context;
use super::convert;
use crate::app::App;
use crate::domain::error::{reason, Violations};
use crate::domain::model::Role;
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError};
use crate::mail::messages;
use crate::store::audit::RequestMeta;
use crate::store::join_requests::{self, JoinRequestQuery};
use crate::store::{memberships, organizations, outbox, users};
use kiops_proto::v1::approval_service_server::ApprovalService;
use kiops_proto::v1::*;
use serde_json::json;
use tonic::{Request, Response, Status};

const DAY_MS: i64 = 24 * 3600 * 1000;

pub struct ApprovalApi {
    app: App,
}

impl ApprovalApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl App {
    async fn request_to_join(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        org: &str,
    ) -> Result<JoinRequest, DomainError> {
        let org = validate::id("organization_id", org)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
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
        let jr =
            join_requests::create(&tx, meta, caller.actor(), &caller.user_id, &org, now).await?;
        // Read inside the transaction: after commit a concurrent deletion
        // of the organization could make a created request look failed.
        let row = join_requests::row(&tx, &jr.id)
            .await?
            .ok_or_else(|| DomainError::internal("join request just created"))?;
        tx.commit().await?;
        Ok(convert::join_request(&row))
    }

    async fn list_join_requests(
        &self,
        caller: &Caller,
        r: ListJoinRequestsRequest,
    ) -> Result<ListJoinRequestsResponse, DomainError> {
        let mut v = Violations::new();
        let org = match r.organization_id.as_deref() {
            Some(o) if !o.is_empty() => Some(v.take(validate::id("organization_id", o))),
            _ => None,
        };
        let size = v.take(validate::page_size("page_size", r.page_size));
        let status = match r.status {
            0 | 1 => "pending",
            2 => "approved",
            3 => "rejected",
            _ => {
                v.push(crate::domain::FieldViolation::new(
                    "status",
                    "unknown join request status",
                ));
                "pending"
            }
        };
        let now = self.clock.now_ms();
        let since = match r.period {
            0 | 3 => None,
            1 => Some(now - 7 * DAY_MS),
            2 => Some(now - 30 * DAY_MS),
            _ => {
                v.push(crate::domain::FieldViolation::new(
                    "period",
                    "unknown period",
                ));
                None
            }
        };
        let fp = page_token::fingerprint(&[
            "join-requests",
            &caller.user_id,
            org.as_deref().unwrap_or("*"),
            status,
            &r.period.to_string(),
        ]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let conn = self.store.conn();
        let organizations = match &org {
            Some(o) => {
                let role = memberships::role_of(conn, o, &caller.user_id).await?;
                access::require_manager(caller, role)?;
                Some(vec![o.clone()])
            }
            None if caller.platform_admin => None,
            None => Some(join_requests::managed_orgs(conn, &caller.user_id).await?),
        };
        let after =
            after.and_then(|k| Some((k.first()?.as_i64()?, k.get(1)?.as_str()?.to_string())));
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
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(l)) => {
                page_token::encode(&key, &fp, vec![json!(l.requested_at), json!(l.id)])
            }
            _ => String::new(),
        };
        Ok(ListJoinRequestsResponse {
            join_requests: rows.iter().map(convert::join_request).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    /// Approve or reject. The organization row is locked and the request is
    /// decided by a conditional UPDATE, so of two racing approvals exactly one
    /// wins and exactly one membership exists.
    async fn decide_join_request(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
        approve: bool,
        why: Option<String>,
    ) -> Result<(JoinRequest, Option<Member>), DomainError> {
        let mut v = Violations::new();
        let id = v.take(validate::id("join_request_id", id));
        let why = match why {
            Some(w) if !w.trim().is_empty() => {
                Some(v.take(validate::text("reason", w.trim(), 500)))
            }
            _ => None,
        };
        v.into_result()?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let jr = join_requests::find(&tx, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("join request"))?;
        let org = organizations::lock(&tx, &jr.organization_id)
            .await?
            .ok_or_else(|| DomainError::not_found("join request"))?;
        let role = memberships::role_of(&tx, &org.id, &caller.user_id).await?;
        if !caller.platform_admin && role.is_none() {
            return Err(DomainError::not_found("join request"));
        }
        access::require_manager(caller, role)?;
        let requester = users::find_by_id(&tx, &jr.user_id).await?;
        // Issue 20 item 8: only a proven address joins. The flag only ever
        // goes from false to true, so reading it here is enough.
        if approve
            && jr.status == "pending"
            && requester.as_ref().is_some_and(|u| !u.email_verified)
        {
            return Err(DomainError::precondition(
                reason::EMAIL_NOT_VERIFIED,
                "the requester has not verified their email address yet",
            ));
        }
        if !join_requests::decide(
            &tx,
            meta,
            caller.actor(),
            &jr,
            approve,
            &caller.user_id,
            why.clone(),
            now,
        )
        .await?
        {
            return Err(DomainError::precondition(
                reason::NOT_PENDING,
                "the join request is not pending",
            ));
        }
        if approve
            && memberships::find(&tx, &org.id, &jr.user_id)
                .await?
                .is_none()
        {
            memberships::add(
                &tx,
                meta,
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
        // The reply is read inside the transaction: after commit a
        // concurrent removal could hide a decision that happened.
        let row = join_requests::row(&tx, &id)
            .await?
            .ok_or_else(|| DomainError::internal("join request just decided"))?;
        let member = if approve {
            memberships::get_member(&tx, &org.id, &jr.user_id)
                .await?
                .map(|m| convert::member(&m, now))
        } else {
            None
        };
        tx.commit().await?;
        self.mail_wakeup.notify_one();
        Ok((convert::join_request(&row), member))
    }
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn request_to_join(
        &self,
        request: Request<RequestToJoinRequest>,
    ) -> Result<Response<RequestToJoinResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let join_request = self
            .app
            .request_to_join(&meta, &caller, &r.organization_id)
            .await?;
        Ok(Response::new(RequestToJoinResponse {
            join_request: Some(join_request),
        }))
    }

    async fn list_join_requests(
        &self,
        request: Request<ListJoinRequestsRequest>,
    ) -> Result<Response<ListJoinRequestsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        Ok(Response::new(
            self.app.list_join_requests(&caller, r).await?,
        ))
    }

    async fn approve_join_request(
        &self,
        request: Request<ApproveJoinRequestRequest>,
    ) -> Result<Response<ApproveJoinRequestResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (join_request, member) = self
            .app
            .decide_join_request(&meta, &caller, &r.join_request_id, true, None)
            .await?;
        Ok(Response::new(ApproveJoinRequestResponse {
            join_request: Some(join_request),
            member,
        }))
    }

    async fn reject_join_request(
        &self,
        request: Request<RejectJoinRequestRequest>,
    ) -> Result<Response<RejectJoinRequestResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let (join_request, _) = self
            .app
            .decide_join_request(&meta, &caller, &r.join_request_id, false, r.reason)
            .await?;
        Ok(Response::new(RejectJoinRequestResponse {
            join_request: Some(join_request),
        }))
    }
}
