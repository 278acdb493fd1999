//! Issue 22, the token exchange (R25): assertions and client secrets become
//! short-lived service tokens; replayed, expired, foreign, wrongly signed
//! and revoked credentials are refused; the secret lockout is exact under
//! parallel attempts; a removed credential's token stops at once and is on
//! the revocation stream; a certificate-bound account needs its certificate.

use crate::both_backends;
use crate::support::service::*;
use crate::support::*;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use kiops_token::service_account::{generate_key, sign_assertion, AssertionClaims, KeyFile};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

both_backends!(
    a_secret_becomes_a_service_token,
    an_assertion_is_exchanged_once,
    expired_long_lived_foreign_and_wrongly_signed_assertions_are_refused,
    an_uploaded_public_key_verifies_the_holders_assertions,
    a_removed_credentials_token_stops_at_once_and_is_on_the_stream,
    a_disabled_account_neither_exchanges_nor_calls,
    secret_lockout_is_exact_under_parallel_attempts,
    unknown_accounts_and_wrong_secrets_answer_alike,
    a_bound_account_needs_its_client_certificate,
    exchanges_racing_a_disable_are_refused_here_and_offline,
);

async fn accounts(s: &TestServer) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(s.channel().await)
}

/// A platform account with `scopes`; returns its id.
async fn create(s: &TestServer, admin: &str, name: &str, scopes: &[&str]) -> String {
    accounts(s)
        .await
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: name.into(),
                description: "test".into(),
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

async fn exchange(
    s: &TestServer,
    r: IssueServiceAccountTokenRequest,
) -> Result<IssueServiceAccountTokenResponse, Status> {
    s.auth()
        .await
        .issue_service_account_token(r)
        .await
        .map(|r| r.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A people-only RPC: a live service token gets SCOPE_REQUIRED there,
/// which tells "authenticated" apart from "refused as a caller".
async fn probe(s: &TestServer, token: &str) -> Status {
    s.users()
        .await
        .list_users(authed(ListUsersRequest::default(), token))
        .await
        .expect_err("services cannot list users without users.read")
}

async fn a_secret_becomes_a_service_token(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(
        &s,
        &admin,
        "device",
        &["permissions.check", "revocations.watch"],
    )
    .await;
    let (cred, secret) = add_secret(&s, &admin, &sa).await;
    assert!(
        secret.starts_with("kiops_sa_") && secret.len() >= 9 + 43,
        "{secret}"
    );

    let t = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    assert_eq!(t.token_type, "Bearer");
    assert!(t.expires_in > 0 && t.expires_in <= 3600, "{}", t.expires_in);
    assert_eq!(t.scopes, vec!["permissions.check", "revocations.watch"]);
    let c = token_claims(&t.access_token);
    assert_eq!(c["kind"], "service");
    assert_eq!(c["sub"], sa.as_str());
    assert_eq!(c["sid"], cred.as_str());
    assert_eq!(c["scope"], "permissions.check revocations.watch");
    assert_eq!(c["pa"], false);
    assert!(c
        .get("orgs")
        .is_none_or(|o| o.as_object().is_some_and(|m| m.is_empty())));
    assert!(
        c.get("owner_org").is_none(),
        "a platform account has no owner org"
    );
    assert!(c.get("refresh_token").is_none());

    // Authenticated, and refused as a service on a people-only RPC.
    let st = probe(&s, &t.access_token).await;
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert_eq!(reason(&st), "SCOPE_REQUIRED");

    // Exchanged again: a new token, the credential's last use recorded,
    // both exchanges audited as the service.
    let again = exchange(&s, by_secret(&sa, &secret)).await.expect("again");
    assert_ne!(again.access_token, t.access_token);
    let creds = accounts(&s)
        .await
        .list_service_account_credentials(authed(
            ListServiceAccountCredentialsRequest {
                service_account_id: sa.clone(),
            },
            &admin,
        ))
        .await
        .expect("list credentials")
        .into_inner()
        .credentials;
    assert!(creds
        .iter()
        .any(|c| c.credential_id == cred && c.last_use_time.is_some()));
    let events = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                action: "service_account.token_issued".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.actor_type == "service" && e.actor_id == sa));
    let logs = s.logs();
    assert!(!logs.contains(&secret), "the secret is in a log line");
}

async fn an_assertion_is_exchanged_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "vpn", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    assert_eq!(key.service_account_id, sa);

    let a = key.assertion(now(), 120).expect("assertion");
    let t = exchange(&s, by_assertion(&a)).await.expect("exchange");
    assert_eq!(
        token_claims(&t.access_token)["sid"],
        key.credential_id.as_str()
    );
    let replay = exchange(&s, by_assertion(&a)).await.expect_err("replay");
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert_eq!(reason(&replay), "ASSERTION_REPLAYED");

    // One fresh assertion sent 20 times at once: exactly one token.
    let fresh = key.assertion(now(), 120).expect("assertion");
    let tries = (0..20).map(|_| exchange(&s, by_assertion(&fresh)));
    let results = futures::future::join_all(tries).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(r), "ASSERTION_REPLAYED", "{r:?}");
    }
}

async fn expired_long_lived_foreign_and_wrongly_signed_assertions_are_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "infra", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    let t = now();
    let claims = |exp: u64, aud: &str| AssertionClaims {
        iss: sa.clone(),
        sub: sa.clone(),
        aud: aud.into(),
        exp,
        iat: None,
        jti: uuid::Uuid::now_v7().to_string(),
    };
    let signed = |c: &AssertionClaims| sign_assertion(&key.private_key_pem, &key.credential_id, c);
    let (other_key, _) = generate_key().expect("key");
    let cases = [
        (
            "expired",
            signed(&claims(t - 5, &key.issuer)),
            "INVALID_ASSERTION",
        ),
        (
            "an hour long",
            signed(&claims(t + 3600, &key.issuer)),
            "INVALID_ASSERTION",
        ),
        (
            "another audience",
            signed(&claims(t + 60, "https://other.example")),
            "INVALID_ASSERTION",
        ),
        (
            "another key under this kid",
            sign_assertion(&other_key, &key.credential_id, &claims(t + 60, &key.issuer)),
            "INVALID_CREDENTIALS",
        ),
        (
            "an unknown kid",
            sign_assertion(
                &key.private_key_pem,
                "0192f0c1-0000-7000-8000-000000000000",
                &claims(t + 60, &key.issuer),
            ),
            "INVALID_CREDENTIALS",
        ),
        (
            "garbage",
            Ok("e30.e30.AAAA".to_string()),
            "INVALID_ASSERTION",
        ),
    ];
    for (what, assertion, want) in cases {
        let e = exchange(&s, by_assertion(&assertion.expect("sign")))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert_eq!(reason(&e), want, "{what}: {e:?}");
    }
    // The right one, hidden among the wrong ones, still works.
    let ok = signed(&claims(t + 60, &key.issuer)).expect("sign");
    exchange(&s, by_assertion(&ok))
        .await
        .expect("the valid assertion");

    // A key of another account cannot sign for this one.
    let other = create(&s, &admin, "backup", &["permissions.check"]).await;
    let other_file = add_generated_key(&s, &admin, &other).await;
    let mut c = claims(t + 60, &key.issuer);
    c.jti = "cross".into();
    let cross =
        sign_assertion(&other_file.private_key_pem, &other_file.credential_id, &c).expect("sign");
    let e = exchange(&s, by_assertion(&cross))
        .await
        .expect_err("cross-account");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");
}

async fn an_uploaded_public_key_verifies_the_holders_assertions(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "database", &["permissions.check"]).await;
    let (private, public) = generate_key().expect("key");
    let pem = kiops_token::service_account::public_key_to_pem(&public).expect("pem");
    let r = accounts(&s)
        .await
        .add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: sa.clone(),
                public_key_pem: pem,
            },
            &admin,
        ))
        .await
        .expect("upload key")
        .into_inner();
    assert!(r.private_key_pem.is_empty() && r.key_file_json.is_empty());
    let cred = r.credential.expect("credential").credential_id;
    let issuer = token_claims(&admin)["iss"]
        .as_str()
        .expect("iss")
        .to_string();
    let file = KeyFile::new(&sa, &cred, &issuer, &private);
    exchange(&s, by_assertion(&file.assertion(now(), 60).expect("sign")))
        .await
        .expect("exchange with the uploaded key");
}

async fn a_removed_credentials_token_stops_at_once_and_is_on_the_stream(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let (cred, secret) = add_secret(&s, &admin, &sa).await;
    let (_other_cred, other_secret) = add_secret(&s, &admin, &sa).await;
    let token = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange")
        .access_token;
    let other = exchange(&s, by_secret(&sa, &other_secret))
        .await
        .expect("exchange")
        .access_token;
    assert_eq!(reason(&probe(&s, &token).await), "SCOPE_REQUIRED");

    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    accounts(&s)
        .await
        .remove_service_account_credential(authed(
            RemoveServiceAccountCredentialRequest {
                service_account_id: sa.clone(),
                credential_id: cred.clone(),
            },
            &admin,
        ))
        .await
        .expect("remove credential");

    let st = probe(&s, &token).await;
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert_eq!(reason(&st), "SESSION_REVOKED");
    // The other credential's token is untouched.
    assert_eq!(reason(&probe(&s, &other).await), "SCOPE_REQUIRED");
    let e = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect_err("removed secret");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");

    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("stream")
        .expect("event")
        .event
        .expect("event");
    assert_eq!(event.user_id, sa);
    assert_eq!(event.session_id, cred);
    assert_eq!(event.reason, "credential_removed");
}

async fn a_disabled_account_neither_exchanges_nor_calls(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let token = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange")
        .access_token;
    accounts(&s)
        .await
        .disable_service_account(authed(
            DisableServiceAccountRequest {
                service_account_id: sa.clone(),
            },
            &admin,
        ))
        .await
        .expect("disable");
    let st = probe(&s, &token).await;
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert_eq!(reason(&st), "ACCOUNT_DISABLED");
    let e = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect_err("disabled");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");

    accounts(&s)
        .await
        .enable_service_account(authed(
            EnableServiceAccountRequest {
                service_account_id: sa.clone(),
            },
            &admin,
        ))
        .await
        .expect("enable");
    let fresh = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("enabled again");
    assert_eq!(
        reason(&probe(&s, &fresh.access_token).await),
        "SCOPE_REQUIRED"
    );
}

async fn secret_lockout_is_exact_under_parallel_attempts(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let wrong = format!("kiops_sa_{}", "A".repeat(43));
    let tries = (0..20).map(|_| exchange(&s, by_secret(&sa, &wrong)));
    for r in futures::future::join_all(tries).await {
        let e = r.expect_err("wrong secret");
        assert_eq!(reason(&e), "INVALID_CREDENTIALS", "{e:?}");
    }
    // Locked: the right secret is refused, with the same answer.
    let e = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect_err("locked");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");
    // Exactly the threshold (5) of wrong secrets were compared.
    let refused = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                action: "service_account.token_refused".into(),
                page_size: 100,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    // (The attempts refused because the account was locked are audited too,
    // with reason "locked", without comparing anything.)
    let compared = refused
        .iter()
        .filter(|e| e.details_json.contains("wrong secret"))
        .count();
    assert_eq!(compared, 5, "{refused:?}");
    // After the lockout window the right secret works again.
    s.advance_clock(Duration::from_secs(901));
    exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("unlocked");
}

async fn unknown_accounts_and_wrong_secrets_answer_alike(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    add_secret(&s, &admin, &sa).await;
    let wrong = format!("kiops_sa_{}", "B".repeat(43));
    let a = exchange(&s, by_secret(&sa, &wrong))
        .await
        .expect_err("wrong secret");
    let unknown = "0192f0c1-0000-7000-8000-000000000001";
    let b = exchange(&s, by_secret(unknown, &wrong))
        .await
        .expect_err("unknown");
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));
    assert_eq!(reason(&a), reason(&b));
    let bad = exchange(&s, IssueServiceAccountTokenRequest { credential: None })
        .await
        .expect_err("no credential");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_invalid(
        exchange(&s, by_secret("not-an-id", &wrong)).await,
        "client_secret.service_account_id",
    );
}

/// A client certificate for `uri` signed by `ca`: (cert PEM, key PEM).
fn client_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    uri: &str,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("uri"))];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem())
}

async fn a_bound_account_needs_its_client_certificate(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::ecosystem::ca("kiops test CA");
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let path = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(path("server.pem"), server_cert.pem()).expect("write");
    std::fs::write(path("server.key"), server_key.serialize_pem()).expect("write");
    std::fs::write(path("ca.pem"), ca.pem()).expect("write");
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--tls-cert-file".into(),
                path("server.pem"),
                "--tls-key-file".into(),
                path("server.key"),
                "--tls-client-ca-file".into(),
                path("ca.pem"),
                "--tls-client-auth-optional".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let connect = |identity: Option<(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost");
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(c, k));
        }
        let url = format!("https://{}", s.grpc);
        async move {
            let ch = Endpoint::from_shared(url)
                .expect("url")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
            AuthServiceClient::new(ch)
        }
    };
    let mut plain = connect(None).await;
    let admin = plain
        .login(LoginRequest {
            email: ADMIN_EMAIL.into(),
            password: ADMIN_PASSWORD.into(),
            organization_id: None,
        })
        .await
        .expect("admin login")
        .into_inner()
        .access_token;
    let mut sa_client = ServiceAccountServiceClient::new(
        Endpoint::from_shared(format!("https://{}", s.grpc))
            .expect("url")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca.pem()))
                    .domain_name("localhost"),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect"),
    );
    let sa = sa_client
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: String::new(),
                name: "device".into(),
                description: String::new(),
                scopes: vec!["permissions.check".into()],
                certificate_identity: "spiffe://kiops/device".into(),
            },
            &admin,
        ))
        .await
        .expect("create bound account")
        .into_inner()
        .service_account
        .expect("account")
        .service_account_id;
    let secret = sa_client
        .add_service_account_secret(authed(
            AddServiceAccountSecretRequest {
                service_account_id: sa.clone(),
            },
            &admin,
        ))
        .await
        .expect("secret")
        .into_inner()
        .secret;

    let e = plain
        .issue_service_account_token(by_secret(&sa, &secret))
        .await
        .expect_err("no client certificate");
    assert_eq!(reason(&e), "CERTIFICATE_REQUIRED", "{e:?}");
    let mut other = connect(Some(client_cert(&ca, "spiffe://kiops/vpn"))).await;
    let e = other
        .issue_service_account_token(by_secret(&sa, &secret))
        .await
        .expect_err("another identity");
    assert_eq!(reason(&e), "CERTIFICATE_REQUIRED", "{e:?}");
    let mut right = connect(Some(client_cert(&ca, "spiffe://kiops/device"))).await;
    right
        .issue_service_account_token(by_secret(&sa, &secret))
        .await
        .expect("exchange over the bound certificate");
}

/// An exchange and a disable of the same account at the same instant, 10
/// rounds: whichever wins, a token that was issued is refused by this
/// server afterwards, and dated before the revocation event, so an offline
/// verifier that applied the event refuses it too (the revocation's time is
/// taken after the account lock the exchange holds while it mints).
async fn exchanges_racing_a_disable_are_refused_here_and_offline(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut feed = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    let mut issued = 0;
    for round in 0..10 {
        let sa = create(&s, &admin, &format!("race-{round}"), &["permissions.check"]).await;
        let (_, secret) = add_secret(&s, &admin, &sa).await;
        let mut c = accounts(&s).await;
        let disable = c.disable_service_account(authed(
            DisableServiceAccountRequest {
                service_account_id: sa.clone(),
            },
            &admin,
        ));
        let (token, disabled) = tokio::join!(exchange(&s, by_secret(&sa, &secret)), disable);
        disabled.expect("disable");
        let event = loop {
            let e = tokio::time::timeout(Duration::from_secs(10), feed.message())
                .await
                .expect("an event in time")
                .expect("stream")
                .expect("event")
                .event
                .expect("event");
            if e.user_id == sa {
                break e;
            }
        };
        assert_eq!(event.reason, "service_account_disabled");
        let Ok(t) = token else { continue };
        issued += 1;
        let st = probe(&s, &t.access_token).await;
        assert_eq!(reason(&st), "ACCOUNT_DISABLED", "round {round}: {st:?}");
        let revoked = event.revoke_time.expect("time");
        let revoke_ms = revoked.seconds * 1000 + i64::from(revoked.nanos) / 1_000_000;
        let iat = token_claims(&t.access_token)["iat"].as_i64().expect("iat");
        assert!(
            iat * 1000 < revoke_ms,
            "round {round}: a token issued at {iat} s outlives a revocation at {revoke_ms} ms offline"
        );
    }
    println!("{issued} of 10 racing exchanges got a token; each is refused here and offline");
}
