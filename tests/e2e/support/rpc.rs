//! One table of every RPC of the eight services: its name and how to call
//! it. The isolation matrix, the tenant-isolation test and the hostile-input
//! test build an [`Rpc`] (which RPC, with which request) and send it here;
//! what they send differs, how it is sent does not.

use super::{authed, Clients};
use kiops_proto::v1::*;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

macro_rules! rpcs {
    (@finish $resp:ident) => {{
        drop($resp);
        Ok(())
    }};
    // A server stream whose first message is part of the answer.
    (@finish $resp:ident first_message) => {
        $resp.into_inner().message().await.map(drop)
    };
    ($($name:literal => $variant:ident($req:ty): $client:ident.$method:ident $($first:ident)?;)*) => {
        /// A request to one RPC.
        #[derive(Debug, Clone)]
        pub enum Rpc {
            $($variant($req),)*
        }

        impl Rpc {
            /// Every RPC, as `Service/Method`.
            pub const ALL: &'static [&'static str] = &[$($name,)*];

            /// `Service/Method`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Rpc::$variant(_) => $name,)*
                }
            }

            /// Calls the RPC with `metadata` on the request. Ok when the
            /// call (and, for an export, its first message) succeeded.
            pub async fn send_with(self, c: &Clients, metadata: MetadataMap) -> Result<(), Status> {
                match self {
                    $(Rpc::$variant(msg) => {
                        let mut r = Request::new(msg);
                        *r.metadata_mut() = metadata;
                        let resp = c.$client.clone().$method(r).await?;
                        rpcs!(@finish resp $($first)?)
                    })*
                }
            }
        }
    };
}

rpcs! {
    "ApprovalService/RequestToJoin" => RequestToJoin(RequestToJoinRequest): approvals.request_to_join;
    "ApprovalService/ListJoinRequests" => ListJoinRequests(ListJoinRequestsRequest): approvals.list_join_requests;
    "ApprovalService/ApproveJoinRequest" => ApproveJoinRequest(ApproveJoinRequestRequest): approvals.approve_join_request;
    "ApprovalService/RejectJoinRequest" => RejectJoinRequest(RejectJoinRequestRequest): approvals.reject_join_request;
    "AuditService/ListAuditEvents" => ListAuditEvents(ListAuditEventsRequest): audit.list_audit_events;
    "AuditService/ExportAuditEvents" => ExportAuditEvents(ExportAuditEventsRequest): audit.export_audit_events first_message;
    "AuthService/Login" => Login(LoginRequest): auth.login;
    "AuthService/Refresh" => Refresh(RefreshRequest): auth.refresh;
    "AuthService/Logout" => Logout(LogoutRequest): auth.logout;
    "AuthService/SignUp" => SignUp(SignUpRequest): auth.sign_up;
    "AuthService/VerifyEmail" => VerifyEmail(VerifyEmailRequest): auth.verify_email;
    "AuthService/ResendVerificationEmail" => ResendVerificationEmail(ResendVerificationEmailRequest): auth.resend_verification_email;
    "AuthService/RequestPasswordReset" => RequestPasswordReset(RequestPasswordResetRequest): auth.request_password_reset;
    "AuthService/ResetPassword" => ResetPassword(ResetPasswordRequest): auth.reset_password;
    "AuthService/GetJwks" => GetJwks(GetJwksRequest): auth.get_jwks;
    "AuthService/WatchRevocations" => WatchRevocations(WatchRevocationsRequest): auth.watch_revocations;
    "AuthService/IssueServiceAccountToken" => IssueServiceAccountToken(IssueServiceAccountTokenRequest): auth.issue_service_account_token;
    "InvitationService/CreateInvitation" => CreateInvitation(CreateInvitationRequest): invitations.create_invitation;
    "InvitationService/ListInvitations" => ListInvitations(ListInvitationsRequest): invitations.list_invitations;
    "InvitationService/ResendInvitation" => ResendInvitation(ResendInvitationRequest): invitations.resend_invitation;
    "InvitationService/RevokeInvitation" => RevokeInvitation(RevokeInvitationRequest): invitations.revoke_invitation;
    "InvitationService/AcceptInvitation" => AcceptInvitation(AcceptInvitationRequest): invitations.accept_invitation;
    "InvitationService/DeclineInvitation" => DeclineInvitation(DeclineInvitationRequest): invitations.decline_invitation;
    "MembershipService/AddMember" => AddMember(AddMemberRequest): members.add_member;
    "MembershipService/ListMembers" => ListMembers(ListMembersRequest): members.list_members;
    "MembershipService/GetMember" => GetMember(GetMemberRequest): members.get_member;
    "MembershipService/ChangeRole" => ChangeRole(ChangeRoleRequest): members.change_role;
    "MembershipService/SetPermissions" => SetPermissions(SetPermissionsRequest): members.set_permissions;
    "MembershipService/RemoveMember" => RemoveMember(RemoveMemberRequest): members.remove_member;
    "MembershipService/LeaveOrganization" => LeaveOrganization(LeaveOrganizationRequest): members.leave_organization;
    "MembershipService/ListMyMemberships" => ListMyMemberships(ListMyMembershipsRequest): members.list_my_memberships;
    "MembershipService/CheckPermission" => CheckPermission(CheckPermissionRequest): members.check_permission;
    "MembershipService/CheckPermissions" => CheckPermissions(CheckPermissionsRequest): members.check_permissions;
    "MembershipService/CreatePermissionTemplate" => CreatePermissionTemplate(CreatePermissionTemplateRequest): members.create_permission_template;
    "MembershipService/ListPermissionTemplates" => ListPermissionTemplates(ListPermissionTemplatesRequest): members.list_permission_templates;
    "MembershipService/UpdatePermissionTemplate" => UpdatePermissionTemplate(UpdatePermissionTemplateRequest): members.update_permission_template;
    "MembershipService/DeletePermissionTemplate" => DeletePermissionTemplate(DeletePermissionTemplateRequest): members.delete_permission_template;
    "MembershipService/ApplyPermissionTemplate" => ApplyPermissionTemplate(ApplyPermissionTemplateRequest): members.apply_permission_template;
    "MembershipService/SendPasswordReset" => SendPasswordReset(SendPasswordResetRequest): members.send_password_reset;
    "OrganizationService/CreateOrganization" => CreateOrganization(CreateOrganizationRequest): orgs.create_organization;
    "OrganizationService/GetOrganization" => GetOrganization(GetOrganizationRequest): orgs.get_organization;
    "OrganizationService/ListOrganizations" => ListOrganizations(ListOrganizationsRequest): orgs.list_organizations;
    "OrganizationService/UpdateOrganization" => UpdateOrganization(UpdateOrganizationRequest): orgs.update_organization;
    "OrganizationService/DeleteOrganization" => DeleteOrganization(DeleteOrganizationRequest): orgs.delete_organization;
    "ServiceAccountService/CreateServiceAccount" => CreateServiceAccount(CreateServiceAccountRequest): service_accounts.create_service_account;
    "ServiceAccountService/GetServiceAccount" => GetServiceAccount(GetServiceAccountRequest): service_accounts.get_service_account;
    "ServiceAccountService/ListServiceAccounts" => ListServiceAccounts(ListServiceAccountsRequest): service_accounts.list_service_accounts;
    "ServiceAccountService/UpdateServiceAccount" => UpdateServiceAccount(UpdateServiceAccountRequest): service_accounts.update_service_account;
    "ServiceAccountService/DisableServiceAccount" => DisableServiceAccount(DisableServiceAccountRequest): service_accounts.disable_service_account;
    "ServiceAccountService/EnableServiceAccount" => EnableServiceAccount(EnableServiceAccountRequest): service_accounts.enable_service_account;
    "ServiceAccountService/DeleteServiceAccount" => DeleteServiceAccount(DeleteServiceAccountRequest): service_accounts.delete_service_account;
    "ServiceAccountService/AddServiceAccountKey" => AddServiceAccountKey(AddServiceAccountKeyRequest): service_accounts.add_service_account_key;
    "ServiceAccountService/AddServiceAccountSecret" => AddServiceAccountSecret(AddServiceAccountSecretRequest): service_accounts.add_service_account_secret;
    "ServiceAccountService/ListServiceAccountCredentials" => ListServiceAccountCredentials(ListServiceAccountCredentialsRequest): service_accounts.list_service_account_credentials;
    "ServiceAccountService/RemoveServiceAccountCredential" => RemoveServiceAccountCredential(RemoveServiceAccountCredentialRequest): service_accounts.remove_service_account_credential;
    "UserService/GetMe" => GetMe(GetMeRequest): users.get_me;
    "UserService/UpdateMe" => UpdateMe(UpdateMeRequest): users.update_me;
    "UserService/ChangePassword" => ChangePassword(ChangePasswordRequest): users.change_password;
    "UserService/DeleteMe" => DeleteMe(DeleteMeRequest): users.delete_me;
    "UserService/ListUsers" => ListUsers(ListUsersRequest): users.list_users;
    "UserService/GetUser" => GetUser(GetUserRequest): users.get_user;
    "UserService/CreateUser" => CreateUser(CreateUserRequest): users.create_user;
    "UserService/DeactivateUser" => DeactivateUser(DeactivateUserRequest): users.deactivate_user;
    "UserService/ReactivateUser" => ReactivateUser(ReactivateUserRequest): users.reactivate_user;
    "UserService/UnlockUser" => UnlockUser(UnlockUserRequest): users.unlock_user;
    "UserService/DeleteUser" => DeleteUser(DeleteUserRequest): users.delete_user;
    "UserService/SetPlatformAdmin" => SetPlatformAdmin(SetPlatformAdminRequest): users.set_platform_admin;
    "UserService/ListMySessions" => ListMySessions(ListMySessionsRequest): users.list_my_sessions;
    "UserService/RevokeSession" => RevokeSession(RevokeSessionRequest): users.revoke_session;
    "UserService/RevokeOtherSessions" => RevokeOtherSessions(RevokeOtherSessionsRequest): users.revoke_other_sessions;
    "UserService/ListUserSessions" => ListUserSessions(ListUserSessionsRequest): users.list_user_sessions;
    "UserService/RevokeUserSessions" => RevokeUserSessions(RevokeUserSessionsRequest): users.revoke_user_sessions;
    // TOTP second factor (R30)
    "AuthService/VerifySecondFactor" => VerifySecondFactor(VerifySecondFactorRequest): auth.verify_second_factor;
    "UserService/StartTotpEnrollment" => StartTotpEnrollment(StartTotpEnrollmentRequest): users.start_totp_enrollment;
    "UserService/ConfirmTotpEnrollment" => ConfirmTotpEnrollment(ConfirmTotpEnrollmentRequest): users.confirm_totp_enrollment;
    "UserService/DisableTotp" => DisableTotp(DisableTotpRequest): users.disable_totp;
    "UserService/RegenerateRecoveryCodes" => RegenerateRecoveryCodes(RegenerateRecoveryCodesRequest): users.regenerate_recovery_codes;
    "UserService/ResetUserSecondFactor" => ResetUserSecondFactor(ResetUserSecondFactorRequest): users.reset_user_second_factor;
    // R31 and the test email (issue 24).
    "PlatformService/GetPlatformPolicy" => GetPlatformPolicy(GetPlatformPolicyRequest): platform.get_platform_policy;
    "PlatformService/UpdatePlatformPolicy" => UpdatePlatformPolicy(UpdatePlatformPolicyRequest): platform.update_platform_policy;
    "PlatformService/SendTestEmail" => SendTestEmail(SendTestEmailRequest): platform.send_test_email;
}

impl Rpc {
    /// Calls the RPC with `authorization: Bearer <token>` when a token is
    /// given, and `x-request-id` when a request id is.
    pub async fn send(
        self,
        c: &Clients,
        token: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<(), Status> {
        self.send_with(c, metadata(token, request_id)).await
    }
}

/// Request metadata: the bearer token and request id, each when given.
pub fn metadata(token: Option<&str>, request_id: Option<&str>) -> MetadataMap {
    let mut md = match token {
        Some(t) => authed((), t).into_parts().0,
        None => MetadataMap::new(),
    };
    if let Some(rid) = request_id {
        md.insert("x-request-id", rid.parse().expect("request id"));
    }
    md
}
