//! Red-team probes of the issue-20 guarantees (items 1, 4, 5, 7, 10b, 10e),
//! through the real binary. A test that fails here is a break; see the
//! comment on each for what it attacks.

use crate::support::*;
use kiops_proto::v1::*;
use std::time::Duration;
use tonic::Code;

crate::both_backends!(
    old_password_login_racing_a_password_change_gets_no_live_session,
    login_racing_account_deletion_is_never_internal,
    add_member_racing_account_deletion_is_never_internal,
    csv_cells_cannot_smuggle_a_formula_behind_a_semicolon,
    mixed_live_and_revoked_callers_in_one_check_burst,
    stream_slots_and_permits_come_back_after_refusals_and_cancels,
    watch_cursor_tricks_are_refused_or_harmless,
    stalled_exports_do_not_hold_the_load_limit_forever,
    login_racing_deactivation_leaves_no_session_for_reactivation_to_revive,
);

fn is_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// Item 1 / R14 "ChangePassword: other sessions revoked". An attacker who
/// knows the old password logs in while the owner changes it. A login whose
/// password was checked against the old hash but whose session commits after
/// the change is a fresh session the change never revoked: the attacker keeps
/// a working account after the owner "revoked other sessions". Assertion is
/// order-free: once both are done, no login made with the OLD password may
/// hold a live session (one committed before the change is revoked by it;
/// one after it must not exist).
async fn old_password_login_racing_a_password_change_gets_no_live_session(backend: Backend) {
    const NEW: &str = "a completely different passphrase 42";
    // 16 logins at once with the right password: above the default lockout
    // threshold they would take every attempt slot and the owner's change
    // would be refused unevaluated (exact lockout, item 2), which is not
    // what this test races.
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--lockout-threshold".into(), "40".into()],
            ..Default::default()
        },
    )
    .await;
    let mut broke = Vec::new();
    for round in 0..4 {
        let email = format!("victim{round}@example.com");
        let (_, owner) = s.user(&email).await;
        let mut logins = Vec::new();
        for i in 0..16u64 {
            let s = &s;
            let email = email.clone();
            logins.push(async move {
                tokio::time::sleep(Duration::from_millis(i * 25)).await;
                s.login(&email, PASSWORD).await
            });
        }
        let change = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.users()
                .await
                .change_password(authed(
                    ChangePasswordRequest {
                        current_password: PASSWORD.into(),
                        new_password: NEW.into(),
                    },
                    &owner,
                ))
                .await
        };
        let (results, changed) = tokio::join!(futures::future::join_all(logins), change);
        changed.expect("change password");
        for r in results.into_iter().flatten() {
            let me = s
                .users()
                .await
                .get_me(authed(GetMeRequest {}, &r.access_token))
                .await;
            if me.is_ok() {
                broke.push(format!("round {round}: access token works"));
            }
            let refreshed = s
                .auth()
                .await
                .refresh(RefreshRequest {
                    refresh_token: r.refresh_token.clone(),
                    organization_id: None,
                })
                .await;
            if refreshed.is_ok() {
                broke.push(format!("round {round}: refresh token works"));
            }
        }
    }
    assert!(
        broke.is_empty(),
        "a login with the old password outlived the password change: {broke:?}"
    );
}

/// "Any INTERNAL": logins for an account that a PlatformAdmin deletes at
/// the same moment. Each must answer OK (before) or INVALID_CREDENTIALS
/// (after), never INTERNAL (the session insert failing its foreign key).
async fn login_racing_account_deletion_is_never_internal(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut internal = Vec::new();
    for round in 0..4 {
        let email = format!("gone{round}@example.com");
        let id = s.create_user(&email, "Gone", PASSWORD).await;
        let mut logins = Vec::new();
        for i in 0..12u64 {
            let s = &s;
            let email = email.clone();
            logins.push(async move {
                tokio::time::sleep(Duration::from_millis(i * 20)).await;
                s.login(&email, PASSWORD).await
            });
        }
        let delete = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.users()
                .await
                .delete_user(authed(
                    DeleteUserRequest {
                        user_id: id.clone(),
                    },
                    &admin,
                ))
                .await
        };
        let (results, deleted) = tokio::join!(futures::future::join_all(logins), delete);
        deleted.expect("delete user");
        for r in results {
            if let Err(e) = r {
                if e.code() != Code::Unauthenticated {
                    internal.push(format!("{:?} {}", e.code(), e.message()));
                }
            }
        }
    }
    assert!(
        internal.is_empty(),
        "logins racing DeleteUser: {internal:?}"
    );
}

/// "Any INTERNAL" and 10e: a PlatformAdmin adds a user to organizations
/// while another deletes that user. Each AddMember answers OK or a clear
/// refusal (NOT_FOUND...), never INTERNAL; and every membership that was
/// added before the deletion has its `membership.removed` event.
async fn add_member_racing_account_deletion_is_never_internal(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut orgs = Vec::new();
    for i in 0..10 {
        orgs.push(s.create_org(&admin, "Org", &format!("race-{i}")).await);
    }
    let mut bad = Vec::new();
    for round in 0..3 {
        let id = s
            .create_user(&format!("raced{round}@example.com"), "R", PASSWORD)
            .await;
        let adds = orgs.iter().enumerate().map(|(i, org)| {
            let (s, admin, id, org) = (&s, admin.clone(), id.clone(), org.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 3)).await;
                s.members()
                    .await
                    .add_member(authed(
                        AddMemberRequest {
                            organization_id: org,
                            user_id: id,
                            role: Role::Member as i32,
                        },
                        &admin,
                    ))
                    .await
            }
        });
        let delete = async {
            tokio::time::sleep(Duration::from_millis(12)).await;
            s.users()
                .await
                .delete_user(authed(
                    DeleteUserRequest {
                        user_id: id.clone(),
                    },
                    &admin,
                ))
                .await
        };
        let (results, deleted) = tokio::join!(futures::future::join_all(adds), delete);
        if let Err(e) = deleted {
            bad.push(format!("DeleteUser {:?} {}", e.code(), e.message()));
        }
        for r in results {
            if let Err(e) = r {
                if matches!(e.code(), Code::Internal | Code::Unknown) {
                    bad.push(format!("AddMember {:?} {}", e.code(), e.message()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "AddMember racing DeleteUser: {bad:?}");
}

/// 10b bypass: the cell neutralisation looks only at a cell's first
/// character, and leaves a cell without `,` `"` or newline unquoted. A
/// request id is any printable ASCII (x-request-id, up to 128), so
/// `r;=1+2` goes out bare; a spreadsheet whose list separator is `;`
/// (Excel in most European locales opens .csv that way) splits it and
/// evaluates `=1+2...` as a formula. OWASP: quote every cell and neutralise
/// after every separator, not only at the start.
async fn csv_cells_cannot_smuggle_a_formula_behind_a_semicolon(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (_, t) = s.user("semi@example.com").await;
    for rid in ["r;=1+2", "r;@SUM(A1:A2)", "r;-3+cmd|'/C_calc'!A0"] {
        let mut req = authed(
            UpdateMeRequest {
                name: "Semi".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                ..Default::default()
            },
            &t,
        );
        req.metadata_mut()
            .insert("x-request-id", rid.parse().expect("request id"));
        s.users().await.update_me(req).await.expect("update me");
    }
    let mut st = s
        .audit()
        .await
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                format: ExportFormat::Csv as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("export")
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = st.message().await.expect("chunk") {
        out.extend(c.chunk);
    }
    let text = String::from_utf8(out).expect("utf-8");
    // Read as a ';'-separated file: quotes group, ';' outside them splits.
    let mut formulas = Vec::new();
    for line in text.lines() {
        let (mut quoted, mut cell) = (false, String::new());
        for c in line.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cell.push(c)
                }
                ';' if !quoted => {
                    cell.clear();
                }
                c => cell.push(c),
            }
            if !quoted && cell.len() == 1 && is_formula(&cell) {
                formulas.push(line.to_string());
            }
        }
    }
    assert!(
        formulas.is_empty(),
        "cells that start a formula once split on ';': {formulas:#?}"
    );
}

/// Item 1 in CheckPermission's batched/inline paths: one user with a live
/// and a revoked session, another user live, all checking at once (so
/// PostgreSQL batches them together and the SQLite inline reader serves
/// them). Each revoked-session check is SESSION_REVOKED, each live one OK.
async fn mixed_live_and_revoked_callers_in_one_check_burst(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Org", "burst").await;
    let (a, _) = s.user("a@example.com").await;
    let (b, b_live) = s.user("b@example.com").await;
    s.add_member(&admin, &org, &a, Role::Member).await;
    s.add_member(&admin, &org, &b, Role::Member).await;
    let a_live = s.login("a@example.com", PASSWORD).await.expect("login");
    let a_dead = s.login("a@example.com", PASSWORD).await.expect("login");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: a_dead.refresh_token.clone(),
            },
            &a_dead.access_token,
        ))
        .await
        .expect("logout");
    let mut calls = Vec::new();
    for round in 0..10 {
        for (who, token, live, subject) in [
            ("a-dead", a_dead.access_token.clone(), false, &a),
            ("a-dead", a_dead.access_token.clone(), false, &b),
            ("a-live", a_live.access_token.clone(), true, &a),
            ("b-live", b_live.clone(), true, &b),
        ] {
            let (s, org, subject) = (&s, org.clone(), subject.clone());
            calls.push(async move {
                tokio::time::sleep(Duration::from_millis(round)).await;
                let r = s
                    .members()
                    .await
                    .check_permission(authed(
                        CheckPermissionRequest {
                            user_id: subject,
                            organization_id: org,
                            permission: Permission::Device as i32,
                        },
                        &token,
                    ))
                    .await;
                (who, live, r)
            });
        }
    }
    let mut wrong = Vec::new();
    for (who, live, r) in futures::future::join_all(calls).await {
        match (live, r) {
            (true, Ok(_)) => {}
            // A Member asking about another Member: refused for R4, after
            // authentication; that is not what is probed.
            (true, Err(e)) if e.code() == Code::PermissionDenied || e.code() == Code::NotFound => {}
            (false, Err(e))
                if e.code() == Code::Unauthenticated && reason(&e) == "SESSION_REVOKED" => {}
            (_, r) => wrong.push(format!("{who}: {r:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Item 7: refusals (TOO_MANY_STREAMS, bad cursor, revoked session) and
/// cancelled streams give back both the per-caller slot and the load
/// permit: after 30 such attempts at a limit of 4 in flight, ordinary calls
/// and a fresh watch still get through.
async fn stream_slots_and_permits_come_back_after_refusals_and_cancels(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: [
                "--max-concurrent-requests",
                "4",
                "--max-watches-per-caller",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let dead = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: dead.refresh_token.clone(),
            },
            &dead.access_token,
        ))
        .await
        .expect("logout");
    let watch = |token: String, after: &'static str| {
        let s = &s;
        async move {
            s.auth()
                .await
                .watch_revocations(authed(
                    WatchRevocationsRequest {
                        after_event_id: after.into(),
                    },
                    &token,
                ))
                .await
        }
    };
    let held = watch(admin.clone(), "").await.expect("first watch");
    for i in 0..30 {
        let r = match i % 3 {
            0 => watch(admin.clone(), "").await,
            1 => watch(admin.clone(), "not-a-number").await,
            _ => watch(dead.access_token.clone(), "").await,
        };
        let e = r
            .err()
            .unwrap_or_else(|| panic!("attempt {i} was accepted"));
        assert!(
            matches!(
                e.code(),
                Code::ResourceExhausted | Code::InvalidArgument | Code::Unauthenticated
            ),
            "{e:?}"
        );
        assert_ne!(reason(&e), "OVERLOADED", "attempt {i}: a permit leaked");
    }
    // Cancel the held one and open/cancel 20 more in a row.
    drop(held);
    for i in 0..20 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match watch(admin.clone(), "").await {
                Ok(w) => {
                    drop(w);
                    break;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "reopen {i}: slot never came back: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for _ in 0..8 {
        s.users()
            .await
            .get_me(authed(GetMeRequest {}, &admin))
            .await
            .expect("an ordinary call after all that");
    }
}

/// Item 6 cursor manipulation: negative, huge, non-numeric, overflowing
/// after_event_id. Each either is refused INVALID_ARGUMENT or opens a
/// stream; never INTERNAL; a stream after a cursor far in the future
/// still ends when the session is revoked.
async fn watch_cursor_tricks_are_refused_or_harmless(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    for after in [
        "-1",
        "-9223372036854775808",
        "9223372036854775807",
        "9223372036854775808",
        "1e3",
        " 1",
        "+1",
        "0x10",
        "١",
    ] {
        let r = s
            .auth()
            .await
            .watch_revocations(authed(
                WatchRevocationsRequest {
                    after_event_id: after.into(),
                },
                &admin,
            ))
            .await;
        if let Err(e) = &r {
            assert_eq!(e.code(), Code::InvalidArgument, "{after}: {e:?}");
        }
    }
    // A far-future cursor: the stream is silent but must still end when
    // its session is revoked.
    let mine = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    let mut st = s
        .auth()
        .await
        .watch_revocations(authed(
            WatchRevocationsRequest {
                after_event_id: "9223372036854775807".into(),
            },
            &mine.access_token,
        ))
        .await
        .expect("watch")
        .into_inner();
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: mine.refresh_token.clone(),
            },
            &mine.access_token,
        ))
        .await
        .expect("logout");
    let end = tokio::time::timeout(Duration::from_secs(10), st.message())
        .await
        .expect("the silent stream outlived its session by 10 s");
    let e = end.expect_err("an error, not a message or a clean end");
    assert_eq!(reason(&e), "SESSION_REVOKED", "{e:?}");
}

/// Item 7 / load limit: two Managers (audit is theirs by role) each open
/// their two allowed exports of their organization's trail and never read.
/// Each stalled export holds a load permit for as long as its token lives
/// (GuardedSender::send waits for room forever while the right holds), so
/// ceil(limit / 2) audit holders shut out every other call of the service,
/// logins and CheckPermission included. A stream whose client takes
/// nothing for 30 s (FINAL_SEND's own patience) should give its permit up.
async fn stalled_exports_do_not_hold_the_load_limit_forever(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: [
                "--max-concurrent-requests",
                "4",
                "--max-exports-per-caller",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Org", "stall").await;
    let (m1, t1) = s.user("m1@example.com").await;
    let (m2, t2) = s.user("m2@example.com").await;
    s.add_member(&admin, &org, &m1, Role::Manager).await;
    s.add_member(&admin, &org, &m2, Role::Manager).await;
    s.create_user("bystander@example.com", "B", PASSWORD).await;
    bulk_audit(&s, &org, 20_000).await;
    let mut held = Vec::new();
    for t in [&t1, &t1, &t2, &t2] {
        let st = s
            .audit()
            .await
            .export_audit_events(authed(
                ExportAuditEventsRequest {
                    organization_id: Some(org.clone()),
                    format: ExportFormat::JsonLines as i32,
                    ..Default::default()
                },
                t,
            ))
            .await
            .expect("export")
            .into_inner();
        held.push(st);
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    let login = s.login("bystander@example.com", PASSWORD).await;
    drop(held);
    assert!(
        login.is_ok(),
        "40 s after two Managers stalled four exports, a bystander's login is still shed: {:?}",
        login.err()
    );
}

/// Item 1 / deactivation: a PlatformAdmin deactivates a compromised
/// account while its attacker logs in. A login committed before the
/// deactivation is revoked by it; one committed after it must not exist
/// (the account is inactive). Otherwise its session stays unrevoked and
/// comes back to life, refresh token and all, when the account is
/// reactivated.
async fn login_racing_deactivation_leaves_no_session_for_reactivation_to_revive(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut broke = Vec::new();
    for round in 0..4 {
        let email = format!("pwned{round}@example.com");
        let id = s.create_user(&email, "P", PASSWORD).await;
        let mut logins = Vec::new();
        for i in 0..12u64 {
            let s = &s;
            let email = email.clone();
            logins.push(async move {
                tokio::time::sleep(Duration::from_millis(i * 20)).await;
                s.login(&email, PASSWORD).await
            });
        }
        let deactivate = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.users()
                .await
                .deactivate_user(authed(
                    DeactivateUserRequest {
                        user_id: id.clone(),
                    },
                    &admin,
                ))
                .await
        };
        let (results, done) = tokio::join!(futures::future::join_all(logins), deactivate);
        done.expect("deactivate");
        s.users()
            .await
            .reactivate_user(authed(
                ReactivateUserRequest {
                    user_id: id.clone(),
                },
                &admin,
            ))
            .await
            .expect("reactivate");
        for r in results.into_iter().flatten() {
            let refreshed = s
                .auth()
                .await
                .refresh(RefreshRequest {
                    refresh_token: r.refresh_token.clone(),
                    organization_id: None,
                })
                .await;
            if refreshed.is_ok() {
                broke.push(format!("round {round}: a raced login's session is live"));
            }
        }
    }
    assert!(broke.is_empty(), "{broke:?}");
}
