//! Red team on R31 (a required second factor) and
//! PlatformService.SendTestEmail: every attack here tried to use an
//! organization or the PlatformAdmin flag from a session without the second
//! factor a policy requires.

use crate::support::*;
use kiops_proto::v1::*;
use tonic::Code;

crate::both_backends!(a_gated_manager_reads_no_audit_events_of_the_org,);

const SECOND_FACTOR_REQUIRED: &str = "SECOND_FACTOR_REQUIRED";

async fn set_org_policy(s: &TestServer, token: &str, org: &str, required: bool) {
    s.orgs()
        .await
        .update_organization(authed(
            UpdateOrganizationRequest {
                organization: Some(Organization {
                    organization_id: org.into(),
                    second_factor_required: required,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["second_factor_required".into()],
                }),
            },
            token,
        ))
        .await
        .expect("set policy");
}

/// ListAuditEvents and ExportAuditEvents authorised on the raw membership:
/// a Manager (who holds `audit`) read the trail of an organization that
/// requires a second factor from a password-only session.
async fn a_gated_manager_reads_no_audit_events_of_the_org(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Strict", "strict").await;
    let (mgr, mgr_token) = s.user("mgr@strict.test").await;
    s.add_member(&admin, &org, &mgr, Role::Manager).await;
    let list = |token: String, org: String| {
        let s = &s;
        async move {
            s.audit()
                .await
                .list_audit_events(authed(
                    ListAuditEventsRequest {
                        organization_id: Some(org),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
        }
    };
    list(mgr_token.clone(), org.clone())
        .await
        .expect("before the policy, the Manager reads it");
    set_org_policy(&s, &admin, &org, true).await;
    assert_status(
        list(mgr_token.clone(), org.clone()).await,
        Code::PermissionDenied,
        SECOND_FACTOR_REQUIRED,
    );
    let export = async {
        let mut stream = s
            .audit()
            .await
            .export_audit_events(authed(
                ExportAuditEventsRequest {
                    organization_id: Some(org.clone()),
                    format: ExportFormat::JsonLines as i32,
                    ..Default::default()
                },
                &mgr_token,
            ))
            .await?
            .into_inner();
        stream.message().await
    };
    assert_status(export.await, Code::PermissionDenied, SECOND_FACTOR_REQUIRED);
    // The platform flag is not an organization's to gate.
    list(admin.clone(), org.clone())
        .await
        .expect("PlatformAdmin");
}
