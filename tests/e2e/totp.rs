//! Issue 24, TOTP second factor (R30): enrollment confirmed by a first
//! code, Login answering a single-use challenge, VerifySecondFactor with a
//! code (once per time step) or a recovery code (once ever), wrong codes
//! counted on the password lockout, `amr` in tokens and sessions, disable,
//! regenerate, the PlatformAdmin's reset, and no secret in the database.

use crate::hardening_mail::database_copy;
use crate::support::sessions::*;
use crate::support::totp::*;
use crate::support::*;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::Duration;
use tonic::Code;

crate::both_backends!(
    enroll_confirm_and_log_in_with_the_second_factor,
    a_code_works_once,
    parallel_verifies_open_one_session,
    wrong_codes_lock_the_account_exactly,
    logging_in_again_does_not_reset_the_count_of_wrong_codes,
    recovery_codes_work_once,
    disable_and_regenerate_need_a_valid_code,
    a_platform_admin_resets_a_lost_factor,
    challenges_expire_and_die_with_a_password_change,
    no_totp_secret_in_a_copy_of_the_database,
);

const THRESHOLD: usize = 5;

pub(crate) fn assert_reason<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    why: &str,
) {
    let e = r.expect_err(why);
    assert_eq!((e.code(), reason(&e)), (code, why.to_string()), "{e:?}");
}

pub(crate) fn amr(token: &str) -> Vec<String> {
    token_claims(token)["amr"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("str").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn sql_i64(s: &TestServer, sql: &str) -> i64 {
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .expect(sql);
    let n = rows[0].try_get::<i64>("", "n").expect("n");
    db.close().await.expect("close");
    n
}

/// Audit events of `action` for the account `user_id`.
pub(crate) async fn events(s: &TestServer, action: &str, user_id: &str) -> i64 {
    sql_i64(
        s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = '{action}' \
             AND (target_id = '{user_id}' OR actor_id = '{user_id}')"
        ),
    )
    .await
}

/// (failed count, pending, locked) of an account.
pub(crate) async fn counters(s: &TestServer, email: &str) -> (i64, i64, bool) {
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT CAST(failed_login_count AS BIGINT) AS c, \
                 CAST(login_attempts_pending AS BIGINT) AS p, locked_until FROM users \
                 WHERE email = '{email}'"
            ),
        ))
        .await
        .expect("counters");
    let r = &rows[0];
    let out = (
        r.try_get::<i64>("", "c").expect("c"),
        r.try_get::<i64>("", "p").expect("p"),
        r.try_get::<Option<i64>>("", "locked_until")
            .expect("locked")
            .is_some(),
    );
    db.close().await.expect("close");
    out
}

pub(crate) async fn my_sessions(s: &TestServer, token: &str) -> Vec<Session> {
    s.users()
        .await
        .list_my_sessions(authed(ListMySessionsRequest {}, token))
        .await
        .expect("list my sessions")
        .into_inner()
        .sessions
}

async fn enroll_confirm_and_log_in_with_the_second_factor(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (kim, token) = s.user("kim@totp.test").await;
    let (_, plain) = s.user("lee@totp.test").await;
    let users = s.users().await;

    let started = users
        .clone()
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.secret.len(), 32, "160 bits in base32");
    assert_eq!(
        started.otpauth_uri,
        format!(
            "otpauth://totp/KIOPS:kim@totp.test?secret={}&issuer=KIOPS&algorithm=SHA1&digits=6&period=30",
            started.secret
        )
    );
    // Pending: Login is unchanged until confirmed.
    let r = s.login("kim@totp.test", PASSWORD).await.expect("login");
    assert!(!r.access_token.is_empty() && r.second_factor.is_none());
    // Starting again replaces the pending secret.
    let again = users
        .clone()
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect("restart")
        .into_inner();
    assert_ne!(again.secret, started.secret);
    let mut app = Authenticator::new(&again.secret);
    let stale = Authenticator::new(&started.secret).code();

    for (code, why) in [
        (app.wrong_code(1), "TOTP_CODE_INVALID"),
        (stale, "TOTP_CODE_INVALID"),
    ] {
        let r = users
            .clone()
            .confirm_totp_enrollment(authed(ConfirmTotpEnrollmentRequest { code }, &token))
            .await;
        assert_reason(r, Code::InvalidArgument, why);
    }
    assert_reason(
        users
            .clone()
            .confirm_totp_enrollment(authed(
                ConfirmTotpEnrollmentRequest {
                    code: "12a456".into(),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let codes = users
        .clone()
        .confirm_totp_enrollment(authed(
            ConfirmTotpEnrollmentRequest { code: app.code() },
            &token,
        ))
        .await
        .expect("confirm")
        .into_inner()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    let distinct: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    // The confirming session proved the factor.
    let mine = my_sessions(&s, &token).await;
    let current = mine.iter().find(|x| x.current).expect("current");
    assert_eq!(current.amr, vec!["pwd", "otp"]);
    assert_reason(
        users
            .clone()
            .start_totp_enrollment(authed(
                StartTotpEnrollmentRequest {
                    current_password: PASSWORD.into(),
                },
                &token,
            ))
            .await,
        Code::FailedPrecondition,
        "TOTP_ALREADY_ENABLED",
    );

    // A wrong password answers as for an account without a factor.
    for email in ["kim@totp.test", "lee@totp.test", "nobody@totp.test"] {
        assert_reason(
            s.login(email, "wrong password").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    // And leaves the same trail: one `auth.login_failed` with the email
    // only, nothing that reads the second factor.
    let trail = |email: &'static str| {
        let url = s.db.url.clone();
        async move {
            let db = Database::connect(&url).await.expect("db");
            let rows = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!(
                        "SELECT action, details FROM audit_events WHERE details LIKE '%{email}%' \
                         AND action LIKE 'auth.%' ORDER BY id"
                    ),
                ))
                .await
                .expect("trail");
            db.close().await.expect("close");
            rows.iter()
                .map(|r| {
                    let a: String = r.try_get("", "action").expect("action");
                    let d: String = r.try_get("", "details").expect("details");
                    (a, d.replace(email, "EMAIL"))
                })
                .collect::<Vec<_>>()
        }
    };
    let (with, without) = (trail("kim@totp.test").await, trail("lee@totp.test").await);
    assert_eq!(with.len(), 1, "{with:?}");
    assert_eq!(
        with, without,
        "a wrong password's trail tells no second factor"
    );
    // The right one: a challenge and no tokens.
    let r = s.login("kim@totp.test", PASSWORD).await.expect("login");
    assert!(r.access_token.is_empty() && r.refresh_token.is_empty() && r.expires_in == 0);
    let sf = r.second_factor.expect("challenge");
    assert!(sf.challenge.starts_with("kc_"));
    assert_eq!(sf.methods, vec!["totp", "recovery_code"]);
    let exp = sf.expire_time.expect("expire").seconds;
    let now = (app.offset_ms / 1000)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("now")
            .as_secs() as i64;
    assert!((now + 290..=now + 310).contains(&exp), "{exp} vs {now}");

    let code = app.next_code(&s);
    assert_reason(
        verify(&s, &sf.challenge, &app.wrong_code(2), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    // A wrong code leaves the challenge usable.
    let t = verify(&s, &sf.challenge, &code, "").await.expect("verify");
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(amr(&t.access_token), vec!["pwd", "otp"]);
    assert_eq!(token_claims(&t.access_token)["sub"], kim.as_str());
    let mine = my_sessions(&s, &t.access_token).await;
    let current = mine.iter().find(|x| x.current).expect("current");
    assert_eq!(current.amr, vec!["pwd", "otp"]);
    // Refresh keeps the session's methods.
    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: t.refresh_token.clone(),
            organization_id: None,
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(amr(&refreshed.access_token), vec!["pwd", "otp"]);
    // The challenge is used up.
    assert_reason(
        verify(&s, &sf.challenge, &app.next_code(&s), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    assert_reason(
        verify(&s, "kc_unknown", &app.code(), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    // Without a factor: tokens at once, amr ["pwd"].
    assert_eq!(amr(&plain), vec!["pwd"]);
    let r = s.login("lee@totp.test", PASSWORD).await.expect("login");
    assert!(r.second_factor.is_none());
    assert_eq!(amr(&r.access_token), vec!["pwd"]);

    for action in [
        "user.totp_enrollment_started",
        "user.totp_enabled",
        "auth.second_factor_required",
        "auth.second_factor_verified",
        "auth.second_factor_failed",
    ] {
        assert!(events(&s, action, &kim).await >= 1, "{action} audited");
    }
    assert_eq!(events(&s, "user.totp_enrollment_started", &kim).await, 2);
}

async fn a_code_works_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("kim@totp.test").await;
    let (mut app, _) = enable_totp(&s, &token).await;
    let code = app.next_code(&s);
    verify(&s, &challenge(&s, "kim@totp.test").await, &code, "")
        .await
        .expect("first use");
    // The same code on a new challenge: refused, counted.
    assert_reason(
        verify(&s, &challenge(&s, "kim@totp.test").await, &code, "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    assert_eq!(counters(&s, "kim@totp.test").await, (1, 0, false));
    // An older step of the window: refused too (only later steps).
    let older = code_at_step(&app.secret, app.step() - 1);
    assert_reason(
        verify(&s, &challenge(&s, "kim@totp.test").await, &older, "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    // Twenty challenges, one fresh code, all at once: one session.
    let code = app.next_code(&s);
    let mut challenges = Vec::new();
    for _ in 0..20 {
        challenges.push(challenge(&s, "kim@totp.test").await);
    }
    let before = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM sessions WHERE amr = 'pwd otp'",
    )
    .await;
    let calls: Vec<_> = challenges
        .into_iter()
        .map(|c| {
            let (s2, code) = (s.grpc_url(), code.clone());
            tokio::spawn(async move {
                let ch = tonic::transport::Endpoint::from_shared(s2)
                    .expect("url")
                    .connect()
                    .await
                    .expect("connect");
                kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                    .verify_second_factor(VerifySecondFactorRequest {
                        challenge: c,
                        code,
                        recovery_code: String::new(),
                    })
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(reason(&e), "SECOND_FACTOR_INVALID", "{e:?}"),
        }
    }
    assert_eq!(ok, 1, "one code, one session");
    let after = sql_i64(
        &s,
        "SELECT COUNT(*) AS n FROM sessions WHERE amr = 'pwd otp'",
    )
    .await;
    assert_eq!(after - before, 1);
    let (_, pending, _) = counters(&s, "kim@totp.test").await;
    assert_eq!(pending, 0, "every slot given back");
}

async fn parallel_verifies_open_one_session(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("kim@totp.test").await;
    let (mut app, _) = enable_totp(&s, &token).await;
    let c = challenge(&s, "kim@totp.test").await;
    let code = app.next_code(&s);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (url, c, code) = (s.grpc_url(), c.clone(), code.clone());
            tokio::spawn(async move {
                let ch = tonic::transport::Endpoint::from_shared(url)
                    .expect("url")
                    .connect()
                    .await
                    .expect("connect");
                kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                    .verify_second_factor(VerifySecondFactorRequest {
                        challenge: c,
                        code,
                        recovery_code: String::new(),
                    })
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                ["SECOND_FACTOR_INVALID", "SECOND_FACTOR_CHALLENGE_INVALID"]
                    .contains(&reason(&e).as_str()),
                "{e:?}"
            ),
        }
    }
    assert_eq!(ok, 1, "one challenge, one session");
    assert_eq!(
        sql_i64(
            &s,
            "SELECT COUNT(*) AS n FROM sessions WHERE amr = 'pwd otp'"
        )
        .await,
        2,
        "the confirming session and this one"
    );
    // Losing a race to the same challenge counts nothing.
    assert_eq!(counters(&s, "kim@totp.test").await, (0, 0, false));
}

/// Twenty wrong codes at once on one challenge: exactly the threshold is
/// evaluated, the account locks once, and then the right code is refused
/// too. The right code among wrong ones never logs in after the lock.
async fn wrong_codes_lock_the_account_exactly(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (kim, token) = s.user("kim@totp.test").await;
    let (mut app, _) = enable_totp(&s, &token).await;
    for round in 0..3 {
        let c = challenge(&s, "kim@totp.test").await;
        let right = app.next_code(&s);
        let right_at = if round == 0 { None } else { Some(round * 7) };
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let code = if Some(i) == right_at {
                    right.clone()
                } else {
                    app.wrong_code(i as u32 + 100 * round as u32)
                };
                let (url, c) = (s.grpc_url(), c.clone());
                tokio::spawn(async move {
                    let ch = tonic::transport::Endpoint::from_shared(url)
                        .expect("url")
                        .connect()
                        .await
                        .expect("connect");
                    kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                        .verify_second_factor(VerifySecondFactorRequest {
                            challenge: c,
                            code,
                            recovery_code: String::new(),
                        })
                        .await
                })
            })
            .collect();
        let mut wins = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            match call.await.expect("join") {
                Ok(_) => wins.push(i),
                Err(e) => assert_eq!(reason(&e), "SECOND_FACTOR_INVALID", "{e:?}"),
            }
        }
        assert!(
            wins.iter().all(|i| Some(*i) == right_at),
            "a wrong code won"
        );
        let (count, pending, locked) = counters(&s, "kim@totp.test").await;
        assert_eq!(pending, 0, "round {round}: every slot given back");
        if round == 0 {
            assert!(locked, "twenty wrong codes lock");
            assert_eq!(count, 0, "the lock restarts the count");
            assert_eq!(
                events_with(&s, &kim, "wrong").await,
                THRESHOLD as i64,
                "exactly the threshold evaluated"
            );
            assert_eq!(events(&s, "user.locked", &kim).await, 1);
            // Locked: even the right code is refused, and so is Login.
            let code = app.next_code(&s);
            assert_reason(
                verify(&s, &c, &code, "").await,
                Code::Unauthenticated,
                "SECOND_FACTOR_INVALID",
            );
            assert_reason(
                s.login("kim@totp.test", PASSWORD).await,
                Code::Unauthenticated,
                "INVALID_CREDENTIALS",
            );
        }
        if wins.is_empty() && round > 0 {
            assert!(locked, "round {round}: the right code lost to the lock");
        }
        // The lock lapses.
        app.advance(&s, Duration::from_secs(15 * 60 + 1));
    }
    // After the lock: the right code logs in and clears the count.
    let c = challenge(&s, "kim@totp.test").await;
    verify(&s, &c, &app.next_code(&s), "")
        .await
        .expect("the right code after the lock lapsed");
    assert_eq!(counters(&s, "kim@totp.test").await, (0, 0, false));
}

async fn events_with(s: &TestServer, user_id: &str, why: &str) -> i64 {
    let rows = {
        let db = Database::connect(&s.db.url).await.expect("db");
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT details FROM audit_events WHERE action = 'auth.second_factor_failed' \
                     AND target_id = '{user_id}'"
                ),
            ))
            .await
            .expect("events");
        db.close().await.expect("close");
        rows
    };
    rows.iter()
        .filter(|r| {
            let d: String = r.try_get("", "details").expect("details");
            serde_json::from_str::<serde_json::Value>(&d).expect("json")["reason"] == why
        })
        .count() as i64
}

/// The right password must not clear the count of wrong codes: else
/// logging in again between guesses would allow unlimited guessing.
async fn logging_in_again_does_not_reset_the_count_of_wrong_codes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("kim@totp.test").await;
    let (app, _) = enable_totp(&s, &token).await;
    for i in 0..THRESHOLD {
        let c = challenge(&s, "kim@totp.test").await;
        assert_reason(
            verify(&s, &c, &app.wrong_code(i as u32), "").await,
            Code::Unauthenticated,
            "SECOND_FACTOR_INVALID",
        );
    }
    let (_, _, locked) = counters(&s, "kim@totp.test").await;
    assert!(
        locked,
        "{THRESHOLD} wrong codes over {THRESHOLD} logins lock"
    );
    assert_reason(
        s.login("kim@totp.test", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // Wrong passwords and wrong codes share the one count.
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("kim@totp.test").await;
    let (app, _) = enable_totp(&s, &token).await;
    for _ in 0..THRESHOLD - 1 {
        let _ = s.login("kim@totp.test", "wrong password").await;
    }
    let c = challenge(&s, "kim@totp.test").await;
    let _ = verify(&s, &c, &app.wrong_code(9), "").await;
    assert!(counters(&s, "kim@totp.test").await.2, "locked");
}

async fn recovery_codes_work_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (kim, token) = s.user("kim@totp.test").await;
    let (mut app, codes) = enable_totp(&s, &token).await;
    // Typed loosely: case and dashes do not matter.
    let typed = codes[0].to_lowercase().replace('-', "");
    let t = verify(&s, &challenge(&s, "kim@totp.test").await, "", &typed)
        .await
        .expect("recovery code");
    assert_eq!(amr(&t.access_token), vec!["pwd", "otp"]);
    assert_reason(
        verify(&s, &challenge(&s, "kim@totp.test").await, "", &codes[0]).await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    // One code, twenty challenges at once: one session.
    let mut challenges = Vec::new();
    for _ in 0..20 {
        challenges.push(challenge(&s, "kim@totp.test").await);
    }
    let calls: Vec<_> = challenges
        .into_iter()
        .map(|c| {
            let (url, code) = (s.grpc_url(), codes[1].clone());
            tokio::spawn(async move {
                let ch = tonic::transport::Endpoint::from_shared(url)
                    .expect("url")
                    .connect()
                    .await
                    .expect("connect");
                kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                    .verify_second_factor(VerifySecondFactorRequest {
                        challenge: c,
                        code: String::new(),
                        recovery_code: code,
                    })
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        if c.await.expect("join").is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "one recovery code, one session");
    assert_eq!(events(&s, "user.recovery_code_used", &kim).await, 2);
    // The losers were replays, counted as wrong codes: calls that came
    // after the winner cleared the count may have locked the account. Let
    // any lock lapse, and sign in again (the old access token expired).
    app.advance(&s, Duration::from_secs(15 * 60 + 1));
    let token = verify(&s, &challenge(&s, "kim@totp.test").await, "", &codes[5])
        .await
        .expect("another recovery code")
        .access_token;
    // New codes: the old ones stop working.
    let fresh = s
        .users()
        .await
        .regenerate_recovery_codes(authed(
            RegenerateRecoveryCodesRequest {
                code: app.next_code(&s),
            },
            &token,
        ))
        .await
        .expect("regenerate")
        .into_inner()
        .recovery_codes;
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !codes.contains(c)));
    assert_reason(
        verify(&s, &challenge(&s, "kim@totp.test").await, "", &codes[2]).await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    verify(&s, &challenge(&s, "kim@totp.test").await, "", &fresh[0])
        .await
        .expect("a new code");
    assert_eq!(events(&s, "user.recovery_codes_regenerated", &kim).await, 1);
    // Malformed input is INVALID_ARGUMENT, never counted.
    let c = challenge(&s, "kim@totp.test").await;
    for (code, rec) in [
        ("", ""),
        ("123456", &fresh[1][..]),
        ("12345", ""),
        ("", "short"),
    ] {
        assert_reason(
            verify(&s, &c, code, rec).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    assert_eq!(counters(&s, "kim@totp.test").await, (0, 0, false));
}

async fn disable_and_regenerate_need_a_valid_code(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (kim, token) = s.user("kim@totp.test").await;
    let users = s.users().await;
    assert_reason(
        users
            .clone()
            .confirm_totp_enrollment(authed(
                ConfirmTotpEnrollmentRequest {
                    code: "123456".into(),
                },
                &token,
            ))
            .await,
        Code::FailedPrecondition,
        "TOTP_NOT_ENABLED",
    );
    let disable = |code: String, rec: String| {
        let (users, token) = (users.clone(), token.clone());
        async move {
            users
                .clone()
                .disable_totp(authed(
                    DisableTotpRequest {
                        code,
                        recovery_code: rec,
                    },
                    &token,
                ))
                .await
        }
    };
    assert_reason(
        disable("123456".into(), String::new()).await,
        Code::FailedPrecondition,
        "TOTP_NOT_ENABLED",
    );
    let (mut app, codes) = enable_totp(&s, &token).await;
    assert_reason(
        disable(String::new(), String::new()).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_reason(
        disable(app.wrong_code(1), String::new()).await,
        Code::InvalidArgument,
        "TOTP_CODE_INVALID",
    );
    // The code that confirmed the enrollment was used.
    assert_reason(
        disable(app.code(), String::new()).await,
        Code::InvalidArgument,
        "TOTP_CODE_INVALID",
    );
    assert_reason(
        s.users()
            .await
            .regenerate_recovery_codes(authed(
                RegenerateRecoveryCodesRequest {
                    code: app.wrong_code(2),
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "TOTP_CODE_INVALID",
    );
    // Wrong codes here count like wrong passwords.
    assert_eq!(counters(&s, "kim@totp.test").await.0, 3);
    // A recovery code disables it; the count is cleared.
    disable(String::new(), codes[3].clone())
        .await
        .expect("disable with a recovery code");
    assert_eq!(counters(&s, "kim@totp.test").await, (0, 0, false));
    assert_eq!(events(&s, "user.totp_disabled", &kim).await, 1);
    let r = s.login("kim@totp.test", PASSWORD).await.expect("login");
    assert!(r.second_factor.is_none() && !r.access_token.is_empty());
    assert_eq!(amr(&r.access_token), vec!["pwd"]);
    assert_eq!(
        sql_i64(&s, "SELECT COUNT(*) AS n FROM totp_recovery_codes").await,
        0,
        "recovery codes erased"
    );
    // Enabled again (a new secret), disabled by a current code.
    let (mut app2, _) = enable_totp(&s, &token).await;
    assert_ne!(app2.secret, app.secret);
    let _ = app.next_code(&s);
    disable(app2.next_code(&s), String::new())
        .await
        .expect("disable with a code");
}

async fn a_platform_admin_resets_a_lost_factor(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (kim, token) = s.user("kim@totp.test").await;
    let (_, other) = s.user("lee@totp.test").await;
    let (mut app, _) = enable_totp(&s, &token).await;
    let t = verify(
        &s,
        &challenge(&s, "kim@totp.test").await,
        &app.next_code(&s),
        "",
    )
    .await
    .expect("verify");
    let pending = challenge(&s, "kim@totp.test").await;
    let reset = |who: String, id: String| {
        let s = &s;
        async move {
            s.users()
                .await
                .reset_user_second_factor(authed(
                    ResetUserSecondFactorRequest { user_id: id },
                    &who,
                ))
                .await
        }
    };
    assert_reason(
        reset(other.clone(), kim.clone()).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_reason(
        reset(token.clone(), kim.clone()).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    let n = reset(admin.clone(), kim.clone())
        .await
        .expect("reset")
        .into_inner()
        .revoked_count;
    assert_eq!(n, 2, "the enrolling session and the verified one");
    assert_revoked(get_me(&s, &token).await, "enrolling session");
    assert_revoked(get_me(&s, &t.access_token).await, "verified session");
    assert_reason(
        verify(&s, &pending, &app.next_code(&s), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    let r = s.login("kim@totp.test", PASSWORD).await.expect("login");
    assert!(r.second_factor.is_none() && !r.access_token.is_empty());
    assert_eq!(events(&s, "user.second_factor_reset", &kim).await, 1);
    assert_reason(
        reset(admin.clone(), kim.clone()).await,
        Code::FailedPrecondition,
        "TOTP_NOT_ENABLED",
    );
    assert_reason(
        reset(admin.clone(), uuid::Uuid::now_v7().to_string()).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn challenges_expire_and_die_with_a_password_change(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("kim@totp.test").await;
    let (mut app, _) = enable_totp(&s, &token).await;
    let c = challenge(&s, "kim@totp.test").await;
    app.advance(&s, Duration::from_secs(5 * 60 + 1));
    assert_reason(
        verify(&s, &c, &app.code(), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    // A password changed after the Login voids its challenge.
    let c = challenge(&s, "kim@totp.test").await;
    let fresh = s.login("kim@totp.test", PASSWORD).await.expect("login");
    let t = verify(
        &s,
        &fresh.second_factor.expect("challenge").challenge,
        &app.next_code(&s),
        "",
    )
    .await
    .expect("verify");
    s.users()
        .await
        .change_password(authed(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "another long password 42".into(),
            },
            &t.access_token,
        ))
        .await
        .expect("change password");
    assert_reason(
        verify(&s, &c, &app.next_code(&s), "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    assert_eq!(counters(&s, "kim@totp.test").await, (0, 0, false));
}

/// The TOTP secret and the recovery codes are never stored in clear: a copy
/// of the database (the SQLite file with its WAL, every PostgreSQL row)
/// holds none of them, with a key file and without.
async fn no_totp_secret_in_a_copy_of_the_database(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("outbox.key");
    std::fs::write(&key, hex::encode(rand::random::<[u8; 32]>())).expect("key");
    for keyed in [false, true] {
        let mut opts = ServerOptions::default();
        if keyed {
            opts.extra_args = vec!["--outbox-key-file".into(), key.display().to_string()];
        }
        let s = TestServer::start_with(backend, opts).await;
        let (_, token) = s.user("kim@totp.test").await;
        let (mut app, codes) = enable_totp(&s, &token).await;
        let c = challenge(&s, "kim@totp.test").await;
        verify(&s, &c, "", &codes[0]).await.expect("recovery code");
        let c2 = challenge(&s, "kim@totp.test").await;
        verify(&s, &c2, &app.next_code(&s), "").await.expect("code");
        let mut secrets = vec![app.secret.clone(), app.secret.to_lowercase(), c, c2];
        for code in &codes {
            secrets.push(code.clone());
            secrets.push(code.replace('-', ""));
        }
        let copy = database_copy(&s).await;
        let found: Vec<_> = secrets
            .iter()
            .filter(|x| copy.windows(x.len()).any(|w| w == x.as_bytes()))
            .collect();
        assert!(
            found.is_empty(),
            "keyed={keyed}: in clear in the database: {found:?}"
        );
        assert!(
            !s.logs().contains(&app.secret) && codes.iter().all(|c| !s.logs().contains(c)),
            "keyed={keyed}: a secret in the logs"
        );
    }
}
