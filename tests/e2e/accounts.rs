//! Accounts over their life (R11–R14): self-service, password reset,
//! lockout, throttling, PlatformAdmin account actions, secrets never logged.

use crate::both_backends;
use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::*;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

both_backends!(
    update_me_validates_and_applies,
    change_password_revokes_other_sessions,
    delete_me_respects_last_manager,
    password_reset_flow,
    manager_sends_password_reset,
    lockout_with_injected_clock_and_unlock,
    concurrent_failed_logins_all_count,
    account_actions_need_a_platform_admin_and_spare_the_last_manager,
    deactivation_ends_sessions_at_once,
    set_platform_admin_rules,
    list_users_search_filter_paginate,
    login_throttle_refuses_floods,
    secrets_never_reach_the_log,
);

async fn start_with_smtp(backend: Backend, extra: &[&str]) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let mut args = vec!["--smtp-url".to_string(), sink.url()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: args,
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn update_me_validates_and_applies(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, t) = s.user("kim@example.com").await;
    let mut u = s.users().await;
    let upd = |name: &str, phone: &str, avatar: &str, paths: &[&str]| {
        authed(
            UpdateMeRequest {
                name: name.into(),
                phone: phone.into(),
                avatar_url: avatar.into(),
                update_mask: mask(paths),
            },
            &t,
        )
    };
    let me = u
        .update_me(upd(
            "Kim Lee",
            "+82 10-1234-5678",
            "https://cdn.example.com/kim.png",
            &[],
        ))
        .await
        .expect("update")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(
        (me.name.as_str(), me.phone.as_str(), me.avatar_url.as_str()),
        (
            "Kim Lee",
            "+82 10-1234-5678",
            "https://cdn.example.com/kim.png"
        )
    );
    // Only the masked field changes; an empty phone clears it.
    let me = u
        .update_me(upd("ignored", "", "ignored", &["phone"]))
        .await
        .expect("update")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.name, "Kim Lee");
    assert_eq!(me.phone, "");
    assert_eq!(me.avatar_url, "https://cdn.example.com/kim.png");
    assert_invalid(u.update_me(upd("", "", "", &["name"])).await, "name");
    assert_invalid(
        u.update_me(upd("", "call me maybe", "", &["phone"])).await,
        "phone",
    );
    assert_invalid(
        u.update_me(upd(
            "",
            "",
            "http://insecure.example.com/a.png",
            &["avatar_url"],
        ))
        .await,
        "avatar_url",
    );
    assert_invalid(
        u.update_me(upd("", "", "", &["email"])).await,
        "update_mask",
    );
    assert_status(
        u.update_me(UpdateMeRequest::default()).await,
        Code::Unauthenticated,
        "MISSING_TOKEN",
    );
}

async fn change_password_revokes_other_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let a = s.login("kim@example.com", PASSWORD).await.expect("login a");
    let b = s.login("kim@example.com", PASSWORD).await.expect("login b");
    let mut u = s.users().await;
    let change = |cur: &str, new: &str| {
        authed(
            ChangePasswordRequest {
                current_password: cur.into(),
                new_password: new.into(),
            },
            &a.access_token,
        )
    };
    assert_status(
        u.change_password(change("wrong password!!", "a brand new passphrase"))
            .await,
        Code::PermissionDenied,
        "INVALID_CURRENT_PASSWORD",
    );
    assert_status(
        u.change_password(change(PASSWORD, "short")).await,
        Code::InvalidArgument,
        "WEAK_PASSWORD",
    );
    u.change_password(change(PASSWORD, "a brand new passphrase"))
        .await
        .expect("change");
    let mut auth = s.auth().await;
    let refresh = |t: &str| RefreshRequest {
        refresh_token: t.into(),
        organization_id: None,
    };
    // The other session is gone at once; this one lives on.
    assert_status(
        auth.refresh(refresh(&b.refresh_token)).await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
    auth.refresh(refresh(&a.refresh_token))
        .await
        .expect("own session survives");
    assert_status(
        s.login("kim@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    s.login("kim@example.com", "a brand new passphrase")
        .await
        .expect("new password works");
}

async fn delete_me_respects_last_manager(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let (kim_id, kim) = s.user("kim@example.com").await;
    s.add_member(&admin, &org, &kim_id, Role::Manager).await;
    let mut u = s.users().await;
    let del = |pw: &str| {
        authed(
            DeleteMeRequest {
                current_password: pw.into(),
            },
            &kim,
        )
    };
    assert_status(
        u.delete_me(del("wrong password!!")).await,
        Code::PermissionDenied,
        "INVALID_CURRENT_PASSWORD",
    );
    let st = u.delete_me(del(PASSWORD)).await.expect_err("last manager");
    assert_eq!(st.code(), Code::FailedPrecondition);
    let info = st.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "LAST_MANAGER");
    assert_eq!(
        info.metadata.get("organizations").map(String::as_str),
        Some("acme")
    );
    let (lee_id, _) = s.user("lee@example.com").await;
    s.add_member(&admin, &org, &lee_id, Role::Manager).await;
    u.delete_me(del(PASSWORD)).await.expect("delete");
    assert_status(
        s.login("kim@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_status(
        u.get_me(authed(GetMeRequest {}, &kim)).await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );
    // The email can be used again: the account is gone for good.
    s.create_user("kim@example.com", "Kim Again", PASSWORD)
        .await;
}

async fn password_reset_flow(backend: Backend) {
    let (s, sink) = start_with_smtp(backend, &[]).await;
    s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let session = s.login("kim@example.com", PASSWORD).await.expect("login");
    // Lock the account first: a reset also unlocks.
    for _ in 0..5 {
        let _ = s.login("kim@example.com", "not my password").await;
    }
    assert_status(
        s.login("kim@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let mut auth = s.auth().await;
    let t0 = Instant::now();
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "KIM@example.com".into(),
    })
    .await
    .expect("known");
    let known = t0.elapsed();
    let t1 = Instant::now();
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "ghost@example.com".into(),
    })
    .await
    .expect("unknown answers OK too");
    let unknown = t1.elapsed();
    assert!(
        known < Duration::from_millis(500) && unknown < Duration::from_millis(500),
        "{known:?} {unknown:?}"
    );
    let mail = sink.wait_for("kim@example.com", 1).await;
    assert!(
        mail.data.contains("/reset-password?token=kp_"),
        "{}",
        mail.data
    );
    let token = mail.token("kp").expect("token");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count_to("ghost@example.com"), 0);

    let reset = |t: &str, pw: &str| ResetPasswordRequest {
        token: t.into(),
        new_password: pw.into(),
    };
    assert_status(
        auth.reset_password(reset(&token, "short")).await,
        Code::InvalidArgument,
        "WEAK_PASSWORD",
    );
    auth.reset_password(reset(&token, "my fresh new password"))
        .await
        .expect("reset");
    s.login("kim@example.com", "my fresh new password")
        .await
        .expect("unlocked, new password");
    assert_status(
        auth.refresh(RefreshRequest {
            refresh_token: session.refresh_token,
            organization_id: None,
        })
        .await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
    assert_status(
        auth.reset_password(reset(&token, "yet another password"))
            .await,
        Code::FailedPrecondition,
        "INVALID_RESET_TOKEN",
    );
    assert_status(
        auth.reset_password(reset("kp_garbage", "yet another password"))
            .await,
        Code::FailedPrecondition,
        "INVALID_RESET_TOKEN",
    );
    // A link is valid one hour.
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "kim@example.com".into(),
    })
    .await
    .expect("again");
    let late = sink
        .wait_for("kim@example.com", 2)
        .await
        .token("kp")
        .expect("token");
    s.advance_clock(Duration::from_secs(3601));
    assert_status(
        auth.reset_password(reset(&late, "yet another password"))
            .await,
        Code::FailedPrecondition,
        "INVALID_RESET_TOKEN",
    );
    assert_invalid(
        auth.request_password_reset(RequestPasswordResetRequest {
            email: "nope".into(),
        })
        .await,
        "email",
    );
}

async fn manager_sends_password_reset(backend: Backend) {
    let (s, sink) = start_with_smtp(backend, &[]).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let other = s.create_org(&admin, "Beta", "beta").await;
    let (mgr_id, mgr) = s.user("mgr@acme.io").await;
    let (mem_id, mem) = s.user("mem@acme.io").await;
    let (omgr_id, omgr) = s.user("mgr@beta.io").await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    s.add_member(&admin, &org, &mem_id, Role::Member).await;
    s.add_member(&admin, &other, &omgr_id, Role::Manager).await;
    let mut m = s.members().await;
    let send = |t: &str, user: &str| {
        authed(
            SendPasswordResetRequest {
                organization_id: org.clone(),
                user_id: user.into(),
            },
            t,
        )
    };
    m.send_password_reset(send(&mgr, &mem_id))
        .await
        .expect("manager sends");
    let mail = sink.wait_for("mem@acme.io", 1).await;
    assert!(mail.data.contains("A Manager of your organization"));
    assert_status(
        m.send_password_reset(send(&mem, &mgr_id)).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        m.send_password_reset(send(&omgr, &mem_id)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        m.send_password_reset(send(&mgr, &omgr_id)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn lockout_with_injected_clock_and_unlock(backend: Backend) {
    let s = TestServer::start(backend).await;
    let kim = s.create_user("kim@example.com", "Kim", PASSWORD).await;
    async fn wrong(s: &TestServer) -> tonic::Status {
        s.login("kim@example.com", "not my password")
            .await
            .expect_err("wrong")
    }
    // A success resets the count.
    for _ in 0..4 {
        wrong(&s).await;
    }
    s.login("kim@example.com", PASSWORD)
        .await
        .expect("4 failures do not lock");
    for _ in 0..4 {
        wrong(&s).await;
    }
    s.login("kim@example.com", PASSWORD)
        .await
        .expect("the count restarted");
    // Five in a row lock it; a locked account answers like a wrong password.
    for _ in 0..5 {
        let st = wrong(&s).await;
        assert_eq!(reason(&st), "INVALID_CREDENTIALS");
    }
    let st = s
        .login("kim@example.com", PASSWORD)
        .await
        .expect_err("locked");
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::Unauthenticated, "INVALID_CREDENTIALS".to_string())
    );
    let admin = s.admin_token().await;
    let mut u = s.users().await;
    let status = |u: tonic::Response<GetUserResponse>| u.into_inner().user.expect("user").status;
    assert_eq!(
        status(
            u.get_user(authed(
                GetUserRequest {
                    user_id: kim.clone()
                },
                &admin
            ))
            .await
            .expect("get")
        ),
        UserStatus::Locked as i32
    );
    // 15 minutes later it opens by itself.
    s.advance_clock(Duration::from_secs(14 * 60));
    assert!(
        s.login("kim@example.com", PASSWORD).await.is_err(),
        "still locked after 14 min"
    );
    s.advance_clock(Duration::from_secs(61));
    s.login("kim@example.com", PASSWORD)
        .await
        .expect("unlocked after 15 min");
    // UnlockUser opens it at once.
    for _ in 0..5 {
        wrong(&s).await;
    }
    let admin = s.admin_token().await;
    let unlocked = u
        .unlock_user(authed(
            UnlockUserRequest {
                user_id: kim.clone(),
            },
            &admin,
        ))
        .await
        .expect("unlock")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(unlocked.status, UserStatus::Active as i32);
    s.login("kim@example.com", PASSWORD)
        .await
        .expect("unlocked by admin");
    let (_, plain) = s.user("plain@example.com").await;
    assert_status(
        u.unlock_user(authed(UnlockUserRequest { user_id: kim }, &plain))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
}

async fn concurrent_failed_logins_all_count(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--lockout-threshold".into(), "10".into()],
            ..Default::default()
        },
    )
    .await;
    let kim = s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let channel = s.channel().await;
    let calls: Vec<_> = (0..9)
        .map(|_| {
            let mut c =
                kiops_proto::v1::auth_service_client::AuthServiceClient::new(channel.clone());
            tokio::spawn(async move {
                c.login(LoginRequest {
                    email: "kim@example.com".into(),
                    password: "not my password".into(),
                    organization_id: None,
                })
                .await
            })
        })
        .collect();
    for c in calls {
        assert!(c.await.expect("join").is_err());
    }
    let admin = s.admin_token().await;
    let mut u = s.users().await;
    let get = |u: &mut kiops_proto::v1::user_service_client::UserServiceClient<
        tonic::transport::Channel,
    >| {
        let mut u = u.clone();
        let (kim, admin) = (kim.clone(), admin.clone());
        async move {
            u.get_user(authed(GetUserRequest { user_id: kim }, &admin))
                .await
                .expect("get")
                .into_inner()
                .user
                .expect("user")
                .status
        }
    };
    assert_eq!(
        get(&mut u).await,
        UserStatus::Active as i32,
        "9 of 10 failures do not lock"
    );
    // If any of the 9 parallel failures had been lost, the 10th would not lock.
    let _ = s.login("kim@example.com", "not my password").await;
    assert_eq!(
        get(&mut u).await,
        UserStatus::Locked as i32,
        "all 10 failures counted"
    );
}
/// Acme with Kim its only Manager, and Lee; Kim has a session.
struct Accounts {
    s: TestServer,
    admin: String,
    admin_id: String,
    org: String,
    kim_id: String,
    kim: String,
    lee_id: String,
    lee: String,
    kim_session: LoginResponse,
    u: kiops_proto::v1::user_service_client::UserServiceClient<tonic::transport::Channel>,
}

async fn accounts(backend: Backend) -> Accounts {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let admin_id = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("user")
        .user_id;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let (kim_id, kim) = s.user("kim@example.com").await;
    let (lee_id, lee) = s.user("lee@example.com").await;
    s.add_member(&admin, &org, &kim_id, Role::Manager).await;
    let kim_session = s.login("kim@example.com", PASSWORD).await.expect("login");
    let u = s.users().await;
    Accounts {
        s,
        admin,
        admin_id,
        org,
        kim_id,
        kim,
        lee_id,
        lee,
        kim_session,
        u,
    }
}

fn deact(id: &str, t: &str) -> tonic::Request<DeactivateUserRequest> {
    authed(DeactivateUserRequest { user_id: id.into() }, t)
}

async fn account_actions_need_a_platform_admin_and_spare_the_last_manager(backend: Backend) {
    let Accounts {
        s: _server,
        admin,
        admin_id,
        kim_id,
        kim,
        lee_id,
        mut u,
        ..
    } = accounts(backend).await;
    // R11: PlatformAdmin only; R2-like: not on oneself.
    assert_status(
        u.deactivate_user(deact(&lee_id, &kim)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_status(
        u.deactivate_user(deact(&admin_id, &admin)).await,
        Code::PermissionDenied,
        "SELF_ACCOUNT_ACTION",
    );
    // R5: the only Manager of acme cannot be deactivated or deleted.
    let st = u
        .deactivate_user(deact(&kim_id, &admin))
        .await
        .expect_err("last manager");
    assert_eq!(
        (st.code(), reason(&st)),
        (Code::FailedPrecondition, "LAST_MANAGER".to_string())
    );
    assert_status(
        u.delete_user(authed(
            DeleteUserRequest {
                user_id: kim_id.clone(),
            },
            &admin,
        ))
        .await,
        Code::FailedPrecondition,
        "LAST_MANAGER",
    );
}

async fn deactivation_ends_sessions_at_once(backend: Backend) {
    let Accounts {
        s,
        admin,
        org,
        kim_id,
        lee_id,
        lee,
        kim_session,
        mut u,
        ..
    } = accounts(backend).await;
    // Deactivation: sessions and tokens stop working at once; data kept.
    let deactivated = u
        .deactivate_user(deact(&lee_id, &admin))
        .await
        .expect("deactivate")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(deactivated.status, UserStatus::Inactive as i32);
    assert_status(
        u.get_me(authed(GetMeRequest {}, &lee)).await,
        Code::Unauthenticated,
        "ACCOUNT_DISABLED",
    );
    assert_status(
        s.login("lee@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    u.reactivate_user(authed(
        ReactivateUserRequest {
            user_id: lee_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("reactivate");
    s.login("lee@example.com", PASSWORD)
        .await
        .expect("login again");

    // With a second Manager, kim can go; her session is revoked.
    s.add_member(&admin, &org, &lee_id, Role::Manager).await;
    u.deactivate_user(deact(&kim_id, &admin))
        .await
        .expect("deactivate kim");
    assert_status(
        s.auth()
            .await
            .refresh(RefreshRequest {
                refresh_token: kim_session.refresh_token.clone(),
                organization_id: None,
            })
            .await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
    // A deactivated Manager does not count: lee is now the last active one.
    assert_status(
        s.members()
            .await
            .change_role(authed(
                ChangeRoleRequest {
                    organization_id: org.clone(),
                    user_id: lee_id.clone(),
                    role: Role::Member as i32,
                },
                &admin,
            ))
            .await,
        Code::FailedPrecondition,
        "LAST_MANAGER",
    );
    u.delete_user(authed(
        DeleteUserRequest {
            user_id: kim_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("delete kim");
    assert_status(
        u.get_user(authed(
            GetUserRequest {
                user_id: kim_id.clone(),
            },
            &admin,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn set_platform_admin_rules(backend: Backend) {
    let Accounts {
        s,
        admin,
        admin_id,
        org,
        lee_id,
        mut u,
        ..
    } = accounts(backend).await;
    // Lee a Manager of Acme, with a session, as after the deactivation test.
    s.add_member(&admin, &org, &lee_id, Role::Manager).await;
    let lee2 = s
        .login("lee@example.com", PASSWORD)
        .await
        .expect("login again");
    // SetPlatformAdmin: R3 and R2.
    let set = |id: &str, pa: bool, t: &str| {
        authed(
            SetPlatformAdminRequest {
                user_id: id.into(),
                platform_admin: pa,
            },
            t,
        )
    };
    assert_status(
        u.set_platform_admin(set(&lee_id, true, &lee2.access_token))
            .await,
        Code::PermissionDenied,
        "PROMOTION_REQUIRES_PLATFORM_ADMIN",
    );
    assert_status(
        u.set_platform_admin(set(&admin_id, false, &admin)).await,
        Code::PermissionDenied,
        "SELF_ROLE_CHANGE",
    );
    let promoted = u
        .set_platform_admin(set(&lee_id, true, &admin))
        .await
        .expect("grant")
        .into_inner()
        .user
        .expect("user");
    assert!(promoted.platform_admin);
    // Effective at once, with the same token.
    s.orgs()
        .await
        .create_organization(authed(
            CreateOrganizationRequest {
                name: "Lee's".into(),
                code: "lees".into(),
                description: String::new(),
            },
            &lee2.access_token,
        ))
        .await
        .expect("new PlatformAdmin creates an organization");
    assert_status(
        u.get_user(authed(
            GetUserRequest {
                user_id: "nope".into(),
            },
            &admin,
        ))
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

async fn list_users_search_filter_paginate(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut ids = vec![];
    for e in [
        "ann@corp.com",
        "bob@corp.com",
        "cat_1@corp.com",
        "catx1@corp.com",
        "dan@else.org",
    ] {
        ids.push(s.create_user(e, &format!("Name {e}"), PASSWORD).await);
    }
    let mut u = s.users().await;
    let list = |q: &str, order: &str, filter: &str, size: i32, page: &str, t: &str| {
        authed(
            ListUsersRequest {
                query: q.into(),
                order_by: order.into(),
                filter: filter.into(),
                page_size: size,
                page_token: page.into(),
                status: 0,
            },
            t,
        )
    };
    let emails = |r: ListUsersResponse| r.users.into_iter().map(|u| u.email).collect::<Vec<_>>();
    assert_eq!(
        emails(
            u.list_users(list("cat_", "", "", 0, "", &admin))
                .await
                .expect("list")
                .into_inner()
        ),
        vec!["cat_1@corp.com"]
    );
    let r = u
        .list_users(list("@CORP.com", "email desc", "", 0, "", &admin))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.total_size, 4);
    assert_eq!(
        emails(r),
        vec![
            "catx1@corp.com",
            "cat_1@corp.com",
            "bob@corp.com",
            "ann@corp.com"
        ]
    );
    let r = u
        .list_users(list("", "", "platform_admin=true", 0, "", &admin))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emails(r), vec![ADMIN_EMAIL]);
    u.deactivate_user(authed(
        DeactivateUserRequest {
            user_id: ids[1].clone(),
        },
        &admin,
    ))
    .await
    .expect("deactivate");
    let r = u
        .list_users(list("", "", "status=INACTIVE", 0, "", &admin))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(emails(r), vec!["bob@corp.com"]);
    let mut by_status = list("", "", "", 0, "", &admin);
    by_status.get_mut().status = UserStatus::Active as i32;
    assert_eq!(
        u.list_users(by_status)
            .await
            .expect("list")
            .into_inner()
            .total_size,
        5
    );
    // Pages of 2 by creation time cover everyone once.
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let r = u
            .list_users(list("", "create_time", "", 2, &token, &admin))
            .await
            .expect("page")
            .into_inner();
        seen.extend(r.users.into_iter().map(|u| u.user_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(&seen[1..], &ids[..]);
    assert_invalid(
        u.list_users(list("", "", "role=admin", 0, "", &admin))
            .await,
        "filter",
    );
    assert_invalid(
        u.list_users(list("", "phone", "", 0, "", &admin)).await,
        "order_by",
    );
    assert_invalid(
        u.list_users(list("", "", "", 0, "forged", &admin)).await,
        "page_token",
    );
    let (_, plain) = s.user("plain@corp.com").await;
    assert_status(
        u.list_users(list("", "", "", 0, "", &plain)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
}

async fn login_throttle_refuses_floods(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--login-rate-per-email".into(),
                "3".into(),
                "--login-rate-per-peer".into(),
                "8".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        let _ = s.login("victim@example.com", "whatever password").await;
    }
    let st = s
        .login("victim@example.com", "whatever password")
        .await
        .expect_err("throttled");
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert_eq!(reason(&st), "RATE_LIMITED");
    let retry = st
        .get_details_retry_info()
        .expect("retry info")
        .retry_delay
        .expect("delay");
    assert!(retry.as_secs() >= 1);
    // Other emails from the same peer still pass until the peer limit.
    let mut refused = 0;
    for i in 0..8 {
        if let Err(e) = s
            .login(&format!("u{i}@example.com"), "whatever password")
            .await
        {
            if e.code() == Code::ResourceExhausted {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 1,
        "the per-peer limit must refuse some of 12 attempts"
    );
    // The rest of the service is unaffected.
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health");
}

async fn secrets_never_reach_the_log(backend: Backend) {
    let (s, sink) = start_with_smtp(backend, &[]).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let kim_pw = "kim secret passphrase 1";
    s.create_user("kim@example.com", "Kim", kim_pw).await;
    let login = s.login("kim@example.com", kim_pw).await.expect("login");
    let _ = s
        .login("kim@example.com", "a wrong secret passphrase")
        .await;
    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    let mut auth = s.auth().await;
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "kim@example.com".into(),
    })
    .await
    .expect("reset request");
    let reset = sink
        .wait_for("kim@example.com", 1)
        .await
        .token("kp")
        .expect("token");
    let new_pw = "kim newer secret passphrase";
    auth.reset_password(ResetPasswordRequest {
        token: reset.clone(),
        new_password: new_pw.into(),
    })
    .await
    .expect("reset");
    s.invitations()
        .await
        .create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "new@example.com".into(),
                role: 1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("invite");
    let invite = sink
        .wait_for("new@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    let new_user_pw = "new user secret passphrase";
    s.invitations()
        .await
        .accept_invitation(AcceptInvitationRequest {
            token: invite.clone(),
            name: Some("New".into()),
            password: Some(new_user_pw.into()),
        })
        .await
        .expect("accept");
    s.users()
        .await
        .change_password(authed(
            ChangePasswordRequest {
                current_password: new_pw.into(),
                new_password: "kim newest secret passphrase".into(),
            },
            &s.login("kim@example.com", new_pw)
                .await
                .expect("login")
                .access_token,
        ))
        .await
        .expect("change");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = s.logs();
    for (what, secret) in [
        ("password", kim_pw),
        ("wrong password", "a wrong secret passphrase"),
        ("new password", new_pw),
        ("invited user's password", new_user_pw),
        ("changed password", "kim newest secret passphrase"),
        ("admin password", ADMIN_PASSWORD),
        ("refresh token", login.refresh_token.as_str()),
        ("rotated refresh token", refreshed.refresh_token.as_str()),
        ("access token", login.access_token.as_str()),
        ("reset token", reset.as_str()),
        ("invitation token", invite.as_str()),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the server log");
    }
    assert!(
        !logs.contains("$argon2"),
        "a password hash appears in the server log"
    );
    assert!(logs.contains("ready:"), "the log was captured");
}
