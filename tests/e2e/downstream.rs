//! Downstream verification (R15, R16, R25, kiops-token): the example
//! DeviceService verifies tokens offline with kiops-token and requires
//! `device`; it runs on a service account (revocations.watch +
//! permissions.check, key file or client secret, never a person's login);
//! revocations reach it through WatchRevocations from another replica within
//! a second, also after its own token was renewed; CheckPermission agrees
//! across replicas at once and confirms reboots; kiops-client renews a
//! service account's token itself.

use crate::both_backends;
use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kiops_client::ServiceCredentials;
use kiops_example_device::pb::device_service_client::DeviceServiceClient;
use kiops_example_device::pb::{ListDevicesRequest, RebootDeviceRequest};
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use kiops_token::guard::RequirePermissionLayer;
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
    device_service_on_a_key_file_follows_revocations_and_confirms_reboots,
    reboots_are_confirmed_online_until_the_devices_credential_is_removed,
    device_service_needs_its_scopes_and_valid_credentials,
    the_watcher_renews_its_token_and_keeps_following,
    watch_revocations_still_takes_a_token_closure,
    kiops_client_renews_a_service_accounts_token_itself,
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
                    amr: Vec::new(),
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
    // The device service takes keys from replica B and watches B's stream
    // as its own service account (made on A, no person's login involved).
    let (_, secret) = device_account(&a, &x.admin, "device", DEVICE_SCOPES).await;
    let set: JwkSet = KeySource::Http(jwks_url(&b)).fetch().await.expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let identity = kiops_example_device::Identity::connect(b.channel().await, secret)
        .await
        .expect("the device signs in as its service account");
    let _watcher = identity.watch_revocations(authority.clone());
    let addr = start_device(authority).await;
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("admitted before the revoke");
    tokio::time::sleep(Duration::from_millis(300)).await; // the watcher is connected

    // CheckPermission on B, as the service account, sees a change made on A
    // at once (no cache).
    let check = || identity.check_permission(&x.with_id, &x.org, kiops_token::Permission::Device);
    assert!(check().await.expect("check"));
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
        !check().await.expect("check"),
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

/// What the example device service's account holds.
const DEVICE_SCOPES: &[&str] = &["revocations.watch", "permissions.check"];

async fn accounts(s: &TestServer) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(s.channel().await)
}

/// A platform service account named `name` with `scopes`: its id.
async fn create_account(s: &TestServer, admin: &str, name: &str, scopes: &[&str]) -> String {
    accounts(s)
        .await
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: name.into(),
                description: "the example device service".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                certificate_identity: String::new(),
            },
            admin,
        ))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .expect("account")
        .service_account_id
}

/// A client secret of `account`: (credential id, secret).
async fn add_secret(s: &TestServer, admin: &str, account: &str) -> (String, String) {
    let r = accounts(s)
        .await
        .add_service_account_secret(authed(
            AddServiceAccountSecretRequest {
                service_account_id: account.into(),
            },
            admin,
        ))
        .await
        .expect("add secret")
        .into_inner();
    (r.credential.expect("credential").credential_id, r.secret)
}

/// A platform account `name` with `scopes` and a client secret: (account
/// id, credentials).
async fn device_account(
    s: &TestServer,
    admin: &str,
    name: &str,
    scopes: &[&str],
) -> (String, ServiceCredentials) {
    let account = create_account(s, admin, name, scopes).await;
    let (_, secret) = add_secret(s, admin, &account).await;
    let credentials = ServiceCredentials::secret(&account, &secret);
    (account, credentials)
}

async fn remove_credential(s: &TestServer, admin: &str, account: &str, credential: &str) {
    accounts(s)
        .await
        .remove_service_account_credential(authed(
            RemoveServiceAccountCredentialRequest {
                service_account_id: account.into(),
                credential_id: credential.into(),
            },
            admin,
        ))
        .await
        .expect("remove credential");
}

/// Grants or takes away `device` of `user` in `org`.
async fn set_device(s: &TestServer, admin: &str, org: &str, user: &str, on: bool) {
    s.members()
        .await
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.into(),
                user_id: user.into(),
                permissions: if on {
                    vec![Permission::Device as i32]
                } else {
                    vec![]
                },
            },
            admin,
        ))
        .await
        .expect("set permissions");
}

async fn reboot(
    addr: SocketAddr,
    token: &str,
    org: &str,
) -> Result<kiops_example_device::pb::RebootDeviceResponse, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut req = tonic::Request::new(RebootDeviceRequest {
        device: "router-1".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("hdr"),
    );
    req.metadata_mut()
        .insert("x-kiops-organization", org.parse().expect("hdr"));
    DeviceServiceClient::new(channel)
        .reboot_device(req)
        .await
        .map(|r| r.into_inner())
}

/// Polls the device until `token` is refused as UNAUTHENTICATED; how long
/// that took from `since`, at most `limit`.
async fn refused_within(
    addr: SocketAddr,
    token: &str,
    org: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        match devices(addr, Some(token), Some(org)).await {
            Err(st) => {
                assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
                return since.elapsed();
            }
            Ok(_) => {
                assert!(
                    since.elapsed() < limit,
                    "token still accepted after {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn start_device_with(
    layer: RequirePermissionLayer,
    identity: Option<kiops_example_device::Identity>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(kiops_example_device::serve_with(listener, layer, identity));
    addr
}

/// The device service as `main` runs it: a key file on disk (as a
/// Kubernetes Secret would mount it), keys from the JWKS, revocations and
/// reboots as the service account.
async fn device_service_on_a_key_file_follows_revocations_and_confirms_reboots(backend: Backend) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    let account = create_account(&s, &x.admin, "device", DEVICE_SCOPES).await;
    let added = accounts(&s)
        .await
        .add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: account.clone(),
                public_key_pem: String::new(),
            },
            &x.admin,
        ))
        .await
        .expect("generated key")
        .into_inner();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("device-key.json");
    std::fs::write(&path, &added.key_file_json).expect("write key file");
    let identity = kiops_example_device::Identity::connect(
        s.channel().await,
        ServiceCredentials::key_file(&path).expect("key file"),
    )
    .await
    .expect("the device signs in with its key file");
    let keys = RemoteKeys::connect(KeySource::Http(jwks_url(&s)), "kiops-identity", "kiops")
        .await
        .expect("keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(kiops_example_device::serve_as_service(
        listener, keys, identity,
    ));

    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("member with device");
    let done = reboot(addr, &x.with, &x.org)
        .await
        .expect("reboot confirmed");
    assert_eq!(done.device, "router-1");
    let st = reboot(addr, &x.without, &x.org)
        .await
        .expect_err("no device");
    assert_eq!(
        (st.code(), st.message()),
        (Code::PermissionDenied, "device permission required")
    );
    // A service token, even the device's own kind, holds no permission
    // category: it is no way into the device service.
    let (_, secret) = add_secret(&s, &x.admin, &account).await;
    let service_token = s
        .auth()
        .await
        .issue_service_account_token(IssueServiceAccountTokenRequest {
            credential: Some(
                issue_service_account_token_request::Credential::ClientSecret(ClientSecret {
                    service_account_id: account.clone(),
                    secret,
                }),
            ),
        })
        .await
        .expect("exchange")
        .into_inner()
        .access_token;
    let st = devices(addr, Some(&service_token), Some(&x.org))
        .await
        .expect_err("a service token");
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");

    tokio::time::sleep(Duration::from_millis(300)).await; // the watcher is connected
    set_device(&s, &x.admin, &x.org, &x.with_id, false).await;
    let t0 = Instant::now();
    let took = refused_within(addr, &x.with, &x.org, t0, Duration::from_secs(1)).await;
    println!(
        "key-file device ({backend:?}): revoked token refused after {} ms",
        took.as_millis()
    );
    assert_eq!(
        reboot(addr, &x.with, &x.org)
            .await
            .expect_err("revoked")
            .code(),
        Code::Unauthenticated
    );
}

/// Without a revocation stream the token alone still admits the caller
/// (ListDevices), but a reboot asks CheckPermission as the service account
/// and honours the change at once; once the device's credential is removed
/// no reboot is confirmed at all, even by twenty callers at once.
async fn reboots_are_confirmed_online_until_the_devices_credential_is_removed(backend: Backend) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    let account = create_account(&s, &x.admin, "device", DEVICE_SCOPES).await;
    let (credential, secret) = add_secret(&s, &x.admin, &account).await;
    let identity = kiops_example_device::Identity::connect(
        s.channel().await,
        ServiceCredentials::secret(&account, &secret),
    )
    .await
    .expect("sign in");
    let set = KeySource::Http(jwks_url(&s)).fetch().await.expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let addr = start_device_with(
        RequirePermissionLayer::new(authority, kiops_token::Permission::Device),
        Some(identity),
    )
    .await;
    let parallel = |n: usize| {
        let (with, org) = (x.with.clone(), x.org.clone());
        async move {
            let calls: Vec<_> = (0..n)
                .map(|_| {
                    let (with, org) = (with.clone(), org.clone());
                    tokio::spawn(async move { reboot(addr, &with, &org).await })
                })
                .collect();
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.expect("join"));
            }
            out
        }
    };
    for r in parallel(20).await {
        r.expect("confirmed");
    }

    set_device(&s, &x.admin, &x.org, &x.with_id, false).await;
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("the token alone still says device");
    let st = reboot(addr, &x.with, &x.org)
        .await
        .expect_err("revoked a moment ago");
    assert_eq!(
        (st.code(), st.message()),
        (Code::PermissionDenied, "device permission revoked")
    );
    set_device(&s, &x.admin, &x.org, &x.with_id, true).await;
    reboot(addr, &x.with, &x.org).await.expect("granted again");

    remove_credential(&s, &x.admin, &account, &credential).await;
    for r in parallel(20).await {
        let st = r.expect_err("no confirmation without a credential");
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    }
    let st = reboot(addr, &x.with, &x.org).await.expect_err("still none");
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
}

/// The device refuses to start on an account without both scopes, with a
/// wrong secret, or on a disabled account; no error shows the secret.
async fn device_service_needs_its_scopes_and_valid_credentials(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let connect = |c: ServiceCredentials| {
        let s = &s;
        async move {
            match kiops_example_device::Identity::connect(s.channel().await, c).await {
                Ok(_) => panic!("signed in"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let (_, only_check) = device_account(&s, &admin, "checker", &["permissions.check"]).await;
    let e = connect(only_check).await;
    assert!(e.contains("lacks the scope revocations.watch"), "{e}");

    let account = create_account(&s, &admin, "device-2", DEVICE_SCOPES).await;
    let (_, secret) = add_secret(&s, &admin, &account).await;
    let wrong = format!("{}x", &secret[..secret.len() - 1]);
    let e = connect(ServiceCredentials::secret(&account, &wrong)).await;
    assert!(e.contains(&account) && !e.contains(&wrong), "{e}");

    accounts(&s)
        .await
        .disable_service_account(authed(
            DisableServiceAccountRequest {
                service_account_id: account.clone(),
            },
            &admin,
        ))
        .await
        .expect("disable");
    let e = connect(ServiceCredentials::secret(&account, &secret)).await;
    assert!(!e.contains(&secret), "{e}");
    // Sanity: the same calls succeed on a good account, so the refusals
    // above are about the one thing wrong with each.
    let (_, good) = device_account(&s, &admin, "device", DEVICE_SCOPES).await;
    kiops_example_device::Identity::connect(s.channel().await, good)
        .await
        .expect("a good account");
}

/// With 2-second tokens the device's own token expires while it watches:
/// the server ends the stream, the watcher exchanges again by itself and
/// resumes, and a revocation made after several renewals still arrives.
async fn the_watcher_renews_its_token_and_keeps_following(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--access-token-ttl".into(), "2".into()],
            ..Default::default()
        },
    )
    .await;
    let x = setup(&s).await;
    let (_, credentials) = device_account(&s, &x.admin, "device", DEVICE_SCOPES).await;
    let identity = kiops_example_device::Identity::connect(s.channel().await, credentials)
        .await
        .expect("sign in");
    let first = identity
        .service_tokens()
        .access_token()
        .await
        .expect("token");
    let set = KeySource::Http(jwks_url(&s)).fetch().await.expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let _watcher = identity.watch_revocations(authority.clone());
    let addr = start_device(authority).await;
    // The user's token is 2-second too; offline verification allows 30 s of
    // clock skew, so it is still admitted after the wait below.
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("admitted");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let later = identity
        .service_tokens()
        .access_token()
        .await
        .expect("token");
    assert_ne!(later, first, "the device's token was renewed");
    devices(addr, Some(&x.with), Some(&x.org))
        .await
        .expect("still admitted");
    set_device(&s, &x.admin, &x.org, &x.with_id, false).await;
    let t0 = Instant::now();
    // Within a second, plus one reconnection if the stream was just being
    // renewed.
    let took = refused_within(addr, &x.with, &x.org, t0, Duration::from_secs(3)).await;
    println!(
        "renewing watcher ({backend:?}): revoked token refused after {} ms",
        took.as_millis()
    );
}

/// `watch_revocations` still takes a closure that returns a token (here a
/// PlatformAdmin's, asked again for each connection).
async fn watch_revocations_still_takes_a_token_closure(backend: Backend) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    let set = KeySource::Http(jwks_url(&s)).fetch().await.expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let channel = s.channel().await;
    let watcher = remote::watch_revocations(authority.clone(), channel.clone(), move || {
        let ch = channel.clone();
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
        .expect("admitted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_device(&s, &x.admin, &x.org, &x.with_id, false).await;
    refused_within(
        addr,
        &x.with,
        &x.org,
        Instant::now(),
        Duration::from_secs(1),
    )
    .await;
    watcher.abort();
}

/// kiops-client as a service account: CheckPermission with the account's
/// token; a token the server no longer accepts (its clock moved past the
/// expiry) fails that one call and is exchanged again, once; a missing
/// scope is SCOPE_REQUIRED; a removed credential fails every call, without
/// a retry loop.
async fn kiops_client_renews_a_service_accounts_token_itself(backend: Backend) {
    let s = TestServer::start(backend).await;
    let x = setup(&s).await;
    let account = create_account(&s, &x.admin, "portal", &["permissions.check"]).await;
    let (credential, secret) = add_secret(&s, &x.admin, &account).await;
    let client = kiops_client::Client::service_account(
        &s.grpc_url(),
        ServiceCredentials::secret(&account, &secret),
    )
    .await
    .expect("sign in");
    let check = |user: &str| CheckPermissionRequest {
        user_id: user.into(),
        organization_id: x.org.clone(),
        permission: Permission::Device as i32,
    };
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (c, r) = (client.clone(), check(&x.with_id));
            tokio::spawn(async move { c.memberships().check_permission(r).await })
        })
        .collect();
    for c in calls {
        assert!(c.await.expect("join").expect("check").into_inner().allowed);
    }
    let without = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &x.without))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("user")
        .user_id;
    assert!(
        !client
            .memberships()
            .check_permission(check(&without))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    let first = client.access_token().await.expect("token");

    s.advance_clock(Duration::from_secs(600));
    let st = client
        .memberships()
        .check_permission(check(&x.with_id))
        .await
        .expect_err("expired on the server");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert!(
        client
            .memberships()
            .check_permission(check(&x.with_id))
            .await
            .expect("renewed")
            .into_inner()
            .allowed
    );
    assert_ne!(client.access_token().await.expect("token"), first);

    assert_status(
        client
            .memberships()
            .list_members(ListMembersRequest {
                organization_id: x.org.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "SCOPE_REQUIRED",
    );

    // The PlatformAdmin's token is as expired as the service's was.
    let admin = s.admin_token().await;
    remove_credential(&s, &admin, &account, &credential).await;
    let st = client
        .memberships()
        .check_permission(check(&x.with_id))
        .await
        .expect_err("revoked");
    assert_eq!(reason(&st), "SESSION_REVOKED", "{st:?}");
    let st = client
        .memberships()
        .check_permission(check(&x.with_id))
        .await
        .expect_err("cannot exchange again");
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unauthenticated, "INVALID_CREDENTIALS")
    );
}
