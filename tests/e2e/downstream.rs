//! Downstream verification (R15, R16, kiops-token): the example DeviceService
//! verifies tokens offline with kiops-token and requires `device`; revocations
//! reach it through WatchRevocations from another replica within a second;
//! CheckPermission agrees across replicas at once.

use crate::both_backends;
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kiops_example_device::pb::device_service_client::DeviceServiceClient;
use kiops_example_device::pb::ListDevicesRequest;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::*;
use kiops_token::remote::{self, KeySource, RemoteKeys};
use kiops_token::{Authority, IssueRequest, Issuer, JwkSet, OrgClaims, SigningKey};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

both_backends!(
    device_service_follows_key_rotation,
    device_service_admits_by_membership_and_permission,
    device_service_refuses_forged_and_stale_tokens,
    revocation_reaches_downstream_from_another_replica,
    revocation_stream_resumes_after_disconnect,
);

async fn start_device(authority: Authority) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(kiops_example_device::serve(listener, authority));
    addr
}

async fn devices(
    addr: SocketAddr,
    token: Option<&str>,
    org: Option<&str>,
) -> Result<kiops_example_device::pb::ListDevicesResponse, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut req = tonic::Request::new(ListDevicesRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().expect("hdr"));
    }
    if let Some(o) = org {
        req.metadata_mut()
            .insert("x-kiops-organization", o.parse().expect("hdr"));
    }
    DeviceServiceClient::new(channel)
        .list_devices(req)
        .await
        .map(|r| r.into_inner())
}

fn jwks_url(s: &TestServer) -> String {
    format!("http://{}/.well-known/jwks.json", s.http)
}

struct Setup {
    admin: String,
    org: String,
    with_id: String,
    with: String,
    without: String,
}

async fn setup(s: &TestServer) -> Setup {
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let (with_id, _) = s.user("ops@acme.io").await;
    let (without_id, _) = s.user("dev@acme.io").await;
    s.add_member(&admin, &org, &with_id, Role::Member).await;
    s.add_member(&admin, &org, &without_id, Role::Member).await;
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.clone(),
                user_id: with_id.clone(),
                permissions: vec![Permission::Device as i32],
            },
            &admin,
        ))
        .await
        .expect("grant device");
    let with = s
        .login("ops@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let without = s
        .login("dev@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    Setup {
        admin,
        org,
        with_id,
        with,
        without,
    }
}

fn b64(v: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).expect("json"))
}
/// A device service trusting the identity service's JWKS plus a test key:
/// (server, its users, the test key, the device service's address).
async fn device_world(backend: Backend) -> (TestServer, Setup, SigningKey, SocketAddr) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    // The downstream service trusts the identity service's JWKS (fetched over
    // HTTP) plus a test key of ours, so the test can sign tokens that are
    // wrong in exactly one way.
    let mut set = KeySource::Http(jwks_url(&s)).fetch().await.expect("jwks");
    let test_key = SigningKey::generate();
    set.keys.push(test_key.public_jwk());
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let addr = start_device(authority).await;
    (s, x, test_key, addr)
}

async fn device_service_admits_by_membership_and_permission(backend: Backend) {
    let (_server, x, _, addr) = device_world(backend).await;
    let ok = devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("member with device is admitted");
    assert_eq!(ok.caller_email, "ops@acme.io");
    let st = devices(addr, Some(&x.without), Some(&x.org))
        .await
        .expect_err("no device permission");
    assert_eq!(st.code(), Code::PermissionDenied);
    assert_eq!(st.message(), "device permission required");
    devices(addr, Some(&x.admin), Some(&x.org))
        .await
        .expect("PlatformAdmin is admitted");
    let other = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        devices(addr, Some(&x.with), Some(&other))
            .await
            .expect_err("other org")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        devices(addr, None, Some(&x.org))
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        devices(addr, Some(&x.with), None)
            .await
            .expect_err("no org")
            .code(),
        Code::InvalidArgument
    );
}

async fn device_service_refuses_forged_and_stale_tokens(backend: Backend) {
    let (_server, x, test_key, addr) = device_world(backend).await;
    // Forged and stale tokens of every kind are refused.
    let parts: Vec<&str> = x.with.split('.').collect();
    let kid = {
        let h: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        h["kid"].as_str().expect("kid").to_string()
    };
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    let issue = |iss: &str, aud: &str, at: u64| {
        let mut orgs = std::collections::BTreeMap::new();
        orgs.insert(
            x.org.clone(),
            OrgClaims {
                role: kiops_token::Role::Member,
                perms: vec![kiops_token::Permission::Device],
            },
        );
        Issuer::new(test_key.clone(), iss, aud, 300)
            .issue_at(
                IssueRequest {
                    subject: x.with_id.clone(),
                    email: "ops@acme.io".into(),
                    name: "Ops".into(),
                    platform_admin: false,
                    orgs,
                    session_id: None,
                    email_verified: false,
                },
                at,
            )
            .expect("issue")
            .token
    };
    let now = jsonwebtoken_now();
    // Sanity: a correct token of the test key passes, so the refusals below
    // are about the one thing that is wrong.
    devices(
        addr,
        Some(&issue("kiops-identity", "kiops", now)),
        Some(&x.org),
    )
    .await
    .expect("well-formed test token");
    let forged_perms = {
        claims["orgs"][&x.org]["perms"] = serde_json::json!(["device", "vpn"]);
        let mut c = claims.clone();
        c["orgs"] = serde_json::json!({ x.org.clone(): {"role": "manager", "perms": []} });
        format!("{}.{}.{}", parts[0], b64(c), parts[2])
    };
    let cases = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid})),
                parts[1]
            ),
        ),
        (
            "HS256",
            format!(
                "{}.{}.{}",
                b64(serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":kid})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "RS256",
            format!(
                "{}.{}.{}",
                b64(serde_json::json!({"alg":"RS256","typ":"at+jwt","kid":kid})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "missing kid",
            format!(
                "{}.{}.{}",
                b64(serde_json::json!({"alg":"EdDSA","typ":"at+jwt"})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "unknown kid",
            format!(
                "{}.{}.{}",
                b64(serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"nope"})),
                parts[1],
                parts[2]
            ),
        ),
        (
            "wrong typ",
            format!(
                "{}.{}.{}",
                b64(serde_json::json!({"alg":"EdDSA","typ":"JWT","kid":kid})),
                parts[1],
                parts[2]
            ),
        ),
        ("tampered claims", forged_perms),
        ("wrong iss", issue("https://evil.example", "kiops", now)),
        ("wrong aud", issue("kiops-identity", "other-audience", now)),
        ("expired", issue("kiops-identity", "kiops", now - 3600)),
        (
            "not yet valid",
            issue("kiops-identity", "kiops", now + 3600),
        ),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in cases {
        let st = devices(addr, Some(&token), Some(&x.org))
            .await
            .expect_err(what);
        assert_eq!(st.code(), Code::Unauthenticated, "{what}: {st:?}");
    }
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

async fn revocation_reaches_downstream_from_another_replica(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a
        .replica(ServerOptions {
            bootstrap_admin: false,
            ..Default::default()
        })
        .await;
    let x = setup(&a).await;
    // The device service takes keys from replica B and watches B's stream.
    let set: JwkSet = KeySource::Http(jwks_url(&b)).fetch().await.expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let b_channel = b.channel().await;
    let b_auth_channel = b_channel.clone();
    remote::watch_revocations(authority.clone(), b_channel.clone(), move || {
        let ch = b_auth_channel.clone();
        async move {
            let r = AuthServiceClient::new(ch)
                .login(LoginRequest {
                    email: ADMIN_EMAIL.into(),
                    password: ADMIN_PASSWORD.into(),
                    organization_id: None,
                })
                .await?;
            Ok::<_, remote::FetchError>(r.into_inner().access_token)
        }
    });
    let addr = start_device(authority).await;
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("admitted before the revoke");
    tokio::time::sleep(Duration::from_millis(300)).await; // the watcher is connected

    // CheckPermission on B sees a change made on A at once (no cache).
    let mut mb =
        kiops_proto::v1::membership_service_client::MembershipServiceClient::new(b_channel);
    let check = |t: &str| {
        authed(
            CheckPermissionRequest {
                user_id: x.with_id.clone(),
                organization_id: x.org.clone(),
                permission: Permission::Device as i32,
            },
            t,
        )
    };
    assert!(
        mb.check_permission(check(&x.admin))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    a.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: x.org.clone(),
                user_id: x.with_id.clone(),
                permissions: vec![],
            },
            &x.admin,
        ))
        .await
        .expect("revoke on A");
    let t0 = Instant::now();
    assert!(
        !mb.check_permission(check(&x.admin))
            .await
            .expect("check")
            .into_inner()
            .allowed,
        "B answers from current state"
    );
    let check_ms = t0.elapsed().as_millis();
    // The still-unexpired token is refused downstream within a second.
    let refused_after = loop {
        match devices(addr, Some(&x.with), Some(&x.org)).await {
            Err(st) => {
                assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
                break t0.elapsed();
            }
            Ok(_) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(1),
                    "token still accepted after 1 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    println!("replicas ({backend:?}): CheckPermission on B {check_ms} ms after the change on A; downstream refusal after {} ms", refused_after.as_millis());
    // A token minted after the revoke carries the change (no device) and is
    // refused by the permission check, not the revocation. (`iat` has
    // 1-second resolution, so a token minted in the very second of a
    // revocation is refused too: wait that second out.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = a
        .login("ops@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let st = devices(addr, Some(&fresh), Some(&x.org))
        .await
        .expect_err("no device any more");
    assert_eq!(st.code(), Code::PermissionDenied);
}

async fn revocation_stream_resumes_after_disconnect(backend: Backend) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    let open = |after: String| {
        let s = &s;
        let admin = x.admin.clone();
        async move {
            let mut c = s.auth().await;
            c.watch_revocations(authed(
                WatchRevocationsRequest {
                    after_event_id: after,
                },
                &admin,
            ))
            .await
            .expect("watch")
            .into_inner()
        }
    };
    let revoke = |user: &str| {
        let s = &s;
        let (org, admin, user) = (x.org.clone(), x.admin.clone(), user.to_string());
        async move {
            s.members()
                .await
                .remove_member(authed(
                    RemoveMemberRequest {
                        organization_id: org,
                        user_id: user,
                    },
                    &admin,
                ))
                .await
                .expect("remove");
        }
    };
    let mut stream = open(String::new()).await;
    revoke(&x.with_id).await;
    let first = stream
        .message()
        .await
        .expect("msg")
        .expect("event")
        .event
        .expect("event");
    assert_eq!(
        (
            first.user_id.as_str(),
            first.organization_id.as_str(),
            first.reason.as_str()
        ),
        (x.with_id.as_str(), x.org.as_str(), "membership_removed")
    );
    drop(stream);
    // Changes while disconnected are delivered after a resume, none missed.
    let dev = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &x.without))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("u")
        .user_id;
    revoke(&dev).await;
    s.users()
        .await
        .deactivate_user(authed(
            DeactivateUserRequest {
                user_id: x.with_id.clone(),
            },
            &x.admin,
        ))
        .await
        .expect("deactivate");
    let mut resumed = open(first.event_id.clone()).await;
    let e2 = resumed
        .message()
        .await
        .expect("msg")
        .expect("event")
        .event
        .expect("event");
    let e3 = resumed
        .message()
        .await
        .expect("msg")
        .expect("event")
        .event
        .expect("event");
    assert_eq!(
        (e2.user_id.as_str(), e2.reason.as_str()),
        (dev.as_str(), "membership_removed")
    );
    assert_eq!(
        (
            e3.user_id.as_str(),
            e3.reason.as_str(),
            e3.organization_id.as_str()
        ),
        (x.with_id.as_str(), "deactivated", "")
    );
    assert!(e2.event_id.parse::<i64>().expect("id") > first.event_id.parse::<i64>().expect("id"));
    // Only PlatformAdmins (and, later, service accounts) may watch.
    let mut c = s.auth().await;
    let dev_token = s
        .login("dev@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    assert_status(
        c.watch_revocations(authed(WatchRevocationsRequest::default(), &dev_token))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    assert_invalid(
        c.watch_revocations(authed(
            WatchRevocationsRequest {
                after_event_id: "x".into(),
            },
            &x.admin,
        ))
        .await
        .map(|_| ()),
        "after_event_id",
    );
}

/// After `keys rotate`, a downstream service with remote keys sees a token
/// with a new `kid`, refetches the JWKS once, and admits it.
async fn device_service_follows_key_rotation(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--key-refresh".into(), "1".into()],
            ..Default::default()
        },
    )
    .await;
    let x = setup(&s).await;
    let keys = RemoteKeys::connect(
        KeySource::Grpc(s.channel().await),
        "kiops-identity",
        "kiops",
    )
    .await
    .expect("keys")
    .min_refresh(Duration::from_millis(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(kiops_example_device::serve_remote(listener, keys));
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("before rotation");
    let out = std::process::Command::new(binary())
        .args(["keys", "rotate", "--database-url", &s.db.url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("rotate");
    assert!(out.status.success());
    let old_kid = x.with.split('.').next().map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        let t = s
            .login("ops@acme.io", PASSWORD)
            .await
            .expect("login")
            .access_token;
        if t.split('.').next().map(str::to_string) != old_kid {
            break t;
        }
        assert!(Instant::now() < deadline, "no new kid");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    devices(addr, Some(&fresh), Some(&x.org))
        .await
        .expect("new kid admitted after one refetch");
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("old kid still admitted");
}
