//! Issue 24, sessions you can see and end: ListMySessions, RevokeSession,
//! RevokeOtherSessions, and the PlatformAdmin's ListUserSessions and
//! RevokeUserSessions. An ended session is refused on the next call here
//! and its revocation event names it on the stream.

use crate::support::sessions::*;
use crate::support::*;
use kiops_proto::v1::user_service_client::UserServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::Duration;
use tonic::Code;

crate::both_backends!(
    my_sessions_show_where_and_how_and_which_is_current,
    a_revoked_session_ends_at_once_here_and_on_the_stream,
    nobody_ends_or_sees_anothers_session,
    revoke_other_sessions_keeps_only_the_calling_one,
    parallel_revocations_end_each_session_once,
    a_platform_admin_lists_and_ends_a_users_sessions,
    tokens_minted_by_refreshes_racing_the_revocation_are_refused,
);

async fn my_sessions(s: &TestServer, token: &str) -> Vec<Session> {
    s.users()
        .await
        .list_my_sessions(authed(ListMySessionsRequest {}, token))
        .await
        .expect("list my sessions")
        .into_inner()
        .sessions
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

async fn my_sessions_show_where_and_how_and_which_is_current(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, _) = s.user("dana@sessions.test").await;
    let laptop = login_as(&s, "laptop-browser/1.0", "dana@sessions.test").await;
    let phone = login_as(&s, "phone-app/2.0", "dana@sessions.test").await;

    let seen = my_sessions(&s, &phone.access_token).await;
    // `s.user` opened one session too; newest first.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].user_agent.starts_with("phone-app/2.0"), "{seen:?}");
    assert!(
        seen[1].user_agent.starts_with("laptop-browser/1.0"),
        "{seen:?}"
    );
    let current: Vec<_> = seen.iter().filter(|x| x.current).collect();
    assert_eq!(current.len(), 1, "exactly one current session: {seen:?}");
    assert_eq!(current[0].session_id, sid(&phone.access_token));
    for x in &seen {
        assert!(x.peer_address.starts_with("127.0.0.1:"), "{x:?}");
        assert_eq!(x.amr, vec!["pwd".to_string()], "{x:?}");
        let (c, u, e) = (
            x.create_time.expect("create").seconds,
            x.last_use_time.expect("last use").seconds,
            x.expire_time.expect("expire").seconds,
        );
        assert!(c <= u && u < e, "{x:?}");
    }
    // The other device sees the same sessions with itself current.
    let from_laptop = my_sessions(&s, &laptop.access_token).await;
    let current: Vec<_> = from_laptop.iter().filter(|x| x.current).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].session_id, sid(&laptop.access_token));

    // A refresh is a use: the session's last use moves, its id stays.
    s.advance_clock(Duration::from_secs(120));
    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: laptop.refresh_token.clone(),
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    let after = my_sessions(&s, &refreshed.access_token).await;
    let mine = after.iter().find(|x| x.current).expect("current");
    assert_eq!(mine.session_id, sid(&laptop.access_token));
    assert!(
        mine.last_use_time.expect("t").seconds >= mine.create_time.expect("t").seconds + 120,
        "{mine:?}"
    );
    // A logged-out session is no longer listed.
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: phone.refresh_token.clone(),
            },
            &phone.access_token,
        ))
        .await
        .expect("logout");
    let left = my_sessions(&s, &refreshed.access_token).await;
    assert_eq!(left.len(), 2, "{left:?}");
    let phone_sid = sid(&phone.access_token);
    assert!(left.iter().all(|x| x.session_id != phone_sid));
}

async fn a_revoked_session_ends_at_once_here_and_on_the_stream(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, _) = s.user("erin@sessions.test").await;
    let lost = login_as(&s, "lost-laptop/1.0", "erin@sessions.test").await;
    let kept = login_as(&s, "desk/1.0", "erin@sessions.test").await;
    let lost_sid = sid(&lost.access_token);
    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();

    s.users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: lost_sid.clone(),
            },
            &kept.access_token,
        ))
        .await
        .expect("revoke");

    // At once, on this service: the access token and the refresh token.
    assert_revoked(
        get_me(&s, &lost.access_token).await,
        "the lost laptop's token",
    );
    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: lost.refresh_token.clone(),
            organization_id: None,
        })
        .await;
    assert_eq!(
        refreshed.expect_err("refresh of an ended session").code(),
        Code::Unauthenticated
    );
    get_me(&s, &kept.access_token)
        .await
        .expect("the other session lives");

    // On the stream: an event naming the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("open");
        let e = msg.event.expect("event");
        if e.user_id == uid {
            assert_eq!(e.session_id, lost_sid, "{e:?}");
            assert_eq!(e.reason, "session_revoked", "{e:?}");
            break;
        }
    }
    // Audited once, by its owner.
    let n = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked' \
             AND target_id = '{lost_sid}' AND actor_id = '{uid}'"
        ),
    )
    .await;
    assert_eq!(n, 1);
    // Ending it again: it is no longer live.
    let again = s
        .users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: lost_sid.clone(),
            },
            &kept.access_token,
        ))
        .await;
    assert_status(again, Code::NotFound, "NOT_FOUND");
    // Ending one's own current session works too (like a logout).
    s.users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: sid(&kept.access_token),
            },
            &kept.access_token,
        ))
        .await
        .expect("revoke own current session");
    assert_revoked(
        get_me(&s, &kept.access_token).await,
        "the current session after its revocation",
    );
}

async fn nobody_ends_or_sees_anothers_session(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (_, mallory) = s.user("mallory@sessions.test").await;
    let (_, victim) = s.user("victim@sessions.test").await;
    let victim_sid = sid(&victim);
    for (who, token) in [("another user", &mallory), ("a PlatformAdmin", &admin)] {
        let r = s
            .users()
            .await
            .revoke_session(authed(
                RevokeSessionRequest {
                    session_id: victim_sid.clone(),
                },
                token,
            ))
            .await;
        let e = r.expect_err(who);
        assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");
    }
    get_me(&s, &victim)
        .await
        .expect("the victim's session lives");
    assert!(my_sessions(&s, &mallory)
        .await
        .iter()
        .all(|x| x.session_id != victim_sid));
    // An unknown id looks the same as another's; a malformed one is bad input.
    let unknown = s
        .users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: "01a2072e-0000-7000-8000-000000000000".into(),
            },
            &mallory,
        ))
        .await;
    assert_status(unknown, Code::NotFound, "NOT_FOUND");
    let bad = s
        .users()
        .await
        .revoke_session(authed(
            RevokeSessionRequest {
                session_id: "' OR 1=1 --".into(),
            },
            &mallory,
        ))
        .await;
    assert_invalid(bad, "session_id");
    // Only a PlatformAdmin lists or ends another account's sessions.
    let victim_id = token_claims(&victim)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let list = s
        .users()
        .await
        .list_user_sessions(authed(
            ListUserSessionsRequest {
                user_id: victim_id.clone(),
            },
            &mallory,
        ))
        .await;
    assert_status(list, Code::PermissionDenied, "PLATFORM_ADMIN_REQUIRED");
    let end = s
        .users()
        .await
        .revoke_user_sessions(authed(
            RevokeUserSessionsRequest { user_id: victim_id },
            &mallory,
        ))
        .await;
    assert_status(end, Code::PermissionDenied, "PLATFORM_ADMIN_REQUIRED");
    get_me(&s, &victim)
        .await
        .expect("the victim's session still lives");
}

async fn revoke_other_sessions_keeps_only_the_calling_one(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.user("fay@sessions.test").await;
    let mut logins = Vec::new();
    for i in 0..4 {
        logins.push(login_as(&s, &format!("device-{i}"), "fay@sessions.test").await);
    }
    let keep = &logins[2];
    let n = s
        .users()
        .await
        .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &keep.access_token))
        .await
        .expect("revoke others")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 4, "four devices and the first login");
    for (i, l) in logins.iter().enumerate() {
        if i == 2 {
            get_me(&s, &l.access_token)
                .await
                .expect("the calling session lives");
        } else {
            assert_revoked(get_me(&s, &l.access_token).await, &format!("device {i}"));
        }
    }
    let left = my_sessions(&s, &keep.access_token).await;
    assert_eq!(left.len(), 1);
    assert!(left[0].current);
}

/// 20 parallel RevokeOtherSessions: every other session ends exactly once,
/// with one revocation event and one audit event each.
async fn parallel_revocations_end_each_session_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (uid, first) = s.user("gus@sessions.test").await;
    for i in 0..5 {
        login_as(&s, &format!("device-{i}"), "gus@sessions.test").await;
    }
    let channel = s.channel().await;
    let calls = (0..20).map(|_| {
        let mut c = UserServiceClient::new(channel.clone());
        let token = first.clone();
        tokio::spawn(async move {
            c.revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &token))
                .await
                .map(|r| r.into_inner().revoked_count)
        })
    });
    let mut total = 0;
    for r in futures::future::join_all(calls).await {
        total += r.expect("task").expect("revoke others");
    }
    assert_eq!(
        total, 5,
        "each of the 5 other sessions ended by exactly one call"
    );
    let events = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM revocation_events WHERE user_id = '{uid}' \
             AND reason = 'session_revoked'"
        ),
    )
    .await;
    assert_eq!(events, 5);
    let audited = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked' \
             AND actor_id = '{uid}'"
        ),
    )
    .await;
    assert_eq!(audited, 5);
    get_me(&s, &first).await.expect("the calling session lives");
}

async fn a_platform_admin_lists_and_ends_a_users_sessions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (uid, t1) = s.user("hal@sessions.test").await;
    let t2 = login_as(&s, "kiosk/3.1", "hal@sessions.test").await;
    let listed = s
        .users()
        .await
        .list_user_sessions(authed(
            ListUserSessionsRequest {
                user_id: uid.clone(),
            },
            &admin,
        ))
        .await
        .expect("list user sessions")
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|x| !x.current), "none is the admin's own");
    assert!(listed[0].user_agent.starts_with("kiosk/3.1"));
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
        .expect("revoke user sessions")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 2);
    assert_revoked(get_me(&s, &t1).await, "first session");
    assert_revoked(get_me(&s, &t2.access_token).await, "second session");
    // The account is not locked out: it signs in again.
    let again = s
        .login("hal@sessions.test", PASSWORD)
        .await
        .expect("login again");
    get_me(&s, &again.access_token).await.expect("new session");
    // The admin's own sessions were not touched; audited as the admin.
    get_me(&s, &admin).await.expect("admin");
    let admin_id = token_claims(&admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let audited = count(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'session.revoked' \
             AND actor_id = '{admin_id}'"
        ),
    )
    .await;
    assert_eq!(audited, 2);
    let unknown = s
        .users()
        .await
        .list_user_sessions(authed(
            ListUserSessionsRequest {
                user_id: "01a2072e-0000-7000-8000-000000000000".into(),
            },
            &admin,
        ))
        .await;
    assert_status(unknown, Code::NotFound, "NOT_FOUND");
}

/// Refreshes of a session racing its revocation: whatever token a refresh
/// got, none works once the revocation has answered.
async fn tokens_minted_by_refreshes_racing_the_revocation_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, _) = s.user("ivy@sessions.test").await;
    let keeper = login_as(&s, "keeper", "ivy@sessions.test").await;
    let mut minted_in_race = 0;
    for round in 0..10 {
        let target = login_as(&s, "racer", "ivy@sessions.test").await;
        let sid = sid(&target.access_token);
        let auth = s.auth().await;
        let refresher = tokio::spawn(async move {
            let mut auth = auth;
            let mut refresh = target.refresh_token;
            let mut tokens = vec![target.access_token];
            for _ in 0..30 {
                match auth
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
            tokens
        });
        tokio::time::sleep(Duration::from_millis(5 * (round % 4))).await;
        s.users()
            .await
            .revoke_session(authed(
                RevokeSessionRequest { session_id: sid },
                &keeper.access_token,
            ))
            .await
            .expect("revoke");
        let tokens = refresher.await.expect("refresher");
        minted_in_race += tokens.len();
        for t in &tokens {
            assert_revoked(
                get_me(&s, t).await,
                &format!("round {round}: a token of the ended session"),
            );
        }
    }
    println!("sessions: {minted_in_race} tokens minted while their session was being revoked, all refused");
}
