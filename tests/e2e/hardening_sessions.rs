//! Issue 20, items 1, 6 and 7: a session that ended is dead on this service
//! at once; the revocation stream never skips an event; long-lived streams
//! end when their caller loses the right to them.

use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::*;
use std::time::Duration;
use tonic::Code;

crate::both_backends!(
    ended_sessions_are_refused_on_every_kind_of_call,
    changing_the_password_keeps_only_the_session_that_changed_it,
    a_logout_racing_calls_leaves_no_call_through_after_it,
    a_session_past_its_lifetime_is_over,
    the_revocation_stream_never_skips_an_event_committed_late,
    streams_end_when_their_caller_loses_the_right,
    open_streams_count_against_the_limits,
    concurrent_revocations_through_two_replicas_reach_every_watcher_once,
);

async fn start_with_smtp(backend: Backend) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--smtp-url".into(), sink.url()],
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

/// A user in an organization with `device`, and the organization's id.
async fn member(s: &TestServer, email: &str) -> (String, String) {
    let admin = s.admin_token().await;
    let org = s
        .create_org(
            &admin,
            "Org",
            &format!("org-{}", email.split('@').next().unwrap_or("x")),
        )
        .await;
    let id = s.create_user(email, "Kim", PASSWORD).await;
    s.add_member(&admin, &org, &id, Role::Member).await;
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.clone(),
                user_id: id.clone(),
                permissions: vec![Permission::Device as i32],
            },
            &admin,
        ))
        .await
        .expect("grant");
    (id, org)
}

/// Calls of several services with `token`: GetMe, UpdateMe, CheckPermission
/// (its own fast path), RequestToJoin, ListOrganizations. Each result as
/// `Ok` or the status.
async fn calls(
    s: &TestServer,
    token: &str,
    user: &str,
    org: &str,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut users = s.users().await;
    let mut members = s.members().await;
    let mut approvals = s.approvals().await;
    vec![
        (
            "GetMe",
            users.get_me(authed(GetMeRequest {}, token)).await.map(drop),
        ),
        (
            "UpdateMe",
            users
                .update_me(authed(
                    UpdateMeRequest {
                        name: "Kim Again".into(),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["name".into()],
                        }),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        (
            "CheckPermission",
            members
                .check_permission(authed(
                    CheckPermissionRequest {
                        user_id: user.into(),
                        organization_id: org.into(),
                        permission: Permission::Device as i32,
                    },
                    token,
                ))
                .await
                .map(|r| assert!(r.into_inner().allowed, "device is granted")),
        ),
        (
            "RequestToJoin",
            approvals
                .request_to_join(authed(
                    RequestToJoinRequest {
                        organization_id: org.into(),
                    },
                    token,
                ))
                .await
                // Already a member: refused for that reason, after
                // authentication, which is what is probed here.
                .map(drop)
                .or_else(|e| {
                    if e.code() == Code::Unauthenticated {
                        Err(e)
                    } else {
                        Ok(())
                    }
                }),
        ),
        (
            "ListOrganizations",
            s.orgs()
                .await
                .list_organizations(authed(ListOrganizationsRequest::default(), token))
                .await
                .map(drop),
        ),
    ]
}

async fn assert_all_pass(s: &TestServer, token: &str, user: &str, org: &str, what: &str) {
    for (rpc, r) in calls(s, token, user, org).await {
        if let Err(e) = r {
            panic!("{what}: {rpc} refused a live session: {e:?}");
        }
    }
}

async fn assert_all_revoked(s: &TestServer, token: &str, user: &str, org: &str, what: &str) {
    for (rpc, r) in calls(s, token, user, org).await {
        match r {
            Ok(()) => panic!("{what}: {rpc} accepted a token of an ended session"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated, "{what}: {rpc}: {e:?}");
                assert_eq!(reason(&e), "SESSION_REVOKED", "{what}: {rpc}: {e:?}");
            }
        }
    }
}

async fn ended_sessions_are_refused_on_every_kind_of_call(backend: Backend) {
    let (s, sink) = start_with_smtp(backend).await;
    let (user, org) = member(&s, "kim@example.com").await;
    let mut auth = s.auth().await;

    // Logout.
    let a = s.login("kim@example.com", PASSWORD).await.expect("login");
    assert_all_pass(&s, &a.access_token, &user, &org, "before logout").await;
    auth.logout(authed(
        LogoutRequest {
            refresh_token: a.refresh_token.clone(),
        },
        &a.access_token,
    ))
    .await
    .expect("logout");
    assert_all_revoked(&s, &a.access_token, &user, &org, "after logout").await;

    // Refresh-token reuse revokes the session: its old and new access
    // tokens alike.
    let b = s.login("kim@example.com", PASSWORD).await.expect("login");
    let rotated = auth
        .refresh(RefreshRequest {
            refresh_token: b.refresh_token.clone(),
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_all_pass(&s, &rotated.access_token, &user, &org, "after rotation").await;
    assert_status(
        auth.refresh(RefreshRequest {
            refresh_token: b.refresh_token.clone(),
            organization_id: None,
        })
        .await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    assert_all_revoked(&s, &b.access_token, &user, &org, "reuse, first token").await;
    assert_all_revoked(&s, &rotated.access_token, &user, &org, "reuse, rotated").await;

    // ResetPassword ends every session.
    let c = s.login("kim@example.com", PASSWORD).await.expect("login");
    let d = s.login("kim@example.com", PASSWORD).await.expect("login");
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "kim@example.com".into(),
    })
    .await
    .expect("reset requested");
    let token = sink
        .wait_for("kim@example.com", 1)
        .await
        .token("kp")
        .expect("reset token");
    auth.reset_password(ResetPasswordRequest {
        token,
        new_password: "a brand new passphrase".into(),
    })
    .await
    .expect("reset");
    assert_all_revoked(&s, &c.access_token, &user, &org, "after reset").await;
    assert_all_revoked(&s, &d.access_token, &user, &org, "after reset").await;
}

/// A session past its absolute lifetime is over, even while an access token
/// minted for it has time left (minted by a refresh just before the end).
async fn a_session_past_its_lifetime_is_over(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--session-ttl".into(), "600".into()],
            ..Default::default()
        },
    )
    .await;
    let (user, org) = member(&s, "kim@example.com").await;
    let pair = s.login("kim@example.com", PASSWORD).await.expect("login");
    s.advance_clock(Duration::from_secs(500));
    let late = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: pair.refresh_token,
            organization_id: None,
        })
        .await
        .expect("refresh within the session's lifetime")
        .into_inner();
    assert_all_pass(&s, &late.access_token, &user, &org, "before the end").await;
    // 200 s later: the token has 100 s left (300 s lifetime), the session
    // ended 100 s ago.
    s.advance_clock(Duration::from_secs(200));
    assert_all_revoked(&s, &late.access_token, &user, &org, "after the end").await;
}

async fn changing_the_password_keeps_only_the_session_that_changed_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (user, org) = member(&s, "kim@example.com").await;
    let keep = s.login("kim@example.com", PASSWORD).await.expect("login");
    let other = s.login("kim@example.com", PASSWORD).await.expect("login");
    s.users()
        .await
        .change_password(authed(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "a brand new passphrase".into(),
            },
            &keep.access_token,
        ))
        .await
        .expect("change password");
    assert_all_pass(&s, &keep.access_token, &user, &org, "the changing session").await;
    assert_all_revoked(&s, &other.access_token, &user, &org, "the other session").await;
}

/// 20 calls race a logout: whatever they answered while it ran, none that
/// starts after it returned gets through, on any path (CheckPermission's
/// batched and inline reads included).
async fn a_logout_racing_calls_leaves_no_call_through_after_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (user, org) = member(&s, "kim@example.com").await;
    for round in 0..5 {
        let pair = s.login("kim@example.com", PASSWORD).await.expect("login");
        let check = |token: String| {
            let (user, org) = (user.clone(), org.clone());
            let ch = s.channel();
            async move {
                let mut m =
                    kiops_proto::v1::membership_service_client::MembershipServiceClient::new(
                        ch.await,
                    );
                m.check_permission(authed(
                    CheckPermissionRequest {
                        user_id: user,
                        organization_id: org,
                        permission: Permission::Device as i32,
                    },
                    &token,
                ))
                .await
            }
        };
        let racing: Vec<_> = (0..20).map(|_| check(pair.access_token.clone())).collect();
        let mut auth = s.auth().await;
        let logout = auth.logout(authed(
            LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            },
            &pair.access_token,
        ));
        let (results, out) = tokio::join!(futures::future::join_all(racing), logout);
        out.expect("logout");
        for r in results {
            if let Err(e) = r {
                assert_eq!(reason(&e), "SESSION_REVOKED", "round {round}: {e:?}");
            }
        }
        let after: Vec<_> = (0..20).map(|_| check(pair.access_token.clone())).collect();
        for r in futures::future::join_all(after).await {
            let e = r.expect_err("a call after logout got through");
            assert_eq!(reason(&e), "SESSION_REVOKED", "round {round}: {e:?}");
        }
    }
}

/// Reads `stream` until an event for `user_id` arrives (or 10 s pass).
async fn next_event_for(
    stream: &mut tonic::Streaming<WatchRevocationsResponse>,
    user_id: &str,
    seen: &mut Vec<RevocationEvent>,
) -> RevocationEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event for {user_id} within 10 s; saw {seen:?}"))
            .expect("stream")
            .expect("stream open");
        let e = msg.event.expect("event");
        seen.push(e.clone());
        if e.user_id == user_id {
            return e;
        }
    }
}

async fn watch(
    s: &TestServer,
    token: &str,
    after: &str,
) -> tonic::Streaming<WatchRevocationsResponse> {
    s.auth()
        .await
        .watch_revocations(authed(
            WatchRevocationsRequest {
                after_event_id: after.into(),
            },
            token,
        ))
        .await
        .expect("watch")
        .into_inner()
}

fn insert_revocation(user: &str, id: Option<i64>) -> String {
    match id {
        Some(id) => format!(
            "INSERT INTO revocation_events (id, user_id, organization_id, revoked_at, reason, session_id) \
             VALUES ({id}, '{user}', NULL, 1, 'test', NULL)"
        ),
        None => format!(
            "INSERT INTO revocation_events (user_id, organization_id, revoked_at, reason, session_id) \
             VALUES ('{user}', NULL, 1, 'test', NULL)"
        ),
    }
}

/// An event whose transaction commits after one with a larger id reaches a
/// live watcher, and a watcher that resumes after the larger one's event.
async fn the_revocation_stream_never_skips_an_event_committed_late(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let db = Database::connect(&s.db.url).await.expect("db");
    for round in 0..3 {
        let (early, late) = (format!("early-{round}"), format!("late-{round}"));
        let mut live = watch(&s, &admin, "").await;
        let mut seen = Vec::new();
        let resume_from;
        match backend {
            Backend::Postgres => {
                // Two real transactions: `late` takes its id first and
                // commits last.
                let tx = db.begin().await.expect("begin");
                tx.execute_unprepared(&insert_revocation(&late, None))
                    .await
                    .expect("insert late");
                db.execute_unprepared(&insert_revocation(&early, None))
                    .await
                    .expect("insert early");
                resume_from = next_event_for(&mut live, &early, &mut seen).await.event_id;
                tx.commit().await.expect("commit late");
            }
            Backend::Sqlite => {
                // One writer cannot interleave commits; the ids that
                // interleaving would give are given by hand.
                let max: i64 = db
                    .query_one_raw(sea_orm::Statement::from_string(
                        sea_orm::DatabaseBackend::Sqlite,
                        "SELECT COALESCE(MAX(id), 0) AS m FROM revocation_events",
                    ))
                    .await
                    .expect("max")
                    .expect("row")
                    .try_get("", "m")
                    .expect("m");
                db.execute_unprepared(&insert_revocation(&early, Some(max + 100)))
                    .await
                    .expect("insert early");
                resume_from = next_event_for(&mut live, &early, &mut seen).await.event_id;
                db.execute_unprepared(&insert_revocation(&late, Some(max + 1)))
                    .await
                    .expect("insert late");
            }
        }
        next_event_for(&mut live, &late, &mut seen).await;
        // Each event once, in increasing event_id order.
        let ids: Vec<i64> = seen
            .iter()
            .map(|e| e.event_id.parse().expect("id"))
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "round {round}: {ids:?}"
        );
        // A watcher that had stopped right after `early` resumes with `late`.
        let mut resumed = watch(&s, &admin, &resume_from).await;
        let mut again = Vec::new();
        next_event_for(&mut resumed, &late, &mut again).await;
        assert!(
            again.iter().all(|e| e.user_id != early),
            "round {round}: resumed stream repeated an event before its cursor: {again:?}"
        );
    }
    db.close().await.expect("close");
}

async fn export(
    s: &TestServer,
    token: &str,
    org: &str,
) -> Result<tonic::Streaming<ExportAuditEventsResponse>, tonic::Status> {
    s.audit()
        .await
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.into()),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

/// Reads a revocation stream until it ends; its final error, and how long
/// that took.
async fn watch_ends(
    mut stream: tonic::Streaming<WatchRevocationsResponse>,
) -> (tonic::Status, Duration) {
    let t = std::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => panic!("the stream is still open 10 s after its caller lost the right"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(e)) => return (e, t.elapsed()),
        }
    }
}

async fn platform_admin(s: &TestServer, admin: &str, email: &str) -> (String, LoginResponse) {
    let id = s
        .users()
        .await
        .create_user(authed(
            CreateUserRequest {
                email: email.into(),
                name: "Pat".into(),
                password: PASSWORD.into(),
                platform_admin: true,
            },
            admin,
        ))
        .await
        .expect("create admin")
        .into_inner()
        .user
        .expect("user")
        .user_id;
    (id, s.login(email, PASSWORD).await.expect("login"))
}

async fn streams_end_when_their_caller_loses_the_right(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut users = s.users().await;

    // The PlatformAdmin flag removed.
    let (b, pair) = platform_admin(&s, &admin, "b@example.com").await;
    let stream = watch(&s, &pair.access_token, "").await;
    users
        .set_platform_admin(authed(
            SetPlatformAdminRequest {
                user_id: b,
                platform_admin: false,
            },
            &admin,
        ))
        .await
        .expect("unflag");
    let (e, took) = watch_ends(stream).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "PLATFORM_ADMIN_REQUIRED", "{e:?}");
    println!("watch ended {took:?} after the flag was removed");

    // The account deactivated.
    let (c, pair) = platform_admin(&s, &admin, "c@example.com").await;
    let stream = watch(&s, &pair.access_token, "").await;
    users
        .deactivate_user(authed(DeactivateUserRequest { user_id: c }, &admin))
        .await
        .expect("deactivate");
    let (e, _) = watch_ends(stream).await;
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "ACCOUNT_DISABLED", "{e:?}");

    // The session logged out.
    let (_, pair) = platform_admin(&s, &admin, "d@example.com").await;
    let stream = watch(&s, &pair.access_token, "").await;
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            },
            &pair.access_token,
        ))
        .await
        .expect("logout");
    let (e, _) = watch_ends(stream).await;
    assert_eq!(reason(&e), "SESSION_REVOKED", "{e:?}");

    // An export whose reader lost the audit permission while it ran (and
    // was not even reading) ends with the refusal, not with the data.
    let org = s.create_org(&admin, "Org", "org").await;
    let (reader, token) = s.user("auditor@example.com").await;
    s.add_member(&admin, &org, &reader, Role::Member).await;
    let grant = |perms: Vec<i32>| {
        let (admin, org, reader) = (admin.clone(), org.clone(), reader.clone());
        let s = &s;
        async move {
            s.members()
                .await
                .set_permissions(authed(
                    SetPermissionsRequest {
                        organization_id: org,
                        user_id: reader,
                        permissions: perms,
                    },
                    &admin,
                ))
                .await
                .expect("set permissions");
        }
    };
    grant(vec![Permission::Audit as i32]).await;
    bulk_audit(&s, &org, 20_000).await;
    let mut stream = export(&s, &token, &org).await.expect("export");
    let first = stream.message().await.expect("first chunk").expect("data");
    let mut bytes = first.chunk.len();
    grant(vec![]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = std::time::Instant::now();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => panic!("export still open 10 s after the permission was revoked"),
            Ok(Ok(Some(m))) => bytes += m.chunk.len(),
            Ok(Ok(None)) => {
                panic!("the export completed ({bytes} bytes) for a caller without the right")
            }
            Ok(Err(e)) => break e,
        }
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "AUDIT_PERMISSION_REQUIRED", "{e:?}");
    assert!(
        bytes < 20_000 * 300,
        "only what was buffered arrived: {bytes} bytes"
    );
    println!(
        "export refused after {bytes} buffered bytes, {:?} of reading",
        t.elapsed()
    );
}

/// Streams hold a permit of the load limit and a slot of their caller's for
/// as long as they are open.
async fn open_streams_count_against_the_limits(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: [
                "--max-concurrent-requests",
                "5",
                "--max-watches-per-caller",
                "2",
                "--max-exports-per-caller",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Org", "org").await;
    bulk_audit(&s, &org, 20_000).await;

    // Per caller: two watches, one export; the next of each is refused.
    let w1 = watch(&s, &admin, "").await;
    let w2 = watch(&s, &admin, "").await;
    let refused = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await;
    assert_status(refused, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    let x1 = export(&s, &admin, &org).await.expect("export");
    assert_status(
        export(&s, &admin, &org).await,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS",
    );

    // Globally: three streams and two more of another PlatformAdmin hold
    // all five permits; a plain call is shed, as any call beyond the limit.
    let (_, other) = platform_admin(&s, &admin, "pat@example.com").await;
    let w3 = watch(&s, &other.access_token, "").await;
    let w4 = watch(&s, &other.access_token, "").await;
    assert_status(
        s.users()
            .await
            .get_me(authed(GetMeRequest {}, &admin))
            .await,
        Code::ResourceExhausted,
        "OVERLOADED",
    );

    // A closed stream gives its permit and slot back.
    drop((w1, x1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = s
            .users()
            .await
            .get_me(authed(GetMeRequest {}, &admin))
            .await;
        if got.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "permit never returned: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = watch(&s, &admin, "").await;
    drop((w2, w3, w4, again));
}

/// Logouts through two replicas at once (each replica numbers what it sees
/// committed, concurrently): watchers on both replicas get every event
/// exactly once, with the same ids.
async fn concurrent_revocations_through_two_replicas_reach_every_watcher_once(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a
        .replica(ServerOptions {
            bootstrap_admin: false,
            ..Default::default()
        })
        .await;
    let admin = a.admin_token().await;
    let mut on_a = watch(&a, &admin, "").await;
    let mut on_b = watch(&b, &admin, "").await;
    let mut sessions = Vec::new();
    for i in 0..30 {
        let s = if i % 2 == 0 { &a } else { &b };
        sessions.push((
            i,
            s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login"),
        ));
    }
    let logouts = sessions.iter().map(|(i, pair)| {
        let s = if i % 2 == 0 { &a } else { &b };
        let pair = pair.clone();
        async move {
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
        }
    });
    futures::future::join_all(logouts).await;
    let expected: std::collections::BTreeSet<String> = sessions
        .iter()
        .map(|(_, p)| {
            token_claims(&p.access_token)["sid"]
                .as_str()
                .expect("sid")
                .to_string()
        })
        .collect();
    let mut per_replica = Vec::new();
    for stream in [&mut on_a, &mut on_b] {
        let mut got = std::collections::BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while got.len() < expected.len() {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{} of {} logouts arrived", got.len(), expected.len()))
                .expect("stream")
                .expect("open");
            let e = msg.event.expect("event");
            if e.reason == "logout" {
                assert!(
                    got.insert(e.session_id.clone(), e.event_id.clone())
                        .is_none(),
                    "event for session {} delivered twice",
                    e.session_id
                );
            }
        }
        assert_eq!(
            got.keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            expected
        );
        per_replica.push(got);
    }
    assert_eq!(per_replica[0], per_replica[1], "both replicas number alike");
}
