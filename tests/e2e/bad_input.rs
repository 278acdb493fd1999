//! Bad input on every implemented RPC: INVALID_ARGUMENT with BadRequest field
//! violations, or UNAUTHENTICATED for bad credentials — never INTERNAL, and
//! nothing changes.

use crate::both_backends;
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kiops_proto::v1::*;
use tonic::Code;

both_backends!(
    login_rejects_malformed_input,
    refresh_and_logout_reject_malformed_input,
    bearer_tokens_of_every_bad_kind_are_refused,
    create_user_rejects_bad_fields_and_weak_passwords,
    oversized_messages_are_refused,
);

const PW: &str = "correct horse battery staple";

async fn login_rejects_malformed_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth().await;
    let login = |email: &str, password: &str, org: Option<&str>| LoginRequest {
        email: email.into(),
        password: password.into(),
        organization_id: org.map(str::to_string),
    };
    assert_invalid(auth.login(login("", PW, None)).await, "email");
    assert_invalid(auth.login(login("not-an-email", PW, None)).await, "email");
    assert_invalid(
        auth.login(login("kim@exаmple.com", PW, None)).await,
        "email",
    ); // Cyrillic а
    assert_invalid(auth.login(login(&"a".repeat(300), PW, None)).await, "email");
    assert_invalid(
        auth.login(login("kim@example.com", "", None)).await,
        "password",
    );
    assert_invalid(
        auth.login(login("kim@example.com", &"x".repeat(129), None))
            .await,
        "password",
    );
    assert_invalid(
        auth.login(login(ADMIN_EMAIL, ADMIN_PASSWORD, Some("not-a-uuid")))
            .await,
        "organization_id",
    );
    // Both fields wrong: both reported.
    let s = auth.login(login("x", "", None)).await.expect_err("invalid");
    let fields = bad_fields(&s);
    assert!(fields.contains(&"email".to_string()) && fields.contains(&"password".to_string()));
    // Scoped to an organization the admin does not belong to: a PlatformAdmin
    // may, anyone else gets NOT_FOUND (R4).
    let org = uuid::Uuid::now_v7().to_string();
    auth.login(login(ADMIN_EMAIL, ADMIN_PASSWORD, Some(&org)))
        .await
        .expect("PlatformAdmin may scope to any organization");
    server.create_user("kim@example.com", "Kim", PW).await;
    assert_status(
        auth.login(login("kim@example.com", PW, Some(&org))).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn refresh_and_logout_reject_malformed_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth().await;
    for bad in ["", "has space", "tab\tinside", &"k".repeat(600)] {
        assert_invalid(
            auth.refresh(RefreshRequest {
                refresh_token: bad.into(),
                organization_id: None,
            })
            .await,
            "refresh_token",
        );
    }
    let s = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    assert_invalid(
        auth.refresh(RefreshRequest {
            refresh_token: s.refresh_token.clone(),
            organization_id: Some("nope".into()),
        })
        .await,
        "organization_id",
    );
    assert_invalid(
        auth.logout(authed(
            LogoutRequest {
                refresh_token: String::new(),
            },
            &s.access_token,
        ))
        .await,
        "refresh_token",
    );
    // The refused calls changed nothing: the refresh token still works.
    auth.refresh(RefreshRequest {
        refresh_token: s.refresh_token,
        organization_id: None,
    })
    .await
    .expect("still valid");
}

fn b64(v: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).expect("json"))
}

async fn bearer_tokens_of_every_bad_kind_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let good = server.admin_token().await;
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    let kid = header["kid"].as_str().expect("kid").to_string();

    let alg_none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid})),
        parts[1]
    );
    let hs256 = format!(
        "{}.{}.{}",
        b64(serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid})),
        parts[1],
        parts[2]
    );
    let wrong_typ = format!(
        "{}.{}.{}",
        b64(serde_json::json!({"alg":"EdDSA","typ":"JWT","kid":kid})),
        parts[1],
        parts[2]
    );
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"unknown"})),
        parts[1],
        parts[2]
    );
    claims["sub"] = serde_json::json!(uuid::Uuid::now_v7().to_string());
    let tampered = format!("{}.{}.{}", parts[0], b64(claims), parts[2]);
    let foreign = {
        let key = kiops_token::SigningKey::generate();
        kiops_token::Issuer::new(key, "kiops-identity", "kiops", 300)
            .issue(kiops_token::IssueRequest {
                subject: "x".into(),
                email: "x@x.io".into(),
                name: "x".into(),
                platform_admin: true,
                orgs: Default::default(),
                session_id: None,
                email_verified: false,
                amr: Vec::new(),
            })
            .expect("issue")
            .token
    };
    let mut users = server.users().await;
    for (what, token) in [
        ("alg none", alg_none.as_str()),
        ("HS256", hs256.as_str()),
        ("typ JWT", wrong_typ.as_str()),
        ("unknown kid", unknown_kid.as_str()),
        ("tampered", tampered.as_str()),
        ("foreign key", foreign.as_str()),
        ("garbage", "garbage"),
        ("refresh token as access token", "kr_abc"),
    ] {
        let s = users
            .get_me(authed(GetMeRequest {}, token))
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
        assert_eq!(reason(&s), "INVALID_TOKEN", "{what}");
    }
    // Wrong scheme and missing header.
    let mut r = tonic::Request::new(GetMeRequest {});
    r.metadata_mut().insert(
        "authorization",
        format!("Basic {good}").parse().expect("hdr"),
    );
    assert_status(
        users.get_me(r).await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );
    assert_status(
        users.get_me(GetMeRequest {}).await,
        Code::Unauthenticated,
        "MISSING_TOKEN",
    );
}

async fn create_user_rejects_bad_fields_and_weak_passwords(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut users = server.users().await;
    let req = |email: &str, name: &str, password: &str| {
        authed(
            CreateUserRequest {
                email: email.into(),
                name: name.into(),
                password: password.into(),
                platform_admin: false,
            },
            &admin,
        )
    };
    assert_invalid(users.create_user(req("bad", "Kim", PW)).await, "email");
    assert_invalid(
        users.create_user(req("kim@example.com", "  ", PW)).await,
        "name",
    );
    assert_invalid(
        users
            .create_user(req("kim@example.com", &"n".repeat(101), PW))
            .await,
        "name",
    );
    assert_invalid(
        users
            .create_user(req("kim@example.com", "Kim\u{0}", PW))
            .await,
        "name",
    );
    for (pw, rule) in [
        ("short", "min_length"),
        (&"x".repeat(129) as &str, "max_length"),
        ("kim@example.com", "not_email"),
        ("1qaz2wsx3edc", "common_password"),
    ] {
        let s = users
            .create_user(req("kim@example.com", "Kim", pw))
            .await
            .expect_err(rule);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(reason(&s), "WEAK_PASSWORD", "{rule}");
        assert!(s.message().contains(rule), "{rule}: {}", s.message());
        assert_eq!(bad_fields(&s), vec!["password".to_string()]);
    }
    // None of the refused calls created the account.
    assert_status(
        server.login("kim@example.com", PW).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

async fn oversized_messages_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut auth = server.auth().await;
    let s = auth
        .login(LoginRequest {
            email: "a".repeat(1024 * 1024),
            password: "x".into(),
            organization_id: None,
        })
        .await
        .expect_err("1 MB login");
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{s:?}"
    );
    // The server is still fine.
    server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
}
