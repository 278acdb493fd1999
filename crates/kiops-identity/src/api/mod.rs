//! The gRPC layer: one module per service. Handlers decode the request, call
//! one use case of `service`, and encode the answer; errors go through
//! `status` only. `streams` keeps long-lived streams to their caller's right.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod context;
pub mod convert;
pub mod invitations;
pub mod memberships;
pub mod organizations;
pub mod platform;
pub mod service_accounts;
pub mod status;
pub mod streams;
pub mod users;

use crate::app::App;
use kiops_proto::v1::approval_service_server::ApprovalServiceServer;
use kiops_proto::v1::audit_service_server::AuditServiceServer;
use kiops_proto::v1::auth_service_server::AuthServiceServer;
use kiops_proto::v1::invitation_service_server::InvitationServiceServer;
use kiops_proto::v1::membership_service_server::MembershipServiceServer;
use kiops_proto::v1::organization_service_server::OrganizationServiceServer;
use kiops_proto::v1::platform_service_server::PlatformServiceServer;
use kiops_proto::v1::service_account_service_server::ServiceAccountServiceServer;
use kiops_proto::v1::user_service_server::UserServiceServer;

/// Largest request message accepted (bytes). Bigger ones are refused by tonic
/// with RESOURCE_EXHAUSTED before any handler runs.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The `kiops.identity.v1` services, ready to add to a tonic router.
pub struct Services {
    pub auth: AuthServiceServer<auth::AuthApi>,
    pub users: UserServiceServer<users::UserApi>,
    pub organizations: OrganizationServiceServer<organizations::OrganizationApi>,
    pub memberships: MembershipServiceServer<memberships::MembershipApi>,
    pub invitations: InvitationServiceServer<invitations::InvitationApi>,
    pub approvals: ApprovalServiceServer<approvals::ApprovalApi>,
    pub audit: AuditServiceServer<audit::AuditApi>,
    pub service_accounts: ServiceAccountServiceServer<service_accounts::ServiceAccountApi>,
    pub platform: PlatformServiceServer<platform::PlatformApi>,
}

impl Services {
    pub fn new(app: &App, max_request_bytes: usize) -> Self {
        Self {
            auth: AuthServiceServer::new(auth::AuthApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            users: UserServiceServer::new(users::UserApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            organizations: OrganizationServiceServer::new(organizations::OrganizationApi::new(
                app.clone(),
            ))
            .max_decoding_message_size(max_request_bytes),
            memberships: MembershipServiceServer::new(memberships::MembershipApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            invitations: InvitationServiceServer::new(invitations::InvitationApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            approvals: ApprovalServiceServer::new(approvals::ApprovalApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            audit: AuditServiceServer::new(audit::AuditApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
            service_accounts: ServiceAccountServiceServer::new(
                service_accounts::ServiceAccountApi::new(app.clone()),
            )
            .max_decoding_message_size(max_request_bytes),
            platform: PlatformServiceServer::new(platform::PlatformApi::new(app.clone()))
                .max_decoding_message_size(max_request_bytes),
        }
    }
}
