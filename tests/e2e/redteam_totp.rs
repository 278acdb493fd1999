//! Red team, issue 24 TOTP second factor (R30): codes and challenges used
//! where they do not belong, races between a verification and what
//! revokes it, hostile inputs, and what an older session claims.

use crate::support::sessions::{hold_rows, release};
use crate::support::totp::*;
use crate::support::*;
use crate::totp::{amr, assert_reason, counters, sql_i64};
use kiops_proto::v1::*;
use tonic::Code;

crate::both_backends!(
    a_stolen_session_cannot_enroll_without_the_password,
    a_code_used_on_one_challenge_is_refused_on_another_and_counted,
    a_challenge_takes_only_its_own_accounts_code,
    twenty_parallel_codes_and_recovery_codes_open_one_session,
    a_recovery_code_on_two_challenges_in_parallel_works_once,
    a_challenge_dies_with_disable_and_deactivation,
    an_older_password_session_never_claims_otp,
    hostile_codes_are_invalid_arguments,
    a_wrong_password_answers_the_same_with_or_without_totp,
    a_confirmation_enables_only_the_secret_its_code_proved,
    no_secret_code_or_challenge_in_the_log_or_the_audit,
    a_verification_racing_a_reset_ends_cleanly,
);

const EMAIL: &str = "red@totp.test";

/// An account with TOTP enabled: (id, token, app, recovery codes).
async fn enrolled(s: &TestServer, email: &str) -> (String, String, Authenticator, Vec<String>) {
    let (id, token) = s.user(email).await;
    let (app, codes) = enable_totp(s, &token).await;
    (id, token, app, codes)
}

fn head(s: &str) -> String {
    s.chars().take(20).collect()
}

async fn sessions_of(s: &TestServer, id: &str) -> i64 {
    sql_i64(
        s,
        &format!(
            "SELECT COUNT(*) AS n FROM sessions WHERE user_id = '{id}' AND revoked_at IS NULL"
        ),
    )
    .await
}

async fn a_code_used_on_one_challenge_is_refused_on_another_and_counted(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, _, mut app, _) = enrolled(&s, EMAIL).await;
    let (first, second) = (challenge(&s, EMAIL).await, challenge(&s, EMAIL).await);
    let code = app.next_code(&s);
    verify(&s, &first, &code, "").await.expect("first use");
    assert_reason(
        verify(&s, &second, &code, "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    // Counted as a wrong code, no slot left held.
    assert_eq!(counters(&s, EMAIL).await, (1, 0, false));
    // The second challenge was not used by the refusal: the next code opens it.
    let next = app.next_code(&s);
    let tokens = verify(&s, &second, &next, "").await.expect("next code");
    assert_eq!(amr(&tokens.access_token), ["pwd", "otp"]);
    // Both challenges are used now.
    let later = app.next_code(&s);
    for c in [&first, &second] {
        assert_reason(
            verify(&s, c, &later, "").await,
            Code::Unauthenticated,
            "SECOND_FACTOR_CHALLENGE_INVALID",
        );
    }
}

async fn a_challenge_takes_only_its_own_accounts_code(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, _, mut a, _) = enrolled(&s, "a@totp.test").await;
    let (b_id, _, b, b_codes) = enrolled(&s, "b@totp.test").await;
    let a_challenge = challenge(&s, "a@totp.test").await;
    let b_code = a.wrong_code(1);
    // Skip the rare collision of both apps' codes.
    let b_now = b.code();
    if b_now != a.code() {
        assert_reason(
            verify(&s, &a_challenge, &b_now, "").await,
            Code::Unauthenticated,
            "SECOND_FACTOR_INVALID",
        );
    } else {
        assert_reason(
            verify(&s, &a_challenge, &b_code, "").await,
            Code::Unauthenticated,
            "SECOND_FACTOR_INVALID",
        );
    }
    assert_reason(
        verify(&s, &a_challenge, "", &b_codes[0]).await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
    // B's recovery code was not used up by the attempt on A's challenge...
    let b_challenge = challenge(&s, "b@totp.test").await;
    verify(&s, &b_challenge, "", &b_codes[0])
        .await
        .expect("b's recovery code on b's challenge");
    // The enrollment session and this one.
    assert_eq!(sessions_of(&s, &b_id).await, 2);
    // ...and A's challenge still takes A's own code.
    let next = a.next_code(&s);
    verify(&s, &a_challenge, &next, "").await.expect("a's code");
}

async fn twenty_parallel_codes_and_recovery_codes_open_one_session(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (id, _, mut app, codes) = enrolled(&s, EMAIL).await;
    let c = challenge(&s, EMAIL).await;
    let code = app.next_code(&s);
    let calls = (0..20).map(|i| {
        let (s, c, code) = (&s, c.clone(), code.clone());
        let rec = codes[i % 10].clone();
        async move {
            if i % 2 == 0 {
                verify(s, &c, &code, "").await
            } else {
                verify(s, &c, "", &rec).await
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(
            ["SECOND_FACTOR_INVALID", "SECOND_FACTOR_CHALLENGE_INVALID"]
                .contains(&reason(e).as_str()),
            "{e:?}"
        );
    }
    // The enrollment session and the one opened.
    assert_eq!(sessions_of(&s, &id).await, 2);
    // Only the winner's proof was used: at most one recovery code, and no
    // count or slot left behind (every proof was right).
    let used = sql_i64(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM totp_recovery_codes WHERE user_id = '{id}' \
             AND used_at IS NOT NULL"
        ),
    )
    .await;
    assert!(used <= 1, "{used} recovery codes used by one login");
    let (_, pending, locked) = counters(&s, EMAIL).await;
    assert_eq!((pending, locked), (0, false));
}

async fn a_recovery_code_on_two_challenges_in_parallel_works_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (id, _, _, codes) = enrolled(&s, EMAIL).await;
    let (c1, c2) = (challenge(&s, EMAIL).await, challenge(&s, EMAIL).await);
    let calls = (0..4).map(|i| {
        let s = &s;
        let c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
        let rec = codes[3].clone();
        async move { verify(s, &c, "", &rec).await }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    // The enrollment session and the one opened.
    assert_eq!(sessions_of(&s, &id).await, 2);
    let c3 = challenge(&s, EMAIL).await;
    assert_reason(
        verify(&s, &c3, "", &codes[3]).await,
        Code::Unauthenticated,
        "SECOND_FACTOR_INVALID",
    );
}

async fn a_challenge_dies_with_disable_and_deactivation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (id, token, mut app, _) = enrolled(&s, EMAIL).await;
    // Disabled from a session: the pending challenge goes with the factor.
    let pending = challenge(&s, EMAIL).await;
    let code = app.next_code(&s);
    s.users()
        .await
        .disable_totp(authed(
            DisableTotpRequest {
                code,
                recovery_code: String::new(),
            },
            &token,
        ))
        .await
        .expect("disable");
    let next = app.next_code(&s);
    assert_reason(
        verify(&s, &pending, &next, "").await,
        Code::Unauthenticated,
        "SECOND_FACTOR_CHALLENGE_INVALID",
    );
    // Enabled again (the app follows the clock this test moved); a
    // challenge, then the account is deactivated.
    let secret = s
        .users()
        .await
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect("start again")
        .into_inner()
        .secret;
    let offset = app.offset_ms;
    let mut app = Authenticator::new(&secret);
    app.offset_ms = offset;
    s.users()
        .await
        .confirm_totp_enrollment(authed(
            ConfirmTotpEnrollmentRequest { code: app.code() },
            &token,
        ))
        .await
        .expect("confirm again");
    let pending = challenge(&s, EMAIL).await;
    s.users()
        .await
        .deactivate_user(authed(
            DeactivateUserRequest {
                user_id: id.clone(),
            },
            &admin,
        ))
        .await
        .expect("deactivate");
    let next = app.next_code(&s);
    let r = verify(&s, &pending, &next, "").await;
    let e = r.expect_err("a deactivated account's challenge");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(sessions_of(&s, &id).await, 0);
}

async fn an_older_password_session_never_claims_otp(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, _) = s.user(EMAIL).await;
    let older = s.login(EMAIL, PASSWORD).await.expect("password login");
    let enrolling = s.login(EMAIL, PASSWORD).await.expect("password login");
    enable_totp(&s, &enrolling.access_token).await;
    // The enrolling session proved the code; the older one did not.
    let refreshed = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: older.refresh_token.clone(),
            ..Default::default()
        })
        .await
        .expect("the older session still refreshes")
        .into_inner();
    assert_eq!(amr(&refreshed.access_token), ["pwd"]);
    let upgraded = s
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: enrolling.refresh_token.clone(),
            ..Default::default()
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(amr(&upgraded.access_token), ["pwd", "otp"]);
}

async fn hostile_codes_are_invalid_arguments(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token, app, _) = enrolled(&s, EMAIL).await;
    let c = challenge(&s, EMAIL).await;
    let right = app.code();
    // Large, but within the server's message limit.
    let huge = "7".repeat(200_000);
    let bad_codes = [
        format!(" {right}"),
        format!("{right} "),
        format!("{right}0"),
        right[..5].to_string(),
        "١٢٣٤٥٦".to_string(),
        "１２３４５６".to_string(),
        "12345\u{0}".to_string(),
        "+12345".to_string(),
        "-12345".to_string(),
        huge.clone(),
    ];
    for bad in &bad_codes {
        let e = verify(&s, &c, bad, "").await.expect_err("bad code");
        assert_eq!(e.code(), Code::InvalidArgument, "{}: {e:?}", head(bad));
        let e = s
            .users()
            .await
            .regenerate_recovery_codes(authed(
                RegenerateRecoveryCodesRequest { code: bad.clone() },
                &token,
            ))
            .await
            .expect_err("bad code");
        assert_eq!(e.code(), Code::InvalidArgument, "{}: {e:?}", head(bad));
    }
    for bad in [
        "ABCDE-FGHIJ-KLMNO-PQRS1",
        "ÀBCDE-FGHIJ-KLMNO-PQRST",
        huge.as_str(),
    ] {
        let e = verify(&s, &c, "", bad)
            .await
            .expect_err("bad recovery code");
        assert_eq!(e.code(), Code::InvalidArgument, "{}: {e:?}", head(bad));
    }
    let e = verify(&s, &huge, &right, "")
        .await
        .expect_err("huge challenge");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Nothing was counted, and the right code still opens the challenge.
    assert_eq!(counters(&s, EMAIL).await, (0, 0, false));
    let mut app = app;
    let next = app.next_code(&s);
    verify(&s, &c, &next, "").await.expect("right code");
}

async fn a_wrong_password_answers_the_same_with_or_without_totp(backend: Backend) {
    let s = TestServer::start(backend).await;
    enrolled(&s, EMAIL).await;
    s.user("plain@totp.test").await;
    let answer = |e: tonic::Status| (e.code(), reason(&e), e.message().to_string());
    let with = answer(s.login(EMAIL, "wrong password 1").await.expect_err("wrong"));
    let without = answer(
        s.login("plain@totp.test", "wrong password 1")
            .await
            .expect_err("wrong"),
    );
    let unknown = answer(
        s.login("nobody@totp.test", "wrong password 1")
            .await
            .expect_err("unknown"),
    );
    assert_eq!(with, without);
    assert_eq!(with, unknown);
    assert_eq!(with.0, Code::Unauthenticated);
}

/// Waits until `n` statements of the test's PostgreSQL database wait for a
/// lock; on SQLite (one writer, nothing to observe) a short pause to let
/// the calls queue in order.
async fn wait_lock_waiters(s: &TestServer, n: i64) {
    if s.backend == Backend::Sqlite {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        return;
    }
    for _ in 0..400 {
        let waiting = sql_i64(
            s,
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .await;
        if waiting >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{n} statements never waited for the lock");
}

/// A StartTotpEnrollment committed while a ConfirmTotpEnrollment checked
/// the previous secret's code: the confirmation must not enable the new
/// secret, which its code never proved (and whose holder may be someone
/// else than the one who scanned the first).
async fn a_confirmation_enables_only_the_secret_its_code_proved(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (id, token) = s.user(EMAIL).await;
    let start = || {
        let s = &s;
        let token = token.clone();
        async move {
            s.users()
                .await
                .start_totp_enrollment(authed(
                    StartTotpEnrollmentRequest {
                        current_password: PASSWORD.into(),
                    },
                    &token,
                ))
                .await
                .map(|r| r.into_inner().secret)
        }
    };
    let mut first = Authenticator::new(&start().await.expect("start"));
    let held = hold_rows(
        &s,
        "SELECT user_id FROM totp_credentials WHERE user_id = $1 FOR UPDATE",
        &id,
    )
    .await;
    // The restart queues first, then the confirmation reads the first
    // secret and queues behind it.
    let restart = start();
    let confirm = async {
        wait_lock_waiters(&s, 1).await;
        s.users()
            .await
            .confirm_totp_enrollment(authed(
                ConfirmTotpEnrollmentRequest { code: first.code() },
                &token,
            ))
            .await
    };
    let unlock = async {
        wait_lock_waiters(&s, 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        wait_lock_waiters(&s, 2).await;
        release(held).await;
    };
    let (restarted, confirmed, ()) = tokio::join!(restart, confirm, unlock);
    match confirmed {
        Ok(_) => {
            // Enabled: with the secret whose code confirmed it.
            let c = challenge(&s, EMAIL).await;
            let code = first.next_code(&s);
            verify(&s, &c, &code, "")
                .await
                .expect("the confirmed secret's code is accepted");
        }
        Err(e) => {
            assert!(restarted.is_ok(), "{e:?}");
            // Not enabled: the password alone still logs in.
            let r = s.login(EMAIL, PASSWORD).await.expect("login");
            assert!(r.second_factor.is_none(), "{r:?}");
        }
    }
}

async fn no_secret_code_or_challenge_in_the_log_or_the_audit(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (id, token) = s.user(EMAIL).await;
    let started = s
        .users()
        .await
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect("start")
        .into_inner();
    let mut app = Authenticator::new(&started.secret);
    let codes = s
        .users()
        .await
        .confirm_totp_enrollment(authed(
            ConfirmTotpEnrollmentRequest { code: app.code() },
            &token,
        ))
        .await
        .expect("confirm")
        .into_inner()
        .recovery_codes;
    let used = challenge(&s, EMAIL).await;
    verify(&s, &used, "", &codes[0])
        .await
        .expect("recovery code");
    let wrong = challenge(&s, EMAIL).await;
    let _ = verify(&s, &wrong, &app.wrong_code(3), "").await;
    let _ = verify(&s, &wrong, "", &codes[0]).await;
    let next = app.next_code(&s);
    let regenerated = s
        .users()
        .await
        .regenerate_recovery_codes(authed(
            RegenerateRecoveryCodesRequest { code: next },
            &token,
        ))
        .await
        .expect("regenerate")
        .into_inner()
        .recovery_codes;
    s.users()
        .await
        .disable_totp(authed(
            DisableTotpRequest {
                code: String::new(),
                recovery_code: regenerated[1].clone(),
            },
            &token,
        ))
        .await
        .expect("disable with a recovery code");
    let rows = crate::hardening_mail::sql_rows(
        &s,
        &format!(
            "SELECT action, CAST(details AS TEXT) AS d FROM audit_events \
             WHERE target_id = '{id}' OR actor_id = '{id}'"
        ),
    )
    .await;
    let audit: Vec<String> = rows
        .iter()
        .map(|r| {
            let a: String = r.try_get("", "action").expect("action");
            let d: String = r.try_get("", "d").expect("details");
            format!("{a} {d}")
        })
        .collect();
    let audit = audit.join("\n");
    // The flow was audited (the search below looks at real events).
    for action in [
        "user.totp_enabled",
        "user.recovery_code_used",
        "auth.second_factor_failed",
        "user.recovery_codes_regenerated",
        "user.totp_disabled",
    ] {
        assert!(audit.contains(action), "{action} missing: {audit}");
    }
    let logs = s.logs();
    assert!(!logs.is_empty());
    let plain = |c: &str| c.replace('-', "");
    let mut secrets = vec![started.secret.clone(), used.clone(), wrong.clone()];
    for c in codes.iter().chain(regenerated.iter()) {
        secrets.push(c.clone());
        secrets.push(plain(c));
    }
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "{secret} in the log");
        assert!(!audit.contains(secret.as_str()), "{secret} in the audit");
    }
}

/// A PlatformAdmin's ResetUserSecondFactor and the account's
/// VerifySecondFactor cross: the reset has erased the credential and
/// waits (here on the recovery codes) while the verification has used the
/// challenge and waits on the credential. Neither may answer INTERNAL,
/// no session may outlive the reset, and the verification's lockout slot
/// must not stay held.
async fn a_verification_racing_a_reset_ends_cleanly(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (id, _, mut app, _) = enrolled(&s, EMAIL).await;
    let c = challenge(&s, EMAIL).await;
    let code = app.next_code(&s);
    let held = hold_rows(
        &s,
        "SELECT code_hash FROM totp_recovery_codes WHERE user_id = $1 FOR UPDATE",
        &id,
    )
    .await;
    let reset = async {
        s.users()
            .await
            .reset_user_second_factor(authed(
                ResetUserSecondFactorRequest {
                    user_id: id.clone(),
                },
                &admin,
            ))
            .await
    };
    let verified = async {
        wait_lock_waiters(&s, 1).await;
        verify(&s, &c, &code, "").await
    };
    let unlock = async {
        wait_lock_waiters(&s, 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        wait_lock_waiters(&s, 2).await;
        release(held).await;
    };
    let (reset, verified, ()) = tokio::join!(reset, verified, unlock);
    reset.expect("the reset");
    // Refused, or told to retry (a deadlock PostgreSQL broke): never
    // INTERNAL.
    if let Err(e) = &verified {
        assert!(
            [Code::Unauthenticated, Code::Aborted].contains(&e.code()),
            "{e:?}"
        );
    }
    assert_eq!(
        sessions_of(&s, &id).await,
        0,
        "a session outlived the reset"
    );
    let (_, pending, _) = counters(&s, EMAIL).await;
    assert_eq!(pending, 0, "a slot stayed held");
    // The factor is gone: the password alone logs in.
    let r = s.login(EMAIL, PASSWORD).await.expect("login");
    assert!(r.second_factor.is_none(), "{r:?}");
}

/// R30: a stolen access token alone cannot enroll the thief's
/// authenticator (which would lock the owner out of their own account):
/// StartTotpEnrollment asks for the current password, and a wrong one is
/// refused, hands out no secret, and counts toward the lockout.
async fn a_stolen_session_cannot_enroll_without_the_password(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, token) = s.user("stolen@rt.test").await;
    let mut users = s.users().await;
    for _ in 0..5 {
        let e = users
            .start_totp_enrollment(authed(
                StartTotpEnrollmentRequest {
                    current_password: "not the password".into(),
                },
                &token,
            ))
            .await
            .expect_err("without the password");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert_eq!(reason(&e), "INVALID_CURRENT_PASSWORD", "{e:?}");
    }
    // Five wrong passwords lock the account: even the right one is refused.
    let e = users
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: PASSWORD.into(),
            },
            &token,
        ))
        .await
        .expect_err("locked");
    assert_eq!(reason(&e), "INVALID_CURRENT_PASSWORD", "{e:?}");
    let e = s
        .login("stolen@rt.test", PASSWORD)
        .await
        .expect_err("locked");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS", "{e:?}");
    // Nothing was enrolled: after the lock lapses, a login answers tokens,
    // not a challenge.
    s.advance_clock(std::time::Duration::from_secs(3600));
    let r = s.login("stolen@rt.test", PASSWORD).await.expect("login");
    assert!(r.second_factor.is_none() && !r.access_token.is_empty());
    assert!(
        users
            .start_totp_enrollment(authed(
                StartTotpEnrollmentRequest {
                    current_password: "".into(),
                },
                &r.access_token,
            ))
            .await
            .is_err_and(|e| e.code() == Code::InvalidArgument),
        "an empty password is bad input"
    );
}
