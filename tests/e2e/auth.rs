//! AuthService and GetMe: login, tokens, refresh rotation, logout.

use crate::both_backends;
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use kiops_proto::v1::*;
use std::time::{Duration, Instant};
use tonic::Code;

both_backends!(
    login_and_get_me,
    unknown_email_and_wrong_password_answer_the_same,
    access_token_verifies_against_published_jwks,
    refresh_rotates_and_reuse_revokes_the_session,
    racing_refreshes_of_one_token_have_one_winner,
    concurrent_refreshes_of_many_sessions_each_rotate,
    scoped_refresh_for_a_foreign_organization_keeps_the_token,
    refreshes_cut_short_by_deadlines_leave_the_database_writable,
    logout_ends_the_session,
    expired_access_token_is_refused,
    create_user_is_platform_admin_only,
    grpc_jwks_matches_http_jwks,
);

const PW: &str = "correct horse battery staple";

async fn login_and_get_me(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.create_user("Kim@Example.com", "Kim Lee", PW).await;
    // Email is case-insensitive.
    let login = server.login("KIM@example.COM", PW).await.expect("login");
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 300);
    assert!(login.refresh_token.starts_with("kr_"));
    let me = server
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &login.access_token))
        .await
        .expect("get me")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.user_id, id);
    assert_eq!(me.email, "kim@example.com");
    assert_eq!(me.name, "Kim Lee");
    assert_eq!(me.status, UserStatus::Active as i32);
    assert!(!me.platform_admin);
    assert!(me.create_time.is_some());
}

async fn unknown_email_and_wrong_password_answer_the_same(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_user("kim@example.com", "Kim", PW).await;
    let wrong = server
        .login("kim@example.com", "not the right password")
        .await
        .expect_err("wrong password");
    let unknown = server
        .login("nobody@example.com", "not the right password")
        .await
        .expect_err("unknown email");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(reason(&wrong), "INVALID_CREDENTIALS");
    assert_eq!(reason(&unknown), "INVALID_CREDENTIALS");
    // Both paths run one argon2 verification. Timing is compared properly in
    // the benchmark; here only a gross difference (a skipped hash) would show.
    let time = |email: &'static str| {
        let s = &server;
        async move {
            let t = Instant::now();
            for _ in 0..3 {
                let _ = s.login(email, "not the right password").await;
            }
            t.elapsed()
        }
    };
    let t_wrong = time("kim@example.com").await;
    let t_unknown = time("nobody@example.com").await;
    let ratio = t_unknown.as_secs_f64() / t_wrong.as_secs_f64();
    assert!(
        ratio > 0.3 && ratio < 3.0,
        "unknown {t_unknown:?} vs wrong password {t_wrong:?}"
    );
}

/// Verifies the token with ed25519-dalek directly (not the jsonwebtoken crate
/// the server uses) against the key fetched from /.well-known/jwks.json.
async fn access_token_verifies_against_published_jwks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.admin_token().await;
    let (_, jwks) = server.http("GET", "/.well-known/jwks.json");
    let jwks: serde_json::Value = serde_json::from_str(&jwks).expect("jwks");

    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("kid published in JWKS");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().expect("x"))
        .expect("b64")
        .try_into()
        .expect("32 bytes");
    let key = VerifyingKey::from_bytes(&x).expect("ed25519 key");
    let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("b64")).expect("sig");
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("signature verifies");

    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    for c in [
        "iss", "aud", "sub", "exp", "iat", "nbf", "jti", "email", "name", "pa", "orgs",
    ] {
        assert!(claims.get(c).is_some(), "claim {c} missing: {claims}");
    }
    assert_eq!(claims["iss"], "kiops-identity");
    assert_eq!(claims["aud"], "kiops");
    assert_eq!(claims["email"], ADMIN_EMAIL);
    assert_eq!(claims["pa"], true);
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        300
    );
    assert!(claims["orgs"].is_object());

    // And the token crate downstream services use agrees.
    let set: kiops_token::JwkSet = serde_json::from_value(jwks).expect("jwk set");
    let verifier = kiops_token::Verifier::new(set, "kiops-identity", "kiops").expect("verifier");
    let verified = verifier.verify(&token).expect("kiops-token verifies");
    assert!(verified.pa);
}

async fn refresh_rotates_and_reuse_revokes_the_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth().await;
    let first = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    let refresh = |t: &str| RefreshRequest {
        refresh_token: t.to_string(),
        organization_id: None,
    };
    let second = auth
        .refresh(refresh(&first.refresh_token))
        .await
        .expect("refresh")
        .into_inner();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.token_type, "Bearer");
    // The new access token works.
    server
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &second.access_token))
        .await
        .expect("get me with refreshed token");
    let third = auth
        .refresh(refresh(&second.refresh_token))
        .await
        .expect("refresh again")
        .into_inner();

    // Replaying a rotated token revokes the whole session...
    assert_status(
        auth.refresh(refresh(&first.refresh_token)).await,
        Code::Unauthenticated,
        "REFRESH_TOKEN_REUSED",
    );
    // ...so even the newest token of that session is dead now.
    assert_status(
        auth.refresh(refresh(&third.refresh_token)).await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
    // Other sessions are untouched.
    let other = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    auth.refresh(refresh(&other.refresh_token))
        .await
        .expect("another session still refreshes");
    // Garbage is simply invalid.
    assert_status(
        auth.refresh(refresh("kr_notarealtoken")).await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
}

/// A leaked refresh token used by two parties at once: exactly one call
/// gets a new pair, every other one is refused, and the session ends (the
/// winner's new token is dead too), however the calls interleave.
async fn racing_refreshes_of_one_token_have_one_winner(backend: Backend) {
    let server = TestServer::start(backend).await;
    for round in 0..3 {
        let s = server
            .login(ADMIN_EMAIL, ADMIN_PASSWORD)
            .await
            .expect("login");
        let mut calls = Vec::new();
        for _ in 0..8 {
            let mut auth = server.auth().await;
            let token = s.refresh_token.clone();
            calls.push(tokio::spawn(async move {
                auth.refresh(RefreshRequest {
                    refresh_token: token,
                    organization_id: None,
                })
                .await
            }));
        }
        let mut winners = Vec::new();
        for c in calls {
            match c.await.expect("task") {
                Ok(r) => winners.push(r.into_inner()),
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::Unauthenticated,
                        "round {round}: {status:?}"
                    );
                    let why = reason(&status);
                    assert!(
                        why == "REFRESH_TOKEN_REUSED" || why == "INVALID_REFRESH_TOKEN",
                        "round {round}: {why}"
                    );
                }
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one refresh wins");
        assert_status(
            server
                .auth()
                .await
                .refresh(RefreshRequest {
                    refresh_token: winners[0].refresh_token.clone(),
                    organization_id: None,
                })
                .await,
            Code::Unauthenticated,
            "INVALID_REFRESH_TOKEN",
        );
    }
}

/// Many sessions refreshing at the same moment (their rotations commit
/// together, `store::claim_batch`): each gets its own new pair, whose
/// refresh token is the one that works next, each old token now counts as
/// reused, and a second use of one token inside the burst still has exactly
/// one winner.
async fn concurrent_refreshes_of_many_sessions_each_rotate(backend: Backend) {
    const SESSIONS: usize = 24;
    let server = TestServer::start(backend).await;
    let sessions = server.admin_sessions(SESSIONS).await;
    // Every session once, and the last one twice.
    let mut presented = sessions.clone();
    presented.push(sessions[SESSIONS - 1].clone());
    let mut calls = Vec::new();
    for token in presented {
        let mut auth = server.auth().await;
        calls.push(tokio::spawn(async move {
            let r = auth
                .refresh(RefreshRequest {
                    refresh_token: token.clone(),
                    organization_id: None,
                })
                .await;
            (token, r)
        }));
    }
    let mut rotated = Vec::new();
    let mut last_wins = 0;
    for c in calls {
        let (old, r) = c.await.expect("task");
        match r {
            Ok(pair) => {
                let pair = pair.into_inner();
                assert_ne!(pair.refresh_token, old);
                last_wins += usize::from(old == sessions[SESSIONS - 1]);
                rotated.push((old, pair.refresh_token));
            }
            Err(status) => {
                assert_eq!(old, sessions[SESSIONS - 1], "{status:?}");
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            }
        }
    }
    assert_eq!(last_wins, 1, "one winner for the token presented twice");
    assert_eq!(rotated.len(), SESSIONS);
    let mut news: Vec<&String> = rotated.iter().map(|(_, n)| n).collect();
    news.sort();
    news.dedup();
    assert_eq!(news.len(), SESSIONS, "every new refresh token is distinct");
    for (old, new) in &rotated {
        if *old == sessions[SESSIONS - 1] {
            // The raced session was revoked by the reuse.
            continue;
        }
        let next = server
            .auth()
            .await
            .refresh(RefreshRequest {
                refresh_token: new.clone(),
                organization_id: None,
            })
            .await
            .expect("the rotated token refreshes")
            .into_inner();
        assert!(!next.access_token.is_empty());
        assert_status(
            server
                .auth()
                .await
                .refresh(RefreshRequest {
                    refresh_token: old.clone(),
                    organization_id: None,
                })
                .await,
            Code::Unauthenticated,
            "REFRESH_TOKEN_REUSED",
        );
    }
    let transactions = server.metric("kiops_identity_refresh_batch_transactions_total");
    let rotations = server.metric("kiops_identity_refresh_batch_rotations_total");
    assert!(rotations >= SESSIONS as f64, "rotations {rotations}");
    assert!(
        transactions < rotations,
        "transactions {transactions}, rotations {rotations}: no batch formed"
    );
}

/// Refresh with `organization_id` mints a token holding just that
/// organization; an organization the user is not in is NOT_FOUND and does
/// not use up the refresh token.
async fn scoped_refresh_for_a_foreign_organization_keeps_the_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mine = server.create_org(&admin, "Mine", "mine").await;
    let other = server.create_org(&admin, "Other", "other").await;
    let kim = server.create_user("kim@example.com", "Kim", PW).await;
    server.add_member(&admin, &mine, &kim, Role::Member).await;
    let s = server.login("kim@example.com", PW).await.expect("login");
    let mut auth = server.auth().await;
    assert_status(
        auth.refresh(RefreshRequest {
            refresh_token: s.refresh_token.clone(),
            organization_id: Some(other.clone()),
        })
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let scoped = auth
        .refresh(RefreshRequest {
            refresh_token: s.refresh_token.clone(),
            organization_id: Some(mine.clone()),
        })
        .await
        .expect("the refused call left the token usable")
        .into_inner();
    let orgs = token_orgs(&scoped.access_token);
    let orgs = orgs.as_object().expect("orgs");
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[&mine]["role"], "member");
    // Unscoped again: every membership.
    let all = auth
        .refresh(RefreshRequest {
            refresh_token: scoped.refresh_token,
            organization_id: None,
        })
        .await
        .expect("unscoped refresh")
        .into_inner();
    assert!(token_orgs(&all.access_token)[&mine].is_object());
}

/// Clients give up: every refresh here carries a deadline of a few
/// milliseconds, so the server drops many handlers part-way, some in the
/// middle of the rotation's write. None of that may leave a transaction
/// open (on SQLite that would hold the write lock for good): afterwards
/// logins and refreshes still work, and every session still refreshes or
/// is cleanly refused.
async fn refreshes_cut_short_by_deadlines_leave_the_database_writable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut sessions = server.admin_sessions(8).await;
    let mut cut = 0;
    for round in 0..40u64 {
        let mut calls = Vec::new();
        for (i, token) in sessions.iter().enumerate() {
            let mut auth = server.auth().await;
            let mut req = tonic::Request::new(RefreshRequest {
                refresh_token: token.clone(),
                organization_id: None,
            });
            req.set_timeout(Duration::from_micros(200 + 300 * ((round + i as u64) % 8)));
            calls.push(tokio::spawn(async move { auth.refresh(req).await }));
        }
        for (i, c) in calls.into_iter().enumerate() {
            match c.await.expect("task") {
                Ok(r) => sessions[i] = r.into_inner().refresh_token,
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            Code::Cancelled | Code::DeadlineExceeded | Code::Unauthenticated
                        ),
                        "{status:?}"
                    );
                    if status.code() == Code::Unauthenticated {
                        // The rotation committed but the answer was lost:
                        // the old token is used, as it must be.
                        sessions[i] = server
                            .login(ADMIN_EMAIL, ADMIN_PASSWORD)
                            .await
                            .expect("login")
                            .refresh_token;
                    }
                    cut += 1;
                }
            }
        }
    }
    assert!(cut > 0, "no call was cut short; the test proves nothing");
    // Writes still go through, promptly.
    let t0 = Instant::now();
    let fresh = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login after the cancellations");
    server
        .auth()
        .await
        .refresh(RefreshRequest {
            refresh_token: fresh.refresh_token,
            organization_id: None,
        })
        .await
        .expect("refresh after the cancellations");
    server.create_user("after@example.com", "After", PW).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "writes are stuck");
}

async fn logout_ends_the_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth().await;
    let s = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    // Logout needs the caller's access token.
    assert_status(
        auth.logout(LogoutRequest {
            refresh_token: s.refresh_token.clone(),
        })
        .await,
        Code::Unauthenticated,
        "MISSING_TOKEN",
    );
    // Someone else's session is not found (and stays alive).
    let uid = server.create_user("kim@example.com", "Kim", PW).await;
    assert!(!uid.is_empty());
    let kim = server.login("kim@example.com", PW).await.expect("login");
    assert_status(
        auth.logout(authed(
            LogoutRequest {
                refresh_token: s.refresh_token.clone(),
            },
            &kim.access_token,
        ))
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    auth.logout(authed(
        LogoutRequest {
            refresh_token: s.refresh_token.clone(),
        },
        &s.access_token,
    ))
    .await
    .expect("logout");
    assert_status(
        auth.refresh(RefreshRequest {
            refresh_token: s.refresh_token.clone(),
            organization_id: None,
        })
        .await,
        Code::Unauthenticated,
        "INVALID_REFRESH_TOKEN",
    );
}

async fn expired_access_token_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.admin_token().await;
    let mut users = server.users().await;
    users
        .get_me(authed(GetMeRequest {}, &token))
        .await
        .expect("fresh token works");
    // 5 minutes of lifetime + 30 s leeway later it is refused.
    server.advance_clock(Duration::from_secs(331));
    assert_status(
        users.get_me(authed(GetMeRequest {}, &token)).await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );
    // A token minted now works.
    let fresh = server.admin_token().await;
    users
        .get_me(authed(GetMeRequest {}, &fresh))
        .await
        .expect("new token works");
}

async fn create_user_is_platform_admin_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_user("kim@example.com", "Kim", PW).await;
    let kim = server.login("kim@example.com", PW).await.expect("login");
    let mut users = server.users().await;
    let req = || CreateUserRequest {
        email: "lee@example.com".into(),
        name: "Lee".into(),
        password: PW.into(),
        platform_admin: true,
    };
    assert_status(
        users.create_user(authed(req(), &kim.access_token)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_status(
        users.create_user(req()).await,
        Code::Unauthenticated,
        "MISSING_TOKEN",
    );
    let admin = server.admin_token().await;
    let created = users
        .create_user(authed(req(), &admin))
        .await
        .expect("admin creates")
        .into_inner()
        .user
        .expect("user");
    assert!(created.platform_admin);
    // Same email in another case is the same account.
    let mut dup = req();
    dup.email = "LEE@example.com".into();
    assert_status(
        users.create_user(authed(dup, &admin)).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
}

async fn grpc_jwks_matches_http_jwks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let r = server
        .auth()
        .await
        .get_jwks(GetJwksRequest {})
        .await
        .expect("jwks")
        .into_inner();
    let (_, http) = server.http("GET", "/.well-known/jwks.json");
    let a: serde_json::Value = serde_json::from_str(&r.jwks_json).expect("json");
    let b: serde_json::Value = serde_json::from_str(&http).expect("json");
    assert_eq!(a, b);
    assert_eq!(r.keys.len(), a["keys"].as_array().expect("keys").len());
}
