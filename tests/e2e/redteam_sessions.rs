//! Red team, issue 24 (R29, sessions you can see and end): ids in every
//! form, another's and dead sessions, a PlatformAdmin ending their own,
//! races with Login, Logout, Refresh and each other, what offline
//! verifiers make of the events, hostile user agents, accounts that are
//! deactivated, deleted or service accounts, and more than 200 sessions.

use crate::support::service::*;
use crate::support::sessions::*;
use crate::support::*;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::user_service_client::UserServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

crate::both_backends!(
    session_ids_in_every_form_end_only_ones_own,
    another_sessions_id_answers_exactly_like_an_unknown_one,
    a_platform_admin_ending_their_own_sessions_is_answered_then_refused,
    revoke_others_racing_logins_counts_what_it_ended,
    revoke_user_sessions_racing_revoke_others_and_logout_end_each_once,
    offline_verifiers_refuse_ended_sessions_and_accept_the_current,
    tokens_a_racing_refresh_minted_are_refused_offline_too,
    a_refresh_committed_while_the_revocation_waits_is_refused_offline,
    a_reused_refresh_token_racing_revoke_and_logout_events_the_session_once,
    session_rpcs_over_grpc_web_keep_the_browser_and_end_the_session,
    an_admins_own_stream_ends_when_they_end_their_sessions,
    hostile_user_agents_are_stored_printable_and_bounded,
    deactivated_deleted_and_service_accounts_have_no_sessions_to_show,
    service_accounts_get_scope_required_from_every_session_rpc,
    more_than_200_sessions_list_200_and_all_end,
    an_expired_session_is_neither_listed_nor_ended,
);

async fn revoke(s: &TestServer, token: &str, id: &str) -> Result<(), Status> {
    s.users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: id.into(),
            },
            token,
        ))
        .await
        .map(|_| ())
}

async fn mine(s: &TestServer, token: &str) -> Vec<Session> {
    s.users()
        .await
        .list_my_sessions(authed(ListMySessionsRequest {}, token))
        .await
        .expect("list my sessions")
        .into_inner()
        .sessions
}

async fn of_user(s: &TestServer, admin: &str, user: &str) -> Result<Vec<Session>, Status> {
    s.users()
        .await
        .list_user_sessions(authed(
            ListUserSessionsRequest {
                user_id: user.into(),
            },
            admin,
        ))
        .await
        .map(|r| r.into_inner().sessions)
}

async fn count(s: &TestServer, sql: &str) -> i64 {
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .expect("count");
    let n = rows[0].try_get::<i64>("", "n").expect("n");
    db.close().await.expect("close");
    n
}

/// Case changes of one's own id still name it (ids are compared in their
/// canonical form); every other spelling is bad input, and no spelling of
/// another's id, a dead session's or a service credential's ends anything.
async fn session_ids_in_every_form_end_only_ones_own(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (_, victim) = s.user("victim@rs.test").await;
    let (_, me) = s.user("me@rs.test").await;
    let other_mine = login_as(&s, "second", "me@rs.test").await;
    let v = sid(&victim);
    let forms = [
        v.to_uppercase(),
        format!(" {v}"),
        format!("{v} "),
        format!("{{{v}}}"),
        format!("urn:uuid:{v}"),
        v.replace('-', ""),
        format!("{v}\n"),
        format!("{v}\u{0}"),
        v.replacen('-', "\u{2010}", 1),
    ];
    for f in &forms {
        let e = revoke(&s, &me, f).await.expect_err(f);
        assert!(
            matches!(e.code(), Code::NotFound | Code::InvalidArgument),
            "{f:?}: {e:?}"
        );
    }
    get_me(&s, &victim)
        .await
        .expect("the victim's session lives");

    // A dead session of one's own: ended, then again.
    let ended = sid(&other_mine.access_token);
    revoke(&s, &me, &ended)
        .await
        .expect("end own other session");
    assert_status(revoke(&s, &me, &ended).await, Code::NotFound, "NOT_FOUND");
    assert_status(
        revoke(&s, &me, &ended.to_uppercase()).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // A service account's credential id (it is the `sid` of its tokens).
    let sa = ServiceAccountServiceClient::new(s.channel().await)
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: "ids".into(),
                description: String::new(),
                scopes: vec!["users.read".into()],
                certificate_identity: String::new(),
            },
            &admin,
        ))
        .await
        .expect("create account")
        .into_inner()
        .service_account
        .expect("account")
        .service_account_id;
    let (cred, secret) = add_secret(&s, &admin, &sa).await;
    for token in [&me, &admin] {
        assert_status(revoke(&s, token, &cred).await, Code::NotFound, "NOT_FOUND");
        assert_status(revoke(&s, token, &sa).await, Code::NotFound, "NOT_FOUND");
    }
    let sa_token = s
        .auth()
        .await
        .issue_service_account_token(by_secret(&sa, &secret))
        .await
        .expect("exchange")
        .into_inner()
        .access_token;
    s.users()
        .await
        .list_users(authed(ListUsersRequest::default(), &sa_token))
        .await
        .expect("the service account's credential still works");
    // One's own current id upper-cased is one's own session: it ends.
    revoke(&s, &me, &sid(&me).to_uppercase())
        .await
        .expect("own id, upper case");
    assert_revoked(
        get_me(&s, &me).await,
        "own session ended by its upper-case id",
    );
    let n = count(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked'",
    )
    .await;
    assert_eq!(n, 2, "two sessions ended, two events");
}

/// Another's live session and an unknown id: the same code, reason,
/// message and details, and no usable timing difference.
async fn another_sessions_id_answers_exactly_like_an_unknown_one(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, victim) = s.user("victim@rs.test").await;
    let (_, me) = s.user("me@rs.test").await;
    let v = sid(&victim);
    let unknown = "01a2072e-0000-7000-8000-000000000000";
    let a = revoke(&s, &me, &v).await.expect_err("another's");
    let b = revoke(&s, &me, unknown).await.expect_err("unknown");
    assert_eq!(a.code(), b.code());
    assert_eq!(a.message(), b.message());
    assert_eq!(a.details(), b.details());
    assert_eq!(reason(&a), "NOT_FOUND");
    // Timing: interleaved medians within a generous bound.
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let t = Instant::now();
        let _ = revoke(&s, &me, &v).await;
        ta.push(t.elapsed());
        let t = Instant::now();
        let _ = revoke(&s, &me, unknown).await;
        tb.push(t.elapsed());
    }
    ta.sort();
    tb.sort();
    let (ma, mb) = (ta[20].as_secs_f64(), tb[20].as_secs_f64());
    assert!(
        ma < mb * 3.0 + 0.002 && mb < ma * 3.0 + 0.002,
        "median another's {ma:.6}s vs unknown {mb:.6}s"
    );
    get_me(&s, &victim)
        .await
        .expect("the victim's session lives");
}

/// RevokeUserSessions on oneself ends one's own sessions, the calling one
/// included: the call is answered, the next one refused, and the admin may
/// sign in again (the account stays PlatformAdmin and active).
async fn a_platform_admin_ending_their_own_sessions_is_answered_then_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let second = s.admin_token().await;
    let me = token_claims(&admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let before = of_user(&s, &admin, &me).await.expect("list own");
    assert!(before.len() >= 2);
    assert_eq!(before.iter().filter(|x| x.current).count(), 1, "{before:?}");
    let n = s
        .users()
        .await
        .revoke_user_sessions(authed(
            RevokeUserSessionsRequest {
                user_id: me.to_uppercase(),
            },
            &admin,
        ))
        .await
        .expect("revoke own sessions")
        .into_inner()
        .revoked_count;
    assert_eq!(n as usize, before.len());
    assert_revoked(get_me(&s, &admin).await, "the calling admin session");
    assert_revoked(get_me(&s, &second).await, "the other admin session");
    let again = s.admin_token().await;
    let listed = of_user(&s, &again, &me).await.expect("list again");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].current);
}

/// RevokeOtherSessions racing Logins of the same user: a login it did not
/// end stays usable, one it ended is refused, and its count is exactly the
/// number of session.revoked events it wrote.
async fn revoke_others_racing_logins_counts_what_it_ended(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (uid, keep) = s.user("race@rs.test").await;
    for round in 0..5 {
        for i in 0..3 {
            login_as(&s, &format!("old-{i}"), "race@rs.test").await;
        }
        let before = count(
            &s,
            &format!(
                "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked' \
                 AND actor_id = '{uid}'"
            ),
        )
        .await;
        let logins = futures::future::join_all((0..4).map(|_| async {
            s.login("race@rs.test", PASSWORD)
                .await
                .map(|r| r.access_token)
        }));
        let call = async {
            tokio::time::sleep(Duration::from_millis(round * 7)).await;
            s.users()
                .await
                .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &keep))
                .await
                .expect("revoke others")
                .into_inner()
                .revoked_count
        };
        let (tokens, n) = tokio::join!(logins, call);
        let after = count(
            &s,
            &format!(
                "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked' \
                 AND actor_id = '{uid}'"
            ),
        )
        .await;
        assert_eq!((after - before) as i32, n, "round {round}: count = events");
        assert!(n >= 3, "round {round}: the three old sessions at least");
        let listed: Vec<String> = mine(&s, &keep)
            .await
            .into_iter()
            .map(|x| x.session_id)
            .collect();
        let mut survivors = 0;
        for t in tokens {
            let t = t.expect("login");
            let alive = get_me(&s, &t).await;
            if listed.contains(&sid(&t)) {
                alive.expect("a listed session works");
                survivors += 1;
            } else {
                assert_revoked(alive, "an ended racing login");
            }
        }
        assert_eq!(
            n as usize,
            3 + 4 - survivors,
            "round {round}: ended = old three + racing logins not kept"
        );
        // Clean up the survivors for the next round.
        s.users()
            .await
            .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &keep))
            .await
            .expect("tidy");
    }
    get_me(&s, &keep).await.expect("the calling session lives");
}

/// RevokeUserSessions, RevokeOtherSessions and Logouts on the same
/// sessions at once: each session ends once, with exactly one revocation
/// event, and the answers add up to the sessions ended.
async fn revoke_user_sessions_racing_revoke_others_and_logout_end_each_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, first) = s.user("three@rs.test").await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        sessions.push(login_as(&s, &format!("d{i}"), "three@rs.test").await);
    }
    let channel = s.channel().await;
    let mut users = UserServiceClient::new(channel.clone());
    let mut users2 = UserServiceClient::new(channel.clone());
    let auth = s.auth().await;
    let admin2 = admin.clone();
    let uid2 = uid.clone();
    let all = tokio::spawn(async move {
        users
            .revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: uid2 }, &admin2))
            .await
            .map(|r| r.into_inner().revoked_count)
    });
    let first2 = first.clone();
    let others = tokio::spawn(async move {
        users2
            .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &first2))
            .await
            .map(|r| r.into_inner().revoked_count)
    });
    let logouts = sessions.iter().map(|l| {
        let mut a = auth.clone();
        let (rt, at) = (l.refresh_token.clone(), l.access_token.clone());
        tokio::spawn(async move {
            a.logout(authed(LogoutRequest { refresh_token: rt }, &at))
                .await
                .is_ok()
        })
    });
    let logged_out = futures::future::join_all(logouts).await;
    let all = all.await.expect("task");
    let others = others.await.expect("task");
    // RevokeOtherSessions may lose its own session to RevokeUserSessions first.
    let total = all.expect("revoke user sessions") + others.unwrap_or(0);
    let _ = logged_out;
    let sids: Vec<String> = std::iter::once(sid(&first))
        .chain(sessions.iter().map(|l| sid(&l.access_token)))
        .collect();
    let mut per_session: HashMap<String, i64> = HashMap::new();
    for x in &sids {
        let n = count(
            &s,
            &format!("SELECT COUNT(*) AS n FROM revocation_events WHERE session_id = '{x}'"),
        )
        .await;
        per_session.insert(x.clone(), n);
    }
    assert!(
        per_session.values().all(|&n| n == 1),
        "each session exactly one revocation event: {per_session:?}"
    );
    let by_request = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM revocation_events WHERE user_id = '{uid}' \
             AND reason = 'session_revoked'"
        ),
    )
    .await;
    assert_eq!(by_request, total as i64, "the counts add up to the events");
    let audited = count(
        &s,
        "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked'",
    )
    .await;
    assert_eq!(audited, total as i64);
    let logouts = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM revocation_events WHERE user_id = '{uid}' \
             AND reason = 'logout'"
        ),
    )
    .await;
    assert_eq!(logouts + by_request, sids.len() as i64);
    for x in sessions.iter().map(|l| &l.access_token).chain([&first]) {
        assert_revoked(get_me(&s, x).await, "every session ended");
    }
}

/// An offline verifier that applies the events refuses the ended
/// sessions' tokens and accepts the current session's.
async fn offline_verifiers_refuse_ended_sessions_and_accept_the_current(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = watch(&s, &admin).await;
    let (_, keep) = s.user("off@rs.test").await;
    let a = login_as(&s, "a", "off@rs.test").await;
    let b = login_as(&s, "b", "off@rs.test").await;
    // Tokens surely minted before the revocation's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    revoke(&s, &keep, &sid(&a.access_token))
        .await
        .expect("revoke a");
    let n = s
        .users()
        .await
        .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &keep))
        .await
        .expect("others")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 1);
    let evs: Vec<_> = events(&mut stream, 2)
        .await
        .into_iter()
        .filter(|e| e.reason == "session_revoked")
        .collect();
    assert_eq!(evs.len(), 2, "{evs:?}");
    let v = verifier_with(&evs);
    assert!(offline_revoked(&v, &a.access_token));
    assert!(offline_revoked(&v, &b.access_token));
    assert!(
        !offline_revoked(&v, &keep),
        "the current session is accepted"
    );
    // A new login after the revocations is not caught by them.
    let fresh = s.login("off@rs.test", PASSWORD).await.expect("login");
    assert!(!offline_revoked(&v, &fresh.access_token));
}

/// Refreshes racing RevokeSession: every access token minted in the race
/// is refused by an offline verifier holding the session's event (not only
/// here), and its refresh token no longer rotates.
async fn tokens_a_racing_refresh_minted_are_refused_offline_too(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = watch(&s, &admin).await;
    let (_, keep) = s.user("rr@rs.test").await;
    let mut minted: Vec<(String, Vec<String>, String)> = Vec::new();
    for round in 0..12u64 {
        let target = login_as(&s, "racer", "rr@rs.test").await;
        let id = sid(&target.access_token);
        let mut auth_c = s.auth().await;
        let first = target.refresh_token.clone();
        let handles = vec![tokio::spawn(async move {
            let mut refresh = first;
            let mut tokens = Vec::new();
            for _ in 0..40 {
                match auth_c
                    .refresh(RefreshRequest {
                        refresh_token: refresh.clone(),
                        organization_id: None,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        refresh = r.refresh_token;
                        tokens.push(r.access_token);
                    }
                    Err(_) => break,
                }
            }
            (tokens, refresh)
        })];
        tokio::time::sleep(Duration::from_millis(3 * (round % 5))).await;
        revoke(&s, &keep, &id).await.expect("revoke");
        for h in handles {
            let (tokens, last_refresh) = h.await.expect("task");
            if !tokens.is_empty() {
                minted.push((id.clone(), tokens, last_refresh));
            }
        }
    }
    let evs = events(&mut stream, 12).await;
    let v = verifier_with(&evs);
    let mut n = 0;
    for (id, tokens, last_refresh) in &minted {
        assert!(evs.iter().any(|e| &e.session_id == id), "the event of {id}");
        for t in tokens {
            n += 1;
            assert_revoked(get_me(&s, t).await, "here");
            let ev = evs.iter().find(|e| &e.session_id == id).expect("event");
            assert!(
                offline_revoked(&v, t),
                "a token minted in the race is accepted offline: iat {} event {:?}",
                token_claims(t)["iat"],
                ev.revoke_time
            );
        }
        let r = s
            .auth()
            .await
            .refresh(RefreshRequest {
                refresh_token: last_refresh.clone(),
                organization_id: None,
            })
            .await;
        assert_eq!(
            r.expect_err("the last refresh token rotates no more")
                .code(),
            Code::Unauthenticated
        );
    }
    assert!(!offline_revoked(&v, &keep), "the keeper is accepted");
    println!("redteam_sessions: {n} racing tokens, all refused here and offline");
}

/// User agents with control bytes, non-UTF-8 bytes, or 10 KB: stored and
/// shown as printable ASCII of at most 256 characters; the log carries
/// none of the raw bytes.
async fn hostile_user_agents_are_stored_printable_and_bounded(backend: Backend) {
    use tonic::metadata::MetadataValue;
    let s = TestServer::start(backend).await;
    let (uid, _) = s.user("ua@rs.test").await;
    let admin = s.admin_token().await;
    let agents: Vec<Vec<u8>> = vec![
        b"tab\there".to_vec(),
        b"bytes\x80\xff\xfe-end".to_vec(),
        [b"long-".as_slice(), &[b'A'; 10 * 1024]].concat(),
        b"\x7fdel".to_vec(),
        "\u{202e}rtl-override".as_bytes().to_vec(),
    ];
    let mut sent = 0;
    for raw in &agents {
        let Ok(value) = MetadataValue::try_from(raw.as_slice()) else {
            continue;
        };
        let mut req = tonic::Request::new(LoginRequest {
            email: "ua@rs.test".into(),
            password: PASSWORD.into(),
            organization_id: None,
        });
        req.metadata_mut().insert("user-agent", value);
        match s.auth().await.login(req).await {
            Ok(_) => sent += 1,
            Err(e) => panic!("login with a hostile user agent: {e:?}"),
        }
    }
    assert!(sent >= 3, "most hostile agents made it onto the wire");
    let listed = of_user(&s, &admin, &uid).await.expect("list");
    for x in &listed {
        assert!(x.user_agent.len() <= 256, "{}", x.user_agent.len());
        assert!(
            x.user_agent.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{:?}",
            x.user_agent
        );
    }
    assert!(listed.iter().any(|x| x.user_agent.starts_with("long-AAAA")));
    let logs = s.logs();
    assert!(
        !logs.contains(&"A".repeat(300)),
        "the 10 KB agent is logged"
    );
    assert!(!logs.contains('\u{202e}'), "raw bidi control in the log");
    assert!(!logs.contains('\u{7f}'), "raw DEL in the log");
}

/// A deactivated account's sessions are all ended (none listed); a deleted
/// account and a service account have none to list or end: NOT_FOUND.
async fn deactivated_deleted_and_service_accounts_have_no_sessions_to_show(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (gone, gone_t) = s.user("gone@rs.test").await;
    let (off, off_t) = s.user("off@rs.test").await;
    login_as(&s, "second", "off@rs.test").await;
    s.users()
        .await
        .deactivate_user(authed(
            DeactivateUserRequest {
                user_id: off.clone(),
            },
            &admin,
        ))
        .await
        .expect("deactivate");
    assert!(of_user(&s, &admin, &off).await.expect("list").is_empty());
    assert!(get_me(&s, &off_t).await.is_err());
    let n = s
        .users()
        .await
        .revoke_user_sessions(authed(
            RevokeUserSessionsRequest {
                user_id: off.clone(),
            },
            &admin,
        ))
        .await
        .expect("revoke of a deactivated account")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 0, "nothing left to end, nothing evented twice");

    s.users()
        .await
        .delete_user(authed(
            DeleteUserRequest {
                user_id: gone.clone(),
            },
            &admin,
        ))
        .await
        .expect("delete");
    assert_status(
        of_user(&s, &admin, &gone).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        s.users()
            .await
            .revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: gone }, &admin))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(get_me(&s, &gone_t).await.is_err());

    let sa = ServiceAccountServiceClient::new(s.channel().await)
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: "robot".into(),
                description: String::new(),
                scopes: vec!["users.read".into()],
                certificate_identity: String::new(),
            },
            &admin,
        ))
        .await
        .expect("create")
        .into_inner()
        .service_account
        .expect("account")
        .service_account_id;
    assert_status(of_user(&s, &admin, &sa).await, Code::NotFound, "NOT_FOUND");
    assert_status(
        s.users()
            .await
            .revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: sa }, &admin))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

/// Service accounts have no sessions: every session RPC is SCOPE_REQUIRED,
/// whatever scopes the account holds.
async fn service_accounts_get_scope_required_from_every_session_rpc(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, victim) = s.user("v@rs.test").await;
    let sa = ServiceAccountServiceClient::new(s.channel().await)
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: "all-scopes".into(),
                description: String::new(),
                scopes: vec![
                    "users.read".into(),
                    "revocations.watch".into(),
                    "permissions.check".into(),
                ],
                certificate_identity: String::new(),
            },
            &admin,
        ))
        .await
        .expect("create")
        .into_inner()
        .service_account
        .expect("account")
        .service_account_id;
    let (cred, secret) = add_secret(&s, &admin, &sa).await;
    let t = s
        .auth()
        .await
        .issue_service_account_token(by_secret(&sa, &secret))
        .await
        .expect("exchange")
        .into_inner()
        .access_token;
    let mut u = s.users().await;
    let scope = |r: Result<(), Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        assert_eq!(reason(&e), "SCOPE_REQUIRED", "{what}: {e:?}");
    };
    scope(
        u.list_my_sessions(authed(ListMySessionsRequest {}, &t))
            .await
            .map(|_| ()),
        "ListMySessions",
    );
    scope(
        u.revoke_session(authed(RevokeSessionRequest { session_id: cred }, &t))
            .await
            .map(|_| ()),
        "RevokeSession (own credential)",
    );
    scope(
        u.revoke_session(authed(
            RevokeSessionRequest {
                session_id: sid(&victim),
            },
            &t,
        ))
        .await
        .map(|_| ()),
        "RevokeSession (a person's)",
    );
    scope(
        u.revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &t))
            .await
            .map(|_| ()),
        "RevokeOtherSessions",
    );
    scope(
        u.list_user_sessions(authed(
            ListUserSessionsRequest {
                user_id: uid.clone(),
            },
            &t,
        ))
        .await
        .map(|_| ()),
        "ListUserSessions",
    );
    scope(
        u.revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: uid }, &t))
            .await
            .map(|_| ()),
        "RevokeUserSessions",
    );
    get_me(&s, &victim)
        .await
        .expect("the person's session lives");
    u.list_users(authed(ListUsersRequest::default(), &t))
        .await
        .expect("the account's token still works");
}

/// 205 sessions: 200 listed (the newest, the calling one first), and
/// RevokeOtherSessions / RevokeUserSessions end all of them, not just the
/// listed 200.
async fn more_than_200_sessions_list_200_and_all_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, first) = s.user("many@rs.test").await;
    let ch: Channel = s.channel().await;
    let mut tokens = vec![first.clone()];
    // Parallel logins hold lockout slots (R14): at most a few at once.
    for chunk in 0..68 {
        let logins = (0..3).map(|_| {
            let mut a = kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch.clone());
            async move {
                a.login(LoginRequest {
                    email: "many@rs.test".into(),
                    password: PASSWORD.into(),
                    organization_id: None,
                })
                .await
                .map(|r| r.into_inner().access_token)
            }
        });
        for t in futures::future::join_all(logins).await {
            tokens.push(t.unwrap_or_else(|e| panic!("login in chunk {chunk}: {e:?}")));
        }
    }
    assert_eq!(tokens.len(), 205);
    let last = tokens.last().expect("last").clone();
    let listed = mine(&s, &last).await;
    assert_eq!(listed.len(), 200);
    // Newest first: the list is ordered by creation time, descending.
    for w in listed.windows(2) {
        let (a, b) = (w[0].create_time.expect("t"), w[1].create_time.expect("t"));
        assert!((a.seconds, a.nanos) >= (b.seconds, b.nanos));
    }
    // The oldest session is not listed but is live: ending others ends it.
    let n = s
        .users()
        .await
        .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &last))
        .await
        .expect("others")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 204);
    assert_revoked(get_me(&s, &first).await, "the oldest, unlisted session");
    let n = s
        .users()
        .await
        .revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: uid }, &admin))
        .await
        .expect("all")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 1);
    assert_revoked(get_me(&s, &last).await, "the last one");
}

/// A session past its expiry is not listed and cannot be ended (NOT_FOUND,
/// no event): it is already over.
async fn an_expired_session_is_neither_listed_nor_ended(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (uid, old) = s.user("exp@rs.test").await;
    let old_sid = sid(&old);
    s.advance_clock(Duration::from_secs(31 * 24 * 3600));
    let fresh = s
        .login("exp@rs.test", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let admin = s.admin_token().await;
    let listed = mine(&s, &fresh).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].current);
    assert_status(
        revoke(&s, &fresh, &old_sid).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let n = s
        .users()
        .await
        .revoke_user_sessions(authed(
            RevokeUserSessionsRequest {
                user_id: uid.clone(),
            },
            &admin,
        ))
        .await
        .expect("all")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 1, "only the live session");
    let evs = count(
        &s,
        &format!("SELECT COUNT(*) AS n FROM revocation_events WHERE session_id = '{old_sid}'"),
    )
    .await;
    assert_eq!(evs, 0, "an expired session gets no event");
}

/// R16 + R29: a Refresh that mints its token while a RevokeSession of the
/// same session waits for the database, and commits first, hands out a
/// token of the ended session. It is refused here (current state); the
/// revocation event must date after it too, or every offline verifier
/// accepts it for its whole life (5 minutes). The revocation waits behind a
/// lock held from outside; the clock moves on while it waits.
async fn a_refresh_committed_while_the_revocation_waits_is_refused_offline(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = watch(&s, &admin).await;
    let (_, keep) = s.user("wait@rs.test").await;
    let mut minted = Vec::new();
    for round in 0..6 {
        let target = login_as(&s, "waiter", "wait@rs.test").await;
        let id = sid(&target.access_token);
        let held = hold(&s, &id).await;
        let mut users = s.users().await;
        let (k, rid) = (keep.clone(), id.clone());
        let revoking = tokio::spawn(async move {
            users
                .revoke_session(authed(RevokeSessionRequest { session_id: rid }, &k))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.advance_clock(Duration::from_millis(1500));
        let mut auth = s.auth().await;
        let rt = target.refresh_token.clone();
        let refreshing = tokio::spawn(async move {
            auth.refresh(RefreshRequest {
                refresh_token: rt,
                organization_id: None,
            })
            .await
            .map(|r| r.into_inner().access_token)
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        release(held).await;
        revoking.await.expect("task").expect("revoke");
        match refreshing.await.expect("task") {
            Ok(t) => {
                assert_revoked(get_me(&s, &t).await, &format!("round {round}, here"));
                minted.push((id, t));
            }
            // Queued behind the revocation: the session is over.
            Err(e) => assert_eq!(e.code(), Code::Unauthenticated, "round {round}: {e:?}"),
        }
    }
    let evs = events(&mut stream, 6).await;
    let v = verifier_with(&evs);
    println!("redteam_sessions: {} refreshes won the race", minted.len());
    for (id, t) in &minted {
        let e = evs
            .iter()
            .find(|e| &e.session_id == id)
            .expect("the session's event");
        assert!(
            offline_revoked(&v, t),
            "a token of an ended session is accepted offline: iat {} s, event at {:?}",
            token_claims(t)["iat"],
            e.revoke_time
        );
    }
}

/// A used refresh token presented again (which ends its session), a
/// RevokeSession and a Logout of the same session at once: one of them
/// ends it, and the session gets exactly one revocation event.
async fn a_reused_refresh_token_racing_revoke_and_logout_events_the_session_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, keep) = s.user("reuse@rs.test").await;
    for round in 0..15u64 {
        let target = login_as(&s, "reused", "reuse@rs.test").await;
        let id = sid(&target.access_token);
        let next = s
            .auth()
            .await
            .refresh(RefreshRequest {
                refresh_token: target.refresh_token.clone(),
                organization_id: None,
            })
            .await
            .expect("first refresh")
            .into_inner();
        let mut auth = s.auth().await;
        let mut auth2 = s.auth().await;
        let mut users = s.users().await;
        let (old, k, rid) = (target.refresh_token.clone(), keep.clone(), id.clone());
        let (rt, at) = (next.refresh_token.clone(), next.access_token.clone());
        let reuse = tokio::spawn(async move {
            auth.refresh(RefreshRequest {
                refresh_token: old,
                organization_id: None,
            })
            .await
            .map(|_| ())
        });
        let revoking = tokio::spawn(async move {
            users
                .revoke_session(authed(RevokeSessionRequest { session_id: rid }, &k))
                .await
                .map(|_| ())
        });
        let logout = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(round % 3)).await;
            auth2
                .logout(authed(LogoutRequest { refresh_token: rt }, &at))
                .await
                .map(|_| ())
        });
        let (a, b, c) = (
            reuse.await.expect("task"),
            revoking.await.expect("task"),
            logout.await.expect("task"),
        );
        assert!(a.is_err(), "round {round}: a reused token never rotates");
        let n = count(
            &s,
            &format!("SELECT COUNT(*) AS n FROM revocation_events WHERE session_id = '{id}'"),
        )
        .await;
        assert_eq!(
            n, 1,
            "round {round}: one event for one session (revoke {b:?}, logout {c:?})"
        );
        assert!(
            b.is_ok()
                || c.is_ok()
                || a.as_ref()
                    .is_err_and(|e| reason(e) == "REFRESH_TOKEN_REUSED"),
            "round {round}: someone ended it"
        );
        assert_revoked(get_me(&s, &next.access_token).await, "after the race");
    }
    get_me(&s, &keep).await.expect("the keeper lives");
}

/// Over gRPC-Web (HTTP/1.1 and HTTP/2): a browser's login keeps its
/// `user-agent` (obs-text bytes, allowed in HTTP/1.1 header values, shown
/// as `?`), ListMySessions marks it current, RevokeSession ends another of
/// one's sessions and refuses another person's as NOT_FOUND, and
/// RevokeOtherSessions keeps the web session.
async fn session_rpcs_over_grpc_web_keep_the_browser_and_end_the_session(backend: Backend) {
    use crate::support::grpc_web::*;
    use kiops_proto::v1::auth_service_client::AuthServiceClient;
    let s = TestServer::start(backend).await;
    let (_, other_person) = s.user("web-victim@rs.test").await;
    s.user("web@rs.test").await;
    for http in [Http::One, Http::Two] {
        let native = s
            .login("web@rs.test", PASSWORD)
            .await
            .expect("login")
            .access_token;
        let mut req = tonic::Request::new(LoginRequest {
            email: "web@rs.test".into(),
            password: PASSWORD.into(),
            organization_id: None,
        });
        req.metadata_mut().insert(
            "user-agent",
            tonic::metadata::MetadataValue::try_from(b"Mozilla/5.0 (X11) caf\xe9".as_slice())
                .expect("obs-text value"),
        );
        let web = AuthServiceClient::with_origin(s.web(http), s.web_origin())
            .login(req)
            .await
            .expect("web login")
            .into_inner();
        let mut users = UserServiceClient::with_origin(s.web(http), s.web_origin());
        let listed = users
            .list_my_sessions(authed(ListMySessionsRequest {}, &web.access_token))
            .await
            .expect("list over web")
            .into_inner()
            .sessions;
        let me = listed.iter().find(|x| x.current).expect("current");
        assert_eq!(me.session_id, sid(&web.access_token), "{http:?}");
        assert!(
            me.user_agent.starts_with("Mozilla/5.0 (X11) caf?"),
            "{http:?}: {:?}",
            me.user_agent
        );
        let e = users
            .revoke_session(authed(
                RevokeSessionRequest {
                    session_id: sid(&other_person),
                },
                &web.access_token,
            ))
            .await
            .expect_err("another person's");
        assert_eq!(e.code(), Code::NotFound, "{http:?}: {e:?}");
        assert_eq!(reason(&e), "NOT_FOUND");
        users
            .revoke_session(authed(
                RevokeSessionRequest {
                    session_id: sid(&native),
                },
                &web.access_token,
            ))
            .await
            .expect("end the native session over web");
        assert_revoked(get_me(&s, &native).await, "the native session");
        let n = users
            .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &web.access_token))
            .await
            .expect("others over web")
            .into_inner()
            .revoked_count;
        assert_eq!(
            n, 1,
            "{http:?}: the earlier session ends, the web one stays"
        );
        get_me(&s, &web.access_token)
            .await
            .expect("the web session lives");
    }
    get_me(&s, &other_person)
        .await
        .expect("the other person's session lives");
}

/// A PlatformAdmin who ends all their own sessions (RevokeUserSessions on
/// themselves) loses the WatchRevocations stream the ended session opened:
/// it ends, it does not keep streaming to a dead session.
async fn an_admins_own_stream_ends_when_they_end_their_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let me = token_claims(&admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let mut stream = watch(&s, &admin).await;
    s.users()
        .await
        .revoke_user_sessions(authed(RevokeUserSessionsRequest { user_id: me }, &admin))
        .await
        .expect("revoke own");
    let deadline = Instant::now() + Duration::from_secs(20);
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the stream of an ended session still open after 20 s"),
        }
    };
    match end {
        Err(e) => assert_eq!(e.code(), Code::Unauthenticated, "{e:?}"),
        Ok(None) => {}
        Ok(Some(_)) => unreachable!(),
    }
}
