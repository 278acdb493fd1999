//! Ways in (R7, R8, R9, R20): signup → join request → approval, and
//! invitations delivered by real SMTP to a sink on loopback; the token the
//! tests accept with is read from the received email.

use crate::both_backends;
use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::*;
use std::time::Duration;
use tonic::Code;

both_backends!(
    signup_request_then_approval,
    rejected_users_may_ask_again,
    bad_sign_ups_change_nothing,
    join_requests_list_by_period_and_visibility,
    invitation_new_account,
    invitation_existing_account,
    resend_and_expiry,
    decline_and_revoke,
    invitation_rules_and_bad_tokens,
    double_approval_and_double_accept_race,
    outbox_retries_and_survives_restart,
);

async fn start(backend: Backend) -> (TestServer, SmtpSink) {
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

async fn manager_org(s: &TestServer, code: &str) -> (String, String, String) {
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, &code.to_uppercase(), code).await;
    let (mgr_id, _) = s.user(&format!("mgr@{code}.io")).await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    let mgr = s
        .login(&format!("mgr@{code}.io"), PASSWORD)
        .await
        .expect("login")
        .access_token;
    (admin, org, mgr)
}

fn signup(email: &str, org: Option<&str>) -> SignUpRequest {
    SignUpRequest {
        email: email.into(),
        name: "New Person".into(),
        password: PASSWORD.into(),
        organization_id: org.map(str::to_string),
    }
}

/// Uses the verification link of message `n` to `email` (issue 20 item 8:
/// only a proven address can be approved).
async fn verify_address(s: &TestServer, sink: &SmtpSink, email: &str, n: usize) {
    let token = sink.wait_for(email, n).await.token("kv").expect("kv token");
    s.auth()
        .await
        .verify_email(VerifyEmailRequest { token })
        .await
        .expect("verify email");
}
async fn signup_request_then_approval(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let mut auth = s.auth().await;
    let mut ap = s.approvals().await;

    let r = auth
        .sign_up(signup("New@Example.com", Some(&org)))
        .await
        .expect("sign up")
        .into_inner();
    let user = r.user.expect("user");
    assert_eq!(user.email, "new@example.com");
    let jr = r.join_request.expect("join request");
    assert_eq!(jr.status, JoinRequestStatus::Pending as i32);
    assert_eq!(jr.organization_id, org);
    // The new account can log in but is not a member yet.
    let token = s
        .login("new@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    assert!(token_orgs(&token).as_object().expect("orgs").is_empty());
    // One PENDING request per user and organization.
    assert_status(
        ap.request_to_join(authed(
            RequestToJoinRequest {
                organization_id: org.clone(),
            },
            &token,
        ))
        .await,
        Code::AlreadyExists,
        "JOIN_REQUEST_PENDING",
    );
    // The Manager's "Pending Approval (N)" tab.
    let list = ap
        .list_join_requests(authed(
            ListJoinRequestsRequest {
                organization_id: Some(org.clone()),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.total_size, 1);
    assert_eq!(list.join_requests[0].email, "new@example.com");
    assert_eq!(list.join_requests[0].name, "New Person");
    assert!(list.join_requests[0].request_time.is_some());

    // Issue 20 item 8: the address is proven first (message 1).
    verify_address(&s, &sink, "new@example.com", 1).await;
    let approved = ap
        .approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr.join_request_id.clone(),
            },
            &mgr,
        ))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(
        approved.join_request.expect("jr").status,
        JoinRequestStatus::Approved as i32
    );
    let member = approved.member.expect("member");
    assert_eq!(member.role, Role::Member as i32);
    assert!(
        member.permissions.is_empty(),
        "approved members start with no permissions"
    );
    let mail = sink.wait_for("new@example.com", 2).await;
    assert!(
        mail.header("subject")
            .expect("subject")
            .contains("approved"),
        "{}",
        mail.data
    );
    // Deciding again is a precondition failure.
    assert_status(
        ap.approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr.join_request_id.clone(),
            },
            &mgr,
        ))
        .await,
        Code::FailedPrecondition,
        "NOT_PENDING",
    );
    assert_status(
        ap.request_to_join(authed(
            RequestToJoinRequest {
                organization_id: org.clone(),
            },
            &token,
        ))
        .await,
        Code::AlreadyExists,
        "ALREADY_MEMBER",
    );
}

/// New@Example.com signed up to `org`, proved the address and was approved
/// by `mgr` (messages 1 and 2); returns their token.
async fn approved_newcomer(s: &TestServer, sink: &SmtpSink, org: &str, mgr: &str) -> String {
    let jr = s
        .auth()
        .await
        .sign_up(signup("New@Example.com", Some(org)))
        .await
        .expect("sign up")
        .into_inner()
        .join_request
        .expect("join request");
    let token = s
        .login("new@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    verify_address(s, sink, "new@example.com", 1).await;
    s.approvals()
        .await
        .approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr.join_request_id,
            },
            mgr,
        ))
        .await
        .expect("approve");
    sink.wait_for("new@example.com", 2).await;
    token
}

async fn rejected_users_may_ask_again(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let token = approved_newcomer(&s, &sink, &org, &mgr).await;
    let mut ap = s.approvals().await;

    // Reject, then the user may ask again.
    let (_, org2, mgr2) = manager_org(&s, "beta").await;
    let jr2 = ap
        .request_to_join(authed(
            RequestToJoinRequest {
                organization_id: org2.clone(),
            },
            &token,
        ))
        .await
        .expect("request")
        .into_inner()
        .join_request
        .expect("jr");
    let rejected = ap
        .reject_join_request(authed(
            RejectJoinRequestRequest {
                join_request_id: jr2.join_request_id.clone(),
                reason: Some("not now".into()),
            },
            &mgr2,
        ))
        .await
        .expect("reject")
        .into_inner()
        .join_request
        .expect("jr");
    assert_eq!(rejected.status, JoinRequestStatus::Rejected as i32);
    assert_eq!(rejected.reason, "not now");
    let mail = sink.wait_for("new@example.com", 3).await;
    assert!(mail.data.contains("not now"));
    ap.request_to_join(authed(
        RequestToJoinRequest {
            organization_id: org2.clone(),
        },
        &token,
    ))
    .await
    .expect("may request again after a rejection");
}

async fn bad_sign_ups_change_nothing(backend: Backend) {
    let (s, _sink) = start(backend).await;
    let mut auth = s.auth().await;
    // New@Example.com has an account.
    auth.sign_up(signup("New@Example.com", None))
        .await
        .expect("sign up");

    // Bad input changes nothing.
    assert_status(
        auth.sign_up(signup(
            "x@example.com",
            Some(&uuid::Uuid::now_v7().to_string()),
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        s.login("x@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_invalid(auth.sign_up(signup("bad", None)).await, "email");
    let mut weak = signup("weak@example.com", None);
    weak.password = "short".into();
    assert_status(
        auth.sign_up(weak).await,
        Code::InvalidArgument,
        "WEAK_PASSWORD",
    );
    assert_status(
        auth.sign_up(signup("NEW@example.com", None)).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    let solo = auth
        .sign_up(signup("solo@example.com", None))
        .await
        .expect("no org")
        .into_inner();
    assert!(solo.join_request.is_none());
}

async fn join_requests_list_by_period_and_visibility(backend: Backend) {
    let (s, _sink) = start(backend).await;
    let (_, org, _) = manager_org(&s, "acme").await;
    let (_, other_org, _) = manager_org(&s, "beta").await;
    let mut auth = s.auth().await;
    let mut ap = s.approvals().await;
    auth.sign_up(signup("old@example.com", Some(&org)))
        .await
        .expect("sign up");
    s.advance_clock(Duration::from_secs(8 * 24 * 3600));
    // Tokens minted before the jump have expired: log in again.
    let admin = s.admin_token().await;
    let mgr = s
        .login("mgr@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let other_mgr = s
        .login("mgr@beta.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    auth.sign_up(signup("new@example.com", Some(&org)))
        .await
        .expect("sign up");
    auth.sign_up(signup("elsewhere@example.com", Some(&other_org)))
        .await
        .expect("sign up");
    let list = |period: JoinRequestPeriod, org: Option<&str>, t: &str| {
        authed(
            ListJoinRequestsRequest {
                organization_id: org.map(str::to_string),
                period: period as i32,
                ..Default::default()
            },
            t,
        )
    };
    let total = |r: Result<tonic::Response<ListJoinRequestsResponse>, tonic::Status>| {
        r.expect("list").into_inner().total_size
    };
    assert_eq!(
        total(
            ap.list_join_requests(list(JoinRequestPeriod::Last7Days, Some(&org), &mgr))
                .await
        ),
        1
    );
    assert_eq!(
        total(
            ap.list_join_requests(list(JoinRequestPeriod::Last30Days, Some(&org), &mgr))
                .await
        ),
        2
    );
    assert_eq!(
        total(
            ap.list_join_requests(list(JoinRequestPeriod::All, Some(&org), &mgr))
                .await
        ),
        2
    );
    // Without an organization: the ones the caller manages; all for a PlatformAdmin.
    assert_eq!(
        total(
            ap.list_join_requests(list(JoinRequestPeriod::All, None, &mgr))
                .await
        ),
        2
    );
    assert_eq!(
        total(
            ap.list_join_requests(list(JoinRequestPeriod::All, None, &admin))
                .await
        ),
        3
    );
    // Other tenants: NOT_FOUND; members without the role: PERMISSION_DENIED.
    assert_status(
        ap.list_join_requests(list(JoinRequestPeriod::All, Some(&org), &other_mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let (mem_id, mem) = s.user("member@acme.io").await;
    s.add_member(&admin, &org, &mem_id, Role::Member).await;
    assert_status(
        ap.list_join_requests(list(JoinRequestPeriod::All, Some(&org), &mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    // A Manager of another organization cannot decide our requests.
    let ours = ap
        .list_join_requests(list(JoinRequestPeriod::All, Some(&org), &mgr))
        .await
        .expect("list")
        .into_inner();
    assert_status(
        ap.approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: ours.join_requests[0].join_request_id.clone(),
            },
            &other_mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // Pagination.
    let p1 = ap
        .list_join_requests(authed(
            ListJoinRequestsRequest {
                organization_id: Some(org.clone()),
                page_size: 1,
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(p1.join_requests[0].email, "new@example.com", "newest first");
    let p2 = ap
        .list_join_requests(authed(
            ListJoinRequestsRequest {
                organization_id: Some(org.clone()),
                page_size: 1,
                page_token: p1.next_page_token.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(p2.join_requests[0].email, "old@example.com");
    assert!(p2.next_page_token.is_empty());
    let mut bad = list(JoinRequestPeriod::All, Some(&org), &mgr);
    bad.get_mut().period = 42;
    assert_invalid(ap.list_join_requests(bad).await, "period");
}

async fn invite(
    s: &TestServer,
    org: &str,
    email: &str,
    role: Role,
    t: &str,
) -> Result<Invitation, tonic::Status> {
    s.invitations()
        .await
        .create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.into(),
                email: email.into(),
                role: role as i32,
                ..Default::default()
            },
            t,
        ))
        .await
        .map(|r| r.into_inner().invitation.expect("invitation"))
}

fn accept(token: &str, name: Option<&str>, password: Option<&str>) -> AcceptInvitationRequest {
    AcceptInvitationRequest {
        token: token.into(),
        name: name.map(str::to_string),
        password: password.map(str::to_string),
    }
}

async fn invitation_new_account(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let inv = invite(&s, &org, "Invitee@Example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    assert_eq!(inv.status, InvitationStatus::Pending as i32);
    assert_eq!(inv.email, "invitee@example.com");
    let expire =
        inv.expire_time.expect("expire").seconds - inv.create_time.expect("create").seconds;
    assert_eq!(expire, 7 * 24 * 3600);

    let mail = sink.wait_for("invitee@example.com", 1).await;
    assert!(
        mail.data
            .contains("https://console.kiops.test/invitations/accept?token=ki_"),
        "{}",
        mail.data
    );
    let token = mail.token("ki").expect("token in email");
    assert!(token.len() >= 40, "at least 128 random bits");

    let mut inv_client = s.invitations().await;
    // Name and password are needed to create the account.
    assert_invalid(
        inv_client
            .accept_invitation(accept(&token, None, None))
            .await,
        "name",
    );
    assert_status(
        inv_client
            .accept_invitation(accept(&token, Some("Invitee"), Some("short")))
            .await,
        Code::InvalidArgument,
        "WEAK_PASSWORD",
    );
    let r = inv_client
        .accept_invitation(accept(&token, Some("Invitee"), Some(PASSWORD)))
        .await
        .expect("accept")
        .into_inner();
    assert_eq!(r.organization_id, org);
    let member = r.member.expect("member");
    assert_eq!(member.email, "invitee@example.com");
    assert_eq!(member.role, Role::Member as i32);
    let t = s
        .login("invitee@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    assert!(token_orgs(&t).get(&org).is_some());
    // A token works once.
    assert_status(
        inv_client
            .accept_invitation(accept(&token, Some("Again"), Some(PASSWORD)))
            .await,
        Code::FailedPrecondition,
        "NOT_PENDING",
    );
    let listed = inv_client
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.invitations[0].status,
        InvitationStatus::Accepted as i32
    );
}

async fn invitation_existing_account(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let (_, kim) = s.user("kim@example.com").await;
    let (_, lee) = s.user("lee@example.com").await;
    invite(&s, &org, "kim@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let token = sink
        .wait_for("kim@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    let mut c = s.invitations().await;
    assert_status(
        c.accept_invitation(accept(&token, None, None)).await,
        Code::Unauthenticated,
        "LOGIN_REQUIRED",
    );
    assert_status(
        c.accept_invitation(authed(accept(&token, None, None), &lee))
            .await,
        Code::PermissionDenied,
        "INVITATION_EMAIL_MISMATCH",
    );
    let r = c
        .accept_invitation(authed(accept(&token, None, None), &kim))
        .await
        .expect("accept")
        .into_inner();
    assert_eq!(r.member.expect("member").email, "kim@example.com");
    // Someone logged in cannot take an invitation meant for a new account either.
    invite(&s, &org, "nobody-yet@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let t2 = sink
        .wait_for("nobody-yet@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    assert_status(
        c.accept_invitation(authed(accept(&t2, Some("X"), Some(PASSWORD)), &lee))
            .await,
        Code::PermissionDenied,
        "INVITATION_EMAIL_MISMATCH",
    );
}
async fn resend_and_expiry(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let mut c = s.invitations().await;

    // Resend: a new token, and the old one is dead.
    let inv = invite(&s, &org, "a@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let old = sink
        .wait_for("a@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    c.resend_invitation(authed(
        ResendInvitationRequest {
            invitation_id: inv.invitation_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("resend");
    let new = sink
        .wait_for("a@example.com", 2)
        .await
        .token("ki")
        .expect("token");
    assert_ne!(old, new);
    assert_status(
        c.accept_invitation(accept(&old, Some("A"), Some(PASSWORD)))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // Expiry after 7 days, computed from the (injected) clock.
    s.advance_clock(Duration::from_secs(7 * 24 * 3600 + 60));
    let mgr = s
        .login("mgr@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    assert_status(
        c.accept_invitation(accept(&new, Some("A"), Some(PASSWORD)))
            .await,
        Code::FailedPrecondition,
        "INVITATION_EXPIRED",
    );
    let listed = c
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                status: InvitationStatus::Expired as i32,
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total_size, 1);
    // Resending an expired invitation opens a new 7-day window.
    c.resend_invitation(authed(
        ResendInvitationRequest {
            invitation_id: inv.invitation_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("resend");
    let fresh = sink
        .wait_for("a@example.com", 3)
        .await
        .token("ki")
        .expect("token");
    c.accept_invitation(accept(&fresh, Some("A"), Some(PASSWORD)))
        .await
        .expect("accept after resend");
    assert_status(
        c.resend_invitation(authed(
            ResendInvitationRequest {
                invitation_id: inv.invitation_id.clone(),
            },
            &mgr,
        ))
        .await,
        Code::FailedPrecondition,
        "NOT_PENDING",
    );
}

async fn decline_and_revoke(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let mut c = s.invitations().await;
    // An accepted invitation before them.
    invite(&s, &org, "a@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let ta = sink
        .wait_for("a@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    c.accept_invitation(accept(&ta, Some("A"), Some(PASSWORD)))
        .await
        .expect("accept");

    // Decline sets REJECTED.
    invite(&s, &org, "b@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let tb = sink
        .wait_for("b@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    c.decline_invitation(DeclineInvitationRequest { token: tb.clone() })
        .await
        .expect("decline");
    assert_status(
        c.accept_invitation(accept(&tb, Some("B"), Some(PASSWORD)))
            .await,
        Code::FailedPrecondition,
        "NOT_PENDING",
    );

    // Revoke sets REVOKED.
    let inv_c = invite(&s, &org, "c@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let tc = sink
        .wait_for("c@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    let revoked = c
        .revoke_invitation(authed(
            RevokeInvitationRequest {
                invitation_id: inv_c.invitation_id.clone(),
            },
            &mgr,
        ))
        .await
        .expect("revoke")
        .into_inner()
        .invitation
        .expect("inv");
    assert_eq!(revoked.status, InvitationStatus::Revoked as i32);
    assert_status(
        c.accept_invitation(accept(&tc, Some("C"), Some(PASSWORD)))
            .await,
        Code::FailedPrecondition,
        "NOT_PENDING",
    );
    assert_status(
        s.login("c@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );

    let all = c
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    let statuses: Vec<i32> = all.invitations.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        vec![
            InvitationStatus::Revoked as i32,
            InvitationStatus::Rejected as i32,
            InvitationStatus::Accepted as i32
        ]
    );
}

async fn invitation_rules_and_bad_tokens(backend: Backend) {
    let (s, _sink) = start(backend).await;
    let (admin, org, mgr) = manager_org(&s, "acme").await;
    let (_, _, other_mgr) = manager_org(&s, "beta").await;
    // R3: only a PlatformAdmin invites as Manager.
    assert_status(
        invite(&s, &org, "boss@example.com", Role::Manager, &mgr).await,
        Code::PermissionDenied,
        "PROMOTION_REQUIRES_PLATFORM_ADMIN",
    );
    invite(&s, &org, "boss@example.com", Role::Manager, &admin)
        .await
        .expect("PlatformAdmin invites a Manager");
    assert_status(
        invite(&s, &org, "boss@example.com", Role::Member, &mgr).await,
        Code::AlreadyExists,
        "INVITATION_PENDING",
    );
    assert_status(
        invite(&s, &org, "mgr@acme.io", Role::Member, &mgr).await,
        Code::AlreadyExists,
        "ALREADY_MEMBER",
    );
    assert_status(
        invite(&s, &org, "x@example.com", Role::Member, &other_mgr).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let (mem_id, mem) = s.user("mem@acme.io").await;
    s.add_member(&admin, &org, &mem_id, Role::Member).await;
    assert_status(
        invite(&s, &org, "x@example.com", Role::Member, &mem).await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    let mut c = s.invitations().await;
    assert_invalid(
        c.create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "not an email".into(),
                role: 1,
                ..Default::default()
            },
            &mgr,
        ))
        .await,
        "email",
    );
    assert_invalid(
        c.create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "ok@example.com".into(),
                role: 0,
                ..Default::default()
            },
            &mgr,
        ))
        .await,
        "role",
    );
    // Garbage tokens.
    assert_status(
        c.accept_invitation(accept("ki_doesnotexist", Some("X"), Some(PASSWORD)))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(c.accept_invitation(accept("", None, None)).await, "token");
    assert_invalid(
        c.decline_invitation(DeclineInvitationRequest {
            token: "has space".into(),
        })
        .await,
        "token",
    );
    // Another tenant's invitation id: not found.
    let listed = c
        .list_invitations(authed(
            ListInvitationsRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("list")
        .into_inner();
    let id = listed.invitations[0].invitation_id.clone();
    assert_status(
        c.revoke_invitation(authed(
            RevokeInvitationRequest {
                invitation_id: id.clone(),
            },
            &other_mgr,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // A Manager cannot re-send a Manager invitation (that would be inviting as Manager).
    assert_status(
        c.resend_invitation(authed(ResendInvitationRequest { invitation_id: id }, &mgr))
            .await,
        Code::PermissionDenied,
        "PROMOTION_REQUIRES_PLATFORM_ADMIN",
    );
}

async fn double_approval_and_double_accept_race(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (admin, org, mgr) = manager_org(&s, "acme").await;
    let mut auth = s.auth().await;
    for round in 0..6 {
        let email = format!("racer{round}@example.com");
        let jr = auth
            .sign_up(signup(&email, Some(&org)))
            .await
            .expect("sign up")
            .into_inner()
            .join_request
            .expect("jr")
            .join_request_id;
        verify_address(&s, &sink, &email, 1).await;
        let mut a = s.approvals().await;
        let mut b = s.approvals().await;
        let (ra, rb) = tokio::join!(
            a.approve_join_request(authed(
                ApproveJoinRequestRequest {
                    join_request_id: jr.clone()
                },
                &mgr
            )),
            b.approve_join_request(authed(
                ApproveJoinRequestRequest {
                    join_request_id: jr.clone()
                },
                &admin
            )),
        );
        assert_eq!(
            [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count(),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        for r in [ra, rb] {
            if let Err(e) = r {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            }
        }
    }
    let members = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: org.clone(),
                query: "racer".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        members.total_size, 6,
        "exactly one membership per approved request"
    );

    for round in 0..6 {
        let email = format!("acceptor{round}@example.com");
        invite(&s, &org, &email, Role::Member, &mgr)
            .await
            .expect("invite");
        let token = sink.wait_for(&email, 1).await.token("ki").expect("token");
        let mut a = s.invitations().await;
        let mut b = s.invitations().await;
        let (ra, rb) = tokio::join!(
            a.accept_invitation(accept(&token, Some("A"), Some(PASSWORD))),
            b.accept_invitation(accept(&token, Some("B"), Some(PASSWORD))),
        );
        assert_eq!(
            [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count(),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        for r in [ra, rb] {
            if let Err(e) = r {
                assert!(
                    matches!(e.code(), Code::FailedPrecondition | Code::AlreadyExists),
                    "{e:?}"
                );
            }
        }
    }
    let members = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: org.clone(),
                query: "acceptor".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        members.total_size, 6,
        "exactly one account and membership per invitation"
    );
}

async fn outbox_retries_and_survives_restart(backend: Backend) {
    let (s, sink) = start(backend).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    // The SMTP server refuses twice; the sender backs off and delivers once.
    sink.refuse_next(2);
    invite(&s, &org, "retry@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let mail = sink.wait_for("retry@example.com", 1).await;
    assert!(mail
        .header("message-id")
        .expect("message id")
        .ends_with("@kiops-identity>"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sink.count_to("retry@example.com"),
        1,
        "delivered exactly once"
    );

    // Queued while SMTP is down, server killed, restarted: delivered once.
    sink.refuse_next(1000);
    let failures_before = s.logs().matches("email delivery failed").count();
    invite(&s, &org, "restart@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    // Kill right after a failed attempt for this message was recorded (not
    // in the middle of one: a crash mid-attempt holds the 60 s lease).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.logs().matches("email delivery failed").count() <= failures_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = s;
    let _ = s.child.kill();
    let _ = s.child.wait();
    sink.refuse_next(0);
    let db = std::mem::replace(&mut s.db, TestDb::create(Backend::Sqlite).await);
    drop(s);
    let restarted = TestServer::start_on(
        db,
        backend,
        ServerOptions {
            extra_args: vec!["--smtp-url".into(), sink.url()],
            ..Default::default()
        },
    )
    .await;
    let mail = sink.wait_for("restart@example.com", 1).await;
    assert!(mail.token("ki").is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.count_to("restart@example.com"), 1);
    drop(restarted);
}

/// Without SMTP (the embedded default) the email, link included, goes to
/// the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_emails_go_to_the_log() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    invite(&s, &org, "logged@example.com", Role::Member, &mgr)
        .await
        .expect("invite");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("invitations/accept?token=ki_") {
        assert!(std::time::Instant::now() < deadline, "{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
