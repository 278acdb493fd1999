//! `UserService` over gRPC: decode, call `service::users`, encode.

use super::context;
use super::convert;
use crate::app::App;
use crate::domain::service_account::Scope;
use crate::domain::user::User;
use crate::service::{sessions, to_completion, totp, users};
use kiops_proto::v1::user_service_server::UserService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct UserApi {
    app: App,
}

impl UserApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }

    /// The account as shown now.
    fn user(&self, u: &User) -> Option<kiops_proto::v1::User> {
        Some(convert::user(u, self.app.clock.now_ms()))
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_me(
        &self,
        request: Request<GetMeRequest>,
    ) -> Result<Response<GetMeResponse>, Status> {
        let (_, caller, _) = context::start(&self.app, request).await?;
        let user = users::get_me(&self.app, &caller).await?;
        Ok(Response::new(GetMeResponse {
            user: self.user(&user),
        }))
    }

    async fn update_me(
        &self,
        request: Request<UpdateMeRequest>,
    ) -> Result<Response<UpdateMeResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = to_completion(users::update_me(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(UpdateMeResponse {
            user: self.user(&user),
        }))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(users::change_password(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(ChangePasswordResponse {}))
    }

    async fn delete_me(
        &self,
        request: Request<DeleteMeRequest>,
    ) -> Result<Response<DeleteMeResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(users::delete_me(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(DeleteMeResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let (_, caller, r) =
            context::start_scoped(&self.app, request, Some(Scope::UsersRead)).await?;
        let now = self.app.clock.now_ms();
        let page = users::list(&self.app, &caller, r, now).await?;
        Ok(Response::new(ListUsersResponse {
            users: page.items.iter().map(|u| convert::user(u, now)).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let (_, caller, r) =
            context::start_scoped(&self.app, request, Some(Scope::UsersRead)).await?;
        let user = users::get_user(&self.app, &caller, &r.user_id).await?;
        Ok(Response::new(GetUserResponse {
            user: self.user(&user),
        }))
    }

    async fn deactivate_user(
        &self,
        request: Request<DeactivateUserRequest>,
    ) -> Result<Response<DeactivateUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user =
            to_completion(users::deactivate(self.app.clone(), meta, caller, r.user_id)).await?;
        Ok(Response::new(DeactivateUserResponse {
            user: self.user(&user),
        }))
    }

    async fn reactivate_user(
        &self,
        request: Request<ReactivateUserRequest>,
    ) -> Result<Response<ReactivateUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user =
            to_completion(users::reactivate(self.app.clone(), meta, caller, r.user_id)).await?;
        Ok(Response::new(ReactivateUserResponse {
            user: self.user(&user),
        }))
    }

    async fn unlock_user(
        &self,
        request: Request<UnlockUserRequest>,
    ) -> Result<Response<UnlockUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = to_completion(users::unlock(self.app.clone(), meta, caller, r.user_id)).await?;
        Ok(Response::new(UnlockUserResponse {
            user: self.user(&user),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(users::delete_user(
            self.app.clone(),
            meta,
            caller,
            r.user_id,
        ))
        .await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn set_platform_admin(
        &self,
        request: Request<SetPlatformAdminRequest>,
    ) -> Result<Response<SetPlatformAdminResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user =
            to_completion(users::set_platform_admin(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(SetPlatformAdminResponse {
            user: self.user(&user),
        }))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let user = to_completion(users::create(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(CreateUserResponse {
            user: self.user(&user),
        }))
    }

    async fn list_my_sessions(
        &self,
        request: Request<ListMySessionsRequest>,
    ) -> Result<Response<ListMySessionsResponse>, Status> {
        let (_, caller, _) = context::start(&self.app, request).await?;
        let list = sessions::list_mine(&self.app, &caller).await?;
        Ok(Response::new(ListMySessionsResponse {
            sessions: convert::sessions(list, caller.session_id.as_deref()),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(sessions::revoke(
            self.app.clone(),
            meta,
            caller,
            r.session_id,
        ))
        .await?;
        Ok(Response::new(RevokeSessionResponse {}))
    }

    async fn revoke_other_sessions(
        &self,
        request: Request<RevokeOtherSessionsRequest>,
    ) -> Result<Response<RevokeOtherSessionsResponse>, Status> {
        let (meta, caller, _) = context::start(&self.app, request).await?;
        let n = to_completion(sessions::revoke_others(self.app.clone(), meta, caller)).await?;
        Ok(Response::new(RevokeOtherSessionsResponse {
            revoked_count: n as i32,
        }))
    }

    async fn list_user_sessions(
        &self,
        request: Request<ListUserSessionsRequest>,
    ) -> Result<Response<ListUserSessionsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let list = sessions::list_for_user(&self.app, &caller, &r.user_id).await?;
        Ok(Response::new(ListUserSessionsResponse {
            sessions: convert::sessions(list, caller.session_id.as_deref()),
        }))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let n = to_completion(sessions::revoke_for_user(
            self.app.clone(),
            meta,
            caller,
            r.user_id,
        ))
        .await?;
        Ok(Response::new(RevokeUserSessionsResponse {
            revoked_count: n as i32,
        }))
    }

    // --- TOTP second factor (R30) ---

    async fn start_totp_enrollment(
        &self,
        request: Request<StartTotpEnrollmentRequest>,
    ) -> Result<Response<StartTotpEnrollmentResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let e = to_completion(totp::start_enrollment(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(StartTotpEnrollmentResponse {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
        }))
    }

    async fn confirm_totp_enrollment(
        &self,
        request: Request<ConfirmTotpEnrollmentRequest>,
    ) -> Result<Response<ConfirmTotpEnrollmentResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let codes = to_completion(totp::confirm_enrollment(
            self.app.clone(),
            meta,
            caller,
            r.code,
        ))
        .await?;
        Ok(Response::new(ConfirmTotpEnrollmentResponse {
            recovery_codes: codes,
        }))
    }

    async fn disable_totp(
        &self,
        request: Request<DisableTotpRequest>,
    ) -> Result<Response<DisableTotpResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(totp::disable(
            self.app.clone(),
            meta,
            caller,
            r.code,
            r.recovery_code,
        ))
        .await?;
        Ok(Response::new(DisableTotpResponse {}))
    }

    async fn regenerate_recovery_codes(
        &self,
        request: Request<RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<RegenerateRecoveryCodesResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let codes = to_completion(totp::regenerate_recovery_codes(
            self.app.clone(),
            meta,
            caller,
            r.code,
        ))
        .await?;
        Ok(Response::new(RegenerateRecoveryCodesResponse {
            recovery_codes: codes,
        }))
    }

    async fn reset_user_second_factor(
        &self,
        request: Request<ResetUserSecondFactorRequest>,
    ) -> Result<Response<ResetUserSecondFactorResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let n = to_completion(totp::reset_for_user(
            self.app.clone(),
            meta,
            caller,
            r.user_id,
        ))
        .await?;
        Ok(Response::new(ResetUserSecondFactorResponse {
            revoked_count: n as i32,
        }))
    }
}
