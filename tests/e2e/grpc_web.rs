//! Issue 23: gRPC-Web on the gRPC port and CORS for an explicit allow-list,
//! through the real binary with a real gRPC-Web client (tonic-web's client
//! layer over hyper, HTTP/1.1 and HTTP/2) and with frames built by hand.

use crate::both_backends;
use crate::support::grpc_web::*;
use crate::support::*;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::organization_service_client::OrganizationServiceClient;
use kiops_proto::v1::user_service_client::UserServiceClient;
use kiops_proto::v1::*;
use prost::Message;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::Duration;
use tonic::{Code, Request};

both_backends!(
    unary_over_http1_matches_native,
    unary_over_http2_matches_native,
    text_mode_frames_decode_by_hand,
    errors_carry_error_info_and_field_violations,
    watch_revocations_streams_over_http1,
    export_streams_several_messages_over_http1,
    a_web_stream_ends_with_its_session,
    preflight_from_the_listed_origin,
    actual_call_exposes_the_grpc_status_headers,
    other_origins_get_no_cors_headers,
    without_the_flag_there_are_no_cors_headers,
    a_cookie_never_authenticates,
    hostile_http1_gets_clear_errors,
    native_health_and_reflection_unaffected,
    parallel_web_logins_lock_exactly,
    a_revoked_session_is_refused_over_web,
    abandoned_web_streams_give_their_slots_back,
);

const ORIGIN: &str = "http://console.test";

async fn start(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--cors-allowed-origins".into(), ORIGIN.into()],
            ..Default::default()
        },
    )
    .await
}

fn web_auth(s: &TestServer, http: Http) -> AuthServiceClient<WebChannel> {
    AuthServiceClient::with_origin(s.web(http), s.web_origin())
}

fn web_users(s: &TestServer, http: Http) -> UserServiceClient<WebChannel> {
    UserServiceClient::with_origin(s.web(http), s.web_origin())
}

fn web_members(s: &TestServer, http: Http) -> MembershipServiceClient<WebChannel> {
    MembershipServiceClient::with_origin(s.web(http), s.web_origin())
}

fn login_req(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.into(),
        password: password.into(),
        organization_id: None,
    }
}

/// Headers of a gRPC-Web call as grpc-web's and Connect's browser clients
/// send them.
fn web_headers<'a>(content_type: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("content-type", content_type),
        ("accept", content_type),
        ("x-grpc-web", "1"),
        ("x-user-agent", "grpc-web-javascript/0.1"),
    ];
    h.extend_from_slice(extra);
    h
}

const LOGIN_PATH: &str = "/kiops.identity.v1.AuthService/Login";

/// Login, GetMe and CheckPermission over gRPC-Web give what native gRPC
/// gives, and the answer really came over the asked HTTP version.
async fn unary_matches_native(backend: Backend, http: Http) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Web", "web").await;
    let (member, _) = s.user("mia@example.com").await;
    s.add_member(&admin, &org, &member, Role::Member).await;

    let web_login = web_auth(&s, http)
        .login(login_req("mia@example.com", PASSWORD))
        .await
        .expect("login over gRPC-Web")
        .into_inner();
    assert!(!web_login.access_token.is_empty());
    assert_eq!(
        token_claims(&web_login.access_token)["sub"],
        member.as_str()
    );
    let bad = web_auth(&s, http)
        .login(login_req("mia@example.com", "wrong password here"))
        .await;
    assert_status(bad, Code::Unauthenticated, "INVALID_CREDENTIALS");

    let me_web = web_users(&s, http)
        .get_me(authed(GetMeRequest {}, &web_login.access_token))
        .await
        .expect("GetMe over gRPC-Web")
        .into_inner();
    let me_native = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &web_login.access_token))
        .await
        .expect("GetMe native")
        .into_inner();
    assert_eq!(me_web, me_native);

    let mut web = web_members(&s, http);
    let mut native = s.members().await;
    for permission in 1..=7 {
        for user in [&member, &"no-such-user".to_string()] {
            let req = || {
                authed(
                    CheckPermissionRequest {
                        user_id: user.clone(),
                        organization_id: org.clone(),
                        permission,
                    },
                    &admin,
                )
            };
            let w = web.check_permission(req()).await.map(|r| r.into_inner());
            let n = native.check_permission(req()).await.map(|r| r.into_inner());
            match (w, n) {
                (Ok(w), Ok(n)) => assert_eq!(w, n, "permission {permission} of {user}"),
                (Err(w), Err(n)) => {
                    assert_eq!((w.code(), reason(&w)), (n.code(), reason(&n)))
                }
                (w, n) => panic!("web {w:?} vs native {n:?}"),
            }
        }
    }

    let raw = s
        .raw(
            http,
            Method::POST,
            LOGIN_PATH,
            &web_headers("application/grpc-web+proto", &[]),
            frame(&login_req("mia@example.com", PASSWORD)),
        )
        .await;
    let want = match http {
        Http::One => Version::HTTP_11,
        Http::Two => Version::HTTP_2,
    };
    assert_eq!(raw.version, want);
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(
        raw.header("content-type"),
        Some("application/grpc-web+proto")
    );
    let (msgs, trailers) = frames(&raw.body);
    assert_eq!(msgs.len(), 1);
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"), "{trailers:?}");
}

async fn unary_over_http1_matches_native(backend: Backend) {
    unary_matches_native(backend, Http::One).await
}

async fn unary_over_http2_matches_native(backend: Backend) {
    unary_matches_native(backend, Http::Two).await
}

/// grpc-web-text: a base64 request, and a base64 answer whose message and
/// trailer frames decode by hand; an error in text mode too.
async fn text_mode_frames_decode_by_hand(backend: Backend) {
    use base64::Engine;
    let s = start(backend).await;
    let b64 = |b: Vec<u8>| {
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes()
    };
    for http in [Http::One, Http::Two] {
        let ok = s
            .raw(
                http,
                Method::POST,
                LOGIN_PATH,
                &web_headers("application/grpc-web-text", &[]),
                b64(frame(&login_req(ADMIN_EMAIL, ADMIN_PASSWORD))),
            )
            .await;
        assert_eq!(ok.status, StatusCode::OK);
        assert!(
            ok.header("content-type")
                .is_some_and(|c| c.starts_with("application/grpc-web-text")),
            "{:?}",
            ok.headers
        );
        let (msgs, trailers) = frames(&unbase64(&ok.body));
        assert_eq!(msgs.len(), 1, "one message");
        let login = LoginResponse::decode(&msgs[0][..]).expect("a LoginResponse");
        assert_eq!(token_claims(&login.access_token)["email"], ADMIN_EMAIL);
        assert_eq!(trailer(&trailers, "grpc-status"), Some("0"), "{trailers:?}");

        // A wrong password: the status is in the headers (trailers-only)
        // or in a trailer frame; either way UNAUTHENTICATED with its reason.
        let bad = s
            .raw(
                http,
                Method::POST,
                LOGIN_PATH,
                &web_headers("application/grpc-web-text", &[]),
                b64(frame(&login_req(ADMIN_EMAIL, "not the password at all"))),
            )
            .await;
        assert_eq!(bad.status, StatusCode::OK);
        let (msgs, trailers) = frames(&unbase64(&bad.body));
        assert!(msgs.is_empty());
        let mut all = bad.headers.clone();
        for (k, v) in &trailers {
            all.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let st = tonic::Status::from_header_map(&all).expect("a grpc-status");
        assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
        assert_eq!(reason(&st), "INVALID_CREDENTIALS");
    }
}

/// The rich error model survives gRPC-Web: the same code, ErrorInfo reason
/// and BadRequest violations as native gRPC, and grpc-status-details-bin
/// decodes to a google.rpc.Status.
async fn errors_carry_error_info_and_field_violations(backend: Backend) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Errors", "errors").await;
    let (member, member_token) = s.user("max@example.com").await;
    s.add_member(&admin, &org, &member, Role::Member).await;
    let (other, _) = s.user("ola@example.com").await;
    let member_token = s
        .login("max@example.com", PASSWORD)
        .await
        .map(|l| l.access_token)
        .unwrap_or(member_token);

    for http in [Http::One, Http::Two] {
        // A Member calling a Manager RPC.
        let add = || {
            authed(
                AddMemberRequest {
                    organization_id: org.clone(),
                    user_id: other.clone(),
                    role: Role::Member as i32,
                },
                &member_token,
            )
        };
        let web = MembershipServiceClient::with_origin(s.web(http), s.web_origin())
            .add_member(add())
            .await
            .expect_err("a Member cannot add members");
        let native = s
            .members()
            .await
            .add_member(add())
            .await
            .expect_err("native too");
        assert_eq!(web.code(), Code::PermissionDenied, "{web:?}");
        assert!(!reason(&web).is_empty(), "{web:?}");
        assert_eq!(reason(&web), reason(&native));

        // Bad input: BadRequest field violations.
        let create = || {
            authed(
                CreateOrganizationRequest {
                    name: String::new(),
                    code: "Not A Code!".into(),
                    description: String::new(),
                },
                &admin,
            )
        };
        let web = OrganizationServiceClient::with_origin(s.web(http), s.web_origin())
            .create_organization(create())
            .await
            .expect_err("bad input");
        let native = s
            .orgs()
            .await
            .create_organization(create())
            .await
            .expect_err("native too");
        assert_eq!(web.code(), Code::InvalidArgument, "{web:?}");
        assert_eq!(reason(&web), "INVALID_ARGUMENT");
        assert!(!bad_fields(&web).is_empty(), "{web:?}");
        assert_eq!(bad_fields(&web), bad_fields(&native));
    }

    // By hand: the header a browser page reads.
    let raw = s
        .raw(
            Http::One,
            Method::POST,
            "/kiops.identity.v1.MembershipService/AddMember",
            &web_headers(
                "application/grpc-web+proto",
                &[
                    ("authorization", &format!("Bearer {member_token}")),
                    ("origin", ORIGIN),
                ],
            ),
            frame(&AddMemberRequest {
                organization_id: org.clone(),
                user_id: other.clone(),
                role: Role::Member as i32,
            }),
        )
        .await;
    let (_, trailers) = frames(&raw.body);
    let details = raw
        .header("grpc-status-details-bin")
        .or(trailer(&trailers, "grpc-status-details-bin"))
        .expect("grpc-status-details-bin");
    let code = raw
        .header("grpc-status")
        .or(trailer(&trailers, "grpc-status"))
        .expect("grpc-status");
    assert_eq!(code, (Code::PermissionDenied as i32).to_string());
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details.trim_end_matches('='))
        .expect("base64 details");
    let status = tonic_types::Status::decode(&bytes[..]).expect("google.rpc.Status");
    assert_eq!(status.code, Code::PermissionDenied as i32);
    let info = status
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.ErrorInfo"))
        .expect("an ErrorInfo");
    let info = tonic_types::pb::ErrorInfo::decode(&info.value[..]).expect("ErrorInfo");
    assert!(!info.reason.is_empty());
    assert_eq!(info.domain, "identity.kiops.io");
}

/// WatchRevocations over gRPC-Web HTTP/1.1 (the PlatformAdmin watches
/// everyone): a logout made meanwhile arrives as an event.
async fn watch_revocations_streams_over_http1(backend: Backend) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let (user, _) = s.user("lea@example.com").await;
    let mut stream = web_auth(&s, Http::One)
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch over gRPC-Web")
        .into_inner();
    let lea = s.login("lea@example.com", PASSWORD).await.expect("login");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: lea.refresh_token.clone(),
            },
            &lea.access_token,
        ))
        .await
        .expect("logout");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the logout arrived within 15 s")
            .expect("a message, not an error")
            .expect("the stream stays open");
        let ev = msg.event.expect("event");
        if ev.user_id == user && ev.reason == "logout" {
            assert!(!ev.event_id.is_empty());
            break;
        }
    }
}

/// ExportAuditEvents over gRPC-Web HTTP/1.1: a trail too big for one
/// message comes as several, every line of it.
async fn export_streams_several_messages_over_http1(backend: Backend) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Trail", "trail").await;
    bulk_audit(&s, &org, 3000).await;
    let mut stream = AuditServiceClient::with_origin(s.web(Http::One), s.web_origin())
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.clone()),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("export over gRPC-Web")
        .into_inner();
    let (mut messages, mut bulk_lines) = (0, 0);
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the export goes on")
        .expect("no error")
    {
        messages += 1;
        bulk_lines += String::from_utf8_lossy(&m.chunk)
            .lines()
            .filter(|l| l.contains("bulk.event"))
            .count();
    }
    assert!(messages > 1, "{messages} messages");
    assert_eq!(bulk_lines, 3000);
}

/// A gRPC-Web stream outlives its caller's rights no more than a native
/// one: the session's logout ends it with SESSION_REVOKED.
async fn a_web_stream_ends_with_its_session(backend: Backend) {
    let s = start(backend).await;
    let mine = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    let mut stream = web_auth(&s, Http::One)
        .watch_revocations(authed(
            WatchRevocationsRequest {
                after_event_id: "9223372036854775807".into(),
            },
            &mine.access_token,
        ))
        .await
        .expect("watch over gRPC-Web")
        .into_inner();
    web_auth(&s, Http::One)
        .logout(authed(
            LogoutRequest {
                refresh_token: mine.refresh_token.clone(),
            },
            &mine.access_token,
        ))
        .await
        .expect("logout over gRPC-Web");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream outlived its session by 10 s");
    let e = end.expect_err("an error, not a message or a clean end");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "SESSION_REVOKED", "{e:?}");
}

fn preflight(origin: &str) -> Vec<(&str, &str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent",
        ),
    ]
}

fn list(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("")
        .split(',')
        .map(|x| x.trim().to_ascii_lowercase())
        .filter(|x| !x.is_empty())
        .collect()
}

/// A preflight from the listed origin: allowed, that origin exactly, the
/// headers a gRPC-Web client sends, cached 10 minutes, no credentials.
async fn preflight_from_the_listed_origin(backend: Backend) {
    let s = start(backend).await;
    for http in [Http::One, Http::Two] {
        let r = s
            .raw(
                http,
                Method::OPTIONS,
                LOGIN_PATH,
                &preflight(ORIGIN),
                vec![],
            )
            .await;
        assert!(r.status.is_success(), "{} {:?}", r.status, r.headers);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        let headers = list(r.header("access-control-allow-headers"));
        for h in [
            "authorization",
            "content-type",
            "x-grpc-web",
            "x-user-agent",
        ] {
            assert!(headers.iter().any(|x| x == h), "{h} in {headers:?}");
        }
        assert_eq!(list(r.header("access-control-allow-methods")), ["post"]);
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), None);
        assert!(
            list(r.header("vary")).iter().any(|v| v == "origin"),
            "caches must key on Origin: {:?}",
            r.headers
        );
    }
}

/// An actual call from the listed origin: the page may read grpc-status,
/// grpc-message and grpc-status-details-bin (where its ErrorInfo is).
async fn actual_call_exposes_the_grpc_status_headers(backend: Backend) {
    let s = start(backend).await;
    let r = s
        .raw(
            Http::One,
            Method::POST,
            LOGIN_PATH,
            &web_headers("application/grpc-web+proto", &[("origin", ORIGIN)]),
            frame(&login_req(ADMIN_EMAIL, "not the password at all")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let exposed = list(r.header("access-control-expose-headers"));
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.iter().any(|x| x == h), "{h} not in {exposed:?}");
    }
    // And they are there to read (trailers-only answer: in the headers).
    assert_eq!(r.header("grpc-status"), Some("16"), "{:?}", r.headers);
    assert!(r.header("grpc-status-details-bin").is_some());
}

/// Origins that only look like the listed one get no CORS headers, on the
/// preflight or on the call.
async fn other_origins_get_no_cors_headers(backend: Backend) {
    let s = start(backend).await;
    for origin in [
        "http://console.test.evil.example",
        "http://evil.example",
        "https://console.test",
        "http://console.test:8080",
        "http://sub.console.test",
        "http://console.tes",
        "null",
    ] {
        let pre = s
            .raw(
                Http::One,
                Method::OPTIONS,
                LOGIN_PATH,
                &preflight(origin),
                vec![],
            )
            .await;
        assert_eq!(
            pre.header("access-control-allow-origin"),
            None,
            "preflight from {origin}"
        );
        assert_eq!(pre.header("access-control-allow-credentials"), None);
        let call = s
            .raw(
                Http::One,
                Method::POST,
                LOGIN_PATH,
                &web_headers("application/grpc-web+proto", &[("origin", origin)]),
                frame(&login_req(ADMIN_EMAIL, "not the password at all")),
            )
            .await;
        assert_eq!(
            call.header("access-control-allow-origin"),
            None,
            "call from {origin}"
        );
        // (tower-http still lists the exposed header names: without an
        // allowed origin the browser shows the page nothing anyway.)
    }
}

/// No --cors-allowed-origins: no answer carries CORS headers, preflights
/// included; gRPC-Web itself still works (same-origin or behind a proxy).
async fn without_the_flag_there_are_no_cors_headers(backend: Backend) {
    let s = TestServer::start(backend).await;
    let no_cors = |r: &RawAnswer, what: &str| {
        let cors: Vec<_> = r
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    };
    for http in [Http::One, Http::Two] {
        let pre = s
            .raw(
                http,
                Method::OPTIONS,
                LOGIN_PATH,
                &preflight(ORIGIN),
                vec![],
            )
            .await;
        no_cors(&pre, "preflight");
        // Refused: HTTP 400 on HTTP/1.1; on HTTP/2 the request is passed
        // to gRPC, which finds no message in it.
        if http == Http::One {
            assert_eq!(pre.status, StatusCode::BAD_REQUEST);
        } else {
            assert_eq!(pre.header("grpc-status"), Some("3"), "{:?}", pre.headers);
        }
        let call = s
            .raw(
                http,
                Method::POST,
                LOGIN_PATH,
                &web_headers("application/grpc-web+proto", &[("origin", ORIGIN)]),
                frame(&login_req(ADMIN_EMAIL, ADMIN_PASSWORD)),
            )
            .await;
        no_cors(&call, "call");
        let (msgs, trailers) = frames(&call.body);
        assert_eq!(msgs.len(), 1);
        assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    }
}

/// A bad --cors-allowed-origins value stops `serve` with a message naming
/// it, not a panic and not a server that allows more than was meant.
#[test]
fn bad_cors_flag_values_stop_the_server() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/kiops.db", dir.path().display());
    for bad in [
        "*",
        "/console",
        "ftp://console.test",
        "http://console.test/app",
        "http://*.console.test",
        "http://console.test,*",
        "null",
    ] {
        for how in ["flag", "env"] {
            let mut cmd = std::process::Command::new(binary());
            cmd.arg("serve")
                .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
                .args(["--database-url", &url])
                .env_remove("KIOPS_CORS_ALLOWED_ORIGINS")
                .env_remove("DATABASE_URL")
                .stdin(std::process::Stdio::null());
            if how == "flag" {
                cmd.args(["--cors-allowed-origins", bad]);
            } else {
                cmd.env("KIOPS_CORS_ALLOWED_ORIGINS", bad);
            }
            let mut child = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{bad:?} ({how}): the server started");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{bad:?} ({how}): {text}");
            assert!(!text.contains("panicked"), "{bad:?} ({how}): {text}");
            assert!(
                text.contains("origin"),
                "{bad:?} ({how}): no clear message: {text}"
            );
        }
    }
}

/// Credentials only by the authorization header: a valid access token in a
/// cookie, whatever its name, authenticates nothing (no CSRF surface).
async fn a_cookie_never_authenticates(backend: Backend) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    for cookie in [
        format!("access_token={admin}"),
        format!("authorization=Bearer {admin}"),
        format!("session={admin}; token={admin}"),
        format!("Authorization={admin}"),
    ] {
        let mut req = Request::new(GetMeRequest {});
        req.metadata_mut()
            .insert("cookie", cookie.parse().expect("cookie"));
        let r = web_users(&s, Http::One).get_me(req).await;
        assert_status(r, Code::Unauthenticated, "MISSING_TOKEN");
        let raw = s
            .raw(
                Http::One,
                Method::POST,
                "/kiops.identity.v1.UserService/GetMe",
                &web_headers(
                    "application/grpc-web+proto",
                    &[("origin", ORIGIN), ("cookie", &cookie)],
                ),
                frame(&GetMeRequest {}),
            )
            .await;
        assert_eq!(raw.header("grpc-status"), Some("16"), "{:?}", raw.headers);
    }
    // The header still works on the same path.
    web_users(&s, Http::One)
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("the authorization header authenticates");
}

/// Hostile HTTP/1.1 on the gRPC port: each gets a clear refusal (an HTTP
/// 4xx, a closed connection, or a gRPC status other than INTERNAL), and
/// the server goes on serving native gRPC.
async fn hostile_http1_gets_clear_errors(backend: Backend) {
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let clear_http = |out: &str, what: &str| {
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 4"),
            "{what}: {out:?}"
        );
    };
    // Not HTTP at all, or broken HTTP.
    for junk in [
        &b"this is not http\r\n\r\n"[..],
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"POST /kiops.identity.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /kiops.identity.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nX: \x01\x02\r\n\r\n",
    ] {
        clear_http(&s.raw_tcp(junk), &String::from_utf8_lossy(junk));
    }
    let status_of = |r: &RawAnswer| -> Option<i32> {
        let (_, trailers) = frames_lenient(r);
        r.header("grpc-status")
            .or(trailer(&trailers, "grpc-status"))
            .and_then(|c| c.parse().ok())
    };
    // A grpc-web-text body that is not base64.
    let r = s
        .raw(
            Http::One,
            Method::POST,
            LOGIN_PATH,
            &web_headers("application/grpc-web-text", &[]),
            b"!!!! this is not base64 ####".to_vec(),
        )
        .await;
    let code = status_of(&r);
    assert!(
        r.status.is_client_error()
            || matches!(code, Some(c) if c != 0 && c != Code::Internal as i32),
        "not base64: {} {:?} {code:?}",
        r.status,
        r.headers
    );
    // A frame declaring 4 GiB.
    let mut huge = vec![0u8, 0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(&[0u8; 64]);
    let r = s
        .raw(
            Http::One,
            Method::POST,
            LOGIN_PATH,
            &web_headers("application/grpc-web+proto", &[]),
            huge,
        )
        .await;
    let code = status_of(&r);
    assert!(
        r.status.is_client_error()
            || matches!(code, Some(c) if c != 0 && c != Code::Internal as i32),
        "4 GiB frame: {} {:?} {code:?}",
        r.status,
        r.headers
    );
    // Methods other than POST.
    for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let r = s
            .raw(
                Http::One,
                m.clone(),
                LOGIN_PATH,
                &web_headers("application/grpc-web+proto", &[]),
                vec![],
            )
            .await;
        assert!(r.status.is_client_error(), "{m}: {}", r.status);
    }
    // Content types that are not gRPC-Web (native gRPC needs HTTP/2).
    for ct in ["text/plain", "application/json", "application/grpc", ""] {
        let r = s
            .raw(
                Http::One,
                Method::POST,
                LOGIN_PATH,
                &[("content-type", ct)],
                frame(&login_req(ADMIN_EMAIL, ADMIN_PASSWORD)),
            )
            .await;
        let code = status_of(&r);
        assert!(
            r.status.is_client_error()
                || matches!(code, Some(c) if c != 0 && c != Code::Internal as i32),
            "{ct:?}: {} {:?}",
            r.status,
            r.headers
        );
    }
    s.users()
        .await
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("native gRPC after all that");
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

/// Frames of a body that may not be gRPC-Web at all (an error page).
fn frames_lenient(r: &RawAnswer) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    let is_web = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/grpc-web"));
    if !is_web || r.body.is_empty() {
        return (vec![], vec![]);
    }
    let body = if r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/grpc-web-text"))
    {
        unbase64(&r.body)
    } else {
        r.body.clone()
    };
    frames(&body)
}

/// With gRPC-Web and CORS on, native gRPC, health and reflection answer on
/// the same port as before.
async fn native_health_and_reflection_unaffected(backend: Backend) {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let s = start(backend).await;
    let admin = s.admin_token().await;
    let web_me = web_users(&s, Http::One)
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("web GetMe")
        .into_inner();
    let ch = s.channel().await;
    let native_me = UserServiceClient::new(ch.clone())
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("native GetMe")
        .into_inner();
    assert_eq!(web_me, native_me);
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kiops.identity.v1.AuthService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, 1);
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = stream.message().await.expect("answer").expect("a message");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}");
    };
    assert!(list
        .service
        .iter()
        .any(|x| x.name == "kiops.identity.v1.MembershipService"));
    // And health over gRPC-Web, for a console's status light.
    let web_health = tonic_health::pb::health_client::HealthClient::with_origin(
        s.web(Http::One),
        s.web_origin(),
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health over gRPC-Web")
    .into_inner();
    assert_eq!(web_health.status, 1);
}

/// 20 parallel gRPC-Web logins with wrong passwords, each on its own
/// HTTP/1.1 connection: the lockout counts them as exactly as native ones
/// (at most the threshold evaluated, one lock, the rest refused unevaluated)
/// and the right password is then refused too.
async fn parallel_web_logins_lock_exactly(backend: Backend) {
    let s = start(backend).await;
    s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut c = web_auth(&s, Http::One);
            tokio::spawn(async move {
                let mut r = Request::new(login_req("kim@example.com", &format!("wrong {i}")));
                r.metadata_mut()
                    .insert("x-request-id", format!("weblock-{i}").parse().expect("id"));
                c.login(r).await
            })
        })
        .collect();
    for c in calls {
        let r = c.await.expect("join");
        assert_status(r, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let db = Database::connect(&s.db.url).await.expect("db");
    let sql =
        "SELECT action, details FROM audit_events WHERE request_id LIKE 'weblock-%' ORDER BY id";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("events");
    let ev: Vec<(String, serde_json::Value)> = rows
        .iter()
        .map(|r| {
            let d: String = r.try_get("", "details").expect("details");
            (
                r.try_get("", "action").expect("action"),
                serde_json::from_str(&d).expect("json"),
            )
        })
        .collect();
    let failed: Vec<_> = ev.iter().filter(|e| e.0 == "auth.login_failed").collect();
    let evaluated = failed
        .iter()
        .filter(|e| e.1.get("reason").is_none())
        .count();
    let refused = failed.iter().filter(|e| e.1["reason"] == "locked").count();
    let locks = ev.iter().filter(|e| e.0 == "user.locked").count();
    assert_eq!(evaluated, 5, "the threshold exactly: {ev:?}");
    assert_eq!(refused, 15, "{ev:?}");
    assert_eq!(locks, 1, "{ev:?}");
    db.close().await.expect("close");
    // Locked: the right password is refused, over gRPC-Web and natively.
    let r = web_auth(&s, Http::One)
        .login(login_req("kim@example.com", PASSWORD))
        .await;
    assert_status(r, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert_status(
        s.login("kim@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

/// A session revoked (logged out) is refused over gRPC-Web as natively,
/// and so is its refresh token.
async fn a_revoked_session_is_refused_over_web(backend: Backend) {
    let s = start(backend).await;
    let mine = web_auth(&s, Http::One)
        .login(login_req(ADMIN_EMAIL, ADMIN_PASSWORD))
        .await
        .expect("login")
        .into_inner();
    web_users(&s, Http::One)
        .get_me(authed(GetMeRequest {}, &mine.access_token))
        .await
        .expect("the fresh session works");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: mine.refresh_token.clone(),
            },
            &mine.access_token,
        ))
        .await
        .expect("logout");
    for http in [Http::One, Http::Two] {
        let r = web_users(&s, http)
            .get_me(authed(GetMeRequest {}, &mine.access_token))
            .await;
        assert_status(r, Code::Unauthenticated, "SESSION_REVOKED");
        let r = web_auth(&s, http)
            .refresh(RefreshRequest {
                refresh_token: mine.refresh_token.clone(),
                organization_id: None,
            })
            .await;
        let st = r.expect_err("a logged-out refresh token");
        assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    }
    let r = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &mine.access_token))
        .await;
    assert_status(r, Code::Unauthenticated, "SESSION_REVOKED");
}

/// A browser tab closed mid-stream drops its HTTP/1.1 connection: the
/// stream's per-caller slot and its load permit come back. With 2 watches
/// per caller and 6 calls at once, 12 abandoned watches in a row would
/// otherwise shut the caller, then everyone, out.
async fn abandoned_web_streams_give_their_slots_back(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: [
                "--cors-allowed-origins",
                ORIGIN,
                "--max-watches-per-caller",
                "2",
                "--max-concurrent-requests",
                "6",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let watch = || {
        let mut c = web_auth(&s, Http::One);
        let req = authed(WatchRevocationsRequest::default(), &admin);
        async move { c.watch_revocations(req).await }
    };
    // Both slots taken; a third is refused.
    let a = watch().await.expect("first watch");
    let b = watch().await.expect("second watch");
    let e = watch().await.expect_err("a third watch");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    drop((a, b));
    for i in 0..12 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match watch().await {
                Ok(w) => {
                    drop(w);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "watch {i}: an abandoned stream kept its slot: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for _ in 0..8 {
        web_users(&s, Http::One)
            .get_me(authed(GetMeRequest {}, &admin))
            .await
            .expect("no load permit leaked");
    }
}
