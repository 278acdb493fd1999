//! `OrganizationService` over gRPC: decode, call `service::organizations`,
//! encode.

use super::context;
use super::convert;
use crate::app::App;
use crate::service::{organizations, to_completion};
use kiops_proto::v1::organization_service_server::OrganizationService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct OrganizationApi {
    app: App,
}

impl OrganizationApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let org = to_completion(organizations::create(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(CreateOrganizationResponse {
            organization: Some(convert::organization(&org)),
        }))
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let org = organizations::get(&self.app, &caller, &r.organization_id).await?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(convert::organization(&org)),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = organizations::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListOrganizationsResponse {
            organizations: page.items.iter().map(convert::organization).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn update_organization(
        &self,
        request: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<UpdateOrganizationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let org = to_completion(organizations::update(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(UpdateOrganizationResponse {
            organization: Some(convert::organization(&org)),
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<DeleteOrganizationRequest>,
    ) -> Result<Response<DeleteOrganizationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(organizations::delete(
            self.app.clone(),
            meta,
            caller,
            r.organization_id,
        ))
        .await?;
        Ok(Response::new(DeleteOrganizationResponse {}))
    }
}
