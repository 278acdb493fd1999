//! `InvitationService` over gRPC: decode, call `service::invitations`,
//! encode.

use super::context::{self, request_meta};
use super::convert;
use crate::app::App;
use crate::service::{invitations, to_completion};
use kiops_proto::v1::invitation_service_server::InvitationService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct InvitationApi {
    app: App,
}

impl InvitationApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl InvitationService for InvitationApi {
    async fn create_invitation(
        &self,
        request: Request<CreateInvitationRequest>,
    ) -> Result<Response<CreateInvitationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let inv = to_completion(invitations::create(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(CreateInvitationResponse {
            invitation: Some(convert::invitation(&inv)),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = invitations::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListInvitationsResponse {
            invitations: page.items.iter().map(convert::invitation).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn resend_invitation(
        &self,
        request: Request<ResendInvitationRequest>,
    ) -> Result<Response<ResendInvitationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let inv = to_completion(invitations::resend(
            self.app.clone(),
            meta,
            caller,
            r.invitation_id,
        ))
        .await?;
        Ok(Response::new(ResendInvitationResponse {
            invitation: Some(convert::invitation(&inv)),
        }))
    }

    async fn revoke_invitation(
        &self,
        request: Request<RevokeInvitationRequest>,
    ) -> Result<Response<RevokeInvitationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let inv = to_completion(invitations::revoke(
            self.app.clone(),
            meta,
            caller,
            r.invitation_id,
        ))
        .await?;
        Ok(Response::new(RevokeInvitationResponse {
            invitation: Some(convert::invitation(&inv)),
        }))
    }

    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<AcceptInvitationResponse>, Status> {
        let meta = request_meta(&request);
        let caller = context::authenticate_optional(&self.app, &request).await?;
        let accepted = to_completion(invitations::accept(
            self.app.clone(),
            meta,
            caller,
            request.into_inner(),
        ))
        .await?;
        Ok(Response::new(AcceptInvitationResponse {
            member: Some(convert::member(&accepted.member, accepted.now_ms)),
            organization_id: accepted.organization_id,
        }))
    }

    async fn decline_invitation(
        &self,
        request: Request<DeclineInvitationRequest>,
    ) -> Result<Response<DeclineInvitationResponse>, Status> {
        let meta = request_meta(&request);
        let token = request.into_inner().token;
        to_completion(invitations::decline(self.app.clone(), meta, token)).await?;
        Ok(Response::new(DeclineInvitationResponse {}))
    }
}
