//! Tenant isolation: a Manager of organization A can neither read nor change
//! anything of organization B through any OrganizationService or
//! MembershipService RPC, and B is unchanged afterwards.

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::*;
use tonic::Code;

both_backends!(manager_of_a_cannot_touch_b);

async fn manager_of_a_cannot_touch_b(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let a = s.create_org(&admin, "Alpha", "alpha").await;
    let b = s.create_org(&admin, "Beta", "beta").await;
    let (a_mgr_id, _) = s.user("mgr@alpha.io").await;
    let (b_mgr_id, _) = s.user("mgr@beta.io").await;
    let (b_mem_id, _) = s.user("mem@beta.io").await;
    s.add_member(&admin, &a, &a_mgr_id, Role::Manager).await;
    // Applying a template to oneself is refused before any lookup
    // (SELF_PERMISSION_CHANGE): the cross-organization probe targets a Member.
    let (a_mem_id, _) = s.user("mem@alpha.io").await;
    s.add_member(&admin, &a, &a_mem_id, Role::Member).await;
    s.add_member(&admin, &b, &b_mgr_id, Role::Manager).await;
    s.add_member(&admin, &b, &b_mem_id, Role::Member).await;
    let mut m = s.members().await;
    let mut o = s.orgs().await;
    let tpl = m
        .create_permission_template(authed(
            CreatePermissionTemplateRequest {
                organization_id: b.clone(),
                name: "ops".into(),
                permissions: vec![1],
            },
            &admin,
        ))
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template")
        .template_id;
    let snapshot =
        |m: &mut kiops_proto::v1::membership_service_client::MembershipServiceClient<_>| {
            let req = authed(
                ListMembersRequest {
                    organization_id: b.clone(),
                    ..Default::default()
                },
                &admin,
            );
            let mut m = m.clone();
            async move {
                format!(
                    "{:?}",
                    m.list_members(req)
                        .await
                        .expect("list")
                        .into_inner()
                        .members
                )
            }
        };
    let before = snapshot(&mut m).await;

    let t = s
        .login("mgr@alpha.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let calls = calls_on_b(&a, &b, &a_mgr_id, &a_mem_id, &b_mgr_id, &b_mem_id, &tpl);
    let clients = s.clients().await;
    let mut outcomes = vec![];
    for (rpc, call) in calls {
        outcomes.push((rpc, call.send(&clients, Some(&t), None).await));
    }

    for (rpc, outcome) in outcomes {
        let status = outcome.expect_err(rpc);
        let platform_admin_only = matches!(rpc, "DeleteOrganization" | "AddMember");
        if platform_admin_only {
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
            assert_eq!(reason(&status), "PLATFORM_ADMIN_REQUIRED", "{rpc}");
        } else {
            // R4: B does not exist for A's Manager; never a hint it does.
            assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
        }
    }
    assert_eq!(before, snapshot(&mut m).await, "B is unchanged");
    let name = o
        .get_organization(authed(
            GetOrganizationRequest {
                organization_id: b.clone(),
            },
            &admin,
        ))
        .await
        .expect("get")
        .into_inner()
        .organization
        .expect("org")
        .name;
    assert_eq!(name, "Beta");
    let templates = m
        .list_permission_templates(authed(
            ListPermissionTemplatesRequest {
                organization_id: b.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("templates")
        .into_inner();
    assert_eq!(templates.templates[0].name, "ops");
}

/// What A's Manager tries on B: every OrganizationService and
/// MembershipService RPC that names B, one of its members or its template.
fn calls_on_b(
    a: &str,
    b: &str,
    a_mgr_id: &str,
    a_mem_id: &str,
    b_mgr_id: &str,
    b_mem_id: &str,
    tpl: &str,
) -> Vec<(&'static str, Rpc)> {
    let (a, b, a_mgr_id, a_mem_id, b_mgr_id, b_mem_id, tpl) = (
        a.to_string(),
        b.to_string(),
        a_mgr_id.to_string(),
        a_mem_id.to_string(),
        b_mgr_id.to_string(),
        b_mem_id.to_string(),
        tpl.to_string(),
    );
    let bm = |u: &str| (b.clone(), u.to_string());
    let (org, mem) = bm(&b_mem_id);
    vec![
        (
            "GetOrganization",
            Rpc::GetOrganization(GetOrganizationRequest {
                organization_id: org.clone(),
            }),
        ),
        (
            "UpdateOrganization",
            Rpc::UpdateOrganization(UpdateOrganizationRequest {
                organization: Some(Organization {
                    organization_id: org.clone(),
                    name: "pwned".into(),
                    ..Default::default()
                }),
                update_mask: None,
            }),
        ),
        (
            "DeleteOrganization",
            Rpc::DeleteOrganization(DeleteOrganizationRequest {
                organization_id: org.clone(),
            }),
        ),
        (
            "ListMembers",
            Rpc::ListMembers(ListMembersRequest {
                organization_id: org.clone(),
                ..Default::default()
            }),
        ),
        (
            "GetMember",
            Rpc::GetMember(GetMemberRequest {
                organization_id: org.clone(),
                user_id: mem.clone(),
            }),
        ),
        (
            "AddMember",
            Rpc::AddMember(AddMemberRequest {
                organization_id: org.clone(),
                user_id: a_mgr_id.clone(),
                role: 2,
            }),
        ),
        (
            "ChangeRole",
            Rpc::ChangeRole(ChangeRoleRequest {
                organization_id: org.clone(),
                user_id: b_mgr_id.clone(),
                role: 1,
            }),
        ),
        (
            "SetPermissions",
            Rpc::SetPermissions(SetPermissionsRequest {
                organization_id: org.clone(),
                user_id: mem.clone(),
                permissions: vec![1, 2, 3],
            }),
        ),
        (
            "RemoveMember",
            Rpc::RemoveMember(RemoveMemberRequest {
                organization_id: org.clone(),
                user_id: mem.clone(),
            }),
        ),
        (
            "LeaveOrganization",
            Rpc::LeaveOrganization(LeaveOrganizationRequest {
                organization_id: org.clone(),
            }),
        ),
        (
            "CheckPermission",
            Rpc::CheckPermission(CheckPermissionRequest {
                organization_id: org.clone(),
                user_id: mem.clone(),
                permission: 4,
            }),
        ),
        (
            "CreatePermissionTemplate",
            Rpc::CreatePermissionTemplate(CreatePermissionTemplateRequest {
                organization_id: org.clone(),
                name: "x".into(),
                permissions: vec![],
            }),
        ),
        (
            "ListPermissionTemplates",
            Rpc::ListPermissionTemplates(ListPermissionTemplatesRequest {
                organization_id: org.clone(),
                ..Default::default()
            }),
        ),
        (
            "UpdatePermissionTemplate",
            Rpc::UpdatePermissionTemplate(UpdatePermissionTemplateRequest {
                template: Some(PermissionTemplate {
                    template_id: tpl.clone(),
                    organization_id: org.clone(),
                    name: "x".into(),
                    ..Default::default()
                }),
                update_mask: None,
            }),
        ),
        (
            "DeletePermissionTemplate",
            Rpc::DeletePermissionTemplate(DeletePermissionTemplateRequest {
                organization_id: org.clone(),
                template_id: tpl.clone(),
            }),
        ),
        (
            "ApplyPermissionTemplate",
            Rpc::ApplyPermissionTemplate(ApplyPermissionTemplateRequest {
                organization_id: org.clone(),
                user_id: mem.clone(),
                template_id: tpl.clone(),
            }),
        ),
        // The template id of B used through A's organization is not found either.
        (
            "ApplyPermissionTemplate via A",
            Rpc::ApplyPermissionTemplate(ApplyPermissionTemplateRequest {
                organization_id: a.clone(),
                user_id: a_mem_id.clone(),
                template_id: tpl.clone(),
            }),
        ),
    ]
}
