//! `MembershipService` over gRPC: decode, call `service::memberships` or
//! `service::templates`, encode.

use super::context;
use super::convert;
use crate::app::App;
use crate::domain::service_account::{require_scope, Scope};
use crate::domain::DomainError;
use crate::service::memberships::{self, AsOf, Asker};
use crate::service::{templates, to_completion};
use kiops_proto::v1::membership_service_server::MembershipService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct MembershipApi {
    app: App,
}

impl MembershipApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn member(m: &AsOf<crate::domain::membership::Member>) -> Option<Member> {
    Some(convert::member(&m.value, m.now_ms))
}

/// Who asks CheckPermission(s). A person is authenticated by the use
/// case's own read, together with the facts; a service account's token
/// names no user, so it is authenticated here, holding permissions.check
/// (R25).
async fn asker<T>(app: &App, request: &Request<T>) -> Result<Asker, DomainError> {
    let claims = context::verify_bearer(app, request)?;
    if !claims.is_service() {
        return Ok(Asker::Person(claims));
    }
    let caller = context::caller_of(app, claims).await?;
    require_scope(&caller, Some(Scope::PermissionsCheck))?;
    Ok(Asker::Service(caller))
}

#[tonic::async_trait]
impl MembershipService for MembershipApi {
    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let m = to_completion(memberships::add(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(AddMemberResponse { member: member(&m) }))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let (_, caller, r) =
            context::start_scoped(&self.app, request, Some(Scope::MembersRead)).await?;
        let AsOf {
            value: page,
            now_ms,
        } = memberships::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListMembersResponse {
            members: page
                .items
                .iter()
                .map(|m| convert::member(m, now_ms))
                .collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn get_member(
        &self,
        request: Request<GetMemberRequest>,
    ) -> Result<Response<GetMemberResponse>, Status> {
        let (_, caller, r) =
            context::start_scoped(&self.app, request, Some(Scope::MembersRead)).await?;
        let m = memberships::get(&self.app, &caller, &r.organization_id, &r.user_id).await?;
        Ok(Response::new(GetMemberResponse { member: member(&m) }))
    }

    async fn change_role(
        &self,
        request: Request<ChangeRoleRequest>,
    ) -> Result<Response<ChangeRoleResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let m = to_completion(memberships::change_role(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(ChangeRoleResponse { member: member(&m) }))
    }

    async fn set_permissions(
        &self,
        request: Request<SetPermissionsRequest>,
    ) -> Result<Response<SetPermissionsResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let m = to_completion(memberships::set_permissions(
            self.app.clone(),
            meta,
            caller,
            r,
        ))
        .await?;
        Ok(Response::new(SetPermissionsResponse { member: member(&m) }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(memberships::remove_member(
            self.app.clone(),
            meta,
            caller,
            r,
        ))
        .await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn leave_organization(
        &self,
        request: Request<LeaveOrganizationRequest>,
    ) -> Result<Response<LeaveOrganizationResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(memberships::leave(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(LeaveOrganizationResponse {}))
    }

    async fn list_my_memberships(
        &self,
        request: Request<ListMyMembershipsRequest>,
    ) -> Result<Response<ListMyMembershipsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = memberships::list_mine(&self.app, &caller, r).await?;
        Ok(Response::new(ListMyMembershipsResponse {
            memberships: page
                .items
                .iter()
                .map(|(m, o)| convert::membership(m, o, caller.platform_admin))
                .collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn check_permission(
        &self,
        request: Request<CheckPermissionRequest>,
    ) -> Result<Response<CheckPermissionResponse>, Status> {
        let asker = asker(&self.app, &request).await?;
        let answer = memberships::check_permission(&self.app, asker, request.into_inner()).await?;
        Ok(Response::new(convert::permission_answer(answer)))
    }

    async fn check_permissions(
        &self,
        request: Request<CheckPermissionsRequest>,
    ) -> Result<Response<CheckPermissionsResponse>, Status> {
        let asker = asker(&self.app, &request).await?;
        let answers =
            memberships::check_permissions(&self.app, asker, request.into_inner()).await?;
        Ok(Response::new(CheckPermissionsResponse {
            results: answers
                .into_iter()
                .map(convert::permission_answer)
                .collect(),
        }))
    }

    async fn create_permission_template(
        &self,
        request: Request<CreatePermissionTemplateRequest>,
    ) -> Result<Response<CreatePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let t = to_completion(templates::create(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(CreatePermissionTemplateResponse {
            template: Some(convert::template(&t)),
        }))
    }

    async fn list_permission_templates(
        &self,
        request: Request<ListPermissionTemplatesRequest>,
    ) -> Result<Response<ListPermissionTemplatesResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = templates::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListPermissionTemplatesResponse {
            templates: page.items.iter().map(convert::template).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn update_permission_template(
        &self,
        request: Request<UpdatePermissionTemplateRequest>,
    ) -> Result<Response<UpdatePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let t = to_completion(templates::update(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(UpdatePermissionTemplateResponse {
            template: Some(convert::template(&t)),
        }))
    }

    async fn delete_permission_template(
        &self,
        request: Request<DeletePermissionTemplateRequest>,
    ) -> Result<Response<DeletePermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(templates::delete(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(DeletePermissionTemplateResponse {}))
    }

    async fn send_password_reset(
        &self,
        request: Request<SendPasswordResetRequest>,
    ) -> Result<Response<SendPasswordResetResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(memberships::send_password_reset(
            self.app.clone(),
            meta,
            caller,
            r.organization_id,
            r.user_id,
        ))
        .await?;
        Ok(Response::new(SendPasswordResetResponse {}))
    }

    async fn apply_permission_template(
        &self,
        request: Request<ApplyPermissionTemplateRequest>,
    ) -> Result<Response<ApplyPermissionTemplateResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let m = to_completion(memberships::apply_template(
            self.app.clone(),
            meta,
            caller,
            r,
        ))
        .await?;
        Ok(Response::new(ApplyPermissionTemplateResponse {
            member: member(&m),
        }))
    }
}
