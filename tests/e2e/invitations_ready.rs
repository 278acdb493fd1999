//! Issue 24, invitations that arrive ready: an invitation carries the
//! invitee's name and the permissions (or a template's, copied at creation)
//! the membership starts with, and shows where its email stands (R32):
//! QUEUED, SENT, FAILED with the last error and the next attempt.
//!
//! Emails go to the SMTP sink on loopback; the sink holds, refuses (550)
//! or defers (451) deliveries on the test's word, so every state is
//! observed without racing the sender.

use crate::hardening_mail::{database_copy, found_in, sql_rows};
use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::*;
use std::time::{Duration, Instant};
use tonic::Code;

crate::both_backends!(
    invited_with_permissions_starts_with_them,
    invited_with_a_template_gets_the_copy_made_at_invitation,
    who_may_invite_with_what,
    bad_names_permissions_and_templates_are_named,
    delivery_is_queued_until_the_server_takes_it_then_sent,
    a_refused_recipient_fails_for_good,
    a_deferred_email_fails_with_a_next_attempt_then_is_sent,
    a_resend_shows_the_new_emails_state,
    twenty_parallel_accepts_make_one_membership_with_its_permissions,
);

pub(crate) async fn start(backend: Backend) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--smtp-url".into(),
                sink.url(),
                "--public-url".into(),
                "https://console.kiops.test".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

/// (admin token, org id, manager id, manager token).
pub(crate) async fn org_with_manager(
    s: &TestServer,
    code: &str,
) -> (String, String, String, String) {
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, &code.to_uppercase(), code).await;
    let email = format!("mgr@{code}.test");
    let (mgr_id, _) = s.user(&email).await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    let mgr = s.login(&email, PASSWORD).await.expect("login").access_token;
    (admin, org, mgr_id, mgr)
}

pub(crate) fn req(org: &str, email: &str) -> CreateInvitationRequest {
    CreateInvitationRequest {
        organization_id: org.into(),
        email: email.into(),
        role: Role::Member as i32,
        ..Default::default()
    }
}

pub(crate) async fn invite(
    s: &TestServer,
    r: CreateInvitationRequest,
    token: &str,
) -> Result<Invitation, tonic::Status> {
    s.invitations()
        .await
        .create_invitation(authed(r, token))
        .await
        .map(|r| r.into_inner().invitation.expect("invitation"))
}

pub(crate) async fn listed(s: &TestServer, org: &str, token: &str, id: &str) -> Invitation {
    s.invitations()
        .await
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("list invitations")
        .into_inner()
        .invitations
        .into_iter()
        .find(|i| i.invitation_id == id)
        .expect("the invitation is listed")
}

pub(crate) fn delivery(i: &Invitation) -> InvitationDelivery {
    i.delivery.clone().expect("delivery")
}

/// Waits until ListInvitations shows the invitation in `state`.
pub(crate) async fn wait_state(
    s: &TestServer,
    org: &str,
    token: &str,
    id: &str,
    state: DeliveryState,
) -> InvitationDelivery {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = delivery(&listed(s, org, token, id).await);
        if d.state == state as i32 {
            return d;
        }
        assert!(Instant::now() < deadline, "never {state:?}: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort_unstable();
    v
}

fn perms(p: &[Permission]) -> Vec<i32> {
    sorted(p.iter().map(|p| *p as i32).collect())
}

pub(crate) async fn accept_new(
    s: &TestServer,
    token: &str,
    name: Option<&str>,
) -> Result<AcceptInvitationResponse, tonic::Status> {
    s.invitations()
        .await
        .accept_invitation(AcceptInvitationRequest {
            token: token.into(),
            name: name.map(str::to_string),
            password: Some(PASSWORD.into()),
        })
        .await
        .map(|r| r.into_inner())
}

async fn check(s: &TestServer, token: &str, org: &str, user: &str, p: Permission) -> bool {
    s.members()
        .await
        .check_permission(authed(
            CheckPermissionRequest {
                user_id: user.into(),
                organization_id: org.into(),
                permission: p as i32,
            },
            token,
        ))
        .await
        .expect("check permission")
        .into_inner()
        .allowed
}

pub(crate) async fn count(s: &TestServer, sql: &str) -> i64 {
    sql_rows(s, sql).await[0]
        .try_get::<i64>("", "n")
        .expect("n")
}

async fn invited_with_permissions_starts_with_them(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "ready").await;
    let granted = [Permission::Vpn, Permission::Device];
    let inv = invite(
        &s,
        CreateInvitationRequest {
            name: Some("  Ana Ready ".into()),
            permissions: granted.iter().map(|p| *p as i32).collect(),
            ..req(&org, "ana@ready.test")
        },
        &mgr,
    )
    .await
    .expect("invite with permissions");
    assert_eq!(inv.name, "Ana Ready");
    assert_eq!(sorted(inv.permissions.clone()), perms(&granted));
    assert!(inv.template_id.is_empty());
    let d = delivery(&inv);
    assert_eq!(d.state, DeliveryState::Queued as i32, "{d:?}");
    assert_eq!(d.attempts, 0);
    assert_eq!(
        sorted(listed(&s, &org, &mgr, &inv.invitation_id).await.permissions),
        perms(&granted)
    );

    let token = sink
        .wait_for("ana@ready.test", 1)
        .await
        .token("ki")
        .expect("ki");
    // No name given on accept: the invitation's.
    let accepted = accept_new(&s, &token, None).await.expect("accept");
    let member = accepted.member.expect("member");
    assert_eq!(member.name, "Ana Ready");
    assert_eq!(sorted(member.granted_permissions.clone()), perms(&granted));
    let ana = member.user_id.clone();

    // From the first call on, everywhere.
    let got = s
        .members()
        .await
        .get_member(authed(
            GetMemberRequest {
                organization_id: org.clone(),
                user_id: ana.clone(),
            },
            &mgr,
        ))
        .await
        .expect("get member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(sorted(got.granted_permissions), perms(&granted));
    assert_eq!(sorted(got.permissions), perms(&granted));
    let listed_members = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list members")
        .into_inner()
        .members;
    let row = listed_members
        .iter()
        .find(|m| m.user_id == ana)
        .expect("listed");
    assert_eq!(sorted(row.granted_permissions.clone()), perms(&granted));
    for p in [Permission::Vpn, Permission::Device] {
        assert!(check(&s, &mgr, &org, &ana, p).await, "{p:?}");
    }
    for p in [Permission::Infra, Permission::Audit, Permission::Backup] {
        assert!(!check(&s, &mgr, &org, &ana, p).await, "{p:?}");
    }
    let ana_token = s
        .login("ana@ready.test", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let mut claim: Vec<String> = token_orgs(&ana_token)[&org]["perms"]
        .as_array()
        .expect("perms claim")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    claim.sort();
    assert_eq!(claim, vec!["device".to_string(), "vpn".to_string()]);
    assert_eq!(token_orgs(&ana_token)[&org]["role"], "member");

    // The audit trail lists them, in the accept's transaction.
    let details = sql_rows(
        &s,
        &format!(
            "SELECT details FROM audit_events WHERE action = 'membership.added' \
             AND target_id = '{ana}'"
        ),
    )
    .await;
    assert_eq!(details.len(), 1);
    let d: String = details[0].try_get("", "details").expect("details");
    assert!(d.contains("device") && d.contains("vpn"), "{d}");
}

async fn invited_with_a_template_gets_the_copy_made_at_invitation(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "tpl").await;
    let template = s
        .members()
        .await
        .create_permission_template(authed(
            CreatePermissionTemplateRequest {
                organization_id: org.clone(),
                name: "backup operators".into(),
                permissions: vec![Permission::Backup as i32, Permission::Audit as i32],
            },
            &mgr,
        ))
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let want = perms(&[Permission::Backup, Permission::Audit]);
    // An existing account, invited with the template.
    let (bo_id, _) = s.user("bo@tpl.test").await;
    let inv = invite(
        &s,
        CreateInvitationRequest {
            template_id: Some(template.template_id.clone()),
            ..req(&org, "bo@tpl.test")
        },
        &mgr,
    )
    .await
    .expect("invite with a template");
    assert_eq!(inv.template_id, template.template_id);
    assert_eq!(sorted(inv.permissions.clone()), want);

    // The template changes after the invitation: the invitation keeps the
    // copy it showed.
    s.members()
        .await
        .update_permission_template(authed(
            UpdatePermissionTemplateRequest {
                template: Some(PermissionTemplate {
                    template_id: template.template_id.clone(),
                    organization_id: org.clone(),
                    permissions: vec![Permission::Infra as i32],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["permissions".into()],
                }),
            },
            &mgr,
        ))
        .await
        .expect("update template");
    assert_eq!(
        sorted(listed(&s, &org, &mgr, &inv.invitation_id).await.permissions),
        want
    );

    let token = sink
        .wait_for("bo@tpl.test", 1)
        .await
        .token("ki")
        .expect("ki");
    let bo = s
        .login("bo@tpl.test", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let member = s
        .invitations()
        .await
        .accept_invitation(authed(
            AcceptInvitationRequest {
                token,
                ..Default::default()
            },
            &bo,
        ))
        .await
        .expect("accept as the account")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(member.user_id, bo_id);
    assert_eq!(sorted(member.granted_permissions), want);
    assert!(check(&s, &mgr, &org, &bo_id, Permission::Backup).await);
    assert!(!check(&s, &mgr, &org, &bo_id, Permission::Infra).await);
}

async fn who_may_invite_with_what(backend: Backend) {
    let (s, _sink) = start(backend).await;
    let (admin, org, _, mgr) = org_with_manager(&s, "who").await;
    let (_, other, _, other_mgr) = org_with_manager(&s, "other").await;
    let (member_id, member) = s.user("member@who.test").await;
    s.add_member(&admin, &org, &member_id, Role::Member).await;
    let foreign_template = s
        .members()
        .await
        .create_permission_template(authed(
            CreatePermissionTemplateRequest {
                organization_id: other.clone(),
                name: "theirs".into(),
                permissions: vec![Permission::Infra as i32],
            },
            &other_mgr,
        ))
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let with_perms = |email: &str| CreateInvitationRequest {
        permissions: vec![Permission::Vpn as i32],
        ..req(&org, email)
    };

    // R3: a Manager invites no Manager, with or without permissions.
    let as_manager = |r: CreateInvitationRequest| CreateInvitationRequest {
        role: Role::Manager as i32,
        ..r
    };
    assert_status(
        invite(&s, as_manager(req(&org, "m1@who.test")), &mgr).await,
        Code::PermissionDenied,
        "PROMOTION_REQUIRES_PLATFORM_ADMIN",
    );
    assert_invalid(
        invite(&s, as_manager(with_perms("m2@who.test")), &mgr).await,
        "permissions",
    );
    // Not even a PlatformAdmin: a Manager holds every permission anyway.
    assert_invalid(
        invite(&s, as_manager(with_perms("m3@who.test")), &admin).await,
        "permissions",
    );
    let tpl_req = |email: &str, t: &str| CreateInvitationRequest {
        template_id: Some(t.into()),
        ..req(&org, email)
    };
    assert_invalid(
        invite(
            &s,
            as_manager(tpl_req("m4@who.test", &foreign_template.template_id)),
            &admin,
        )
        .await,
        "template_id",
    );
    // A Member invites nobody; an outsider sees no organization.
    assert_status(
        invite(&s, with_perms("x1@who.test"), &member).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    assert_status(
        invite(&s, with_perms("x2@who.test"), &other_mgr).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // Another organization's template, and an unknown one: the same answer.
    let foreign = invite(
        &s,
        tpl_req("x3@who.test", &foreign_template.template_id),
        &mgr,
    )
    .await
    .expect_err("foreign template");
    let unknown = invite(
        &s,
        tpl_req("x3@who.test", &uuid::Uuid::now_v7().to_string()),
        &mgr,
    )
    .await
    .expect_err("unknown template");
    for e in [&foreign, &unknown] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(reason(e), "NOT_FOUND");
    }
    assert_eq!(foreign.message(), unknown.message());
    // Nobody grants permissions to their own account (H4), PlatformAdmins
    // included.
    assert_status(
        invite(&s, with_perms(ADMIN_EMAIL), &admin).await,
        Code::PermissionDenied,
        "SELF_PERMISSION_CHANGE",
    );
    // None of the refused calls left an invitation.
    let total = s
        .invitations()
        .await
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner()
        .total_size;
    assert_eq!(total, 0);
    // The Manager may put in what SetPermissions would give a Member: any
    // category.
    invite(
        &s,
        CreateInvitationRequest {
            permissions: (1..=7).collect(),
            ..req(&org, "all@who.test")
        },
        &mgr,
    )
    .await
    .expect("a Manager grants a Member every category");
}

async fn bad_names_permissions_and_templates_are_named(backend: Backend) {
    let (s, _sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "bad").await;
    let cases: Vec<(CreateInvitationRequest, &str)> = vec![
        (
            CreateInvitationRequest {
                permissions: vec![Permission::Vpn as i32, Permission::Vpn as i32],
                ..req(&org, "a@bad.test")
            },
            "permissions[1]",
        ),
        (
            CreateInvitationRequest {
                permissions: vec![99],
                ..req(&org, "a@bad.test")
            },
            "permissions[0]",
        ),
        (
            CreateInvitationRequest {
                permissions: vec![Permission::Vpn as i32, 0],
                ..req(&org, "a@bad.test")
            },
            "permissions[1]",
        ),
        (
            CreateInvitationRequest {
                permissions: vec![Permission::Vpn as i32],
                template_id: Some(uuid::Uuid::now_v7().to_string()),
                ..req(&org, "a@bad.test")
            },
            "template_id",
        ),
        (
            CreateInvitationRequest {
                template_id: Some("not-a-uuid".into()),
                ..req(&org, "a@bad.test")
            },
            "template_id",
        ),
        (
            CreateInvitationRequest {
                name: Some("   ".into()),
                ..req(&org, "a@bad.test")
            },
            "name",
        ),
        (
            CreateInvitationRequest {
                name: Some("a\u{7}b".into()),
                ..req(&org, "a@bad.test")
            },
            "name",
        ),
        (
            CreateInvitationRequest {
                name: Some("x".repeat(101)),
                ..req(&org, "a@bad.test")
            },
            "name",
        ),
    ];
    for (r, field) in cases {
        let res = invite(&s, r.clone(), &mgr).await;
        assert_invalid(res, field);
    }
    let total = s
        .invitations()
        .await
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner()
        .total_size;
    assert_eq!(total, 0, "no refused call left an invitation");
}

async fn delivery_is_queued_until_the_server_takes_it_then_sent(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "queue").await;
    sink.hold();
    let inv = invite(&s, req(&org, "q@queue.test"), &mgr)
        .await
        .expect("invite");
    assert_eq!(delivery(&inv).state, DeliveryState::Queued as i32);
    // The sender is mid-conversation with the sink: it has not left yet.
    sink.wait_held(1).await;
    let d = delivery(&listed(&s, &org, &mgr, &inv.invitation_id).await);
    assert_eq!(d.state, DeliveryState::Queued as i32, "{d:?}");
    assert_eq!(d.attempts, 1, "{d:?}");
    assert!(
        d.last_attempt_time.is_some() && d.sent_time.is_none(),
        "{d:?}"
    );
    assert!(
        d.last_error.is_empty() && d.next_attempt_time.is_none(),
        "{d:?}"
    );
    assert_eq!(sink.count_to("q@queue.test"), 0);
    sink.release();
    sink.wait_for("q@queue.test", 1).await;
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Sent).await;
    assert_eq!(d.attempts, 1, "{d:?}");
    let sent = d.sent_time.expect("sent_time");
    assert!(sent.seconds >= d.last_attempt_time.expect("last attempt").seconds);
    assert!(
        d.last_error.is_empty() && d.next_attempt_time.is_none(),
        "{d:?}"
    );
}

async fn a_refused_recipient_fails_for_good(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "refused").await;
    sink.refuse_recipient("nobody@refused.test");
    let inv = invite(&s, req(&org, "nobody@refused.test"), &mgr)
        .await
        .expect("invite");
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Failed).await;
    assert!(d.last_error.contains("550"), "{d:?}");
    assert!(
        d.last_error
            .chars()
            .all(|c| c.is_ascii_graphic() || c == ' ')
            && d.last_error.len() <= 300,
        "{d:?}"
    );
    assert!(d.next_attempt_time.is_none(), "no retry after a 550: {d:?}");
    assert_eq!(d.attempts, 1, "{d:?}");
    assert!(d.sent_time.is_none());
    // Given up in the outbox, its sealed token erased.
    let id = &inv.invitation_id;
    assert_eq!(
        count(
            &s,
            &format!(
                "SELECT COUNT(*) AS n FROM email_outbox WHERE invitation_id = '{id}' \
                 AND sent_at IS NULL AND secret IS NULL AND next_attempt_at = {}",
                i64::MAX
            ),
        )
        .await,
        1
    );
    // Another email to the same sink still goes: only that recipient fails.
    let ok = invite(&s, req(&org, "somebody@refused.test"), &mgr)
        .await
        .expect("invite");
    sink.wait_for("somebody@refused.test", 1).await;
    wait_state(&s, &org, &mgr, &ok.invitation_id, DeliveryState::Sent).await;
    let again = delivery(&listed(&s, &org, &mgr, id).await);
    assert_eq!(again.attempts, 1, "not retried: {again:?}");
    assert_eq!(sink.count_to("nobody@refused.test"), 0);
}

async fn a_deferred_email_fails_with_a_next_attempt_then_is_sent(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "defer").await;
    // The first attempt is deferred (451); the retry waits at the gate.
    sink.refuse_next(1);
    sink.hold();
    let inv = invite(&s, req(&org, "later@defer.test"), &mgr)
        .await
        .expect("invite");
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Failed).await;
    assert!(d.last_error.contains("451"), "{d:?}");
    let next = d.next_attempt_time.expect("a retry is scheduled");
    let last = d.last_attempt_time.expect("last attempt");
    assert!(next.seconds >= last.seconds, "{d:?}");
    assert!(d.sent_time.is_none());
    sink.wait_held(1).await;
    sink.release();
    sink.wait_for("later@defer.test", 1).await;
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Sent).await;
    assert_eq!(d.attempts, 2, "{d:?}");
    assert!(
        d.last_error.is_empty() && d.next_attempt_time.is_none(),
        "{d:?}"
    );
}

async fn a_resend_shows_the_new_emails_state(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "resend").await;
    let inv = invite(&s, req(&org, "r@resend.test"), &mgr)
        .await
        .expect("invite");
    sink.wait_for("r@resend.test", 1).await;
    let first = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Sent).await;
    sink.hold();
    let resent = s
        .invitations()
        .await
        .resend_invitation(authed(
            ResendInvitationRequest {
                invitation_id: inv.invitation_id.clone(),
            },
            &mgr,
        ))
        .await
        .expect("resend")
        .into_inner()
        .invitation
        .expect("invitation");
    assert_eq!(delivery(&resent).state, DeliveryState::Queued as i32);
    sink.wait_held(1).await;
    // The earlier email was sent; the invitation shows the new one's state.
    let d = delivery(&listed(&s, &org, &mgr, &inv.invitation_id).await);
    assert_eq!(d.state, DeliveryState::Queued as i32, "{d:?}");
    assert!(d.sent_time.is_none(), "{d:?}");
    sink.release();
    sink.wait_for("r@resend.test", 2).await;
    let d = wait_state(&s, &org, &mgr, &inv.invitation_id, DeliveryState::Sent).await;
    let (new, old) = (d.sent_time.expect("sent"), first.sent_time.expect("sent"));
    assert!(
        (new.seconds, new.nanos) >= (old.seconds, old.nanos),
        "{d:?}"
    );
    assert_eq!(d.attempts, 1);
}

async fn twenty_parallel_accepts_make_one_membership_with_its_permissions(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, _, mgr) = org_with_manager(&s, "race").await;
    let inv = invite(
        &s,
        CreateInvitationRequest {
            name: Some("Racer".into()),
            permissions: vec![Permission::Database as i32, Permission::Service as i32],
            ..req(&org, "racer@race.test")
        },
        &mgr,
    )
    .await
    .expect("invite");
    let mail = sink.wait_for("racer@race.test", 1).await;
    let token = mail.token("ki").expect("ki");
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (s, token) = (&s, token.clone());
        calls.push(async move { accept_new(s, &token, None).await });
    }
    let results = futures::future::join_all(calls).await;
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                e.code(),
                Code::FailedPrecondition | Code::Unauthenticated | Code::Aborted
            ),
            "{e:?}"
        );
    }
    let user = won[0]
        .as_ref()
        .expect("won")
        .member
        .clone()
        .expect("member");
    let uid = &user.user_id;
    let id = &inv.invitation_id;
    assert_eq!(
        count(
            &s,
            &format!("SELECT COUNT(*) AS n FROM memberships WHERE organization_id = '{org}'")
        )
        .await,
        2,
        "the Manager and one new member"
    );
    let bits = (1 << (Permission::Database as i32 - 1)) | (1 << (Permission::Service as i32 - 1));
    assert_eq!(
        count(
            &s,
            &format!(
                "SELECT COUNT(*) AS n FROM memberships WHERE user_id = '{uid}' \
                 AND permissions = {bits}"
            )
        )
        .await,
        1,
        "the membership holds exactly the invitation's permissions"
    );
    for action in ["invitation.accepted", "membership.added"] {
        assert_eq!(
            count(
                &s,
                &format!(
                    "SELECT COUNT(*) AS n FROM audit_events WHERE action = '{action}' \
                     AND organization_id = '{org}' AND (target_id = '{id}' OR target_id = '{uid}')"
                )
            )
            .await,
            1,
            "{action}"
        );
    }
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) AS n FROM users WHERE email = 'racer@race.test'"
        )
        .await,
        1
    );

    // The token is nowhere in a copy of the database once delivered (the
    // SQLite WAL is checkpointed by the sender a moment after).
    wait_state(&s, &org, &mgr, id, DeliveryState::Sent).await;
    let secrets = vec![token.clone()];
    let deadline = Instant::now()
        + match backend {
            Backend::Sqlite => Duration::from_secs(10),
            Backend::Postgres => Duration::ZERO,
        };
    loop {
        let left = found_in(&database_copy(&s).await, &secrets);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "token in the database: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
