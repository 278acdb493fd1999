//! CheckPermissions: up to 100 checks in one call, each answered exactly as
//! CheckPermission answers it, in order, from one read; the whole call
//! refused with the first refusal (AIP-231), naming its item.

use crate::support::*;
use kiops_proto::v1::*;
use tonic::Code;

crate::both_backends!(
    bulk_answers_match_single_checks_in_order,
    item_count_is_one_to_a_hundred,
    a_bad_item_is_named_by_its_index,
    one_hidden_organization_refuses_the_whole_call,
    a_member_asks_about_itself_only,
    changes_and_logouts_apply_to_the_next_bulk_call,
    parallel_bulk_calls_agree_with_single_checks,
);

const ALL: [Permission; 7] = [
    Permission::Infra,
    Permission::Service,
    Permission::Backup,
    Permission::Device,
    Permission::Database,
    Permission::Vpn,
    Permission::Audit,
];

/// An organization with a Manager, a Member granted `device`, a Member with
/// nothing, a deactivated Member who had `device`, and users outside it: a
/// non-member and a PlatformAdmin.
struct World {
    admin: String,
    org: String,
    other_org: String,
    mgr_id: String,
    mgr: String,
    mem_id: String,
    mem: String,
    bare_id: String,
    gone_id: String,
    outsider_id: String,
    other_mgr: String,
    admin_id: String,
}

async fn world(s: &TestServer) -> World {
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Bulk", "bulk").await;
    let other_org = s.create_org(&admin, "Other", "other").await;
    let (mgr_id, mgr) = s.user("mgr@bulk.io").await;
    let (mem_id, mem) = s.user("mem@bulk.io").await;
    let (bare_id, _) = s.user("bare@bulk.io").await;
    let (gone_id, _) = s.user("gone@bulk.io").await;
    let (outsider_id, _) = s.user("outsider@bulk.io").await;
    let (other_mgr_id, other_mgr) = s.user("mgr@other.io").await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    for u in [&mem_id, &bare_id, &gone_id] {
        s.add_member(&admin, &org, u, Role::Member).await;
    }
    s.add_member(&admin, &other_org, &other_mgr_id, Role::Manager)
        .await;
    s.add_member(&admin, &other_org, &mem_id, Role::Member)
        .await;
    for u in [&mem_id, &gone_id] {
        s.members()
            .await
            .set_permissions(authed(
                SetPermissionsRequest {
                    organization_id: org.clone(),
                    user_id: u.clone(),
                    permissions: vec![Permission::Device as i32],
                },
                &admin,
            ))
            .await
            .expect("grant");
    }
    s.users()
        .await
        .deactivate_user(authed(
            DeactivateUserRequest {
                user_id: gone_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("deactivate");
    let admin_id = token_claims(&admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    World {
        admin,
        org,
        other_org,
        mgr_id,
        mgr,
        mem_id,
        mem,
        bare_id,
        gone_id,
        outsider_id,
        other_mgr,
        admin_id,
    }
}

fn item(user: &str, org: &str, p: Permission) -> CheckPermissionRequest {
    CheckPermissionRequest {
        user_id: user.into(),
        organization_id: org.into(),
        permission: p as i32,
    }
}

fn bulk(
    items: Vec<CheckPermissionRequest>,
    token: &str,
) -> tonic::Request<CheckPermissionsRequest> {
    authed(CheckPermissionsRequest { items }, token)
}

/// Every subject of `w` in its organization with every category, and a
/// subject that does not exist.
fn mix(w: &World) -> Vec<CheckPermissionRequest> {
    let mut items = Vec::new();
    let subjects = [
        &w.mgr_id,
        &w.mem_id,
        &w.bare_id,
        &w.gone_id,
        &w.outsider_id,
        &w.admin_id,
    ];
    for p in ALL {
        for u in subjects {
            items.push(item(u, &w.org, p));
        }
    }
    items.push(item(
        "01900000-0000-7000-8000-0000000000ff",
        &w.org,
        Permission::Device,
    ));
    items
}

async fn singles(s: &TestServer, items: &[CheckPermissionRequest], token: &str) -> Vec<bool> {
    let mut m = s.members().await;
    let mut out = Vec::new();
    for it in items {
        out.push(
            m.check_permission(authed(it.clone(), token))
                .await
                .expect("single check")
                .into_inner()
                .allowed,
        );
    }
    out
}

async fn answers(s: &TestServer, items: Vec<CheckPermissionRequest>, token: &str) -> Vec<bool> {
    s.members()
        .await
        .check_permissions(bulk(items, token))
        .await
        .expect("bulk check")
        .into_inner()
        .results
        .iter()
        .map(|r| r.allowed)
        .collect()
}

async fn bulk_answers_match_single_checks_in_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let items = mix(&w);
    assert!(items.len() <= 100);
    for token in [&w.admin, &w.mgr] {
        let expected = singles(&s, &items, token).await;
        assert_eq!(answers(&s, items.clone(), token).await, expected);
    }
    // What that comparison covers: Managers and PlatformAdmins hold every
    // category, a Member what was granted, nobody outside, inactive, or
    // unknown anything.
    let expected = singles(&s, &items, &w.admin).await;
    let at = |u: &str, p: Permission| {
        let i = items
            .iter()
            .position(|it| {
                it.user_id == u && it.organization_id == w.org && it.permission == p as i32
            })
            .expect("item");
        expected[i]
    };
    assert!(at(&w.mgr_id, Permission::Vpn));
    assert!(at(&w.admin_id, Permission::Audit));
    assert!(at(&w.mem_id, Permission::Device));
    assert!(!at(&w.mem_id, Permission::Vpn));
    assert!(!at(&w.bare_id, Permission::Device));
    assert!(!at(&w.gone_id, Permission::Device));
    assert!(!at(&w.outsider_id, Permission::Device));
    assert!(!expected[items.len() - 1], "an unknown user holds nothing");
    // The same key asked many times, in any order, gets the same answer.
    let repeated: Vec<_> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                item(&w.mem_id, &w.org, Permission::Device)
            } else {
                item(&w.mem_id, &w.org, Permission::Vpn)
            }
        })
        .collect();
    let got = answers(&s, repeated, &w.mgr).await;
    assert_eq!(got, (0..100).map(|i| i % 2 == 0).collect::<Vec<_>>());
}

async fn item_count_is_one_to_a_hundred(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let mut m = s.members().await;
    let one = item(&w.mem_id, &w.org, Permission::Device);
    assert_invalid(
        m.check_permissions(bulk(vec![one.clone(); 101], &w.admin))
            .await,
        "items",
    );
    assert_invalid(m.check_permissions(bulk(vec![], &w.admin)).await, "items");
    let got = answers(&s, vec![one; 100], &w.admin).await;
    assert_eq!(got, vec![true; 100]);
    // Without a valid token the size is never judged.
    let status = m
        .check_permissions(bulk(
            vec![item(&w.mem_id, &w.org, Permission::Device); 101],
            "garbage",
        ))
        .await
        .expect_err("garbage token");
    assert_eq!(status.code(), Code::Unauthenticated);
}

async fn a_bad_item_is_named_by_its_index(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let mut m = s.members().await;
    let mut items = vec![item(&w.mem_id, &w.org, Permission::Device); 20];
    items[5].user_id = "not-a-uuid".into();
    items[12].permission = Permission::Unspecified as i32;
    items[17].organization_id = String::new();
    let status = m
        .check_permissions(bulk(items, &w.mgr))
        .await
        .expect_err("bad items");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        [
            "items[5].user_id",
            "items[12].permission",
            "items[17].organization_id"
        ]
    );
}

async fn one_hidden_organization_refuses_the_whole_call(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let mut m = s.members().await;
    // 99 checks the Manager may ask, and one in an organization it is not in.
    let mut items: Vec<_> = (0..100)
        .map(|i| item(&w.mem_id, &w.org, ALL[i % 7]))
        .collect();
    items[57] = item(&w.mem_id, &w.other_org, Permission::Device);
    let status = assert_status(
        m.check_permissions(bulk(items.clone(), &w.mgr)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(status.message().contains("items[57]"), "{status:?}");
    // The single RPC says the same of that item.
    assert_status(
        m.check_permission(authed(items[57].clone(), &w.mgr)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // An organization that does not exist is no different.
    items[57] = item(
        &w.mem_id,
        "01900000-0000-7000-8000-0000000000ee",
        Permission::Device,
    );
    let status = assert_status(
        m.check_permissions(bulk(items.clone(), &w.mgr)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(status.message().contains("items[57]"), "{status:?}");
    // The first refusal is the one reported.
    items[3] = item(&w.mem_id, &w.other_org, Permission::Vpn);
    let status = assert_status(
        m.check_permissions(bulk(items, &w.mgr)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(status.message().starts_with("items[3]:"), "{status:?}");
    // A Manager of the other organization sees none of this one.
    let status = assert_status(
        m.check_permissions(bulk(
            vec![item(&w.mem_id, &w.org, Permission::Device)],
            &w.other_mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(status.message().contains("items[0]"), "{status:?}");
}

async fn a_member_asks_about_itself_only(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let mut m = s.members().await;
    // About itself, anywhere: answered (a non-member is simply not allowed).
    let mine = vec![
        item(&w.mem_id, &w.org, Permission::Device),
        item(&w.mem_id, &w.org, Permission::Vpn),
        item(&w.mem_id, &w.other_org, Permission::Device),
        item(
            &w.mem_id,
            "01900000-0000-7000-8000-0000000000ee",
            Permission::Device,
        ),
    ];
    assert_eq!(
        answers(&s, mine.clone(), &w.mem).await,
        singles(&s, &mine, &w.mem).await
    );
    // About someone else: refused like the single RPC, naming the item.
    let mut asking = mine.clone();
    asking.push(item(&w.mgr_id, &w.org, Permission::Device));
    let status = assert_status(
        m.check_permissions(bulk(asking, &w.mem)).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert!(status.message().starts_with("items[4]:"), "{status:?}");
    assert_status(
        m.check_permission(authed(item(&w.mgr_id, &w.org, Permission::Device), &w.mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
}

async fn changes_and_logouts_apply_to_the_next_bulk_call(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let mut m = s.members().await;
    let items = vec![
        item(&w.mem_id, &w.org, Permission::Device),
        item(&w.bare_id, &w.org, Permission::Device),
    ];
    assert_eq!(answers(&s, items.clone(), &w.mgr).await, [true, false]);
    // A grant and a revocation committed before the call are both seen.
    for (user, perms) in [
        (&w.mem_id, vec![]),
        (&w.bare_id, vec![Permission::Device as i32]),
    ] {
        m.set_permissions(authed(
            SetPermissionsRequest {
                organization_id: w.org.clone(),
                user_id: user.clone(),
                permissions: perms,
            },
            &w.admin,
        ))
        .await
        .expect("set permissions");
    }
    assert_eq!(answers(&s, items.clone(), &w.mgr).await, [false, true]);
    // The caller demoted (another Manager stays): the next call is refused.
    let (mgr2_id, _) = s.user("mgr2@bulk.io").await;
    s.add_member(&w.admin, &w.org, &mgr2_id, Role::Manager)
        .await;
    m.change_role(authed(
        ChangeRoleRequest {
            organization_id: w.org.clone(),
            user_id: w.mgr_id.clone(),
            role: Role::Member as i32,
        },
        &w.admin,
    ))
    .await
    .expect("demote");
    assert_status(
        m.check_permissions(bulk(items.clone(), &w.mgr)).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    // A logged-out session's token and a deactivated caller's are refused.
    let pair = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: pair.refresh_token,
            },
            &pair.access_token,
        ))
        .await
        .expect("logout");
    assert_status(
        m.check_permissions(bulk(items.clone(), &pair.access_token))
            .await,
        Code::Unauthenticated,
        "SESSION_REVOKED",
    );
    s.users()
        .await
        .deactivate_user(authed(
            DeactivateUserRequest {
                user_id: w.mem_id.clone(),
            },
            &w.admin,
        ))
        .await
        .expect("deactivate");
    assert_status(
        m.check_permissions(bulk(
            vec![item(&w.mem_id, &w.org, Permission::Device)],
            &w.mem,
        ))
        .await,
        Code::Unauthenticated,
        "ACCOUNT_DISABLED",
    );
}

async fn parallel_bulk_calls_agree_with_single_checks(backend: Backend) {
    let s = TestServer::start(backend).await;
    let w = world(&s).await;
    let items = mix(&w);
    let expected = singles(&s, &items, &w.mgr).await;
    let m = s.members().await;
    let calls = (0..20).map(|i| {
        let mut m = m.clone();
        // Each call its own rotation of the items, so no two are alike.
        let mut mine = items.clone();
        mine.rotate_left(i);
        let mut want = expected.clone();
        want.rotate_left(i);
        let token = w.mgr.clone();
        async move {
            let got: Vec<bool> = m
                .check_permissions(bulk(mine, &token))
                .await
                .expect("bulk")
                .into_inner()
                .results
                .iter()
                .map(|r| r.allowed)
                .collect();
            assert_eq!(got, want, "rotation {i}");
        }
    });
    futures::future::join_all(calls).await;
}
