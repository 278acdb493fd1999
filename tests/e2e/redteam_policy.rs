//! Red team on R31 (a required second factor) and
//! PlatformService.SendTestEmail: every attack here tried to use an
//! organization or the PlatformAdmin flag from a session without the second
//! factor a policy requires.

use crate::support::*;
use kiops_proto::v1::*;
use tonic::Code;

crate::both_backends!(
    a_gated_manager_reads_no_audit_events_of_the_org,
    a_gated_manager_lists_no_service_accounts_of_the_org,
    a_gated_manager_lists_no_join_requests_of_the_org,
);

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

/// ListServiceAccounts without `organization_id` listed the accounts of every
/// organization the caller manages by the raw membership: a gated Manager
/// saw those of the organization that refuses them.
async fn a_gated_manager_lists_no_service_accounts_of_the_org(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let strict = s.create_org(&admin, "Strict", "strict").await;
    let relaxed = s.create_org(&admin, "Relaxed", "relaxed").await;
    let (mgr, mgr_token) = s.user("mgr@strict.test").await;
    s.add_member(&admin, &strict, &mgr, Role::Manager).await;
    s.add_member(&admin, &relaxed, &mgr, Role::Manager).await;
    for (org, name) in [(&strict, "strict-bot"), (&relaxed, "relaxed-bot")] {
        s.service_accounts()
            .await
            .create_service_account(authed(
                CreateServiceAccountRequest {
                    organization_id: org.to_string(),
                    name: name.into(),
                    description: String::new(),
                    scopes: vec![],
                    certificate_identity: String::new(),
                },
                &admin,
            ))
            .await
            .expect("create service account");
    }
    let names = |token: String| {
        let s = &s;
        async move {
            let r = s
                .service_accounts()
                .await
                .list_service_accounts(authed(ListServiceAccountsRequest::default(), &token))
                .await
                .expect("list")
                .into_inner();
            let mut n: Vec<String> = r.service_accounts.into_iter().map(|a| a.name).collect();
            n.sort();
            (n, r.total_size)
        }
    };
    assert_eq!(
        names(mgr_token.clone()).await,
        (vec!["relaxed-bot".to_string(), "strict-bot".to_string()], 2)
    );
    set_org_policy(&s, &admin, &strict, true).await;
    assert_eq!(
        names(mgr_token.clone()).await,
        (vec!["relaxed-bot".to_string()], 1),
        "the gated organization's accounts are not listed"
    );
    assert_status(
        s.service_accounts()
            .await
            .list_service_accounts(authed(
                ListServiceAccountsRequest {
                    organization_id: strict.clone(),
                    ..Default::default()
                },
                &mgr_token,
            ))
            .await,
        Code::PermissionDenied,
        SECOND_FACTOR_REQUIRED,
    );
}

/// ListJoinRequests without `organization_id` covered every organization
/// the caller manages by the raw membership: a gated Manager read the
/// requests (names, emails) of the organization that refuses them.
async fn a_gated_manager_lists_no_join_requests_of_the_org(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let strict = s.create_org(&admin, "Strict", "strict").await;
    let relaxed = s.create_org(&admin, "Relaxed", "relaxed").await;
    let (mgr, mgr_token) = s.user("mgr@strict.test").await;
    s.add_member(&admin, &strict, &mgr, Role::Manager).await;
    s.add_member(&admin, &relaxed, &mgr, Role::Manager).await;
    let (_, joiner) = s.user("joiner@example.test").await;
    for org in [&strict, &relaxed] {
        s.approvals()
            .await
            .request_to_join(authed(
                RequestToJoinRequest {
                    organization_id: org.to_string(),
                },
                &joiner,
            ))
            .await
            .expect("request to join");
    }
    let orgs = |token: String| {
        let s = &s;
        async move {
            let r = s
                .approvals()
                .await
                .list_join_requests(authed(ListJoinRequestsRequest::default(), &token))
                .await
                .expect("list")
                .into_inner();
            let mut o: Vec<String> = r
                .join_requests
                .into_iter()
                .map(|j| j.organization_id)
                .collect();
            o.sort();
            (o, r.total_size)
        }
    };
    let mut both = vec![strict.clone(), relaxed.clone()];
    both.sort();
    assert_eq!(orgs(mgr_token.clone()).await, (both, 2));
    set_org_policy(&s, &admin, &strict, true).await;
    assert_eq!(
        orgs(mgr_token.clone()).await,
        (vec![relaxed.clone()], 1),
        "the gated organization's requests are not listed"
    );
}
