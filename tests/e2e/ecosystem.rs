//! How platform teams run and call the service: TLS and mutual TLS, the
//! Prometheus series, OpenTelemetry export, load shedding, and the Rust
//! client SDK, each against the real binary.

use crate::support::*;
use kiops_proto::v1::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

crate::both_backends!(
    grpc_over_tls,
    mutual_tls_requires_a_trusted_client_certificate,
    metrics_show_rpc_login_outbox_and_pool_series,
    traces_are_exported_over_otlp,
    bursts_beyond_the_limit_are_shed,
    rust_client_refreshes_before_expiry,
    json_logs_carry_the_request_id,
);

/// A throwaway CA with a server certificate for localhost/127.0.0.1 and
/// client certificates, written as PEM files for the server's flags.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    /// Signed by another CA: must be refused.
    rogue_cert_pem: String,
    rogue_key_pem: String,
}

pub(crate) fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
        .expect("CA")
}

fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    cn: &str,
) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("dir");
        let root = ca("kiops test CA");
        let (server_cert, server_key) = leaf(&root, &["localhost", "127.0.0.1"], "kiops-identity");
        let (client_cert_pem, client_key_pem) = leaf(&root, &["device-service"], "device-service");
        let rogue = ca("rogue CA");
        let (rogue_cert_pem, rogue_key_pem) = leaf(&rogue, &["device-service"], "device-service");
        let ca_pem = root.pem();
        for (name, text) in [
            ("server.pem", &server_cert),
            ("server.key", &server_key),
            ("ca.pem", &ca_pem),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        }
        Pki {
            dir,
            ca_pem,
            client_cert_pem,
            client_key_pem,
            rogue_cert_pem,
            rogue_key_pem,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn server_args(&self, client_ca: bool) -> Vec<String> {
        let mut a = vec![
            "--tls-cert-file".to_string(),
            self.path("server.pem"),
            "--tls-key-file".to_string(),
            self.path("server.key"),
        ];
        if client_ca {
            a.extend(["--tls-client-ca-file".to_string(), self.path("ca.pem")]);
        }
        a
    }

    fn tls(&self, identity: Option<(&str, &str)>) -> ClientTlsConfig {
        let mut t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        t
    }
}

async fn tls_channel(server: &TestServer, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{}", server.grpc))
        .expect("url")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A full call: health, then a login, over the channel.
async fn works(ch: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest::default())
        .await?;
    auth_client(ch)
        .login(LoginRequest {
            email: ADMIN_EMAIL.into(),
            password: ADMIN_PASSWORD.into(),
            organization_id: None,
        })
        .await?;
    Ok(())
}

fn auth_client(ch: Channel) -> auth_service_client::AuthServiceClient<Channel> {
    auth_service_client::AuthServiceClient::new(ch)
}

async fn grpc_over_tls(backend: Backend) {
    let pki = Pki::new();
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: pki.server_args(false),
            ..Default::default()
        },
    )
    .await;
    assert!(server.logs().contains("(tls)"), "{}", server.logs());
    let ch = tls_channel(&server, pki.tls(None))
        .await
        .expect("TLS connect");
    works(ch).await.expect("calls over TLS");

    // A plaintext client gets no service from a TLS port.
    let plain = Channel::from_shared(server.grpc_url())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(works(ch).await.is_err(), "plaintext call on a TLS port");
    }

    // A client that does not trust the server's CA refuses it.
    let other = ca("someone else");
    let untrusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(other.pem()))
        .domain_name("localhost");
    match tls_channel(&server, untrusting).await {
        Err(_) => {}
        Ok(ch) => assert!(works(ch).await.is_err(), "untrusted server accepted"),
    }
}

async fn mutual_tls_requires_a_trusted_client_certificate(backend: Backend) {
    let pki = Pki::new();
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: pki.server_args(true),
            ..Default::default()
        },
    )
    .await;
    assert!(
        server.logs().contains("(tls+client-certificates)"),
        "{}",
        server.logs()
    );
    let trusted = tls_channel(
        &server,
        pki.tls(Some((&pki.client_cert_pem, &pki.client_key_pem))),
    )
    .await
    .expect("mTLS connect");
    works(trusted)
        .await
        .expect("calls with a trusted client certificate");

    for (what, identity) in [
        ("no client certificate", None),
        (
            "a certificate of another CA",
            Some((pki.rogue_cert_pem.as_str(), pki.rogue_key_pem.as_str())),
        ),
    ] {
        // Depending on timing the handshake failure surfaces at connect
        // or on the first call; either way no call may succeed.
        if let Ok(ch) = tls_channel(&server, pki.tls(identity)).await {
            let r = works(ch).await;
            assert!(r.is_err(), "{what}: call succeeded");
        }
    }

    // Optional client authentication: no certificate is fine, a bad one is not.
    let optional = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: [
                pki.server_args(true),
                vec!["--tls-client-auth-optional".to_string()],
            ]
            .concat(),
            ..Default::default()
        },
    )
    .await;
    let anonymous = tls_channel(&optional, pki.tls(None))
        .await
        .expect("connect");
    works(anonymous)
        .await
        .expect("no certificate, optional mode");
    if let Ok(ch) = tls_channel(
        &optional,
        pki.tls(Some((&pki.rogue_cert_pem, &pki.rogue_key_pem))),
    )
    .await
    {
        assert!(works(ch).await.is_err(), "rogue certificate accepted");
    }
}

/// The value of one series in a Prometheus text page.
fn series(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_show_rpc_login_outbox_and_pool_series(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--lockout-threshold".into(), "2".into()],
            ..Default::default()
        },
    )
    .await;
    let admin = server.admin_token().await;
    server.create_user("lee@example.com", "Lee", PASSWORD).await;
    for _ in 0..2 {
        let e = server.login("lee@example.com", "wrong password here").await;
        assert_status(e, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let org = server.create_org(&admin, "Acme", "acme").await;
    // An invitation puts an email in the outbox.
    server
        .invitations()
        .await
        .create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org,
                email: "park@example.com".into(),
                role: Role::Member as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("invite");
    // A path no service has: counted, but never as a label of its own.
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    raw.ready().await.expect("ready");
    let unknown: Result<tonic::Response<()>, _> = raw
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/evil.Service/Label_0123"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await;
    assert_eq!(
        unknown.expect_err("unknown method").code(),
        Code::Unimplemented
    );

    let (status, page) = server.http("GET", "/metrics");
    assert_eq!(status, 200);
    let login = r#"method="/kiops.identity.v1.AuthService/Login""#;
    for (series_name, at_least) in [
        (
            format!(r#"kiops_identity_grpc_requests_total{{code="OK",{login}}}"#),
            1.0,
        ),
        (
            format!(r#"kiops_identity_grpc_requests_total{{code="UNAUTHENTICATED",{login}}}"#),
            2.0,
        ),
        (
            format!(r#"kiops_identity_grpc_request_duration_seconds_count{{{login}}}"#),
            3.0,
        ),
        (
            format!(r#"kiops_identity_grpc_request_duration_seconds_bucket{{{login},le="+Inf"}}"#),
            3.0,
        ),
        (
            r#"kiops_identity_grpc_requests_total{code="UNIMPLEMENTED",method="other"}"#.into(),
            1.0,
        ),
        (
            r#"kiops_identity_logins_total{result="success"}"#.into(),
            1.0,
        ),
        (
            r#"kiops_identity_logins_total{result="failure"}"#.into(),
            1.0,
        ),
        (
            r#"kiops_identity_logins_total{result="locked"}"#.into(),
            1.0,
        ),
        (
            r#"kiops_identity_db_pool_connections{pool="main",state="max"}"#.into(),
            16.0,
        ),
        (
            r#"kiops_identity_db_pool_connections{pool="main",state="idle"}"#.into(),
            0.0,
        ),
        ("kiops_identity_grpc_requests_shed_total".into(), 0.0),
    ] {
        let v = series(&page, &series_name)
            .unwrap_or_else(|| panic!("{series_name} missing from\n{page}"));
        assert!(v >= at_least, "{series_name} = {v}, want >= {at_least}");
    }
    assert!(!page.contains("evil.Service"), "client path became a label");
    // The outbox gauge is set by the sender; it exists from the start.
    assert!(
        series(&page, "kiops_identity_outbox_backlog").is_some(),
        "{page}"
    );
    if backend == Backend::Sqlite {
        assert_eq!(
            series(
                &page,
                r#"kiops_identity_db_pool_connections{pool="writer",state="max"}"#
            ),
            Some(1.0),
            "{page}"
        );
    }
}

async fn traces_are_exported_over_otlp(backend: Backend) {
    // A stand-in OpenTelemetry collector: accepts OTLP/HTTP export requests
    // and keeps their (protobuf) bodies.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let store = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                store.lock().expect("bodies").push(body.to_vec());
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--otlp-endpoint".into(),
                format!("http://{collector}"),
                "--otlp-service-name".into(),
                "kiops-identity-e2e".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let token = server.admin_token().await;
    // The caller's trace continues in the server's span.
    let mut req = authed(GetMeRequest {}, &token);
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("header"),
    );
    server.users().await.get_me(req).await.expect("get me");
    // SIGTERM flushes the span batch before the process exits.
    assert!(server.terminate().success(), "{}", server.logs());

    let all: Vec<u8> = bodies.lock().expect("bodies").concat();
    let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    assert!(!all.is_empty(), "no OTLP export arrived\n{}", server.logs());
    assert!(
        has(b"/kiops.identity.v1.UserService/GetMe"),
        "rpc span missing"
    );
    assert!(
        has(b"/kiops.identity.v1.AuthService/Login"),
        "login span missing"
    );
    assert!(has(b"kiops-identity-e2e"), "service.name missing");
    assert!(has(b"request_id"), "request id attribute missing");
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&"4bf92f3577b34da6a3ce929d0e0e4736"[i * 2..i * 2 + 2], 16))
        .collect::<Result<_, _>>()
        .expect("hex");
    assert!(has(&trace_id), "the caller's trace id was not continued");
    assert!(
        !String::from_utf8_lossy(&all).contains(ADMIN_PASSWORD),
        "a password was exported"
    );
}

async fn bursts_beyond_the_limit_are_shed(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--max-concurrent-requests".into(),
                "2".into(),
                "--hash-concurrency".into(),
                "1".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let ch = server.channel().await;
    // Logins hash a password (tens of ms each, one at a time): 24 at once
    // are far beyond 2 in flight.
    let calls = (0..24).map(|_| {
        let mut c = auth_client(ch.clone());
        async move {
            c.login(LoginRequest {
                email: ADMIN_EMAIL.into(),
                password: ADMIN_PASSWORD.into(),
                organization_id: None,
            })
            .await
        }
    });
    let health = async {
        // Health checks are never shed, even mid-burst.
        HealthClient::new(ch.clone())
            .check(HealthCheckRequest::default())
            .await
    };
    let (results, health) = tokio::join!(futures::future::join_all(calls), health);
    health.expect("health during a burst");
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(ok >= 1, "nothing got through");
    assert!(!shed.is_empty(), "nothing was shed ({ok} ok)");
    for s in &shed {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(reason(s), "OVERLOADED");
    }
    let (_, page) = server.http("GET", "/metrics");
    assert_eq!(
        series(&page, "kiops_identity_grpc_requests_shed_total"),
        Some(shed.len() as f64),
        "{page}"
    );
    // Once the burst is over the server answers normally.
    works(ch).await.expect("after the burst");
}

async fn rust_client_refreshes_before_expiry(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--access-token-ttl".into(), "2".into()],
            ..Default::default()
        },
    )
    .await;
    let refused =
        kiops_client::Client::login(&server.grpc_url(), ADMIN_EMAIL, "wrong password!!").await;
    match refused {
        Err(kiops_client::Error::Login(s)) => assert_eq!(s.code(), Code::Unauthenticated),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("wrong password accepted"),
    }

    let client = kiops_client::Client::login(&server.grpc_url(), ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    let first = client.access_token().await.expect("token");
    let me = client
        .users()
        .get_me(GetMeRequest {})
        .await
        .expect("get me")
        .into_inner();
    assert_eq!(me.user.expect("user").email, ADMIN_EMAIL);
    let org = client
        .organizations()
        .create_organization(CreateOrganizationRequest {
            name: "Acme".into(),
            code: "acme".into(),
            description: String::new(),
        })
        .await
        .expect("typed client carries the token")
        .into_inner()
        .organization
        .expect("org");

    // Past 80% of the 2 s lifetime the next call refreshes first.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let members = client
        .memberships()
        .list_members(ListMembersRequest {
            organization_id: org.organization_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list after refresh")
        .into_inner();
    assert_eq!(members.total_size, 0);
    let second = client.access_token().await.expect("token");
    assert_ne!(first, second, "the token was not refreshed");
    let jtis: Vec<String> = [&first, &second]
        .iter()
        .map(|t| token_claims(t)["jti"].to_string())
        .collect();
    assert_ne!(jtis[0], jtis[1]);

    // Many calls at once around a renewal share one refresh and all succeed.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let calls = (0..16).map(|_| {
        let mut users = client.users();
        async move { users.get_me(GetMeRequest {}).await }
    });
    for r in futures::future::join_all(calls).await {
        r.expect("concurrent call during renewal");
    }

    // When the session ends on the server, the client signs in again.
    client.logout().await.expect("logout");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    client
        .users()
        .get_me(GetMeRequest {})
        .await
        .expect("signed in again after the session ended");

    // Logged out by the client itself: the very next call signs in again
    // (the old access token would be refused with SESSION_REVOKED).
    let before = client.access_token().await.expect("token");
    client.logout().await.expect("logout");
    client
        .users()
        .get_me(GetMeRequest {})
        .await
        .expect("signed in again at once after its own logout");
    assert_ne!(client.access_token().await.expect("token"), before);

    // Ended elsewhere (another session changed the password, and back):
    // one call hears SESSION_REVOKED, the next signs in again.
    let other = server
        .login(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await
        .expect("login");
    for (from, to) in [
        (ADMIN_PASSWORD, "a temporary passphrase, 1"),
        ("a temporary passphrase, 1", ADMIN_PASSWORD),
    ] {
        server
            .users()
            .await
            .change_password(authed(
                ChangePasswordRequest {
                    current_password: from.into(),
                    new_password: to.into(),
                },
                &other.access_token,
            ))
            .await
            .expect("change password elsewhere");
    }
    let refused = client.users().get_me(GetMeRequest {}).await;
    assert_status(refused, Code::Unauthenticated, "SESSION_REVOKED");
    client
        .users()
        .get_me(GetMeRequest {})
        .await
        .expect("signed in again after hearing the session ended");
}

/// The payload of a JWT, unverified (the server verifies; this only reads).
fn token_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("jwt");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("json")
}

async fn json_logs_carry_the_request_id(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--log-format".into(), "json".into()],
            extra_env: vec![("RUST_LOG".into(), "info,kiops_identity=debug".into())],
            ..Default::default()
        },
    )
    .await;
    let token = server.admin_token().await;
    let mut req = authed(GetMeRequest {}, &token);
    req.metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().expect("id"));
    let resp = server.users().await.get_me(req).await.expect("get me");
    assert_eq!(
        resp.metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap_or("")),
        Some("trace-me-42"),
        "the request id is echoed"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = server
            .logs()
            .lines()
            .find(|l| l.contains("trace-me-42") && l.contains("rpc finished"))
            .map(str::to_string);
        if let Some(l) = found {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["fields"]["message"], "rpc finished");
    assert_eq!(v["fields"]["code"], "OK");
    assert_eq!(v["span"]["request_id"], "trace-me-42");
    assert_eq!(v["span"]["method"], "/kiops.identity.v1.UserService/GetMe");
    // The exporter's fields only where there is an exporter.
    assert!(v["span"].get("otel.name").is_none(), "{line}");
    // Every line is JSON.
    for l in server.logs().lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    assert!(!server.logs().contains(ADMIN_PASSWORD));
}
