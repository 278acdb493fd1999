//! Red team on service accounts (issue 22, R25): attacks through the real
//! binary on the token exchange, the current-state check of service
//! callers, the revocation events offline verifiers apply, and secrets at
//! rest. A failing test here documents a bug (see the report of r22-redteam).

use crate::both_backends;
use crate::support::service::*;
use crate::support::*;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use kiops_token::service_account::{sign_assertion, AssertionClaims};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;
use tonic::{Code, Status};

both_backends!(
    a_disabled_then_enabled_accounts_old_token_stays_revoked,
    a_scope_taken_away_and_given_back_does_not_return_to_an_old_token,
    credentials_of_one_account_never_open_another,
    a_replay_raced_over_two_replicas_issues_one_token,
    a_disable_racing_exchanges_leaves_no_token_offline_verifiers_accept,
    a_removal_racing_exchanges_leaves_no_token_offline_verifiers_accept,
    one_foreign_item_among_a_hundred_refuses_the_whole_bulk_check,
    org_accounts_read_no_audit_beyond_their_organization,
    a_watch_ends_soon_after_its_scope_or_credential_is_taken,
    no_secret_key_or_assertion_is_at_rest_or_in_the_log,
    managers_cannot_reach_beyond_their_organization,
    an_org_account_reads_no_more_of_a_user_than_its_manager_can,
    forged_assertions_naming_an_account_do_not_lock_out_its_key,
    offline_verifiers_give_service_tokens_scopes_not_permissions,
    every_refused_exchange_of_an_existing_account_is_audited,
    a_replica_with_a_clock_ahead_does_not_reopen_a_used_jti,
    an_export_ends_soon_after_the_account_is_disabled,
);

async fn accounts(s: &TestServer) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(s.channel().await)
}

async fn create_in(
    s: &TestServer,
    token: &str,
    org: &str,
    name: &str,
    scopes: &[&str],
) -> Result<String, Status> {
    accounts(s)
        .await
        .create_service_account(authed(
            CreateServiceAccountRequest {
                organization_id: org.into(),
                name: name.into(),
                description: String::new(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                certificate_identity: String::new(),
            },
            token,
        ))
        .await
        .map(|r| {
            r.into_inner()
                .service_account
                .expect("account")
                .service_account_id
        })
}

async fn create(s: &TestServer, admin: &str, name: &str, scopes: &[&str]) -> String {
    create_in(s, admin, "", name, scopes)
        .await
        .expect("create service account")
}

async fn exchange(s: &TestServer, r: IssueServiceAccountTokenRequest) -> Result<String, Status> {
    s.auth()
        .await
        .issue_service_account_token(r)
        .await
        .map(|r| r.into_inner().access_token)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn set_enabled(s: &TestServer, admin: &str, account: &str, enabled: bool) {
    let c = &mut accounts(s).await;
    if enabled {
        c.enable_service_account(authed(
            EnableServiceAccountRequest {
                service_account_id: account.into(),
            },
            admin,
        ))
        .await
        .expect("enable");
    } else {
        c.disable_service_account(authed(
            DisableServiceAccountRequest {
                service_account_id: account.into(),
            },
            admin,
        ))
        .await
        .expect("disable");
    }
}

async fn set_scopes(s: &TestServer, admin: &str, account: &str, scopes: &[&str]) {
    accounts(s)
        .await
        .update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: account.into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["scopes".into()],
                }),
            },
            admin,
        ))
        .await
        .expect("update scopes");
}

/// ListUsers with `token`: OK for a live platform token with users.read.
async fn list_users(s: &TestServer, token: &str) -> Result<(), Status> {
    s.users()
        .await
        .list_users(authed(ListUsersRequest::default(), token))
        .await
        .map(|_| ())
}

/// Every revocation event until `want` of them are read (or 10 s pass).
async fn events(
    stream: &mut tonic::Streaming<WatchRevocationsResponse>,
    want: usize,
) -> Vec<RevocationEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(m))) => out.extend(m.event),
            _ => break,
        }
    }
    out
}

fn revoke_ms(e: &RevocationEvent) -> i64 {
    let t = e.revoke_time.unwrap_or_default();
    t.seconds * 1000 + (t.nanos / 1_000_000) as i64
}

/// What `kiops_token::Authority::is_revoked` decides for a token against
/// one event: issued (1 s resolution) before the revocation.
fn offline_refuses(token: &str, e: &RevocationEvent) -> bool {
    let iat = token_claims(token)["iat"].as_i64().expect("iat");
    iat * 1000 < revoke_ms(e)
}

/// R25 "a disabled ... account stops its tokens at once" and the
/// revocation event's meaning ("tokens issued before revoke_time must be
/// rejected"): a token minted before a Disable is revoked for good, as a
/// deactivated person's sessions are; enabling the account again must not
/// bring it back on this server (offline verifiers keep refusing it).
async fn a_disabled_then_enabled_accounts_old_token_stays_revoked(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "reader", &["users.read"]).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let old = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    list_users(&s, &old).await.expect("live token lists users");

    set_enabled(&s, &admin, &sa, false).await;
    let st = list_users(&s, &old).await.expect_err("disabled");
    assert_eq!(reason(&st), "ACCOUNT_DISABLED");
    // Past the second of the revocation, so a fresh token is not refused
    // for sharing its second (the safe direction of `iat`).
    s.advance_clock(Duration::from_secs(2));
    set_enabled(&s, &admin, &sa, true).await;

    // A new exchange works again...
    let fresh = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange after enable");
    list_users(&s, &fresh).await.expect("fresh token");
    // ...but the token revoked by the Disable stays dead.
    let st = list_users(&s, &old)
        .await
        .expect_err("a token revoked by Disable came back to life after Enable");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
}

/// R25 "a scope taken away stops its tokens at once" (and `scopes_changed`
/// revokes them for offline verifiers): giving the scope back later must
/// not make it work again for a token minted before it was taken.
async fn a_scope_taken_away_and_given_back_does_not_return_to_an_old_token(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "reader", &["users.read", "permissions.check"]).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let old = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    list_users(&s, &old).await.expect("live token lists users");

    set_scopes(&s, &admin, &sa, &["permissions.check"]).await;
    // Narrowing revokes the old token as a whole (scopes_changed), here as
    // offline, not only the scope taken.
    let st = list_users(&s, &old).await.expect_err("scope taken");
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    assert_eq!(reason(&st), "SESSION_REVOKED", "{st:?}");
    s.advance_clock(Duration::from_secs(2));
    set_scopes(&s, &admin, &sa, &["users.read", "permissions.check"]).await;

    let fresh = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange after widening");
    list_users(&s, &fresh).await.expect("fresh token");
    assert!(
        list_users(&s, &old).await.is_err(),
        "a token whose scope was revoked (scopes_changed) regained it when the scope was given back"
    );
}

/// Token confusion between two accounts: A's secret with B's id, an
/// assertion naming B but signed by A's key under A's kid (and under B's
/// kid), a removed key, and the same `jti` used by two accounts (single
/// use is per account: RFC 7523 makes `jti` unique per issuer, and
/// `iss` is the account).
async fn credentials_of_one_account_never_open_another(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let a = create(&s, &admin, "alpha", &["users.read"]).await;
    let b = create(&s, &admin, "bravo", &["users.read", "audit.read"]).await;
    let (_, secret_a) = add_secret(&s, &admin, &a).await;
    let key_a = add_generated_key(&s, &admin, &a).await;
    let key_b = add_generated_key(&s, &admin, &b).await;
    let issuer = key_a.issuer.clone();
    let claims = |sub: &str, jti: &str| AssertionClaims {
        iss: sub.into(),
        sub: sub.into(),
        aud: issuer.clone(),
        exp: now() + 60,
        iat: Some(now()),
        jti: jti.into(),
    };

    let e = exchange(&s, by_secret(&b, &secret_a))
        .await
        .expect_err("A's secret with B's id");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");
    for kid in [&key_a.credential_id, &key_b.credential_id] {
        let t = sign_assertion(
            &key_a.private_key_pem,
            kid,
            &claims(&b, &format!("x-{kid}")),
        )
        .expect("sign");
        let e = exchange(&s, by_assertion(&t))
            .await
            .expect_err("B named, A's key signed");
        assert_eq!(reason(&e), "INVALID_CREDENTIALS", "kid {kid}");
    }
    // The same jti, each signed by its own account: both accepted once.
    let ta = sign_assertion(
        &key_a.private_key_pem,
        &key_a.credential_id,
        &claims(&a, "shared-jti"),
    )
    .expect("sign");
    let tb = sign_assertion(
        &key_b.private_key_pem,
        &key_b.credential_id,
        &claims(&b, "shared-jti"),
    )
    .expect("sign");
    let token_a = exchange(&s, by_assertion(&ta)).await.expect("A's jti");
    let token_b = exchange(&s, by_assertion(&tb)).await.expect("B's jti");
    assert_eq!(token_claims(&token_a)["sub"], a.as_str());
    assert_eq!(token_claims(&token_b)["sub"], b.as_str());
    let e = exchange(&s, by_assertion(&ta)).await.expect_err("replay");
    assert_eq!(reason(&e), "ASSERTION_REPLAYED");

    // A key removed: its fresh assertions are refused, its token dead.
    accounts(&s)
        .await
        .remove_service_account_credential(authed(
            RemoveServiceAccountCredentialRequest {
                service_account_id: a.clone(),
                credential_id: key_a.credential_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("remove key");
    let t = key_a.assertion(now(), 60).expect("sign");
    let e = exchange(&s, by_assertion(&t))
        .await
        .expect_err("removed key");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");
    let st = list_users(&s, &token_a).await.expect_err("removed key");
    assert_eq!(reason(&st), "SESSION_REVOKED");
    list_users(&s, &token_b).await.expect("B untouched");

    // Huge and non-ASCII jti: refused or accepted once, never a 500.
    let mut c = claims(&b, &"é".repeat(64));
    let t = sign_assertion(&key_b.private_key_pem, &key_b.credential_id, &c).expect("sign");
    let first = exchange(&s, by_assertion(&t)).await;
    assert!(
        first
            .as_ref()
            .err()
            .is_none_or(|e| e.code() == Code::Unauthenticated),
        "{first:?}"
    );
    if first.is_ok() {
        let e = exchange(&s, by_assertion(&t)).await.expect_err("replay");
        assert_eq!(reason(&e), "ASSERTION_REPLAYED");
    }
    c.jti = "j".repeat(129);
    let t = sign_assertion(&key_b.private_key_pem, &key_b.credential_id, &c).expect("sign");
    let e = exchange(&s, by_assertion(&t)).await.expect_err("long jti");
    assert_eq!(reason(&e), "INVALID_ASSERTION");
}

/// One assertion sent 20 times at once, half to each of two servers on the
/// same database: exactly one token, the rest ASSERTION_REPLAYED.
async fn a_replay_raced_over_two_replicas_issues_one_token(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.replica(ServerOptions::default()).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    for round in 0..3 {
        let assertion = key.assertion(now(), 120).expect("sign");
        let mut calls = Vec::new();
        for i in 0..20 {
            let url = if i % 2 == 0 {
                s.grpc_url()
            } else {
                r.grpc_url()
            };
            let a = assertion.clone();
            calls.push(tokio::spawn(async move {
                let ch = Channel::from_shared(url).expect("url").connect().await;
                let mut c = kiops_proto::v1::auth_service_client::AuthServiceClient::new(
                    ch.expect("connect"),
                );
                c.issue_service_account_token(by_assertion(&a)).await
            }));
        }
        let mut ok = 0;
        for c in calls {
            match c.await.expect("task") {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(reason(&e), "ASSERTION_REPLAYED", "round {round}: {e:?}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: one assertion became {ok} tokens");
    }
}

/// Ten exchanges and a Disable at the same instant, 20 rounds: a token that was
/// issued is refused on this server after the Disable, and the Disable's
/// revocation event covers it (its `iat` is before `revoke_time`), so an
/// offline verifier refuses it too.
async fn a_disable_racing_exchanges_leaves_no_token_offline_verifiers_accept(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    let mut issued = Vec::new();
    for round in 0..20 {
        let sa = create(&s, &admin, &format!("race-{round}"), &["users.read"]).await;
        let (_, secret) = add_secret(&s, &admin, &sa).await;
        // One token surely issued before the Disable (on a loaded machine
        // the racing ones may all lose); then ten exchanges keep the
        // account's lock busy while the Disable waits.
        let before = exchange(&s, by_secret(&sa, &secret)).await;
        let exchanges =
            futures::future::join_all((0..10).map(|_| exchange(&s, by_secret(&sa, &secret))));
        let (tokens, _) = tokio::join!(exchanges, async {
            tokio::time::sleep(Duration::from_millis(round % 5)).await;
            set_enabled(&s, &admin, &sa, false).await
        });
        for t in tokens.into_iter().chain([before]).flatten() {
            let st = list_users(&s, &t).await.expect_err("after the disable");
            assert_eq!(reason(&st), "ACCOUNT_DISABLED", "round {round}");
            issued.push((sa.clone(), t));
        }
    }
    let evs = events(&mut stream, 20).await;
    // Not vacuous: most rounds mint tokens before the Disable gets the lock.
    assert!(!issued.is_empty(), "no exchange won a race");
    for (sa, t) in &issued {
        let e = evs
            .iter()
            .find(|e| &e.user_id == sa && e.reason == "service_account_disabled")
            .expect("the disable's event");
        assert!(
            offline_refuses(t, e),
            "a token minted in the race outlives the disable offline: iat {} revoke {}",
            token_claims(t)["iat"],
            revoke_ms(e)
        );
    }
}

/// The same race with RemoveServiceAccountCredential.
async fn a_removal_racing_exchanges_leaves_no_token_offline_verifiers_accept(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "race", &["users.read"]).await;
    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    let mut issued = Vec::new();
    for round in 0..20 {
        let (cred, secret) = add_secret(&s, &admin, &sa).await;
        let remove = async {
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
                .expect("remove")
        };
        // One token surely issued before the removal (on a loaded machine
        // the racing ones may all lose), then 10 racing it.
        let before = exchange(&s, by_secret(&sa, &secret)).await;
        let exchanges =
            futures::future::join_all((0..10).map(|_| exchange(&s, by_secret(&sa, &secret))));
        let (tokens, _) = tokio::join!(exchanges, remove);
        for t in tokens.into_iter().chain([before]).flatten() {
            let st = list_users(&s, &t).await.expect_err("after the removal");
            assert_eq!(reason(&st), "SESSION_REVOKED", "round {round}");
            issued.push((cred.clone(), t));
        }
    }
    let evs = events(&mut stream, 20).await;
    assert!(!issued.is_empty(), "no exchange won a race");
    for (cred, t) in &issued {
        let e = evs
            .iter()
            .find(|e| &e.session_id == cred)
            .expect("the removal's event");
        assert!(
            offline_refuses(t, e),
            "a token minted in the race outlives the removal offline: iat {} revoke {}",
            token_claims(t)["iat"],
            revoke_ms(e)
        );
    }
}

async fn org_with_member(s: &TestServer, admin: &str, code: &str) -> (String, String, String) {
    let org = s.create_org(admin, code, code).await;
    let (user, token) = s.user(&format!("{code}-member@example.com")).await;
    s.add_member(admin, &org, &user, Role::Member).await;
    (org, user, token)
}

async fn service_token(
    s: &TestServer,
    admin: &str,
    org: &str,
    name: &str,
    scopes: &[&str],
) -> String {
    let sa = create_in(s, admin, org, name, scopes)
        .await
        .expect("create");
    let (_, secret) = add_secret(s, admin, &sa).await;
    exchange(s, by_secret(&sa, &secret))
        .await
        .expect("exchange")
}

/// An organization's account asking 100 checks, 99 in its organization and
/// one about another organization hidden among them: the whole call is
/// refused, naming that item, and no answer leaks.
async fn one_foreign_item_among_a_hundred_refuses_the_whole_bulk_check(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (a, ua, _) = org_with_member(&s, &admin, "alpha").await;
    let (b, ub, _) = org_with_member(&s, &admin, "bravo").await;
    let t = service_token(&s, &admin, &a, "checker", &["permissions.check"]).await;
    let item = |org: &str, user: &str| CheckPermissionRequest {
        organization_id: org.into(),
        user_id: user.into(),
        permission: Permission::Device as i32,
    };
    let mut items: Vec<_> = (0..100).map(|_| item(&a, &ua)).collect();
    let ok = s
        .members()
        .await
        .check_permissions(authed(
            CheckPermissionsRequest {
                items: items.clone(),
            },
            &t,
        ))
        .await
        .expect("own organization");
    assert_eq!(ok.into_inner().results.len(), 100);
    for (org, user) in [(&b, &ub), (&b, &ua), (&a, &ub)] {
        items[57] = item(org, user);
        let r = s
            .members()
            .await
            .check_permissions(authed(
                CheckPermissionsRequest {
                    items: items.clone(),
                },
                &t,
            ))
            .await;
        if org == &a {
            // A non-member of its own organization: answered (false).
            let r = r.expect("own organization, non-member").into_inner();
            assert!(!r.results[57].allowed);
        } else {
            let e = r.expect_err("another organization's item");
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
        }
    }
    // The single check too.
    let e = s
        .members()
        .await
        .check_permission(authed(item(&b, &ub), &t))
        .await
        .expect_err("other organization");
    assert_eq!(e.code(), Code::NotFound);
}

/// audit.read of an organization's account: its organization only, never
/// the whole trail, another organization, or members of another.
async fn org_accounts_read_no_audit_beyond_their_organization(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (a, _, _) = org_with_member(&s, &admin, "alpha").await;
    let (b, ub, _) = org_with_member(&s, &admin, "bravo").await;
    let t = service_token(&s, &admin, &a, "auditor", &["audit.read", "members.read"]).await;
    let list = |org: Option<String>| ListAuditEventsRequest {
        organization_id: org,
        ..Default::default()
    };
    let own = s
        .audit()
        .await
        .list_audit_events(authed(list(Some(a.clone())), &t))
        .await
        .expect("own organization")
        .into_inner();
    assert!(own.audit_events.iter().all(|e| e.organization_id == a));
    for (req, code) in [
        (list(None), Code::PermissionDenied),
        (list(Some(String::new())), Code::PermissionDenied),
        (list(Some(b.clone())), Code::NotFound),
    ] {
        let e = s
            .audit()
            .await
            .list_audit_events(authed(req.clone(), &t))
            .await
            .expect_err("beyond its organization");
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
    }
    for org in [None, Some(b.clone())] {
        let r = s
            .audit()
            .await
            .export_audit_events(authed(
                ExportAuditEventsRequest {
                    organization_id: org.clone(),
                    format: ExportFormat::JsonLines as i32,
                    ..Default::default()
                },
                &t,
            ))
            .await;
        let refused = match r {
            Err(_) => true,
            Ok(stream) => stream.into_inner().message().await.is_err(),
        };
        assert!(refused, "export of {org:?} by an organization's account");
    }
    let e = s
        .members()
        .await
        .get_member(authed(
            GetMemberRequest {
                organization_id: b.clone(),
                user_id: ub.clone(),
            },
            &t,
        ))
        .await
        .expect_err("another organization's member");
    assert_eq!(e.code(), Code::NotFound);
    let e = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: b.clone(),
                ..Default::default()
            },
            &t,
        ))
        .await
        .expect_err("another organization's members");
    assert_eq!(e.code(), Code::NotFound);
}

/// H7 for services: a WatchRevocations stream of a platform account ends
/// within ~2 s when its scope is taken, its credential removed, or the
/// account disabled.
async fn a_watch_ends_soon_after_its_scope_or_credential_is_taken(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    for (i, how) in ["scope", "credential", "disable"].into_iter().enumerate() {
        let sa = create(
            &s,
            &admin,
            &format!("watcher-{i}"),
            &["revocations.watch", "users.read"],
        )
        .await;
        let (cred, secret) = add_secret(&s, &admin, &sa).await;
        let t = exchange(&s, by_secret(&sa, &secret))
            .await
            .expect("exchange");
        let mut stream = s
            .auth()
            .await
            .watch_revocations(authed(WatchRevocationsRequest::default(), &t))
            .await
            .expect("watch")
            .into_inner();
        match how {
            "scope" => set_scopes(&s, &admin, &sa, &["users.read"]).await,
            "credential" => {
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
                    .expect("remove");
            }
            _ => set_enabled(&s, &admin, &sa, false).await,
        }
        let taken = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => return Some(e),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{how}: the stream outlived the loss of its right"));
        let e = ended.unwrap_or_else(|| panic!("{how}: ended without a refusal"));
        assert!(
            matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{how}: {e:?}"
        );
        assert!(
            taken.elapsed() < Duration::from_millis(2500),
            "{how}: {:?}",
            taken.elapsed()
        );
    }
}

/// H3 for service credentials: the client secret, the generated private
/// key and an exchanged assertion are nowhere in the database (SQLite file
/// bytes, write-ahead log included; PostgreSQL rows as text) or the log.
async fn no_secret_key_or_assertion_is_at_rest_or_in_the_log(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("secret exchange");
    let assertion = key.assertion(now(), 60).expect("sign");
    exchange(&s, by_assertion(&assertion))
        .await
        .expect("assertion exchange");
    // A wrong secret and a replay: refusals are audited too.
    let _ = exchange(&s, by_secret(&sa, &format!("{secret}x"))).await;
    let _ = exchange(&s, by_assertion(&assertion)).await;

    let pem_body: String = key
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let secret_body = secret.trim_start_matches("kiops_sa_").to_string();
    let signature = assertion.rsplit('.').next().expect("sig").to_string();
    let needles = [
        ("client secret", secret_body),
        ("private key", pem_body),
        ("assertion signature", signature),
    ];

    let mut haystack = Vec::<u8>::new();
    match backend {
        Backend::Sqlite => {
            for entry in std::fs::read_dir(s.db.dir.path()).expect("db dir") {
                let p = entry.expect("entry").path();
                if p.is_file() {
                    haystack.extend(std::fs::read(&p).expect("read db file"));
                }
            }
        }
        Backend::Postgres => {
            use sea_orm::{ConnectionTrait, Database, Statement};
            let db = Database::connect(&s.db.url).await.expect("db");
            let tables = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    "SELECT table_name::text AS t FROM information_schema.tables \
                     WHERE table_schema = 'public'",
                ))
                .await
                .expect("tables");
            for t in tables {
                let name: String = t.try_get("", "t").expect("name");
                let rows = db
                    .query_all_raw(Statement::from_string(
                        db.get_database_backend(),
                        format!("SELECT x::text AS row FROM \"{name}\" x"),
                    ))
                    .await
                    .expect("rows");
                for r in rows {
                    let row: String = r.try_get("", "row").expect("row");
                    haystack.extend(row.into_bytes());
                }
            }
        }
    }
    assert!(haystack.len() > 1000, "read the database");
    let logs = s.logs();
    for (what, needle) in &needles {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "the {what} is stored in the database"
        );
        assert!(!logs.contains(needle.as_str()), "the {what} is in the log");
    }
}

/// A Manager: no platform account, nothing of another organization's
/// accounts, no move of an account to another organization by Update.
async fn managers_cannot_reach_beyond_their_organization(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let a = s.create_org(&admin, "alpha", "alpha").await;
    let b = s.create_org(&admin, "bravo", "bravo").await;
    let (m, _) = s.user("manager@example.com").await;
    s.add_member(&admin, &a, &m, Role::Manager).await;
    let mt = s
        .login("manager@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let e = create_in(&s, &mt, "", "platform", &["users.read"])
        .await
        .expect_err("platform account by a Manager");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = create_in(&s, &mt, &b, "foreign", &["users.read"])
        .await
        .expect_err("another organization");
    assert_eq!(e.code(), Code::NotFound);
    let theirs = create_in(&s, &admin, &b, "theirs", &["permissions.check"])
        .await
        .expect("admin creates in bravo");
    let e = accounts(&s)
        .await
        .add_service_account_secret(authed(
            AddServiceAccountSecretRequest {
                service_account_id: theirs.clone(),
            },
            &mt,
        ))
        .await
        .expect_err("a secret on another organization's account");
    assert_eq!(e.code(), Code::NotFound);
    let e = accounts(&s)
        .await
        .update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: theirs.clone(),
                    scopes: vec!["users.read".into(), "audit.read".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["scopes".into()],
                }),
            },
            &mt,
        ))
        .await
        .expect_err("widening another organization's account");
    assert_eq!(e.code(), Code::NotFound);

    let own = create_in(&s, &mt, &a, "own", &["users.read"])
        .await
        .expect("own organization");
    let e = accounts(&s)
        .await
        .update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: own.clone(),
                    organization_id: b.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["organization_id".into()],
                }),
            },
            &mt,
        ))
        .await
        .expect_err("moving an account");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let got = accounts(&s)
        .await
        .get_service_account(authed(
            GetServiceAccountRequest {
                service_account_id: own.clone(),
            },
            &admin,
        ))
        .await
        .expect("get")
        .into_inner()
        .service_account
        .expect("account");
    assert_eq!(got.organization_id, a);
}

/// R25 "can never hold more than its owner allows": an organization's
/// Manager cannot read a member's account (GetUser is a PlatformAdmin's:
/// phone, avatar, email verification), so an account the Manager makes for
/// the organization must not read it either.
async fn an_org_account_reads_no_more_of_a_user_than_its_manager_can(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "alpha", "alpha").await;
    let (m, _) = s.user("manager@example.com").await;
    s.add_member(&admin, &org, &m, Role::Manager).await;
    let mt = s
        .login("manager@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let (u, ut) = s.user("member@example.com").await;
    s.add_member(&admin, &org, &u, Role::Member).await;
    s.users()
        .await
        .update_me(authed(
            UpdateMeRequest {
                phone: "+41 79 555 01 02".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["phone".into()],
                }),
                ..Default::default()
            },
            &ut,
        ))
        .await
        .expect("set phone");
    let get = |token: String| {
        let s = &s;
        let u = u.clone();
        async move {
            s.users()
                .await
                .get_user(authed(GetUserRequest { user_id: u }, &token))
                .await
                .map(|r| r.into_inner().user.expect("user"))
        }
    };
    let e = get(mt.clone())
        .await
        .expect_err("a Manager reads no account");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let sa = create_in(&s, &mt, &org, "reader", &["users.read"])
        .await
        .expect("the Manager makes an account");
    let (_, secret) = add_secret(&s, &mt, &sa).await;
    let t = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    match get(t).await {
        Err(_) => {}
        Ok(user) => assert!(
            user.phone.is_empty(),
            "a Manager's service account reads the member's phone the Manager cannot: {user:?}"
        ),
    }
}

/// R25: wrong signatures "cannot be guessed" and are throttled per peer,
/// they do not count against the account. Forged assertions (right shape,
/// garbage signature) naming a victim account, each from another client
/// address behind a trusted proxy, must not stop the victim's own valid
/// assertion from another address.
async fn forged_assertions_naming_an_account_do_not_lock_out_its_key(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--login-rate-per-peer".into(),
                "1000".into(),
                "--login-rate-per-email".into(),
                "30".into(),
                "--trusted-proxies".into(),
                "127.0.0.1".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "victim", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    let from = |r: IssueServiceAccountTokenRequest, peer: &str| {
        let mut r = tonic::Request::new(r);
        r.metadata_mut()
            .insert("x-forwarded-for", peer.parse().expect("xff"));
        r
    };
    let valid = key.assertion(now(), 60).expect("sign");
    let mut parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    for i in 0..40 {
        // Another jti and a signature of zeros: unsigned, cheap to forge.
        let claims = AssertionClaims {
            iss: sa.clone(),
            sub: sa.clone(),
            aud: key.issuer.clone(),
            exp: now() + 60,
            iat: Some(now()),
            jti: format!("forged-{i}"),
        };
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] =
            b64.encode(serde_json::to_vec(&serde_json::json!(claims_json(&claims))).expect("json"));
        parts[2] = b64.encode([0u8; 64]);
        let _ = s
            .auth()
            .await
            .issue_service_account_token(from(
                by_assertion(&parts.join(".")),
                &format!("203.0.113.{}", i + 1),
            ))
            .await;
    }
    let mine = key.assertion(now(), 60).expect("sign");
    let r = s
        .auth()
        .await
        .issue_service_account_token(from(by_assertion(&mine), "198.51.100.7"))
        .await;
    assert!(
        r.is_ok(),
        "anonymous forged assertions from other peers denied the account its valid exchange: {:?}",
        r.err()
    );
}

fn claims_json(c: &AssertionClaims) -> serde_json::Value {
    serde_json::json!({
        "iss": c.iss, "sub": c.sub, "aud": c.aud, "exp": c.exp, "iat": c.iat, "jti": c.jti,
    })
}

/// kiops-token downstream: a service token, however scoped, holds no
/// permission in any organization (`Authority::authorize`), holds exactly
/// its scopes (`authorize_scope`), and the Disable event revokes it.
async fn offline_verifiers_give_service_tokens_scopes_not_permissions(backend: Backend) {
    use kiops_token::remote::KeySource;
    use kiops_token::{Authority, Permission as P, Revocation};
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "alpha", "alpha").await;
    let sa = create_in(
        &s,
        &admin,
        &org,
        "device",
        &["permissions.check", "members.read"],
    )
    .await
    .expect("create");
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let t = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    let set = KeySource::Http(format!("http://{}/.well-known/jwks.json", s.http))
        .fetch()
        .await
        .expect("jwks");
    let authority = Authority::new(set, "kiops-identity", "kiops").expect("authority");
    let bearer = format!("Bearer {t}");
    for p in [P::Infra, P::Device, P::Audit] {
        assert!(
            authority.authorize(Some(&bearer), Some(&org), p).is_err(),
            "{p:?} in its own organization"
        );
    }
    authority
        .authorize_scope(Some(&bearer), "permissions.check")
        .expect("its scope");
    assert!(authority
        .authorize_scope(Some(&bearer), "audit.read")
        .is_err());
    let mut stream = s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &admin))
        .await
        .expect("watch")
        .into_inner();
    set_enabled(&s, &admin, &sa, false).await;
    let e = events(&mut stream, 1)
        .await
        .pop()
        .expect("the disable's event");
    authority.revoke(Revocation {
        user_id: e.user_id.clone(),
        organization_id: e.organization_id.clone(),
        session_id: e.session_id.clone(),
        revoked_at_ms: revoke_ms(&e),
    });
    assert!(authority
        .authorize_scope(Some(&bearer), "permissions.check")
        .is_err());
}

/// The `service_account.token_refused` events of `account`.
async fn refusals(s: &TestServer, admin: &str, account: &str) -> Vec<AuditEvent> {
    s.audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                action: "service_account.token_refused".into(),
                target_id: account.into(),
                page_size: 100,
                ..Default::default()
            },
            admin,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events
}

/// R25 "every refusal of an existing account is audited" (and H2, where a
/// locked account's refused attempts are audited with `reason: locked`):
/// a replayed assertion (a stolen one, most likely) and an attempt on a
/// locked account leave a trace.
async fn every_refused_exchange_of_an_existing_account_is_audited(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;
    let (_, secret) = add_secret(&s, &admin, &sa).await;

    let assertion = key.assertion(now(), 60).expect("sign");
    exchange(&s, by_assertion(&assertion))
        .await
        .expect("first use");
    let before = refusals(&s, &admin, &sa).await.len();
    let e = exchange(&s, by_assertion(&assertion))
        .await
        .expect_err("replay");
    assert_eq!(reason(&e), "ASSERTION_REPLAYED");
    let mut missing = Vec::new();
    if refusals(&s, &admin, &sa).await.len() != before + 1 {
        missing.push("a replayed assertion");
    }

    let wrong = format!("kiops_sa_{}", "C".repeat(43));
    for _ in 0..5 {
        let _ = exchange(&s, by_secret(&sa, &wrong)).await;
    }
    let before = refusals(&s, &admin, &sa).await.len();
    let e = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect_err("locked");
    assert_eq!(reason(&e), "INVALID_CREDENTIALS");
    if refusals(&s, &admin, &sa).await.len() != before + 1 {
        missing.push("an attempt on a locked account");
    }
    assert!(missing.is_empty(), "not audited: {missing:?}");
}

/// Single use across replicas whose clocks differ by 20 s (less than the
/// 30 s of skew the exchange tolerates on `iat`/`nbf`): a replica ahead
/// drops the account's "expired" `jti`s while the others still accept
/// those assertions, so a used assertion must not become usable again.
async fn a_replica_with_a_clock_ahead_does_not_reopen_a_used_jti(backend: Backend) {
    let s = TestServer::start(backend).await;
    let ahead = s.replica(ServerOptions::default()).await;
    ahead.advance_clock(Duration::from_secs(20));
    let admin = s.admin_token().await;
    let sa = create(&s, &admin, "device", &["permissions.check"]).await;
    let key = add_generated_key(&s, &admin, &sa).await;

    // Used once on the server with the right clock; valid 10 s more.
    let stolen = key.assertion(now(), 10).expect("sign");
    exchange(&s, by_assertion(&stolen))
        .await
        .expect("first use");
    // Any exchange of the account on the replica ahead (its own assertion
    // is fresh by its clock).
    let theirs = key.assertion(now() + 20, 60).expect("sign");
    exchange(&ahead, by_assertion(&theirs))
        .await
        .expect("exchange on the replica ahead");
    let e = exchange(&s, by_assertion(&stolen))
        .await
        .expect_err("a used assertion was accepted a second time");
    assert_eq!(reason(&e), "ASSERTION_REPLAYED");
}

/// H7 for a service's export: an organization account's ExportAuditEvents,
/// read slowly, ends within ~2 s of the Disable.
async fn an_export_ends_soon_after_the_account_is_disabled(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "alpha", "alpha").await;
    bulk_audit(&s, &org, 20_000).await;
    let sa = create_in(&s, &admin, &org, "auditor", &["audit.read"])
        .await
        .expect("create");
    let (_, secret) = add_secret(&s, &admin, &sa).await;
    let t = exchange(&s, by_secret(&sa, &secret))
        .await
        .expect("exchange");
    let mut stream = s
        .audit()
        .await
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.clone()),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            },
            &t,
        ))
        .await
        .expect("export")
        .into_inner();
    stream
        .message()
        .await
        .expect("first chunk")
        .expect("a chunk");
    set_enabled(&s, &admin, &sa, false).await;
    // Not reading for 2.5 s: the server, blocked on a full stream, must
    // still notice the Disable and end the export (H7); what was already
    // on its way is then drained, and the refusal must follow it instead
    // of the rest of the trail.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bytes = 0usize;
    let e = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => bytes += m.chunk.len(),
                Ok(None) => panic!("the export ran to its end after the Disable ({bytes} bytes)"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the export outlived the Disable");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}
