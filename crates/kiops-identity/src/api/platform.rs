//! `PlatformService` over gRPC: decode, call `service::platform`, encode.

use super::context;
use crate::app::App;
use crate::service::{platform, to_completion};
use kiops_proto::v1::platform_service_server::PlatformService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct PlatformApi {
    app: App,
}

impl PlatformApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn policy(required: bool) -> Option<PlatformPolicy> {
    Some(PlatformPolicy {
        platform_admin_second_factor_required: required,
    })
}

#[tonic::async_trait]
impl PlatformService for PlatformApi {
    async fn get_platform_policy(
        &self,
        request: Request<GetPlatformPolicyRequest>,
    ) -> Result<Response<GetPlatformPolicyResponse>, Status> {
        let (_, caller, _) = context::start(&self.app, request).await?;
        let required = platform::get_policy(&self.app, &caller).await?;
        Ok(Response::new(GetPlatformPolicyResponse {
            policy: policy(required),
        }))
    }

    async fn update_platform_policy(
        &self,
        request: Request<UpdatePlatformPolicyRequest>,
    ) -> Result<Response<UpdatePlatformPolicyResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let required =
            to_completion(platform::update_policy(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(UpdatePlatformPolicyResponse {
            policy: policy(required),
        }))
    }

    async fn send_test_email(
        &self,
        request: Request<SendTestEmailRequest>,
    ) -> Result<Response<SendTestEmailResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let o = to_completion(platform::send_test_email(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(SendTestEmailResponse {
            delivered: o.delivered,
            smtp_configured: o.smtp_configured,
            smtp_code: o.smtp_code.map(i32::from).unwrap_or(0),
            error: o.error,
        }))
    }
}
