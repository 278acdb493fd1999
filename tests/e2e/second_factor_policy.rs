//! Issue 24, R31: a required second factor. An organization's Managers (or
//! a PlatformAdmin) require one of its members; a PlatformAdmin requires one
//! of PlatformAdmins. A session without one (every session before TOTP
//! enrollment: `amr` "pwd") loses the organization in its tokens, on this
//! service's RPCs and in CheckPermission, with the reason
//! SECOND_FACTOR_REQUIRED; tokens already issued are revoked for offline
//! verifiers. And PlatformService.SendTestEmail checks the SMTP settings.
//!
//! The satisfied side: a session upgraded by TOTP enrollment, or opened
//! with a code (R30), meets both policies; the account's other sessions do
//! not.

use crate::support::smtp::SmtpSink;
use crate::support::totp::{challenge, enable_totp, enable_totp_with, verify};
use crate::support::*;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::Duration;
use tonic::Code;

crate::both_backends!(
    an_org_policy_takes_the_org_out_of_tokens_rpcs_and_checks,
    only_the_orgs_managers_and_platform_admins_set_the_policy,
    parallel_toggles_leave_one_state_and_one_event_per_change,
    the_platform_policy_unmakes_platform_admins_without_a_second_factor,
    a_test_email_reports_what_the_smtp_server_said,
    a_session_with_a_second_factor_meets_the_policies,
);

const SECOND_FACTOR_REQUIRED: &str = "SECOND_FACTOR_REQUIRED";

async fn sql_i64(s: &TestServer, sql: &str) -> i64 {
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .expect("query");
    let n = rows[0].try_get::<i64>("", "n").expect("n");
    db.close().await.expect("close");
    n
}

async fn exec(s: &TestServer, sql: &str) {
    let db = Database::connect(&s.db.url).await.expect("db");
    db.execute_unprepared(sql).await.expect("exec");
    db.close().await.expect("close");
}

async fn set_org_policy(
    s: &TestServer,
    token: &str,
    org: &str,
    required: bool,
) -> Result<Organization, tonic::Status> {
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
        .map(|r| r.into_inner().organization.expect("organization"))
}

async fn get_org(s: &TestServer, token: &str, org: &str) -> Result<Organization, tonic::Status> {
    s.orgs()
        .await
        .get_organization(authed(
            GetOrganizationRequest {
                organization_id: org.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().organization.expect("organization"))
}

async fn check(
    s: &TestServer,
    token: &str,
    user: &str,
    org: &str,
    perm: Permission,
) -> CheckPermissionResponse {
    s.members()
        .await
        .check_permission(authed(
            CheckPermissionRequest {
                user_id: user.into(),
                organization_id: org.into(),
                permission: perm as i32,
            },
            token,
        ))
        .await
        .expect("check permission")
        .into_inner()
}

async fn refresh(
    s: &TestServer,
    refresh_token: &str,
    org: Option<&str>,
) -> Result<RefreshResponse, tonic::Status> {
    s.auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: refresh_token.into(),
            organization_id: org.map(str::to_string),
        })
        .await
        .map(|r| r.into_inner())
}

fn org_of(e: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    e.get_details_error_info()
        .and_then(|i| i.metadata.get("organization_id").cloned())
        .unwrap_or_default()
}

#[track_caller]
fn assert_second_factor<T: std::fmt::Debug>(r: Result<T, tonic::Status>, org: Option<&str>) {
    let e = assert_status(r, Code::PermissionDenied, SECOND_FACTOR_REQUIRED);
    assert_eq!(org_of(&e), org.unwrap_or(""), "{e:?}");
}

async fn an_org_policy_takes_the_org_out_of_tokens_rpcs_and_checks(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let strict = s.create_org(&admin, "Strict", "strict").await;
    let relaxed = s.create_org(&admin, "Relaxed", "relaxed").await;
    let (mgr, mgr_token) = s.user("mgr@strict.test").await;
    s.add_member(&admin, &strict, &mgr, Role::Manager).await;
    let (uid, _) = s.user("una@strict.test").await;
    s.add_member(&admin, &strict, &uid, Role::Member).await;
    s.add_member(&admin, &relaxed, &uid, Role::Member).await;
    for org in [&strict, &relaxed] {
        s.members()
            .await
            .set_permissions(authed(
                SetPermissionsRequest {
                    organization_id: org.to_string(),
                    user_id: uid.clone(),
                    permissions: vec![Permission::Device as i32],
                },
                &admin,
            ))
            .await
            .expect("grant device");
    }
    let una = s.login("una@strict.test", PASSWORD).await.expect("login");
    assert!(token_orgs(&una.access_token).get(&strict).is_some());
    let before = check(&s, &una.access_token, &uid, &strict, Permission::Device).await;
    assert!(before.allowed);
    assert_eq!(before.denial_reason, ErrorReason::Unspecified as i32);
    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();

    // The organization's Manager turns it on (from a session without a
    // second factor: allowed, and it binds them too).
    let org = set_org_policy(&s, &mgr_token, &strict, true)
        .await
        .expect("turn on");
    assert!(org.second_factor_required);

    // The token issued before: refused here at once, in that organization
    // only, naming it.
    assert_second_factor(get_org(&s, &una.access_token, &strict).await, Some(&strict));
    get_org(&s, &una.access_token, &relaxed)
        .await
        .expect("the other organization");
    assert_second_factor(
        s.members()
            .await
            .list_members(authed(
                ListMembersRequest {
                    organization_id: strict.clone(),
                    ..Default::default()
                },
                &mgr_token,
            ))
            .await,
        Some(&strict),
    );
    // CheckPermission: not held there, with the reason; held elsewhere.
    let own = check(&s, &una.access_token, &uid, &strict, Permission::Device).await;
    assert!(!own.allowed);
    assert_eq!(own.denial_reason, ErrorReason::SecondFactorRequired as i32);
    let not_granted = check(&s, &una.access_token, &uid, &strict, Permission::Vpn).await;
    assert_eq!(
        (not_granted.allowed, not_granted.denial_reason),
        (false, ErrorReason::Unspecified as i32),
        "a category never granted is no policy matter"
    );
    let other = check(&s, &una.access_token, &uid, &relaxed, Permission::Device).await;
    assert!(other.allowed);
    let by_admin = check(&s, &admin, &uid, &strict, Permission::Device).await;
    assert_eq!(
        (by_admin.allowed, by_admin.denial_reason),
        (false, ErrorReason::SecondFactorRequired as i32)
    );
    // The gated Manager may not ask about members either.
    assert_second_factor(
        s.members()
            .await
            .check_permission(authed(
                CheckPermissionRequest {
                    user_id: uid.clone(),
                    organization_id: strict.clone(),
                    permission: Permission::Device as i32,
                },
                &mgr_token,
            ))
            .await,
        Some(&strict),
    );
    let bulk = s
        .members()
        .await
        .check_permissions(authed(
            CheckPermissionsRequest {
                items: [&strict, &relaxed]
                    .iter()
                    .map(|o| CheckPermissionRequest {
                        user_id: uid.clone(),
                        organization_id: o.to_string(),
                        permission: Permission::Device as i32,
                    })
                    .collect(),
            },
            &una.access_token,
        ))
        .await
        .expect("bulk")
        .into_inner()
        .results;
    assert_eq!(
        bulk.iter()
            .map(|r| (r.allowed, r.denial_reason))
            .collect::<Vec<_>>(),
        vec![
            (false, ErrorReason::SecondFactorRequired as i32),
            (true, ErrorReason::Unspecified as i32)
        ]
    );

    // New tokens leave it out: on refresh, on login; a token scoped to it
    // is refused with the reason (and the refresh token stays usable).
    let refreshed = refresh(&s, &una.refresh_token, None)
        .await
        .expect("refresh");
    let orgs = token_orgs(&refreshed.access_token);
    assert!(orgs.get(&strict).is_none(), "{orgs}");
    assert!(orgs.get(&relaxed).is_some(), "{orgs}");
    assert_second_factor(
        refresh(&s, &refreshed.refresh_token, Some(&strict)).await,
        Some(&strict),
    );
    let again = refresh(&s, &refreshed.refresh_token, Some(&relaxed))
        .await
        .expect("scoped to the other organization");
    assert!(token_orgs(&again.access_token).get(&relaxed).is_some());
    let fresh = s.login("una@strict.test", PASSWORD).await.expect("login");
    assert!(token_orgs(&fresh.access_token).get(&strict).is_none());
    assert_second_factor(
        s.auth()
            .await
            .login(LoginRequest {
                email: "una@strict.test".into(),
                password: PASSWORD.into(),
                organization_id: Some(strict.clone()),
            })
            .await,
        Some(&strict),
    );
    // What needs no organization still works, e.g. the own sessions.
    s.users()
        .await
        .list_my_sessions(authed(ListMySessionsRequest {}, &fresh.access_token))
        .await
        .expect("own sessions");

    // Offline verifiers: one event for the organization.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("open");
        let e = msg.event.expect("event");
        if e.organization_id == strict {
            assert_eq!(e.reason, "second_factor_required", "{e:?}");
            assert_eq!(e.user_id, "", "every user's tokens naming it: {e:?}");
            break;
        }
    }

    // The gated Manager cannot turn it off; a PlatformAdmin can, and the
    // organization is back at once and in the next token.
    assert_second_factor(
        set_org_policy(&s, &mgr_token, &strict, false).await,
        Some(&strict),
    );
    let off = set_org_policy(&s, &admin, &strict, false)
        .await
        .expect("turn off");
    assert!(!off.second_factor_required);
    get_org(&s, &una.access_token, &strict).await.expect("back");
    assert!(
        check(&s, &una.access_token, &uid, &strict, Permission::Device)
            .await
            .allowed
    );
    let back = refresh(&s, &again.refresh_token, None)
        .await
        .expect("refresh");
    assert!(token_orgs(&back.access_token).get(&strict).is_some());
    // Two changes, two events; turning off revokes nothing.
    let n = sql_i64(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE \
             action = 'organization.second_factor_policy_changed' AND organization_id = '{strict}'"
        ),
    )
    .await;
    assert_eq!(n, 2);
    let revocations = sql_i64(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM revocation_events WHERE \
             reason = 'second_factor_required' AND organization_id = '{strict}'"
        ),
    )
    .await;
    assert_eq!(revocations, 1);
}

async fn only_the_orgs_managers_and_platform_admins_set_the_policy(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let x = s.create_org(&admin, "X", "x-org").await;
    let y = s.create_org(&admin, "Y", "y-org").await;
    let (member, member_token) = s.user("member@x.test").await;
    s.add_member(&admin, &x, &member, Role::Member).await;
    let (other_mgr, other_token) = s.user("mgr@y.test").await;
    s.add_member(&admin, &y, &other_mgr, Role::Manager).await;

    assert_status(
        set_org_policy(&s, &member_token, &x, true).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        set_org_policy(&s, &other_token, &x, true).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // Nothing changed, nothing audited.
    assert!(
        !get_org(&s, &admin, &x)
            .await
            .expect("get")
            .second_factor_required
    );
    let n = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'organization.second_factor_policy_changed'",
    )
    .await;
    assert_eq!(n, 0);
    // A PlatformAdmin may; setting what is already set changes nothing.
    set_org_policy(&s, &admin, &x, true).await.expect("admin");
    set_org_policy(&s, &admin, &x, true).await.expect("again");
    let n = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'organization.second_factor_policy_changed'",
    )
    .await;
    assert_eq!(n, 1, "a change that changes nothing is not audited");
    // A PlatformAdmin's authority is the platform's: the organization's
    // policy does not bind them.
    get_org(&s, &admin, &x)
        .await
        .expect("PlatformAdmin still acts");
    // Service accounts never set it (SCOPE_REQUIRED is the matrix's).
    let members = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: x.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("list");
    assert_eq!(members.into_inner().total_size, 1);
}

async fn parallel_toggles_leave_one_state_and_one_event_per_change(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Toggle", "toggle").await;
    let calls = (0..20).map(|i| {
        let (s, admin, org) = (&s, admin.clone(), org.clone());
        async move { set_org_policy(s, &admin, &org, i % 2 == 0).await }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("toggle");
    }
    let fin = get_org(&s, &admin, &org)
        .await
        .expect("get")
        .second_factor_required;
    // The events chain: each starts where the one before ended, from off
    // to the final state, so there is exactly one per change.
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT details FROM audit_events WHERE \
                 action = 'organization.second_factor_policy_changed' \
                 AND organization_id = '{org}' ORDER BY occurred_at, id"
            ),
        ))
        .await
        .expect("events");
    let mut state = false;
    let mut ons = 0;
    for r in &rows {
        let details: String = r.try_get("", "details").expect("details");
        let v: serde_json::Value = serde_json::from_str(&details).expect("json");
        let (b, a) = (
            v["before"]["second_factor_required"]
                .as_bool()
                .expect("before"),
            v["after"]["second_factor_required"]
                .as_bool()
                .expect("after"),
        );
        assert_eq!(b, state, "events chain: {details}");
        assert_ne!(a, b, "an event is a change: {details}");
        state = a;
        ons += usize::from(a);
    }
    assert_eq!(state, fin, "the last event ends in the final state");
    let revocations = sql_i64(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM revocation_events WHERE \
             reason = 'second_factor_required' AND organization_id = '{org}'"
        ),
    )
    .await;
    assert_eq!(revocations as usize, ons, "one revocation per turning on");
    db.close().await.expect("close");
}

async fn the_platform_policy_unmakes_platform_admins_without_a_second_factor(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Plat", "plat").await;
    let (pa2, pa2_token) = s.user("second-admin@plat.test").await;
    s.users()
        .await
        .set_platform_admin(authed(
            SetPlatformAdminRequest {
                user_id: pa2.clone(),
                platform_admin: true,
            },
            &admin,
        ))
        .await
        .expect("second admin");
    let (member, member_token) = s.user("member@plat.test").await;
    s.add_member(&admin, &org, &member, Role::Member).await;
    let (mgr, mgr_token) = s.user("mgr@plat.test").await;
    s.add_member(&admin, &org, &mgr, Role::Manager).await;
    let platform = |t: &str| authed(GetPlatformPolicyRequest {}, t);

    // Not for anyone but PlatformAdmins.
    assert_status(
        s.platform()
            .await
            .update_platform_policy(authed(
                UpdatePlatformPolicyRequest {
                    policy: Some(PlatformPolicy {
                        platform_admin_second_factor_required: true,
                    }),
                    update_mask: None,
                },
                &member_token,
            ))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_invalid(
        s.platform()
            .await
            .update_platform_policy(authed(
                UpdatePlatformPolicyRequest {
                    policy: None,
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["platform_admin".into()],
                    }),
                },
                &admin,
            ))
            .await,
        "update_mask",
    );
    let before = s
        .platform()
        .await
        .get_platform_policy(platform(&admin))
        .await
        .expect("get");
    assert_eq!(before.into_inner().policy, Some(PlatformPolicy::default()));

    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    let bootstrap = token_claims(&admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let about_pa2 = check(&s, &mgr_token, &pa2, &org, Permission::Device).await;
    assert!(about_pa2.allowed, "a PlatformAdmin holds every category");
    let on = s
        .platform()
        .await
        .update_platform_policy(authed(
            UpdatePlatformPolicyRequest {
                policy: Some(PlatformPolicy {
                    platform_admin_second_factor_required: true,
                }),
                update_mask: None,
            },
            &admin,
        ))
        .await
        .expect("turn on")
        .into_inner();
    assert_eq!(
        on.policy.map(|p| p.platform_admin_second_factor_required),
        Some(true)
    );

    // At once, for both PlatformAdmins (the caller included): PlatformAdmin
    // RPCs refused with the reason, no organization of others visible.
    for t in [&admin, &pa2_token] {
        assert_second_factor(
            s.platform().await.get_platform_policy(platform(t)).await,
            None,
        );
        assert_second_factor(
            s.users()
                .await
                .list_users(authed(ListUsersRequest::default(), t))
                .await,
            None,
        );
        assert_second_factor(get_org(&s, t, &org).await, None);
        assert_second_factor(
            s.auth()
                .await
                .watch_revocations(authed(WatchRevocationsRequest::default(), t))
                .await
                .map(drop),
            None,
        );
        // Still signed in as an ordinary user (enrollment stays open).
        s.users()
            .await
            .get_me(authed(GetMeRequest {}, t))
            .await
            .expect("GetMe");
    }
    // CheckPermission: a PlatformAdmin subject without a second factor
    // holds nothing where they are no member, with the reason.
    let about_pa2 = check(&s, &mgr_token, &pa2, &org, Permission::Device).await;
    assert_eq!(
        (about_pa2.allowed, about_pa2.denial_reason),
        (false, ErrorReason::SecondFactorRequired as i32)
    );
    // Members are not PlatformAdmins: untouched.
    get_org(&s, &member_token, &org).await.expect("member");
    // New tokens: `pa` false.
    let login = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    assert_eq!(
        token_claims(&login.access_token)["pa"],
        serde_json::json!(false)
    );
    let refreshed = refresh(&s, &login.refresh_token, None)
        .await
        .expect("refresh");
    assert_eq!(
        token_claims(&refreshed.access_token)["pa"],
        serde_json::json!(false)
    );
    // Offline verifiers: an event for each PlatformAdmin, none for others.
    let mut named = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while named.len() < 2 {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("events within 10 s")
            .expect("stream")
            .expect("open");
        let e = msg.event.expect("event");
        if e.reason == "second_factor_required" {
            named.insert(e.user_id);
        }
    }
    assert_eq!(
        named,
        [bootstrap.clone(), pa2.clone()].into_iter().collect()
    );
    let n = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM revocation_events WHERE reason = 'second_factor_required'",
    )
    .await;
    assert_eq!(n, 2);
    let n = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'platform.policy_changed'",
    )
    .await;
    assert_eq!(n, 1);

    // Nobody without a second factor can turn it off again; the recovery
    // when no PlatformAdmin has one is the database (README). Off restores
    // the flag at once, on the next call.
    exec(
        &s,
        "UPDATE platform_settings SET platform_admin_second_factor_required = FALSE",
    )
    .await;
    s.platform()
        .await
        .get_platform_policy(platform(&admin))
        .await
        .expect("PlatformAdmin again");
    let back = refresh(&s, &refreshed.refresh_token, None)
        .await
        .expect("refresh");
    assert_eq!(
        token_claims(&back.access_token)["pa"],
        serde_json::json!(true)
    );
}

async fn a_test_email_reports_what_the_smtp_server_said(backend: Backend) {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--smtp-url".into(), sink.url()],
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Mail", "mail").await;
    let (mgr, mgr_token) = s.user("mgr@mail.test").await;
    s.add_member(&admin, &org, &mgr, Role::Manager).await;
    let (member, member_token) = s.user("member@mail.test").await;
    s.add_member(&admin, &org, &member, Role::Member).await;
    let send = |to: &str, t: &str| authed(SendTestEmailRequest { to: to.into() }, t);

    for t in [&mgr_token, &member_token] {
        assert_status(
            s.platform()
                .await
                .send_test_email(send("ops@mail.test", t))
                .await,
            Code::PermissionDenied,
            "PLATFORM_ADMIN_REQUIRED",
        );
    }
    assert_invalid(
        s.platform()
            .await
            .send_test_email(send("not an address", &admin))
            .await,
        "to",
    );
    assert_eq!(sink.count_to("ops@mail.test"), 0);

    let ok = s
        .platform()
        .await
        .send_test_email(send("ops@mail.test", &admin))
        .await
        .expect("delivered")
        .into_inner();
    assert!(ok.delivered && ok.smtp_configured, "{ok:?}");
    assert_eq!((ok.smtp_code, ok.error.as_str()), (0, ""));
    // In the sink already: the answer waited for the SMTP server.
    assert_eq!(sink.count_to("ops@mail.test"), 1);
    let mail = sink.wait_for("ops@mail.test", 1).await;
    assert_eq!(mail.header("Subject").as_deref(), Some("KIOPS test email"));

    sink.refuse_next(1);
    let refused = s
        .platform()
        .await
        .send_test_email(send("ops@mail.test", &admin))
        .await
        .expect("an answer, not an error")
        .into_inner();
    assert!(!refused.delivered, "{refused:?}");
    assert_eq!(refused.smtp_code, 451, "{refused:?}");
    assert!(!refused.error.is_empty(), "{refused:?}");
    assert_eq!(sink.count_to("ops@mail.test"), 1, "nothing retried");
    let n = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'mail.test_sent'",
    )
    .await;
    assert_eq!(n, 2, "each test audited, refused calls not");
    let n = sql_i64(&s, "SELECT COUNT(*) AS n FROM email_outbox").await;
    assert_eq!(n, 0, "never through the outbox");

    // An SMTP server that is not there: the connection error, at once
    // (bounded), and a rate limit per PlatformAdmin.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("smtp://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let s2 = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--smtp-url".into(),
                dead_url,
                "--login-rate-per-email".into(),
                "2".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let admin2 = s2.admin_token().await;
    let down = s2
        .platform()
        .await
        .send_test_email(send("ops@mail.test", &admin2))
        .await
        .expect("an answer")
        .into_inner();
    assert!(!down.delivered && down.smtp_configured, "{down:?}");
    assert_eq!(down.smtp_code, 0, "{down:?}");
    assert!(!down.error.is_empty(), "{down:?}");
    s2.platform()
        .await
        .send_test_email(send("ops@mail.test", &admin2))
        .await
        .expect("second");
    assert_status(
        s2.platform()
            .await
            .send_test_email(send("ops@mail.test", &admin2))
            .await,
        Code::ResourceExhausted,
        "RATE_LIMITED",
    );
}

async fn a_session_with_a_second_factor_meets_the_policies(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin_login = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    let admin = admin_login.access_token.clone();
    let strict = s.create_org(&admin, "Strict", "strict").await;
    let (uid, old_session) = s.user("una@strict.test").await;
    s.add_member(&admin, &strict, &uid, Role::Member).await;
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: strict.clone(),
                user_id: uid.clone(),
                permissions: vec![Permission::Device as i32],
            },
            &admin,
        ))
        .await
        .expect("grant");
    set_org_policy(&s, &admin, &strict, true).await.expect("on");
    let una = s.login("una@strict.test", PASSWORD).await.expect("login");
    assert_second_factor(get_org(&s, &una.access_token, &strict).await, Some(&strict));
    let by_admin = check(&s, &admin, &uid, &strict, Permission::Device).await;
    assert!(!by_admin.allowed);

    // Enrollment stays open to the gated session, and upgrades it: the
    // same access token is in the organization on its next call.
    let (mut una_app, _) = enable_totp(&s, &una.access_token).await;
    get_org(&s, &una.access_token, &strict)
        .await
        .expect("in again");
    let own = check(&s, &una.access_token, &uid, &strict, Permission::Device).await;
    assert!(own.allowed, "{own:?}");
    let refreshed = refresh(&s, &una.refresh_token, None)
        .await
        .expect("refresh");
    assert!(token_orgs(&refreshed.access_token).get(&strict).is_some());
    refresh(&s, &refreshed.refresh_token, Some(&strict))
        .await
        .expect("a token scoped to it");
    // Others asking: the subject has a live session with a second factor.
    let by_admin = check(&s, &admin, &uid, &strict, Permission::Device).await;
    assert!(by_admin.allowed, "{by_admin:?}");
    // The account's older password-only session is still not enough.
    assert_second_factor(get_org(&s, &old_session, &strict).await, Some(&strict));
    let own_old = check(&s, &old_session, &uid, &strict, Permission::Device).await;
    assert_eq!(
        (own_old.allowed, own_old.denial_reason),
        (false, ErrorReason::SecondFactorRequired as i32)
    );
    // A new login with the code: the organization is in its first token.
    let ch = challenge(&s, "una@strict.test").await;
    let code = una_app.next_code(&s);
    let v = verify(&s, &ch, &code, "").await.expect("verify");
    assert!(token_orgs(&v.access_token).get(&strict).is_some());
    get_org(&s, &v.access_token, &strict).await.expect("in");

    // The platform policy: the admin's upgraded session stays a
    // PlatformAdmin, a second PlatformAdmin without one does not.
    let (pa2, _) = s.user("second-admin@strict.test").await;
    s.users()
        .await
        .set_platform_admin(authed(
            SetPlatformAdminRequest {
                user_id: pa2,
                platform_admin: true,
            },
            &admin,
        ))
        .await
        .expect("second admin");
    let pa2_token = s
        .login("second-admin@strict.test", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let (mut app, _) = enable_totp_with(&s, &admin, ADMIN_PASSWORD).await;

    s.platform()
        .await
        .update_platform_policy(authed(
            UpdatePlatformPolicyRequest {
                policy: Some(PlatformPolicy {
                    platform_admin_second_factor_required: true,
                }),
                update_mask: None,
            },
            &admin,
        ))
        .await
        .expect("on");
    s.platform()
        .await
        .get_platform_policy(authed(GetPlatformPolicyRequest {}, &admin))
        .await
        .expect("still a PlatformAdmin");
    assert_second_factor(
        s.platform()
            .await
            .get_platform_policy(authed(GetPlatformPolicyRequest {}, &pa2_token))
            .await,
        None,
    );
    let admin_refreshed = refresh(&s, &admin_login.refresh_token, None)
        .await
        .expect("refresh");
    assert_eq!(
        token_claims(&admin_refreshed.access_token)["pa"],
        serde_json::json!(true)
    );
    // A fresh admin login goes through the challenge and comes back `pa`.
    let ch = s
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login")
        .second_factor
        .expect("a challenge")
        .challenge;
    let code = app.next_code(&s);
    let v = verify(&s, &ch, &code, "").await.expect("verify");
    assert_eq!(token_claims(&v.access_token)["pa"], serde_json::json!(true));
    // Off again, by a PlatformAdmin with a second factor.
    s.platform()
        .await
        .update_platform_policy(authed(
            UpdatePlatformPolicyRequest {
                policy: Some(PlatformPolicy {
                    platform_admin_second_factor_required: false,
                }),
                update_mask: None,
            },
            &v.access_token,
        ))
        .await
        .expect("off");
    s.platform()
        .await
        .get_platform_policy(authed(GetPlatformPolicyRequest {}, &pa2_token))
        .await
        .expect("PlatformAdmin again");
}
