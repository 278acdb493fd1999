//! MembershipService: R1–R6, R10, CheckPermission, R17 listing, templates.

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::*;
use std::collections::HashSet;
use tonic::Code;

both_backends!(
    r1_r2_r3_role_rules,
    r5_last_manager_is_kept,
    r6_permissions_apply_at_once_and_r10_removal,
    check_permission_rules,
    concurrent_checks_each_get_their_own_answer,
    list_members_search_and_sort,
    list_members_pages_every_member_once,
    list_members_page_tokens_and_filters,
    permission_template_creation_rules,
    permission_templates_apply_update_list_delete,
    add_member_rules,
);

/// An organization with a Manager and a Member.
struct Org {
    admin: String,
    id: String,
    mgr_id: String,
    mgr: String,
    mem_id: String,
    mem: String,
}

async fn setup(s: &TestServer, code: &str) -> Org {
    let admin = s.admin_token().await;
    let id = s.create_org(&admin, code, code).await;
    let (mgr_id, _) = s.user(&format!("mgr@{code}.io")).await;
    let (mem_id, mem) = s.user(&format!("mem@{code}.io")).await;
    s.add_member(&admin, &id, &mgr_id, Role::Manager).await;
    s.add_member(&admin, &id, &mem_id, Role::Member).await;
    let mgr = s
        .login(&format!("mgr@{code}.io"), PASSWORD)
        .await
        .expect("login")
        .access_token;
    Org {
        admin,
        id,
        mgr_id,
        mgr,
        mem_id,
        mem,
    }
}

fn change_role(org: &str, user: &str, role: Role, t: &str) -> tonic::Request<ChangeRoleRequest> {
    authed(
        ChangeRoleRequest {
            organization_id: org.into(),
            user_id: user.into(),
            role: role as i32,
        },
        t,
    )
}

async fn r1_r2_r3_role_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let mut m = s.members().await;

    // R1: a Member has no user management.
    assert_status(
        m.list_members(authed(
            ListMembersRequest {
                organization_id: o.id.clone(),
                ..Default::default()
            },
            &o.mem,
        ))
        .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.change_role(change_role(&o.id, &o.mgr_id, Role::Member, &o.mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.set_permissions(authed(
            SetPermissionsRequest {
                organization_id: o.id.clone(),
                user_id: o.mem_id.clone(),
                permissions: vec![Permission::Device as i32],
            },
            &o.mem,
        ))
        .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.remove_member(authed(
            RemoveMemberRequest {
                organization_id: o.id.clone(),
                user_id: o.mgr_id.clone(),
            },
            &o.mem,
        ))
        .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );

    // R2: nobody changes their own role, not even a PlatformAdmin.
    assert_status(
        m.change_role(change_role(&o.id, &o.mgr_id, Role::Member, &o.mgr))
            .await,
        Code::PermissionDenied,
        "SELF_ROLE_CHANGE",
    );
    // R3: a Manager cannot promote; a PlatformAdmin can; a Manager can demote
    // another Manager of their organization.
    assert_status(
        m.change_role(change_role(&o.id, &o.mem_id, Role::Manager, &o.mgr))
            .await,
        Code::PermissionDenied,
        "PROMOTION_REQUIRES_PLATFORM_ADMIN",
    );
    let promoted = m
        .change_role(change_role(&o.id, &o.mem_id, Role::Manager, &o.admin))
        .await
        .expect("PlatformAdmin promotes")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(promoted.role, Role::Manager as i32);
    assert_eq!(
        promoted.permissions.len(),
        7,
        "Managers have every category"
    );
    let demoted = m
        .change_role(change_role(&o.id, &o.mem_id, Role::Member, &o.mgr))
        .await
        .expect("Manager demotes another Manager")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(demoted.role, Role::Member as i32);
    // Unknown target in the organization.
    let (stranger, _) = s.user("stranger@else.io").await;
    assert_status(
        m.change_role(change_role(&o.id, &stranger, Role::Member, &o.mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(
        m.change_role(change_role(&o.id, &o.mem_id, Role::Unspecified, &o.mgr))
            .await,
        "role",
    );
    let mut bad = change_role(&o.id, &o.mem_id, Role::Member, &o.mgr);
    bad.get_mut().role = 9;
    assert_invalid(m.change_role(bad).await, "role");
}

async fn r5_last_manager_is_kept(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let mut m = s.members().await;
    // The only Manager cannot be demoted, removed, or leave — by anyone.
    for t in [&o.admin] {
        assert_status(
            m.change_role(change_role(&o.id, &o.mgr_id, Role::Member, t))
                .await,
            Code::FailedPrecondition,
            "LAST_MANAGER",
        );
        assert_status(
            m.remove_member(authed(
                RemoveMemberRequest {
                    organization_id: o.id.clone(),
                    user_id: o.mgr_id.clone(),
                },
                t,
            ))
            .await,
            Code::FailedPrecondition,
            "LAST_MANAGER",
        );
    }
    assert_status(
        m.remove_member(authed(
            RemoveMemberRequest {
                organization_id: o.id.clone(),
                user_id: o.mgr_id.clone(),
            },
            &o.mgr,
        ))
        .await,
        Code::FailedPrecondition,
        "LAST_MANAGER",
    );
    assert_status(
        m.leave_organization(authed(
            LeaveOrganizationRequest {
                organization_id: o.id.clone(),
            },
            &o.mgr,
        ))
        .await,
        Code::FailedPrecondition,
        "LAST_MANAGER",
    );
    assert_eq!(s.manager_count(&o.admin, &o.id).await, 1);
    // With a second Manager, the first may leave.
    m.change_role(change_role(&o.id, &o.mem_id, Role::Manager, &o.admin))
        .await
        .expect("promote");
    m.leave_organization(authed(
        LeaveOrganizationRequest {
            organization_id: o.id.clone(),
        },
        &o.mgr,
    ))
    .await
    .expect("leave");
    assert_eq!(s.manager_count(&o.admin, &o.id).await, 1);
    // Leaving an organization one is not in: NOT_FOUND.
    assert_status(
        m.leave_organization(authed(
            LeaveOrganizationRequest {
                organization_id: o.id.clone(),
            },
            &o.mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn r6_permissions_apply_at_once_and_r10_removal(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let other = s.create_org(&o.admin, "Other", "other").await;
    s.add_member(&o.admin, &other, &o.mem_id, Role::Member)
        .await;
    let mut m = s.members().await;
    let set = |perms: Vec<Permission>, t: &str| {
        authed(
            SetPermissionsRequest {
                organization_id: o.id.clone(),
                user_id: o.mem_id.clone(),
                permissions: perms.into_iter().map(|p| p as i32).collect(),
            },
            t,
        )
    };
    let member = m
        .set_permissions(set(
            vec![Permission::Device, Permission::Vpn, Permission::Device],
            &o.mgr,
        ))
        .await
        .expect("grant")
        .into_inner()
        .member
        .expect("member");
    let want = vec![Permission::Device as i32, Permission::Vpn as i32];
    assert_eq!(member.permissions, want);
    assert_eq!(member.granted_permissions, want);
    // A token minted now carries it.
    let token = s
        .login("mem@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let orgs = token_orgs(&token);
    assert_eq!(orgs[&o.id]["role"], "member");
    assert_eq!(orgs[&o.id]["perms"], serde_json::json!(["device", "vpn"]));
    assert_eq!(orgs[&other]["perms"], serde_json::json!([]));
    // Scoped token: just that organization.
    let scoped = s
        .auth()
        .await
        .login(LoginRequest {
            email: "mem@acme.io".into(),
            password: PASSWORD.into(),
            organization_id: Some(o.id.clone()),
        })
        .await
        .expect("scoped login")
        .into_inner()
        .access_token;
    let scoped_orgs = token_orgs(&scoped);
    assert_eq!(scoped_orgs.as_object().expect("object").len(), 1);
    assert!(scoped_orgs.get(&o.id).is_some());
    // Revoke all.
    let member = m
        .set_permissions(set(vec![], &o.mgr))
        .await
        .expect("revoke")
        .into_inner()
        .member
        .expect("member");
    assert!(member.permissions.is_empty());
    assert_invalid(
        m.set_permissions(set(vec![Permission::Unspecified], &o.mgr))
            .await,
        "permissions",
    );
    let mut unknown = set(vec![], &o.mgr);
    unknown.get_mut().permissions = vec![42];
    assert_invalid(m.set_permissions(unknown).await, "permissions");

    // R10: removal takes away that organization only.
    m.set_permissions(set(vec![Permission::Backup], &o.mgr))
        .await
        .expect("grant");
    m.remove_member(authed(
        RemoveMemberRequest {
            organization_id: o.id.clone(),
            user_id: o.mem_id.clone(),
        },
        &o.mgr,
    ))
    .await
    .expect("remove");
    let token = s
        .login("mem@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let orgs = token_orgs(&token);
    assert!(orgs.get(&o.id).is_none());
    assert!(orgs.get(&other).is_some());
    assert_status(
        m.get_member(authed(
            GetMemberRequest {
                organization_id: o.id.clone(),
                user_id: o.mem_id.clone(),
            },
            &o.mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // Coming back needs a new membership, which starts with no grants.
    s.add_member(&o.admin, &o.id, &o.mem_id, Role::Member).await;
    let back = m
        .get_member(authed(
            GetMemberRequest {
                organization_id: o.id.clone(),
                user_id: o.mem_id.clone(),
            },
            &o.mgr,
        ))
        .await
        .expect("get")
        .into_inner()
        .member
        .expect("member");
    assert!(back.granted_permissions.is_empty());
}

async fn check_permission_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let b = setup(&s, "beta").await;
    let mut m = s.members().await;
    m.set_permissions(authed(
        SetPermissionsRequest {
            organization_id: o.id.clone(),
            user_id: o.mem_id.clone(),
            permissions: vec![Permission::Device as i32],
        },
        &o.mgr,
    ))
    .await
    .expect("grant");
    let check = |user: &str, org: &str, p: Permission, t: &str| {
        authed(
            CheckPermissionRequest {
                user_id: user.into(),
                organization_id: org.into(),
                permission: p as i32,
            },
            t,
        )
    };
    let allowed = |r: Result<tonic::Response<CheckPermissionResponse>, tonic::Status>| {
        r.expect("check").into_inner().allowed
    };
    assert!(allowed(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Device, &o.mem))
            .await
    ));
    assert!(!allowed(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Vpn, &o.mem))
            .await
    ));
    assert!(allowed(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Device, &o.mgr))
            .await
    ));
    assert!(allowed(
        m.check_permission(check(&o.mgr_id, &o.id, Permission::Audit, &o.admin))
            .await
    ));
    // Not a member there: false.
    assert!(!allowed(
        m.check_permission(check(&o.mem_id, &b.id, Permission::Device, &o.mem))
            .await
    ));
    // A Member asking about someone else: refused; a Manager of another
    // organization: NOT_FOUND (R4).
    assert_status(
        m.check_permission(check(&o.mgr_id, &o.id, Permission::Device, &o.mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Device, &b.mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Unspecified, &o.mem))
            .await,
        "permission",
    );
    assert_invalid(
        m.check_permission(check("bad", &o.id, Permission::Device, &o.mem))
            .await,
        "user_id",
    );
    // Changes take effect at once: revoke, and the very next check says no.
    m.set_permissions(authed(
        SetPermissionsRequest {
            organization_id: o.id.clone(),
            user_id: o.mem_id.clone(),
            permissions: vec![],
        },
        &o.mgr,
    ))
    .await
    .expect("revoke");
    assert!(!allowed(
        m.check_permission(check(&o.mem_id, &o.id, Permission::Device, &o.mem))
            .await
    ));
}

/// Many checks at once, with different callers, subjects and answers
/// (granted, not granted, not a member, no such user, refused): every call
/// gets its own answer. On PostgreSQL concurrent checks are read together in
/// one statement (`store::check_batch`), so this is also where a mix-up of
/// rows or errors between callers would show; the metrics prove batches of
/// more than one were formed.
async fn concurrent_checks_each_get_their_own_answer(backend: Backend) {
    const ALL: [Permission; 7] = [
        Permission::Infra,
        Permission::Service,
        Permission::Backup,
        Permission::Device,
        Permission::Database,
        Permission::Vpn,
        Permission::Audit,
    ];
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let mut m = s.members().await;
    // Member i is granted the categories whose bit is set in i.
    let mut granted: Vec<(String, HashSet<i32>)> = Vec::new();
    for i in 1..=12u32 {
        let (id, _) = s.user(&format!("p{i}@acme.io")).await;
        s.add_member(&o.admin, &o.id, &id, Role::Member).await;
        let perms: Vec<i32> = ALL
            .iter()
            .enumerate()
            .filter(|(bit, _)| i & (1 << bit) != 0)
            .map(|(_, p)| *p as i32)
            .collect();
        m.set_permissions(authed(
            SetPermissionsRequest {
                organization_id: o.id.clone(),
                user_id: id.clone(),
                permissions: perms.clone(),
            },
            &o.mgr,
        ))
        .await
        .expect("grant");
        granted.push((id, perms.into_iter().collect()));
    }
    let (outsider, _) = s.user("outsider@else.io").await;
    let nobody = "00000000-0000-4000-8000-000000000000".to_string();

    /// What a call must answer: allowed or not, or refused with a reason.
    #[derive(Debug, PartialEq)]
    enum Want {
        Allowed(bool),
        Refused(&'static str),
    }
    let mut calls: Vec<(String, String, Permission, Want)> = Vec::new();
    for p in ALL {
        for (id, perms) in &granted {
            let want = Want::Allowed(perms.contains(&(p as i32)));
            calls.push((o.admin.clone(), id.clone(), p, want));
            // A Member may not ask about someone else.
            calls.push((
                o.mem.clone(),
                id.clone(),
                p,
                Want::Refused("MANAGER_REQUIRED"),
            ));
        }
        calls.push((o.admin.clone(), outsider.clone(), p, Want::Allowed(false)));
        calls.push((o.admin.clone(), nobody.clone(), p, Want::Allowed(false)));
        calls.push((o.mem.clone(), o.mem_id.clone(), p, Want::Allowed(false)));
    }
    let channels = [s.channel().await, s.channel().await, s.channel().await];
    let mut running = tokio::task::JoinSet::new();
    for (n, (token, user, p, want)) in calls.into_iter().enumerate() {
        let mut client = MembershipServiceClient::new(channels[n % channels.len()].clone());
        let org = o.id.clone();
        running.spawn(async move {
            let got = match client
                .check_permission(authed(
                    CheckPermissionRequest {
                        user_id: user.clone(),
                        organization_id: org,
                        permission: p as i32,
                    },
                    &token,
                ))
                .await
            {
                Ok(r) => Want::Allowed(r.into_inner().allowed),
                Err(e) if e.code() == Code::PermissionDenied => {
                    if reason(&e) == "MANAGER_REQUIRED" {
                        Want::Refused("MANAGER_REQUIRED")
                    } else {
                        panic!("unexpected refusal {e:?}")
                    }
                }
                Err(e) => panic!("check of {user} {p:?} failed: {e:?}"),
            };
            assert_eq!(got, want, "check of {user} for {p:?}");
        });
    }
    let mut done = 0;
    while let Some(r) = running.join_next().await {
        r.expect("a check task failed");
        done += 1;
    }
    assert_eq!(done, 7 * (2 * 12 + 3));

    if backend == Backend::Postgres {
        let statements = s.metric("kiops_identity_check_permission_batch_statements_total");
        let reads = s.metric("kiops_identity_check_permission_batch_reads_total");
        // Every check above went through a batch; 189 calls at once made
        // at least one batch of more than one.
        assert!(reads >= 189.0, "reads {reads}");
        assert!(statements < reads, "statements {statements}, reads {reads}");
    }
}
/// Company with eleven members (one Manager, one address elsewhere):
/// (server, admin token, org, member ids in join order).
async fn company(backend: Backend) -> (TestServer, String, String, Vec<String>) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Company", "company").await;
    let emails = [
        "kim_lee@company.com",
        "kimxlee@company.com",
        "kim%park@company.com",
        "kimzpark@company.com",
        "ann@company.com",
        "bob@elsewhere.org",
        "carol@company.com",
        "dave@company.com",
        "erin@company.com",
        "frank@company.com",
        "grace@company.com",
    ];
    let mut ids = vec![];
    for (i, e) in emails.iter().enumerate() {
        let id = s.create_user(e, &format!("Person {i}"), PASSWORD).await;
        s.add_member(
            &admin,
            &org,
            &id,
            if i == 4 { Role::Manager } else { Role::Member },
        )
        .await;
        ids.push(id);
    }
    (s, admin, org, ids)
}

/// ListMembers of `org` as `admin`: (query, order, role, page size, token).
fn lister<'a>(
    org: &'a str,
    admin: &'a str,
) -> impl Fn(&str, &str, Role, i32, &str) -> tonic::Request<ListMembersRequest> + 'a {
    move |q, order, role, size, page| {
        authed(
            ListMembersRequest {
                organization_id: org.into(),
                query: q.into(),
                order_by: order.into(),
                role: role as i32,
                status: 0,
                page_size: size,
                page_token: page.into(),
            },
            admin,
        )
    }
}

fn emails_of(r: ListMembersResponse) -> Vec<String> {
    r.members.into_iter().map(|m| m.email).collect()
}

async fn list_members_search_and_sort(backend: Backend) {
    let (s, admin, org, _) = company(backend).await;
    let mut m = s.members().await;
    let list = lister(&org, &admin);
    // % and _ are literal characters, not wildcards.
    let r = m
        .list_members(list("kim_", "", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emails_of(r), vec!["kim_lee@company.com"]);
    let r = m
        .list_members(list("KIM%", "", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emails_of(r), vec!["kim%park@company.com"]);
    let r = m
        .list_members(list("kim", "", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.total_size, 4);
    let r = m
        .list_members(list("@company.com", "email desc", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.total_size, 10);
    let got = emails_of(r);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(got, sorted);
    // Name search is case-insensitive too.
    let r = m
        .list_members(list("PERSON 1", "", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.total_size, 2, "Person 1 and Person 10");
    // Role filter and sort.
    let r = m
        .list_members(list("", "", Role::Manager, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emails_of(r), vec!["ann@company.com"]);
    let r = m
        .list_members(list("", "role", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.members[0].role, Role::Manager as i32);
    let r = m
        .list_members(list("", "join_time desc", Role::Unspecified, 0, ""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.members[0].email, "grace@company.com");
}

async fn list_members_pages_every_member_once(backend: Backend) {
    let (s, admin, org, mut ids) = company(backend).await;
    let mut m = s.members().await;
    let list = lister(&org, &admin);
    // Pages of 3 by join time: every member exactly once, in order, even when
    // someone joins between pages.
    let mut seen = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = m
            .list_members(list("", "join_time", Role::Unspecified, 3, &token))
            .await
            .expect("page")
            .into_inner();
        assert!(r.members.len() <= 3);
        seen.extend(r.members.into_iter().map(|m| m.user_id));
        pages += 1;
        if pages == 2 {
            let late = s.create_user("late@company.com", "Late", PASSWORD).await;
            s.add_member(&admin, &org, &late, Role::Member).await;
            ids.push(late);
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, ids, "join order, no duplicates, none skipped");
}

async fn list_members_page_tokens_and_filters(backend: Backend) {
    let (s, admin, org, _) = company(backend).await;
    // A twelfth member, as in the paging test.
    let late = s.create_user("late@company.com", "Late", PASSWORD).await;
    s.add_member(&admin, &org, &late, Role::Member).await;
    let mut m = s.members().await;
    let list = lister(&org, &admin);
    // Tokens are bound to their query and cannot be edited.
    let first = m
        .list_members(list("", "email", Role::Unspecified, 2, ""))
        .await
        .expect("list")
        .into_inner();
    assert_invalid(
        m.list_members(list(
            "kim",
            "email",
            Role::Unspecified,
            2,
            &first.next_page_token,
        ))
        .await,
        "page_token",
    );
    let mut tampered = first.next_page_token.clone();
    tampered.insert(3, 'x');
    assert_invalid(
        m.list_members(list("", "email", Role::Unspecified, 2, &tampered))
            .await,
        "page_token",
    );
    assert_invalid(
        m.list_members(list("", "email", Role::Unspecified, 501, ""))
            .await,
        "page_size",
    );
    assert_invalid(
        m.list_members(list("", "name", Role::Unspecified, 0, ""))
            .await,
        "order_by",
    );
    let mut bad_status = list("", "", Role::Unspecified, 0, "");
    bad_status.get_mut().status = 9;
    assert_invalid(m.list_members(bad_status).await, "status");
    let mut active = list("", "", Role::Unspecified, 0, "");
    active.get_mut().status = UserStatus::Active as i32;
    assert_eq!(
        m.list_members(active)
            .await
            .expect("list")
            .into_inner()
            .total_size,
        12
    );
    let mut inactive = list("", "", Role::Unspecified, 0, "");
    inactive.get_mut().status = UserStatus::Inactive as i32;
    assert_eq!(
        m.list_members(inactive)
            .await
            .expect("list")
            .into_inner()
            .total_size,
        0
    );
    // Default page size is 50; a page of 500 is allowed.
    m.list_members(list("", "", Role::Unspecified, 500, ""))
        .await
        .expect("500 is fine");
}
fn create(
    org: &str,
    name: &str,
    perms: &[Permission],
    t: &str,
) -> tonic::Request<CreatePermissionTemplateRequest> {
    authed(
        CreatePermissionTemplateRequest {
            organization_id: org.into(),
            name: name.into(),
            permissions: perms.iter().map(|p| *p as i32).collect(),
        },
        t,
    )
}

async fn permission_template_creation_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let b = setup(&s, "beta").await;
    let mut m = s.members().await;
    let tpl = m
        .create_permission_template(create(
            &o.id,
            "operator",
            &[Permission::Infra, Permission::Backup, Permission::Database],
            &o.mgr,
        ))
        .await
        .expect("create")
        .into_inner()
        .template
        .expect("template");
    assert_eq!(tpl.permissions.len(), 3);
    assert_status(
        m.create_permission_template(create(&o.id, "operator", &[], &o.mgr))
            .await,
        Code::AlreadyExists,
        "ALREADY_EXISTS",
    );
    assert_status(
        m.create_permission_template(create(&o.id, "x", &[], &o.mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.create_permission_template(create(&o.id, "x", &[], &b.mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(
        m.create_permission_template(create(&o.id, "", &[], &o.mgr))
            .await,
        "name",
    );
}

async fn permission_templates_apply_update_list_delete(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let b = setup(&s, "beta").await;
    let mut m = s.members().await;
    // Acme's "operator" template.
    let tpl = m
        .create_permission_template(create(
            &o.id,
            "operator",
            &[Permission::Infra, Permission::Backup, Permission::Database],
            &o.mgr,
        ))
        .await
        .expect("create")
        .into_inner()
        .template
        .expect("template");

    let applied = m
        .apply_permission_template(authed(
            ApplyPermissionTemplateRequest {
                organization_id: o.id.clone(),
                user_id: o.mem_id.clone(),
                template_id: tpl.template_id.clone(),
            },
            &o.mgr,
        ))
        .await
        .expect("apply")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(
        applied.role,
        Role::Member as i32,
        "a template is not a role"
    );
    assert_eq!(
        applied.granted_permissions,
        vec![
            Permission::Infra as i32,
            Permission::Backup as i32,
            Permission::Database as i32
        ]
    );
    // A template of another organization cannot be used or seen.
    assert_status(
        m.apply_permission_template(authed(
            ApplyPermissionTemplateRequest {
                organization_id: b.id.clone(),
                user_id: b.mem_id.clone(),
                template_id: tpl.template_id.clone(),
            },
            &b.mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    let updated = m
        .update_permission_template(authed(
            UpdatePermissionTemplateRequest {
                template: Some(PermissionTemplate {
                    template_id: tpl.template_id.clone(),
                    organization_id: o.id.clone(),
                    permissions: vec![Permission::Vpn as i32],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["permissions".into()],
                }),
            },
            &o.mgr,
        ))
        .await
        .expect("update")
        .into_inner()
        .template
        .expect("template");
    assert_eq!(updated.name, "operator");
    assert_eq!(updated.permissions, vec![Permission::Vpn as i32]);
    let listed = m
        .list_permission_templates(authed(
            ListPermissionTemplatesRequest {
                organization_id: o.id.clone(),
                ..Default::default()
            },
            &o.mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total_size, 1);
    assert_status(
        m.list_permission_templates(authed(
            ListPermissionTemplatesRequest {
                organization_id: o.id.clone(),
                ..Default::default()
            },
            &b.mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    m.delete_permission_template(authed(
        DeletePermissionTemplateRequest {
            organization_id: o.id.clone(),
            template_id: tpl.template_id.clone(),
        },
        &o.mgr,
    ))
    .await
    .expect("delete");
    assert_status(
        m.delete_permission_template(authed(
            DeletePermissionTemplateRequest {
                organization_id: o.id.clone(),
                template_id: tpl.template_id.clone(),
            },
            &o.mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn add_member_rules(backend: Backend) {
    let s = TestServer::start(backend).await;
    let o = setup(&s, "acme").await;
    let (uid, _) = s.user("new@acme.io").await;
    let mut m = s.members().await;
    let add = |user: &str, role: Role, t: &str| {
        authed(
            AddMemberRequest {
                organization_id: o.id.clone(),
                user_id: user.into(),
                role: role as i32,
            },
            t,
        )
    };
    assert_status(
        m.add_member(add(&uid, Role::Member, &o.mgr)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    m.add_member(add(&uid, Role::Member, &o.admin))
        .await
        .expect("add");
    assert_status(
        m.add_member(add(&uid, Role::Member, &o.admin)).await,
        Code::AlreadyExists,
        "ALREADY_MEMBER",
    );
    let ghost = uuid::Uuid::now_v7().to_string();
    assert_status(
        m.add_member(add(&ghost, Role::Member, &o.admin)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let mine = m
        .list_my_memberships(authed(
            ListMyMembershipsRequest::default(),
            &s.login("new@acme.io", PASSWORD)
                .await
                .expect("login")
                .access_token,
        ))
        .await
        .expect("mine")
        .into_inner();
    assert_eq!(mine.total_size, 1);
    assert_eq!(
        mine.memberships[0]
            .organization
            .as_ref()
            .expect("org")
            .organization_id,
        o.id
    );
    let ids: HashSet<_> = [o.mgr_id.clone(), o.mem_id.clone()].into_iter().collect();
    assert_eq!(ids.len(), 2);
}
