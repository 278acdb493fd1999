//! `ApprovalService` over gRPC: decode, call `service::approvals`, encode.

use super::context;
use super::convert;
use crate::app::App;
use crate::service::{approvals, to_completion};
use kiops_proto::v1::approval_service_server::ApprovalService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct ApprovalApi {
    app: App,
}

impl ApprovalApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl ApprovalService for ApprovalApi {
    async fn request_to_join(
        &self,
        request: Request<RequestToJoinRequest>,
    ) -> Result<Response<RequestToJoinResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let jr = to_completion(approvals::request_to_join(
            self.app.clone(),
            meta,
            caller,
            r.organization_id,
        ))
        .await?;
        Ok(Response::new(RequestToJoinResponse {
            join_request: Some(convert::join_request(&jr)),
        }))
    }

    async fn list_join_requests(
        &self,
        request: Request<ListJoinRequestsRequest>,
    ) -> Result<Response<ListJoinRequestsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = approvals::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListJoinRequestsResponse {
            join_requests: page.items.iter().map(convert::join_request).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn approve_join_request(
        &self,
        request: Request<ApproveJoinRequestRequest>,
    ) -> Result<Response<ApproveJoinRequestResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let d = to_completion(approvals::approve(
            self.app.clone(),
            meta,
            caller,
            r.join_request_id,
        ))
        .await?;
        Ok(Response::new(ApproveJoinRequestResponse {
            join_request: Some(convert::join_request(&d.join_request)),
            member: d.member.as_ref().map(|m| convert::member(m, d.now_ms)),
        }))
    }

    async fn reject_join_request(
        &self,
        request: Request<RejectJoinRequestRequest>,
    ) -> Result<Response<RejectJoinRequestResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let jr = to_completion(approvals::reject(
            self.app.clone(),
            meta,
            caller,
            r.join_request_id,
            r.reason,
        ))
        .await?;
        Ok(Response::new(RejectJoinRequestResponse {
            join_request: Some(convert::join_request(&jr)),
        }))
    }
}
