//! Issue 20, items 3, 8 and 10a: no usable emailed secret at rest, sign-up
//! proves the address, and an invitation token dies with its resend.
//!
//! Every token is read from the real email the service sent to the SMTP
//! sink on loopback, as a person would.

use crate::both_backends;
use crate::support::smtp::{Mail, SmtpSink};
use crate::support::*;
use kiops_proto::v1::approval_service_client::ApprovalServiceClient;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::invitation_service_client::InvitationServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

both_backends!(
    no_emailed_token_is_left_in_the_database,
    signup_must_prove_the_address,
    verification_tokens_expire_and_resend_replaces_them,
    verify_with_the_old_token_races_resend,
    invitation_proves_the_address,
    accept_with_the_old_token_races_resend,
    with_an_outbox_key_no_emailed_token_is_ever_in_the_database,
    with_a_signing_key_file_no_emailed_token_is_ever_in_the_database,
    a_message_sealed_with_another_key_is_given_up_not_sent,
    postgres_without_a_key_warns_that_queued_links_are_in_the_clear,
);

const PUBLIC_URL: &str = "https://console.kiops.test";

async fn start(backend: Backend, extra: &[&str]) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let mut extra_args = vec![
        "--smtp-url".to_string(),
        sink.url(),
        "--public-url".into(),
        PUBLIC_URL.into(),
    ];
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args,
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

fn approvals(ch: &Channel) -> ApprovalServiceClient<Channel> {
    ApprovalServiceClient::new(ch.clone())
}

fn invitations(ch: &Channel) -> InvitationServiceClient<Channel> {
    InvitationServiceClient::new(ch.clone())
}

/// An organization with a Manager: (admin token, org id, manager token).
async fn manager_org(s: &TestServer, code: &str) -> (String, String, String) {
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, &code.to_uppercase(), code).await;
    let (mgr_id, mgr) = s.user(&format!("mgr@{code}.io")).await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    let mgr = s
        .login(&format!("mgr@{code}.io"), PASSWORD)
        .await
        .map_or(mgr, |l| l.access_token);
    (admin, org, mgr)
}

async fn sign_up(s: &TestServer, email: &str, org: Option<&str>) -> SignUpResponse {
    s.auth()
        .await
        .sign_up(SignUpRequest {
            email: email.into(),
            name: "New Person".into(),
            password: PASSWORD.into(),
            organization_id: org.map(str::to_string),
        })
        .await
        .expect("sign up")
        .into_inner()
}

async fn verify(s: &TestServer, token: &str) -> Result<(), tonic::Status> {
    s.auth()
        .await
        .verify_email(VerifyEmailRequest {
            token: token.into(),
        })
        .await
        .map(drop)
}

async fn resend(s: &TestServer, email: &str) -> Result<(), tonic::Status> {
    s.auth()
        .await
        .resend_verification_email(ResendVerificationEmailRequest {
            email: email.into(),
        })
        .await
        .map(drop)
}

fn assert_reason(r: Result<(), tonic::Status>, code: Code, why: &str) {
    let e = r.expect_err(why);
    assert_eq!(e.code(), code, "{e:?}");
    assert_eq!(reason(&e), why, "{e:?}");
}

fn verified_claim(access_token: &str) -> bool {
    token_claims(access_token)["email_verified"]
        .as_bool()
        .expect("email_verified claim")
}

/// The link of an email (`https://console…?token=…`), as sent.
fn link(mail: &Mail) -> String {
    let start = mail.data.find(PUBLIC_URL).expect("link in email");
    mail.data[start..]
        .split_whitespace()
        .next()
        .expect("link")
        .to_string()
}

async fn approve(ch: &Channel, jr: &str, token: &str) -> Result<(), tonic::Status> {
    approvals(ch)
        .approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr.into(),
            },
            token,
        ))
        .await
        .map(drop)
}

async fn audit_count(ch: &Channel, admin: &str, action: &str, target: &str) -> usize {
    AuditServiceClient::new(ch.clone())
        .list_audit_events(authed(
            ListAuditEventsRequest {
                action: action.into(),
                target_id: target.into(),
                page_size: 100,
                ..Default::default()
            },
            admin,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events
        .iter()
        .filter(|e| e.action == action)
        .count()
}

/// Runs one SQL statement from the test process, on a connection of its
/// own that is closed at once (an open SQLite reader would hold the WAL).
pub(crate) async fn sql_rows(s: &TestServer, sql: &str) -> Vec<sea_orm::QueryResult> {
    let db = Database::connect(&s.db.url).await.expect("connect");
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect(sql);
    db.close().await.expect("close");
    rows
}

async fn undelivered(s: &TestServer) -> i64 {
    let rows = sql_rows(
        s,
        "SELECT COUNT(*) AS n FROM email_outbox WHERE sent_at IS NULL",
    )
    .await;
    rows[0].try_get::<i64>("", "n").expect("n")
}

/// What someone holding a copy of the database has: on SQLite the bytes of
/// the database file and its WAL (free space and old row versions
/// included); on PostgreSQL every row of every table as text.
pub(crate) async fn database_copy(s: &TestServer) -> Vec<u8> {
    match s.backend {
        Backend::Sqlite => {
            let mut bytes = Vec::new();
            for f in ["kiops.db", "kiops.db-wal", "kiops.db-journal"] {
                if let Ok(b) = std::fs::read(s.db.dir.path().join(f)) {
                    bytes.extend(b);
                }
            }
            assert!(bytes.len() > 4096, "the SQLite file was read");
            bytes
        }
        Backend::Postgres => {
            let tables = sql_rows(
                s,
                "SELECT table_name::text AS t FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            )
            .await;
            let mut out = Vec::new();
            let mut seen = 0;
            for t in tables {
                let name: String = t.try_get("", "t").expect("table");
                for row in sql_rows(s, &format!("SELECT r::text AS r FROM \"{name}\" r")).await {
                    out.extend(row.try_get::<String>("", "r").expect("row").into_bytes());
                    out.push(b'\n');
                }
                seen += 1;
            }
            assert!(seen >= 14, "every table was dumped ({seen})");
            out
        }
    }
}

pub(crate) fn found_in(copy: &[u8], secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|x| copy.windows(x.len()).any(|w| w == x.as_bytes()))
        .cloned()
        .collect()
}

/// Item 3: invitation, resent invitation, password reset (self-service and
/// by a Manager) and sign-up verification. After delivery no copy of the
/// database holds any emailed token or link; the tokens still work.
async fn no_emailed_token_is_left_in_the_database(backend: Backend) {
    let (s, sink) = start(backend, &[]).await;
    let ch = s.channel().await;
    let (_, org, mgr) = manager_org(&s, "acme").await;

    let inv = invitations(&ch)
        .create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "invitee@example.com".into(),
                role: Role::Member as i32,
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("invite")
        .into_inner()
        .invitation
        .expect("invitation");
    let first_invite = sink.wait_for("invitee@example.com", 1).await;
    invitations(&ch)
        .resend_invitation(authed(
            ResendInvitationRequest {
                invitation_id: inv.invitation_id.clone(),
            },
            &mgr,
        ))
        .await
        .expect("resend");
    let second_invite = sink.wait_for("invitee@example.com", 2).await;

    let (_, _) = s.user("forgetful@example.com").await;
    s.auth()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "forgetful@example.com".into(),
        })
        .await
        .expect("reset request");
    let reset = sink.wait_for("forgetful@example.com", 1).await;

    sign_up(&s, "joiner@example.com", Some(&org)).await;
    let verification = sink.wait_for("joiner@example.com", 1).await;

    // A message queued by a version that kept the token in the text (an
    // upgrade with mail still in the outbox): its text goes after delivery.
    let legacy_token = format!("ki_{}", uuid::Uuid::now_v7().simple()).replace('-', "");
    sql_rows(
        &s,
        &format!(
            "INSERT INTO email_outbox (id, to_address, subject, body_text, kind, created_at, \
             attempts, next_attempt_at) VALUES ('{}', 'legacy@example.com', 'Invitation', \
             'Accept: {PUBLIC_URL}/invitations/accept?token={legacy_token}', 'invitation', 0, 0, 0)",
            uuid::Uuid::now_v7()
        ),
    )
    .await;
    let legacy = sink.wait_for("legacy@example.com", 1).await;
    assert_eq!(legacy.token("ki").as_deref(), Some(legacy_token.as_str()));

    let mails = [
        (&legacy, "ki"),
        (&first_invite, "ki"),
        (&second_invite, "ki"),
        (&reset, "kp"),
        (&verification, "kv"),
    ];
    let mut secrets = Vec::new();
    for (m, prefix) in mails {
        let token = m.token(prefix).expect("token in email");
        let l = link(m);
        assert!(l.ends_with(&token), "the link carries the token: {l}");
        secrets.push(token);
        secrets.push(l);
    }

    // Delivery is recorded just after the sink has the message.
    let deadline = Instant::now() + Duration::from_secs(20);
    while undelivered(&s).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // PostgreSQL: the rows as they are once delivered. SQLite: the files,
    // given the sender's checkpoint of the WAL a moment to run (it follows
    // the pass that recorded the delivery).
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
        assert!(
            Instant::now() < deadline,
            "emailed secrets found in a copy of the database after delivery: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The tokens still work after delivery.
    let old_invite = first_invite.token("ki").expect("ki");
    let new_invite = second_invite.token("ki").expect("ki");
    let accept = |token: &str| AcceptInvitationRequest {
        token: token.into(),
        name: Some("Invitee".into()),
        password: Some(PASSWORD.into()),
    };
    let e = invitations(&ch)
        .accept_invitation(accept(&old_invite))
        .await
        .expect_err("the resent invitation's old token is dead");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    invitations(&ch)
        .accept_invitation(accept(&new_invite))
        .await
        .expect("accept with the delivered token");
    s.auth()
        .await
        .reset_password(ResetPasswordRequest {
            token: reset.token("kp").expect("kp"),
            new_password: "a brand new long password".into(),
        })
        .await
        .expect("reset with the delivered token");
    s.login("forgetful@example.com", "a brand new long password")
        .await
        .expect("login with the new password");
    verify(&s, &verification.token("kv").expect("kv"))
        .await
        .expect("verify with the delivered token");
}

/// Item 8: SignUp → approval refused until the emailed link is used; the
/// token is single use; the claim and the join request say it.
async fn signup_must_prove_the_address(backend: Backend) {
    let (s, sink) = start(backend, &[]).await;
    let ch = s.channel().await;
    let (admin, org, mgr) = manager_org(&s, "acme").await;

    let signed = sign_up(&s, "joiner@example.com", Some(&org)).await;
    let user = signed.user.expect("user");
    assert!(!user.email_verified);
    let jr = signed.join_request.expect("join request");
    assert!(!jr.email_verified, "{jr:?}");
    let listed = approvals(&ch)
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
    assert_eq!(listed.join_requests.len(), 1);
    assert!(!listed.join_requests[0].email_verified, "shown unverified");

    let session = s
        .login("joiner@example.com", PASSWORD)
        .await
        .expect("login");
    assert!(!verified_claim(&session.access_token));

    for caller in [&mgr, &admin] {
        assert_reason(
            approve(&ch, &jr.join_request_id, caller).await,
            Code::FailedPrecondition,
            "EMAIL_NOT_VERIFIED",
        );
    }
    // Rejecting needs no proof.
    let mail = sink.wait_for("joiner@example.com", 1).await;
    let token = mail.token("kv").expect("verification token");
    assert!(token.len() >= 3 + 43, "256-bit token: {token}");
    assert!(link(&mail).contains("/verify-email?token="));

    assert_reason(
        verify(&s, "kv_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
        Code::FailedPrecondition,
        "INVALID_VERIFICATION_TOKEN",
    );
    verify(&s, &token).await.expect("verify");
    assert_reason(
        verify(&s, &token).await,
        Code::FailedPrecondition,
        "INVALID_VERIFICATION_TOKEN",
    );
    assert_eq!(
        audit_count(&ch, &admin, "user.email_verified", &user.user_id).await,
        1
    );
    assert_eq!(
        audit_count(&ch, &admin, "user.verification_email_sent", &user.user_id).await,
        1
    );

    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: session.refresh_token,
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    assert!(verified_claim(&refreshed.access_token));
    let me = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &refreshed.access_token))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("user");
    assert!(me.email_verified);

    approve(&ch, &jr.join_request_id, &mgr)
        .await
        .expect("approval once verified");

    // A PlatformAdmin's accounts and the bootstrap admin are verified.
    assert!(verified_claim(&admin));
    s.create_user("made@example.com", "Made", PASSWORD).await;
    let made = s.login("made@example.com", PASSWORD).await.expect("login");
    assert!(verified_claim(&made.access_token));
    // An unverified account's own RequestToJoin is refused approval too.
    let solo = sign_up(&s, "solo@example.com", None).await;
    assert!(!solo.user.expect("user").email_verified);
    let solo_token = s
        .login("solo@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let jr2 = approvals(&ch)
        .request_to_join(authed(
            RequestToJoinRequest {
                organization_id: org.clone(),
            },
            &solo_token,
        ))
        .await
        .expect("request to join")
        .into_inner()
        .join_request
        .expect("jr");
    assert!(!jr2.email_verified);
    assert_reason(
        approve(&ch, &jr2.join_request_id, &mgr).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    approvals(&ch)
        .reject_join_request(authed(
            RejectJoinRequestRequest {
                join_request_id: jr2.join_request_id,
                reason: None,
            },
            &mgr,
        ))
        .await
        .expect("rejecting needs no proof");
}

/// Item 8: a token dies after 24 h; a resend kills the old token; resend
/// answers the same for unknown and verified addresses, and is throttled.
async fn verification_tokens_expire_and_resend_replaces_them(backend: Backend) {
    let (s, sink) = start(backend, &["--login-rate-per-email", "4"]).await;
    let ch = s.channel().await;
    let admin = s.admin_token().await;

    let again = sign_up(&s, "again@example.com", None)
        .await
        .user
        .expect("user");
    let t1 = sink
        .wait_for("again@example.com", 1)
        .await
        .token("kv")
        .expect("kv");
    resend(&s, "again@example.com").await.expect("resend");
    let t2 = sink
        .wait_for("again@example.com", 2)
        .await
        .token("kv")
        .expect("kv");
    assert_ne!(t1, t2);
    assert_reason(
        verify(&s, &t1).await,
        Code::FailedPrecondition,
        "INVALID_VERIFICATION_TOKEN",
    );
    verify(&s, &t2).await.expect("the new token works");
    assert_eq!(
        audit_count(&ch, &admin, "user.verification_email_resent", &again.id()).await,
        1
    );

    // Same answer whatever the address: unknown, verified, unverified.
    resend(&s, "nobody@example.com")
        .await
        .expect("unknown email");
    resend(&s, "again@example.com")
        .await
        .expect("verified email");
    // Throttled like Login: the 5th attempt for one address this minute
    // (2 above + 3 here) is refused, for an unknown address alike.
    resend(&s, "again@example.com").await.expect("3rd");
    resend(&s, "again@example.com").await.expect("4th");
    let e = resend(&s, "again@example.com")
        .await
        .expect_err("throttled");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for _ in 0..3 {
        resend(&s, "nobody@example.com")
            .await
            .expect("unknown email");
    }
    let e = resend(&s, "nobody@example.com")
        .await
        .expect_err("throttled");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A verified account gets no new link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.count_to("again@example.com"), 2);
    assert_eq!(sink.count_to("nobody@example.com"), 0);

    // Expiry: 24 h and a minute later the link is dead.
    sign_up(&s, "late@example.com", None).await;
    let late = sink
        .wait_for("late@example.com", 1)
        .await
        .token("kv")
        .expect("kv");
    s.advance_clock(Duration::from_secs(24 * 3600 + 60));
    assert_reason(
        verify(&s, &late).await,
        Code::FailedPrecondition,
        "INVALID_VERIFICATION_TOKEN",
    );
    // Bad input is INVALID_ARGUMENT, not INTERNAL.
    assert_invalid(verify(&s, "").await, "token");
    assert_invalid(verify(&s, "two words").await, "token");
    assert_invalid(resend(&s, "not-an-email").await, "email");
}

trait Id {
    fn id(&self) -> String;
}

impl Id for User {
    fn id(&self) -> String {
        self.user_id.clone()
    }
}

/// Item 8: VerifyEmail with the old token and ResendVerificationEmail at
/// the same instant. Either the verification wins (then the resend sends
/// nothing) or the resend wins (then the old token is refused and the new
/// one works): never both a successful old token and a new link.
async fn verify_with_the_old_token_races_resend(backend: Backend) {
    let (s, sink) = start(backend, &[]).await;
    const ROUNDS: usize = 10;
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let email = format!("racer{round}@example.com");
        sign_up(&s, &email, None).await;
        let old = sink.wait_for(&email, 1).await.token("kv").expect("kv");
        let (v, r) = tokio::join!(verify(&s, &old), resend(&s, &email));
        r.expect("resend always answers OK");
        if let Err(e) = &v {
            assert_eq!(reason(e), "INVALID_VERIFICATION_TOKEN", "{e:?}");
        }
        outcomes.push((email, old, v.is_ok()));
    }
    // Let every resend's background work finish and its mail arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut verify_won = 0;
    for (email, old, verified) in outcomes {
        if verified {
            verify_won += 1;
            assert_eq!(
                sink.count_to(&email),
                1,
                "{email}: the old token verified AND a resend issued a new link"
            );
        } else {
            let new = sink.wait_for(&email, 2).await.token("kv").expect("kv");
            assert_reason(
                verify(&s, &old).await,
                Code::FailedPrecondition,
                "INVALID_VERIFICATION_TOKEN",
            );
            verify(&s, &new).await.expect("the new token works");
        }
    }
    eprintln!("verify won {verify_won} of {ROUNDS} rounds");
}

/// Item 8: accepting an invitation proves the address, for a new account
/// and for an existing unverified one.
async fn invitation_proves_the_address(backend: Backend) {
    let (s, sink) = start(backend, &[]).await;
    let ch = s.channel().await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let invite = |email: &'static str| {
        let ch = ch.clone();
        let org = org.clone();
        let mgr = mgr.clone();
        async move {
            invitations(&ch)
                .create_invitation(authed(
                    CreateInvitationRequest {
                        organization_id: org,
                        email: email.into(),
                        role: Role::Member as i32,
                        ..Default::default()
                    },
                    &mgr,
                ))
                .await
                .expect("invite");
        }
    };

    invite("fresh@example.com").await;
    let token = sink
        .wait_for("fresh@example.com", 1)
        .await
        .token("ki")
        .expect("ki");
    invitations(&ch)
        .accept_invitation(AcceptInvitationRequest {
            token,
            name: Some("Fresh".into()),
            password: Some(PASSWORD.into()),
        })
        .await
        .expect("accept");
    let fresh = s.login("fresh@example.com", PASSWORD).await.expect("login");
    assert!(verified_claim(&fresh.access_token));

    sign_up(&s, "existing@example.com", None).await;
    let before = s
        .login("existing@example.com", PASSWORD)
        .await
        .expect("login");
    assert!(!verified_claim(&before.access_token));
    invite("existing@example.com").await;
    // Message 1 is the verification email, 2 the invitation.
    let token = sink
        .wait_for("existing@example.com", 2)
        .await
        .token("ki")
        .expect("ki");
    invitations(&ch)
        .accept_invitation(authed(
            AcceptInvitationRequest {
                token,
                name: None,
                password: None,
            },
            &before.access_token,
        ))
        .await
        .expect("accept as the logged-in owner");
    let after = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: before.refresh_token,
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    assert!(verified_claim(&after.access_token));
}

/// Item 10a: ResendInvitation and AcceptInvitation with the old token at
/// the same instant, 20 rounds. Never both "resend OK" and "accept with the
/// old token OK". Even rounds accept as a new account (a password hash
/// between reading the invitation and using it: a wide window), odd rounds
/// as the logged-in owner of an existing account (a narrow one).
async fn accept_with_the_old_token_races_resend(backend: Backend) {
    let (s, sink) = start(backend, &[]).await;
    let ch = s.channel().await;
    let (_, org, mgr) = manager_org(&s, "acme").await;
    let (mut resend_won, mut accept_won) = (0, 0);
    for round in 0..20 {
        let email = format!("invitee{round}@example.com");
        let owner = if round % 2 == 1 {
            Some(s.user(&email).await.1)
        } else {
            None
        };
        let accept = |token: &str| {
            let msg = AcceptInvitationRequest {
                token: token.to_string(),
                name: owner.is_none().then(|| "Racer".to_string()),
                password: owner.is_none().then(|| PASSWORD.to_string()),
            };
            match &owner {
                Some(t) => authed(msg, t),
                None => tonic::Request::new(msg),
            }
        };
        let inv = invitations(&ch)
            .create_invitation(authed(
                CreateInvitationRequest {
                    organization_id: org.clone(),
                    email: email.clone(),
                    role: Role::Member as i32,
                    ..Default::default()
                },
                &mgr,
            ))
            .await
            .expect("invite")
            .into_inner()
            .invitation
            .expect("invitation");
        let old = sink.wait_for(&email, 1).await.token("ki").expect("ki");
        let (mut a, mut b) = (invitations(&ch), invitations(&ch));
        let (accepted, resent) = tokio::join!(
            a.accept_invitation(accept(&old)),
            b.resend_invitation(authed(
                ResendInvitationRequest {
                    invitation_id: inv.invitation_id.clone(),
                },
                &mgr,
            )),
        );
        assert!(
            !(accepted.is_ok() && resent.is_ok()),
            "round {round}: the old token was accepted AND the resend succeeded"
        );
        match (accepted, resent) {
            (Ok(_), Err(e)) => {
                accept_won += 1;
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert_eq!(reason(&e), "NOT_PENDING", "{e:?}");
            }
            (Err(e), Ok(_)) => {
                resend_won += 1;
                assert_eq!(e.code(), Code::NotFound, "round {round}: {e:?}");
                let new = sink.wait_for(&email, 2).await.token("ki").expect("ki");
                let again = invitations(&ch).accept_invitation(accept(&old)).await;
                assert!(again.is_err(), "the old token stays dead");
                invitations(&ch)
                    .accept_invitation(accept(&new))
                    .await
                    .expect("the new token works");
            }
            (a, r) => panic!("round {round}: neither won: {a:?} {r:?}"),
        }
    }
    eprintln!("accept won {accept_won}, resend won {resend_won} of 20 rounds");
}

/// A key file for `--outbox-key-file` (32 random bytes, hex), and the
/// directory that holds it.
fn outbox_key_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("outbox.key");
    let key: [u8; 32] = rand::random();
    std::fs::write(&path, format!("{}\n", hex::encode(key))).expect("write key");
    (dir, path.display().to_string())
}

/// A PKCS#8 PEM file for `--signing-key-file`.
fn signing_key_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("signing.pem");
    let key = kiops_token::SigningKey::generate();
    std::fs::write(&path, key.to_pkcs8_pem().expect("pem")).expect("write pem");
    (dir, path.display().to_string())
}

/// A physical copy: `database_copy`, plus on PostgreSQL the raw pages of
/// the outbox, dead row versions included (pg_basebackup, a replica).
async fn physical_copy(s: &TestServer) -> Vec<u8> {
    let mut out = database_copy(s).await;
    if s.backend == Backend::Postgres {
        sql_rows(s, "CREATE EXTENSION IF NOT EXISTS pageinspect").await;
        let pages = sql_rows(
            s,
            "SELECT (pg_relation_size('email_outbox') / 8192)::bigint AS n",
        )
        .await[0]
            .try_get::<i64>("", "n")
            .expect("pages");
        assert!(pages > 0, "the outbox has pages");
        for p in 0..pages {
            let row = sql_rows(s, &format!("SELECT get_raw_page('email_outbox', {p}) AS b")).await;
            out.extend(row[0].try_get::<Vec<u8>>("", "b").expect("page"));
        }
    }
    out
}

/// Waits until every queued message has failed at least once (SMTP refused).
async fn all_failed_once(s: &TestServer, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = sql_rows(
            s,
            "SELECT COUNT(*) AS n FROM email_outbox WHERE sent_at IS NULL AND last_error IS NOT NULL",
        )
        .await;
        if rows[0].try_get::<i64>("", "n").expect("n") >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "messages not tried:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stored secrets of the undelivered messages.
async fn queued_secrets(s: &TestServer) -> Vec<String> {
    sql_rows(
        s,
        "SELECT secret FROM email_outbox WHERE sent_at IS NULL AND secret IS NOT NULL",
    )
    .await
    .iter()
    .map(|r| r.try_get::<String>("", "secret").expect("secret"))
    .collect()
}

/// Item 3 with a key outside the database: an invitation, a password reset
/// and a sign-up verification wait in the outbox (SMTP refuses them); a copy
/// taken then, and one taken after delivery (PostgreSQL pages included),
/// hold none of the tokens nor links; the emails then arrive and work.
async fn no_token_in_any_copy(backend: Backend, key_args: &[&str]) {
    let (s, sink) = start(backend, key_args).await;
    let ch = s.channel().await;
    let (_, org, mgr) = manager_org(&s, "sealed").await;
    sink.refuse_next(usize::MAX);
    invitations(&ch)
        .create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "sealed-invitee@example.com".into(),
                role: Role::Member as i32,
                ..Default::default()
            },
            &mgr,
        ))
        .await
        .expect("invite");
    s.user("sealed-reset@example.com").await;
    s.auth()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "sealed-reset@example.com".into(),
        })
        .await
        .expect("reset request");
    sign_up(&s, "sealed-joiner@example.com", Some(&org)).await;
    all_failed_once(&s, 3).await;
    let stored = queued_secrets(&s).await;
    assert_eq!(stored.len(), 3, "three tokens wait in the outbox");
    assert!(
        stored.iter().all(|x| x.starts_with("s1:")),
        "the queued tokens are sealed: {stored:?}"
    );
    let before = physical_copy(&s).await;

    // SMTP accepts again; the retry is brought forward (10 min < every TTL).
    sink.refuse_next(0);
    s.advance_clock(Duration::from_secs(600));
    let invite = sink.wait_for("sealed-invitee@example.com", 1).await;
    let reset = sink.wait_for("sealed-reset@example.com", 1).await;
    let verification = sink.wait_for("sealed-joiner@example.com", 1).await;
    let mut secrets = Vec::new();
    for (m, prefix) in [(&invite, "ki"), (&reset, "kp"), (&verification, "kv")] {
        secrets.push(m.token(prefix).expect("token in email"));
        secrets.push(link(m));
    }
    assert_eq!(
        found_in(&before, &secrets),
        Vec::<String>::new(),
        "emailed secrets in a copy of the database taken before delivery"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while undelivered(&s).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        found_in(&physical_copy(&s).await, &secrets),
        Vec::<String>::new(),
        "emailed secrets in a copy of the database taken after delivery"
    );

    // Delivered tokens work.
    invitations(&ch)
        .accept_invitation(AcceptInvitationRequest {
            token: invite.token("ki").expect("ki"),
            name: Some("Invitee".into()),
            password: Some(PASSWORD.into()),
        })
        .await
        .expect("accept with the delivered token");
    s.auth()
        .await
        .reset_password(ResetPasswordRequest {
            token: reset.token("kp").expect("kp"),
            new_password: "a sealed new long password".into(),
        })
        .await
        .expect("reset with the delivered token");
    s.login("sealed-reset@example.com", "a sealed new long password")
        .await
        .expect("login with the new password");
    verify(&s, &verification.token("kv").expect("kv"))
        .await
        .expect("verify with the delivered token");
}

async fn with_an_outbox_key_no_emailed_token_is_ever_in_the_database(backend: Backend) {
    let (_dir, key) = outbox_key_file();
    no_token_in_any_copy(backend, &["--outbox-key-file", &key]).await;
}

/// The key derived from the signing key file (no outbox key file).
async fn with_a_signing_key_file_no_emailed_token_is_ever_in_the_database(backend: Backend) {
    let (_dir, key) = signing_key_file();
    no_token_in_any_copy(backend, &["--signing-key-file", &key]).await;
}

/// A replica or a restart with another outbox key cannot open a message
/// sealed with the first one: it gives the message up with a log line,
/// sends nothing, and goes on serving (a new message is delivered).
async fn a_message_sealed_with_another_key_is_given_up_not_sent(backend: Backend) {
    let (_d1, key1) = outbox_key_file();
    let (_d2, key2) = outbox_key_file();
    let (mut first, sink) = start(backend, &["--outbox-key-file", &key1]).await;
    sink.refuse_next(usize::MAX);
    first.user("rekeyed@example.com").await;
    first
        .auth()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "rekeyed@example.com".into(),
        })
        .await
        .expect("reset request");
    all_failed_once(&first, 1).await;
    let id: String = sql_rows(&first, "SELECT id FROM email_outbox WHERE sent_at IS NULL").await[0]
        .try_get("", "id")
        .expect("id");
    assert!(first.terminate().success());

    sink.refuse_next(0);
    let second = TestServer::start_on(
        TestDb::shared(&first.db.url),
        backend,
        ServerOptions {
            bootstrap_admin: false,
            extra_args: vec![
                "--smtp-url".into(),
                sink.url(),
                "--public-url".into(),
                PUBLIC_URL.into(),
                "--outbox-key-file".into(),
                key2,
            ],
            ..Default::default()
        },
    )
    .await;
    second.advance_clock(Duration::from_secs(600));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = second.logs();
        if logs.lines().any(|l| {
            l.contains("email given up") && l.contains(&id) && l.contains("another outbox key")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line giving up {id}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = &sql_rows(
        &second,
        &format!("SELECT secret, next_attempt_at, sent_at FROM email_outbox WHERE id = '{id}'"),
    )
    .await[0];
    assert_eq!(
        row.try_get::<Option<String>>("", "secret").expect("secret"),
        None
    );
    assert_eq!(
        row.try_get::<Option<i64>>("", "sent_at").expect("sent_at"),
        None
    );
    assert_eq!(
        row.try_get::<i64>("", "next_attempt_at").expect("next"),
        i64::MAX,
        "given up for good"
    );
    assert_eq!(sink.count_to("rekeyed@example.com"), 0, "nothing sent");

    // Still serving: a new reset is sealed with the new key and delivered.
    second
        .auth()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "rekeyed@example.com".into(),
        })
        .await
        .expect("reset request");
    let mail = sink.wait_for("rekeyed@example.com", 1).await;
    second
        .auth()
        .await
        .reset_password(ResetPasswordRequest {
            token: mail.token("kp").expect("kp"),
            new_password: "rekeyed new long password".into(),
        })
        .await
        .expect("reset with the new message");
    assert_eq!(sink.count_to("rekeyed@example.com"), 1);
}

/// Without a key outside the database, PostgreSQL keeps queued tokens in
/// dead row versions until vacuumed: the operator is told at start. SQLite
/// overwrites them (secure_delete, WAL truncated): no warning there, nor
/// with a key.
async fn postgres_without_a_key_warns_that_queued_links_are_in_the_clear(backend: Backend) {
    const WARNING: &str = "emailed links can be recovered from physical copies";
    let (plain, _sink) = start(backend, &[]).await;
    assert_eq!(
        plain.logs().contains(WARNING),
        backend == Backend::Postgres,
        "startup logs:\n{}",
        plain.logs()
    );
    let (_dir, key) = outbox_key_file();
    let (keyed, _sink) = start(backend, &["--outbox-key-file", &key]).await;
    assert!(!keyed.logs().contains(WARNING), "{}", keyed.logs());
    let (_dir, pem) = signing_key_file();
    let (derived, _sink) = start(backend, &["--signing-key-file", &pem]).await;
    assert!(!derived.logs().contains(WARNING), "{}", derived.logs());

    // A malformed key file stops the start with a clear error.
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").expect("write");
    let mut child = std::process::Command::new(binary())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &plain.db.url, "--outbox-key-file"])
        .arg(&bad)
        .env_remove("KIOPS_BOOTSTRAP_ADMIN_EMAIL")
        .env_remove("KIOPS_BOOTSTRAP_ADMIN_PASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("started with a malformed outbox key file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("outbox key file") && text.contains("64 hex characters"),
        "{text}"
    );
}
