//! ServiceAccountService (R25): who manages which accounts, credentials
//! shown once and never stored in the clear, the credential limit under
//! concurrency, and the revocation events that end an account's tokens.

use crate::both_backends;
use crate::hardening_mail::database_copy;
use crate::support::*;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

both_backends!(
    a_platform_admin_creates_reads_updates_and_deletes,
    a_manager_manages_their_organizations_accounts_only,
    a_member_cannot_create_in_their_organization,
    a_taken_name_is_already_exists_per_owner,
    invalid_requests_name_the_field,
    listing_pages_searches_and_keeps_to_managed_organizations,
    a_secret_is_shown_once_and_stored_only_hashed,
    a_generated_private_key_is_shown_once_and_never_stored,
    an_uploaded_public_key_is_fingerprinted_and_returns_no_private_key,
    twenty_parallel_secrets_leave_exactly_ten_credentials,
    twenty_parallel_creates_of_one_name_make_one_account,
    removing_a_credential_is_on_the_revocation_stream,
    disabling_is_on_the_revocation_stream_and_enabling_is_not,
    deleting_an_account_removes_its_credentials_and_is_on_the_stream,
    narrowing_scopes_is_on_the_revocation_stream,
    deleting_an_organization_removes_its_accounts_and_revokes_them,
    changes_are_audited_as_the_user_who_made_them,
    the_command_line_creates_an_account_and_a_0600_key_file,
    the_command_line_never_overwrites_a_key_file_nor_leaves_one_on_failure,
);

type Sa = ServiceAccountServiceClient<Channel>;

fn create_req(org: &str, name: &str, scopes: &[&str]) -> CreateServiceAccountRequest {
    CreateServiceAccountRequest {
        organization_id: org.into(),
        name: name.into(),
        description: format!("{name} service"),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        certificate_identity: String::new(),
    }
}

async fn create(sa: &mut Sa, token: &str, org: &str, name: &str) -> ServiceAccount {
    sa.create_service_account(authed(
        create_req(org, name, &["permissions.check", "revocations.watch"]),
        token,
    ))
    .await
    .expect("create service account")
    .into_inner()
    .service_account
    .expect("service account")
}

async fn get(sa: &mut Sa, token: &str, id: &str) -> Result<ServiceAccount, tonic::Status> {
    sa.get_service_account(authed(
        GetServiceAccountRequest {
            service_account_id: id.into(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner().service_account.expect("service account"))
}

async fn add_secret(
    sa: &mut Sa,
    token: &str,
    id: &str,
) -> Result<AddServiceAccountSecretResponse, tonic::Status> {
    sa.add_service_account_secret(authed(
        AddServiceAccountSecretRequest {
            service_account_id: id.into(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn credentials(sa: &mut Sa, token: &str, id: &str) -> Vec<ServiceAccountCredential> {
    sa.list_service_account_credentials(authed(
        ListServiceAccountCredentialsRequest {
            service_account_id: id.into(),
        },
        token,
    ))
    .await
    .expect("list credentials")
    .into_inner()
    .credentials
}

async fn list(
    sa: &mut Sa,
    token: &str,
    org: &str,
    query: &str,
    size: i32,
    page_token: &str,
) -> Result<ListServiceAccountsResponse, tonic::Status> {
    sa.list_service_accounts(authed(
        ListServiceAccountsRequest {
            organization_id: org.into(),
            query: query.into(),
            page_size: size,
            page_token: page_token.into(),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner())
}

/// A revocation watcher started now, as a PlatformAdmin.
async fn watch(s: &TestServer, admin: &str) -> tonic::Streaming<WatchRevocationsResponse> {
    s.auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), admin))
        .await
        .expect("watch")
        .into_inner()
}

async fn next_event(w: &mut tonic::Streaming<WatchRevocationsResponse>) -> RevocationEvent {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a revocation event within 10 s")
        .expect("stream")
        .expect("message")
        .event
        .expect("event")
}

/// An organization with a Manager and a Member: (org, manager, member).
async fn org_with_people(s: &TestServer, admin: &str, code: &str) -> (String, String, String) {
    let org = s.create_org(admin, code, code).await;
    let (mgr_id, mgr) = s.user(&format!("mgr@{code}.io")).await;
    let (mem_id, mem) = s.user(&format!("mem@{code}.io")).await;
    s.add_member(admin, &org, &mgr_id, Role::Manager).await;
    s.add_member(admin, &org, &mem_id, Role::Member).await;
    (org, mgr, mem)
}

async fn a_platform_admin_creates_reads_updates_and_deletes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let mut sa = s.service_accounts().await;

    let platform = create(&mut sa, &admin, "", "device-sync").await;
    assert_eq!(platform.organization_id, "");
    assert_eq!(
        platform.scopes,
        vec!["permissions.check", "revocations.watch"]
    );
    assert_eq!(platform.status, ServiceAccountStatus::Active as i32);
    assert_eq!(platform.created_by, token_claims(&admin)["sub"]);
    assert!(platform.create_time.is_some() && platform.update_time.is_some());
    let owned = create(&mut sa, &admin, &org, "device-sync").await;
    assert_eq!(owned.organization_id, org);
    assert_eq!(
        get(&mut sa, &admin, &owned.service_account_id)
            .await
            .expect("get"),
        owned
    );

    let updated = sa
        .update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: owned.service_account_id.clone(),
                    name: "device-sync-2".into(),
                    description: "renamed".into(),
                    scopes: vec!["audit.read".into()],
                    certificate_identity: "spiffe://kiops/device".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "certificate_identity".into()],
                }),
            },
            &admin,
        ))
        .await
        .expect("update")
        .into_inner()
        .service_account
        .expect("account");
    assert_eq!(updated.name, "device-sync-2");
    assert_eq!(updated.certificate_identity, "spiffe://kiops/device");
    // Paths outside the mask stay.
    assert_eq!(updated.description, owned.description);
    assert_eq!(updated.scopes, owned.scopes);

    let disabled = sa
        .disable_service_account(authed(
            DisableServiceAccountRequest {
                service_account_id: owned.service_account_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("disable")
        .into_inner()
        .service_account
        .expect("account");
    assert_eq!(disabled.status, ServiceAccountStatus::Disabled as i32);
    let enabled = sa
        .enable_service_account(authed(
            EnableServiceAccountRequest {
                service_account_id: owned.service_account_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("enable")
        .into_inner()
        .service_account
        .expect("account");
    assert_eq!(enabled.status, ServiceAccountStatus::Active as i32);

    sa.delete_service_account(authed(
        DeleteServiceAccountRequest {
            service_account_id: owned.service_account_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("delete");
    assert_status(
        get(&mut sa, &admin, &owned.service_account_id).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(get(&mut sa, &admin, &platform.service_account_id)
        .await
        .is_ok());
}

async fn a_manager_manages_their_organizations_accounts_only(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (a, mgr, _) = org_with_people(&s, &admin, "alpha").await;
    let b = s.create_org(&admin, "Beta", "beta").await;
    let mut sa = s.service_accounts().await;

    // Their own organization's: every operation.
    let own = create(&mut sa, &mgr, &a, "mine").await;
    assert!(get(&mut sa, &mgr, &own.service_account_id).await.is_ok());
    add_secret(&mut sa, &mgr, &own.service_account_id)
        .await
        .expect("secret");
    sa.disable_service_account(authed(
        DisableServiceAccountRequest {
            service_account_id: own.service_account_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("disable own");

    // Another organization's and the platform's do not exist for them (R4),
    // whatever they try; creating there is refused the same way.
    let other = create(&mut sa, &admin, &b, "theirs").await;
    let platform = create(&mut sa, &admin, "", "platform").await;
    for id in [&other.service_account_id, &platform.service_account_id] {
        assert_status(get(&mut sa, &mgr, id).await, Code::NotFound, "NOT_FOUND");
        assert_status(
            add_secret(&mut sa, &mgr, id).await,
            Code::NotFound,
            "NOT_FOUND",
        );
        assert_status(
            sa.delete_service_account(authed(
                DeleteServiceAccountRequest {
                    service_account_id: id.clone(),
                },
                &mgr,
            ))
            .await,
            Code::NotFound,
            "NOT_FOUND",
        );
        assert_status(
            sa.list_service_account_credentials(authed(
                ListServiceAccountCredentialsRequest {
                    service_account_id: id.clone(),
                },
                &mgr,
            ))
            .await,
            Code::NotFound,
            "NOT_FOUND",
        );
    }
    assert_status(
        sa.create_service_account(authed(create_req(&b, "sneaky", &[]), &mgr))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        sa.create_service_account(authed(create_req("", "sneaky", &[]), &mgr))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    // Nothing of the other's changed.
    assert_eq!(
        get(&mut sa, &admin, &other.service_account_id)
            .await
            .expect("still there"),
        other
    );
}

async fn a_member_cannot_create_in_their_organization(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (org, _, mem) = org_with_people(&s, &admin, "gamma").await;
    let mut sa = s.service_accounts().await;
    assert_status(
        sa.create_service_account(authed(create_req(&org, "mine", &[]), &mem))
            .await,
        Code::PermissionDenied,
        "MANAGER_REQUIRED",
    );
    // And the organization's accounts do not exist for them.
    let existing = create(&mut sa, &admin, &org, "existing").await;
    assert_status(
        get(&mut sa, &mem, &existing.service_account_id).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn a_taken_name_is_already_exists_per_owner(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let a = s.create_org(&admin, "A", "org-a").await;
    let b = s.create_org(&admin, "B", "org-b").await;
    let mut sa = s.service_accounts().await;
    create(&mut sa, &admin, &a, "device").await;
    assert_status(
        sa.create_service_account(authed(create_req(&a, "device", &[]), &admin))
            .await,
        Code::AlreadyExists,
        "SERVICE_ACCOUNT_NAME_TAKEN",
    );
    // Another owner may use the name, the platform included.
    create(&mut sa, &admin, &b, "device").await;
    create(&mut sa, &admin, "", "device").await;
    assert_status(
        sa.create_service_account(authed(create_req("", "device", &[]), &admin))
            .await,
        Code::AlreadyExists,
        "SERVICE_ACCOUNT_NAME_TAKEN",
    );
    // Renaming onto a taken name is refused too.
    let other = create(&mut sa, &admin, &a, "other").await;
    assert_status(
        sa.update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: other.service_account_id,
                    name: "device".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            },
            &admin,
        ))
        .await,
        Code::AlreadyExists,
        "SERVICE_ACCOUNT_NAME_TAKEN",
    );
}

async fn invalid_requests_name_the_field(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let send = |r: CreateServiceAccountRequest| {
        let mut sa = sa.clone();
        let admin = admin.clone();
        async move { sa.create_service_account(authed(r, &admin)).await }
    };
    for bad in ["", "Device", "2fa", "a_b", &"a".repeat(65)] {
        assert_invalid(send(create_req("", bad, &[])).await, "name");
    }
    assert_invalid(send(create_req("", "ok", &["admin"])).await, "scopes[0]");
    assert_invalid(
        send(create_req("not-a-uuid", "ok", &[])).await,
        "organization_id",
    );
    let mut long = create_req("", "ok", &[]);
    long.description = "x".repeat(501);
    assert_invalid(send(long).await, "description");
    let mut spaced = create_req("", "ok", &[]);
    spaced.certificate_identity = "spiffe://kiops/has space".into();
    assert_invalid(send(spaced).await, "certificate_identity");
    // A PlatformAdmin naming an organization that does not exist.
    assert_status(
        send(create_req(&uuid::Uuid::now_v7().to_string(), "ok", &[])).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let platform = create(&mut sa, &admin, "", "valid").await;
    assert_invalid(
        sa.add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: platform.service_account_id.clone(),
                public_key_pem: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into(),
            },
            &admin,
        ))
        .await,
        "public_key_pem",
    );
    assert_invalid(
        sa.update_service_account(authed(
            UpdateServiceAccountRequest {
                service_account: Some(ServiceAccount {
                    service_account_id: platform.service_account_id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            &admin,
        ))
        .await,
        "update_mask",
    );
    assert_invalid(
        sa.remove_service_account_credential(authed(
            RemoveServiceAccountCredentialRequest {
                service_account_id: platform.service_account_id,
                credential_id: "x".into(),
            },
            &admin,
        ))
        .await,
        "credential_id",
    );
    let none = create(&mut sa, &admin, "", "none").await;
    assert!(credentials(&mut sa, &admin, &none.service_account_id)
        .await
        .is_empty());
}

async fn listing_pages_searches_and_keeps_to_managed_organizations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (a, mgr, mem) = org_with_people(&s, &admin, "alpha").await;
    let b = s.create_org(&admin, "Beta", "beta").await;
    let mut sa = s.service_accounts().await;
    for name in ["e-sync", "a-sync", "c-backup", "b-sync", "d-sync"] {
        create(&mut sa, &admin, &a, name).await;
    }
    create(&mut sa, &admin, &b, "b-other").await;
    create(&mut sa, &admin, "", "a-platform").await;

    // Pages of two, by name, the total on each.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut sa, &admin, &a, "", 2, &token)
            .await
            .expect("page");
        assert_eq!(page.total_size, 5);
        assert!(page.service_accounts.len() <= 2);
        names.extend(page.service_accounts.into_iter().map(|x| x.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names, ["a-sync", "b-sync", "c-backup", "d-sync", "e-sync"]);

    // Search: name or description, case-insensitive; "_" is literal.
    let found = list(&mut sa, &admin, &a, "SYNC", 50, "")
        .await
        .expect("search");
    assert_eq!(found.total_size, 4);
    let found = list(&mut sa, &admin, &a, "backup service", 50, "")
        .await
        .expect("search");
    assert_eq!(found.service_accounts[0].name, "c-backup");
    assert_eq!(
        list(&mut sa, &admin, &a, "_", 50, "")
            .await
            .expect("search")
            .total_size,
        0
    );

    // A PlatformAdmin without filter: everything, platform accounts included.
    assert_eq!(
        list(&mut sa, &admin, "", "", 50, "")
            .await
            .expect("all")
            .total_size,
        7
    );
    // A Manager without filter: their organizations' only.
    let mine = list(&mut sa, &mgr, "", "", 50, "").await.expect("mine");
    assert_eq!(mine.total_size, 5);
    assert!(mine.service_accounts.iter().all(|x| x.organization_id == a));
    // A filter on an organization they do not manage, or do not belong to.
    assert_status(
        list(&mut sa, &mgr, &b, "", 50, "").await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        list(&mut sa, &mem, &a, "", 50, "").await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_eq!(
        list(&mut sa, &mem, "", "", 50, "")
            .await
            .expect("none")
            .total_size,
        0
    );
    // A page token is bound to its listing.
    let first = list(&mut sa, &admin, &a, "", 2, "").await.expect("page");
    assert_invalid(
        list(&mut sa, &admin, &a, "sync", 2, &first.next_page_token).await,
        "page_token",
    );
}

async fn a_secret_is_shown_once_and_stored_only_hashed(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "secretive").await;
    let added = add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("secret");
    let secret = added.secret.clone();
    assert!(
        secret.starts_with("kiops_sa_") && secret.len() == 9 + 43,
        "{secret}"
    );
    let cred = added.credential.expect("credential");
    assert_eq!(cred.r#type, CredentialType::Secret as i32);
    assert_eq!(cred.fingerprint, fingerprint(secret.as_bytes()));
    assert!(cred.last_use_time.is_none());

    // Never again: not in the listing, the account, or the database.
    let listed = credentials(&mut sa, &admin, &account.service_account_id).await;
    assert_eq!(listed, vec![cred.clone()]);
    assert!(!format!("{listed:?}").contains(&secret[9..]));
    let again = get(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("get");
    assert!(!format!("{again:?}").contains(&secret[9..]));
    let copy = database_copy(&s).await;
    assert!(
        !contains(&copy, secret.as_bytes()),
        "the secret is in the database"
    );
    assert!(
        !contains(&copy, &secret.as_bytes()[9..]),
        "the secret is in the database"
    );
    // What is there is its SHA-256.
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    assert!(contains(&copy, hash.as_bytes()), "the hash is stored");
}

async fn a_generated_private_key_is_shown_once_and_never_stored(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "keyed").await;
    let added = sa
        .add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: account.service_account_id.clone(),
                public_key_pem: String::new(),
            },
            &admin,
        ))
        .await
        .expect("add key")
        .into_inner();
    let cred = added.credential.expect("credential");
    assert_eq!(cred.r#type, CredentialType::Key as i32);
    assert!(added
        .private_key_pem
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let file =
        kiops_token::service_account::KeyFile::from_json(&added.key_file_json).expect("key file");
    assert_eq!(file.service_account_id, account.service_account_id);
    assert_eq!(file.credential_id, cred.credential_id);
    assert_eq!(file.issuer, token_claims(&admin)["iss"]);
    assert_eq!(file.private_key_pem, added.private_key_pem);
    // Its public part is what was fingerprinted.
    let raw = public_of(&added.private_key_pem);
    assert_eq!(cred.fingerprint, fingerprint(&raw));

    let listed = credentials(&mut sa, &admin, &account.service_account_id).await;
    assert_eq!(listed, vec![cred]);
    let body: String = added
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!format!("{listed:?}").contains(&body));
    let copy = database_copy(&s).await;
    assert!(
        !contains(&copy, body.as_bytes()),
        "the private key is in the database"
    );
    // The public key is stored, as base64 of its 32 bytes.
    use base64::Engine;
    let stored = base64::engine::general_purpose::STANDARD.encode(raw);
    assert!(
        contains(&copy, stored.as_bytes()),
        "the public key is stored"
    );
}

async fn an_uploaded_public_key_is_fingerprinted_and_returns_no_private_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "uploader").await;
    let (private, raw) = kiops_token::service_account::generate_key().expect("key");
    let pem = kiops_token::service_account::public_key_to_pem(&raw).expect("pem");
    let added = sa
        .add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: account.service_account_id.clone(),
                public_key_pem: pem,
            },
            &admin,
        ))
        .await
        .expect("add key")
        .into_inner();
    assert!(added.private_key_pem.is_empty() && added.key_file_json.is_empty());
    let cred = added.credential.expect("credential");
    assert_eq!(cred.fingerprint, fingerprint(&raw));
    assert_eq!(cred.service_account_id, account.service_account_id);
    assert!(!private.is_empty());
    // Newest first.
    let second = add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("secret")
        .credential
        .expect("credential");
    let listed = credentials(&mut sa, &admin, &account.service_account_id).await;
    assert_eq!(listed, vec![second, cred]);
}

async fn twenty_parallel_secrets_leave_exactly_ten_credentials(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let sa = s.service_accounts().await;
    let account = create(&mut sa.clone(), &admin, "", "busy").await;
    let calls = (0..20).map(|_| {
        let mut sa = sa.clone();
        let (admin, id) = (admin.clone(), account.service_account_id.clone());
        tokio::spawn(async move { add_secret(&mut sa, &admin, &id).await })
    });
    let mut ok = 0;
    for call in futures::future::join_all(calls).await {
        match call.expect("task") {
            Ok(_) => ok += 1,
            Err(st) => {
                assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
                assert_eq!(reason(&st), "TOO_MANY_CREDENTIALS");
            }
        }
    }
    assert_eq!(ok, 10);
    let listed = credentials(&mut sa.clone(), &admin, &account.service_account_id).await;
    assert_eq!(listed.len(), 10);
    // Removing one makes room for exactly one.
    let mut sa = sa;
    sa.remove_service_account_credential(authed(
        RemoveServiceAccountCredentialRequest {
            service_account_id: account.service_account_id.clone(),
            credential_id: listed[3].credential_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("remove");
    add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("room for one");
    assert_status(
        add_secret(&mut sa, &admin, &account.service_account_id).await,
        Code::FailedPrecondition,
        "TOO_MANY_CREDENTIALS",
    );
}

async fn twenty_parallel_creates_of_one_name_make_one_account(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Race", "race").await;
    let sa = s.service_accounts().await;
    let calls = (0..20).map(|_| {
        let mut sa = sa.clone();
        let (admin, org) = (admin.clone(), org.clone());
        tokio::spawn(async move {
            sa.create_service_account(authed(create_req(&org, "racer", &[]), &admin))
                .await
        })
    });
    let mut ok = 0;
    for call in futures::future::join_all(calls).await {
        match call.expect("task") {
            Ok(_) => ok += 1,
            Err(st) => {
                assert_eq!(st.code(), Code::AlreadyExists, "{st:?}");
                assert_eq!(reason(&st), "SERVICE_ACCOUNT_NAME_TAKEN");
            }
        }
    }
    assert_eq!(ok, 1);
    let listed = list(&mut sa.clone(), &admin, &org, "", 50, "")
        .await
        .expect("list");
    assert_eq!(listed.total_size, 1);
}

async fn removing_a_credential_is_on_the_revocation_stream(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "rotating").await;
    let keep = add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("secret")
        .credential
        .expect("credential");
    let gone = add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("secret")
        .credential
        .expect("credential");
    let mut w = watch(&s, &admin).await;
    sa.remove_service_account_credential(authed(
        RemoveServiceAccountCredentialRequest {
            service_account_id: account.service_account_id.clone(),
            credential_id: gone.credential_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("remove");
    let e = next_event(&mut w).await;
    assert_eq!(e.user_id, account.service_account_id);
    assert_eq!(e.session_id, gone.credential_id);
    assert_eq!(e.organization_id, "");
    assert_eq!(e.reason, "credential_removed");
    assert_eq!(
        credentials(&mut sa, &admin, &account.service_account_id).await,
        vec![keep]
    );
    // Removing it again: it is gone; and another account's credential
    // cannot be removed through this one.
    let other = create(&mut sa, &admin, "", "other").await;
    let theirs = add_secret(&mut sa, &admin, &other.service_account_id)
        .await
        .expect("secret")
        .credential
        .expect("credential");
    for (acc, cred) in [
        (&account.service_account_id, &gone.credential_id),
        (&account.service_account_id, &theirs.credential_id),
    ] {
        assert_status(
            sa.remove_service_account_credential(authed(
                RemoveServiceAccountCredentialRequest {
                    service_account_id: acc.clone(),
                    credential_id: cred.clone(),
                },
                &admin,
            ))
            .await,
            Code::NotFound,
            "NOT_FOUND",
        );
    }
    assert_eq!(
        credentials(&mut sa, &admin, &other.service_account_id).await,
        vec![theirs]
    );
}

async fn disabling_is_on_the_revocation_stream_and_enabling_is_not(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (org, mgr, _) = org_with_people(&s, &admin, "delta").await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &mgr, &org, "pausable").await;
    let mut w = watch(&s, &admin).await;
    let req = || DisableServiceAccountRequest {
        service_account_id: account.service_account_id.clone(),
    };
    sa.disable_service_account(authed(req(), &mgr))
        .await
        .expect("disable");
    let e = next_event(&mut w).await;
    assert_eq!(e.user_id, account.service_account_id);
    assert_eq!(e.session_id, "");
    assert_eq!(e.reason, "service_account_disabled");
    // Disabling again, and enabling, end nothing: the next event is the
    // deletion's.
    sa.disable_service_account(authed(req(), &mgr))
        .await
        .expect("again");
    sa.enable_service_account(authed(
        EnableServiceAccountRequest {
            service_account_id: account.service_account_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("enable");
    sa.delete_service_account(authed(
        DeleteServiceAccountRequest {
            service_account_id: account.service_account_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("delete");
    assert_eq!(next_event(&mut w).await.reason, "service_account_deleted");
}

async fn deleting_an_account_removes_its_credentials_and_is_on_the_stream(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "doomed").await;
    add_secret(&mut sa, &admin, &account.service_account_id)
        .await
        .expect("secret");
    let mut w = watch(&s, &admin).await;
    sa.delete_service_account(authed(
        DeleteServiceAccountRequest {
            service_account_id: account.service_account_id.clone(),
        },
        &admin,
    ))
    .await
    .expect("delete");
    let e = next_event(&mut w).await;
    assert_eq!(e.user_id, account.service_account_id);
    assert_eq!(e.session_id, "");
    assert_eq!(e.reason, "service_account_deleted");
    let left = crate::hardening_mail::sql_rows(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM service_account_credentials \
             WHERE service_account_id = '{}'",
            account.service_account_id
        ),
    )
    .await;
    assert_eq!(left[0].try_get::<i64>("", "n").expect("n"), 0);
    // A name freed by deletion can be used again.
    create(&mut sa, &admin, "", "doomed").await;
}

async fn narrowing_scopes_is_on_the_revocation_stream(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &admin, "", "scoped").await;
    let mut w = watch(&s, &admin).await;
    let update = |scopes: &[&str], identity: &str, paths: &[&str]| UpdateServiceAccountRequest {
        service_account: Some(ServiceAccount {
            service_account_id: account.service_account_id.clone(),
            scopes: scopes.iter().map(|x| x.to_string()).collect(),
            certificate_identity: identity.into(),
            description: "unchanged scopes".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|x| x.to_string()).collect(),
        }),
    };
    // Widening and editing the description end nothing.
    let all = [
        "permissions.check",
        "revocations.watch",
        "members.read",
        "users.read",
        "audit.read",
    ];
    for r in [
        update(&all, "", &["scopes"]),
        update(&[], "", &["description"]),
    ] {
        sa.update_service_account(authed(r, &admin))
            .await
            .expect("update");
    }
    // Narrowing does.
    sa.update_service_account(authed(update(&["members.read"], "", &["scopes"]), &admin))
        .await
        .expect("narrow");
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.user_id.as_str(), e.reason.as_str(), e.session_id.as_str()),
        (account.service_account_id.as_str(), "scopes_changed", "")
    );
    // So does binding it to a certificate.
    sa.update_service_account(authed(
        update(&[], "spiffe://kiops/scoped", &["certificate_identity"]),
        &admin,
    ))
    .await
    .expect("bind");
    assert_eq!(next_event(&mut w).await.reason, "scopes_changed");
}

async fn deleting_an_organization_removes_its_accounts_and_revokes_them(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Gone", "gone").await;
    let keep = s.create_org(&admin, "Kept", "kept").await;
    let mut sa = s.service_accounts().await;
    let one = create(&mut sa, &admin, &org, "one").await;
    let two = create(&mut sa, &admin, &org, "two").await;
    add_secret(&mut sa, &admin, &one.service_account_id)
        .await
        .expect("secret");
    let kept = create(&mut sa, &admin, &keep, "one").await;
    let platform = create(&mut sa, &admin, "", "one").await;
    let mut w = watch(&s, &admin).await;
    s.orgs()
        .await
        .delete_organization(authed(
            DeleteOrganizationRequest {
                organization_id: org.clone(),
            },
            &admin,
        ))
        .await
        .expect("delete organization");
    let mut events = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut w).await;
        events.push((e.user_id, e.reason));
    }
    events.sort();
    let mut want = vec![
        (String::new(), "organization_deleted".to_string()),
        (
            one.service_account_id.clone(),
            "service_account_deleted".into(),
        ),
        (
            two.service_account_id.clone(),
            "service_account_deleted".into(),
        ),
    ];
    want.sort();
    assert_eq!(events, want);
    for id in [&one.service_account_id, &two.service_account_id] {
        assert_status(get(&mut sa, &admin, id).await, Code::NotFound, "NOT_FOUND");
    }
    let left = crate::hardening_mail::sql_rows(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM service_account_credentials \
             WHERE service_account_id = '{}'",
            one.service_account_id
        ),
    )
    .await;
    assert_eq!(left[0].try_get::<i64>("", "n").expect("n"), 0);
    assert!(get(&mut sa, &admin, &kept.service_account_id).await.is_ok());
    assert!(get(&mut sa, &admin, &platform.service_account_id)
        .await
        .is_ok());
}

async fn changes_are_audited_as_the_user_who_made_them(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let (org, mgr, _) = org_with_people(&s, &admin, "epsilon").await;
    let mgr_id = token_claims(&mgr)["sub"].as_str().expect("sub").to_string();
    let mut sa = s.service_accounts().await;
    let account = create(&mut sa, &mgr, &org, "audited").await;
    let id = account.service_account_id.clone();
    let added = add_secret(&mut sa, &mgr, &id).await.expect("secret");
    let cred = added.credential.expect("credential");
    sa.update_service_account(authed(
        UpdateServiceAccountRequest {
            service_account: Some(ServiceAccount {
                service_account_id: id.clone(),
                description: "new".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
        },
        &mgr,
    ))
    .await
    .expect("update");
    sa.disable_service_account(authed(
        DisableServiceAccountRequest {
            service_account_id: id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("disable");
    sa.enable_service_account(authed(
        EnableServiceAccountRequest {
            service_account_id: id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("enable");
    sa.remove_service_account_credential(authed(
        RemoveServiceAccountCredentialRequest {
            service_account_id: id.clone(),
            credential_id: cred.credential_id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("remove");
    sa.delete_service_account(authed(
        DeleteServiceAccountRequest {
            service_account_id: id.clone(),
        },
        &mgr,
    ))
    .await
    .expect("delete");

    let events = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                organization_id: Some(org.clone()),
                target_id: id.clone(),
                page_size: 100,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    let mut actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "service_account.created",
            "service_account.credential_added",
            "service_account.credential_removed",
            "service_account.deleted",
            "service_account.disabled",
            "service_account.enabled",
            "service_account.updated",
        ]
    );
    for e in &events {
        assert_eq!(e.actor_type, "user", "{e:?}");
        assert_eq!(e.actor_id, mgr_id, "{e:?}");
        assert_eq!(e.organization_id, org, "{e:?}");
        assert_eq!(e.target_type, "service_account", "{e:?}");
        assert!(!e.details_json.contains(&added.secret[9..]), "{e:?}");
    }
    let added_event = events
        .iter()
        .find(|e| e.action == "service_account.credential_added")
        .expect("credential_added");
    let details: serde_json::Value =
        serde_json::from_str(&added_event.details_json).expect("details");
    assert_eq!(details["credential_id"], cred.credential_id);
    assert_eq!(details["type"], "secret");
    assert_eq!(details["fingerprint"], cred.fingerprint);
}

/// Runs `kiops-identity service-accounts create` on the server's database.
fn cli_create(s: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary())
        .args(["service-accounts", "create", "--database-url", &s.db.url])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KIOPS_ISSUER")
        .output()
        .expect("service-accounts create")
}

async fn the_command_line_creates_an_account_and_a_0600_key_file(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Devices", "devices").await;
    let dir = tempfile::tempdir().expect("dir");
    let key_out = dir.path().join("device.json");
    let out = cli_create(
        &s,
        &[
            "--name",
            "device",
            "--scopes",
            "revocations.watch,permissions.check",
            "--owner",
            "devices",
            "--description",
            "the device service",
            "--certificate-identity",
            "spiffe://kiops/device",
            "--key-out",
            key_out.to_str().expect("path"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mode = std::fs::metadata(&key_out)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let file = kiops_token::service_account::KeyFile::from_json(
        &std::fs::read_to_string(&key_out).expect("read"),
    )
    .expect("a key file");
    assert_eq!(file.issuer, token_claims(&admin)["iss"]);
    // The ids are printed, the key never.
    assert!(stdout.contains(&file.service_account_id), "{stdout}");
    assert!(stdout.contains(&file.credential_id), "{stdout}");
    let body: String = file
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let all_output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!all_output.contains(&body), "the key was printed");

    // The server sees the account and its key.
    let mut sa = s.service_accounts().await;
    let account = get(&mut sa, &admin, &file.service_account_id)
        .await
        .expect("get");
    assert_eq!(account.organization_id, org);
    assert_eq!(account.name, "device");
    assert_eq!(account.scopes, ["permissions.check", "revocations.watch"]);
    assert_eq!(account.certificate_identity, "spiffe://kiops/device");
    assert_eq!(account.created_by, "");
    let creds = credentials(&mut sa, &admin, &file.service_account_id).await;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].credential_id, file.credential_id);
    assert_eq!(creds[0].r#type, CredentialType::Key as i32);
    assert_eq!(
        creds[0].fingerprint,
        fingerprint(&public_of(&file.private_key_pem))
    );
    // Audited as the system.
    let events = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                target_id: file.service_account_id.clone(),
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
        .all(|e| e.actor_type == "system" && e.organization_id == org));

    // A platform account, too.
    let platform_out = dir.path().join("platform.json");
    let out = cli_create(
        &s,
        &[
            "--name",
            "watcher",
            "--scopes",
            "revocations.watch",
            "--owner",
            "platform",
            "--key-out",
            platform_out.to_str().expect("path"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = kiops_token::service_account::KeyFile::from_json(
        &std::fs::read_to_string(&platform_out).expect("read"),
    )
    .expect("a key file");
    let account = get(&mut sa, &admin, &file.service_account_id)
        .await
        .expect("get");
    assert_eq!(account.organization_id, "");
}

async fn the_command_line_never_overwrites_a_key_file_nor_leaves_one_on_failure(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let dir = tempfile::tempdir().expect("dir");
    let existing = dir.path().join("in-use.json");
    std::fs::write(&existing, "the key in use").expect("write");
    let args = |path: &std::path::Path, owner: &str, scopes: &str| {
        vec![
            "--name".to_string(),
            "device".into(),
            "--scopes".into(),
            scopes.into(),
            "--owner".into(),
            owner.into(),
            "--key-out".into(),
            path.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli_create(&s, &a)
    };
    let out = run(args(&existing, "platform", "permissions.check"));
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&existing).expect("read"),
        "the key in use"
    );
    // Nothing was created in the database either.
    let mut sa = s.service_accounts().await;
    assert_eq!(
        list(&mut sa, &admin, "", "", 50, "")
            .await
            .expect("list")
            .total_size,
        0
    );

    // An unknown organization, an unknown scope: refused, no file left.
    let fresh = dir.path().join("fresh.json");
    for a in [
        args(&fresh, "no-such-org", "permissions.check"),
        args(&fresh, "platform", "admin"),
    ] {
        let out = run(a);
        assert!(!out.status.success());
        assert!(!fresh.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(
        list(&mut sa, &admin, "", "", 50, "")
            .await
            .expect("list")
            .total_size,
        0
    );
}

/// SHA-256, base64url, first 16 characters (service_account.proto).
fn fingerprint(material: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut f =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(material));
    f.truncate(16);
    f
}

/// The raw public key of a PKCS#8 PEM Ed25519 private key.
fn public_of(private_pem: &str) -> [u8; 32] {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
        .expect("private key")
        .verifying_key()
        .to_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
