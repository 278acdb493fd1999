//! Service accounts on the read RPCs (R25 of docs/rules.md): each scope
//! opens its RPCs and nothing else; an organization's account stays inside
//! its organization; a service's streams end when its account loses the
//! right; a service's export is audited as a service's.

use crate::support::*;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

crate::both_backends!(
    each_scope_opens_its_rpcs_and_no_other,
    an_organizations_account_stays_in_its_organization,
    a_service_answers_checks_like_a_platform_admin_inside_its_reach,
    an_organizations_account_cannot_watch_revocations,
    service_streams_end_when_the_account_loses_the_right,
    a_disabled_or_deleted_account_is_refused_on_every_scoped_rpc,
    a_services_export_is_audited_as_a_service,
);

const PERMISSIONS_CHECK: &str = "permissions.check";
const REVOCATIONS_WATCH: &str = "revocations.watch";
const MEMBERS_READ: &str = "members.read";
const USERS_READ: &str = "users.read";
const AUDIT_READ: &str = "audit.read";
const SCOPES: [&str; 5] = [
    PERMISSIONS_CHECK,
    REVOCATIONS_WATCH,
    MEMBERS_READ,
    USERS_READ,
    AUDIT_READ,
];

/// A service account and a token of one of its credentials.
struct Svc {
    id: String,
    credential: String,
    token: String,
}

/// A server with an organization X (a Manager, a Member granted `device`,
/// a Member with nothing) and an organization Y (a Manager, a Member), a
/// user in neither, and a way to make service accounts.
struct Env {
    s: TestServer,
    admin: String,
    c: Clients,
    n: std::sync::atomic::AtomicUsize,
    x: String,
    y: String,
    x_mgr: String,
    x_mem: String,
    x_bare: String,
    y_mem: String,
    nobody: String,
}

impl Env {
    async fn start(backend: Backend) -> Env {
        let s = TestServer::start(backend).await;
        let admin = s.admin_token().await;
        let c = s.clients().await;
        let x = s.create_org(&admin, "X", "org-x").await;
        let y = s.create_org(&admin, "Y", "org-y").await;
        let (x_mgr, _) = s.user("mgr@x.io").await;
        let (x_mem, _) = s.user("mem@x.io").await;
        let (x_bare, _) = s.user("bare@x.io").await;
        let (y_mgr, _) = s.user("mgr@y.io").await;
        let (y_mem, _) = s.user("mem@y.io").await;
        let (nobody, _) = s.user("nobody@z.io").await;
        s.add_member(&admin, &x, &x_mgr, Role::Manager).await;
        s.add_member(&admin, &x, &x_mem, Role::Member).await;
        s.add_member(&admin, &x, &x_bare, Role::Member).await;
        s.add_member(&admin, &y, &y_mgr, Role::Manager).await;
        s.add_member(&admin, &y, &y_mem, Role::Member).await;
        let env = Env {
            s,
            admin,
            c,
            n: Default::default(),
            x,
            y,
            x_mgr,
            x_mem,
            x_bare,
            y_mem,
            nobody,
        };
        env.grant(&env.x, &env.x_mem, vec![Permission::Device])
            .await;
        env
    }

    async fn grant(&self, org: &str, user: &str, perms: Vec<Permission>) {
        self.s
            .members()
            .await
            .set_permissions(authed(
                SetPermissionsRequest {
                    organization_id: org.into(),
                    user_id: user.into(),
                    permissions: perms.into_iter().map(|p| p as i32).collect(),
                },
                &self.admin,
            ))
            .await
            .expect("set permissions");
    }

    fn accounts(&self) -> ServiceAccountServiceClient<Channel> {
        self.c.service_accounts.clone()
    }

    /// A new active account of `owner` (the platform when None) holding
    /// `scopes`, with one client secret and a token exchanged for it, all
    /// through the API as the PlatformAdmin.
    async fn service(&self, owner: Option<&str>, scopes: &[&str]) -> Svc {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = self
            .accounts()
            .create_service_account(authed(
                CreateServiceAccountRequest {
                    organization_id: owner.unwrap_or_default().to_string(),
                    name: format!("svc-{n}"),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("create service account")
            .into_inner()
            .service_account
            .expect("account")
            .service_account_id;
        let added = self
            .accounts()
            .add_service_account_secret(authed(
                AddServiceAccountSecretRequest {
                    service_account_id: id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("add secret")
            .into_inner();
        let token = self
            .c
            .auth
            .clone()
            .issue_service_account_token(IssueServiceAccountTokenRequest {
                credential: Some(
                    issue_service_account_token_request::Credential::ClientSecret(ClientSecret {
                        service_account_id: id.clone(),
                        secret: added.secret,
                    }),
                ),
            })
            .await
            .expect("exchange")
            .into_inner()
            .access_token;
        Svc {
            id,
            credential: added.credential.expect("credential").credential_id,
            token,
        }
    }

    async fn remove_credential(&self, svc: &Svc) {
        self.accounts()
            .remove_service_account_credential(authed(
                RemoveServiceAccountCredentialRequest {
                    service_account_id: svc.id.clone(),
                    credential_id: svc.credential.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("remove credential");
    }

    async fn set_scopes(&self, svc: &Svc, scopes: &[&str]) {
        self.accounts()
            .update_service_account(authed(
                UpdateServiceAccountRequest {
                    service_account: Some(ServiceAccount {
                        service_account_id: svc.id.clone(),
                        scopes: scopes.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["scopes".into()],
                    }),
                },
                &self.admin,
            ))
            .await
            .expect("update scopes");
    }

    async fn disable(&self, svc: &Svc) {
        self.accounts()
            .disable_service_account(authed(
                DisableServiceAccountRequest {
                    service_account_id: svc.id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("disable");
    }

    async fn delete(&self, svc: &Svc) {
        self.accounts()
            .delete_service_account(authed(
                DeleteServiceAccountRequest {
                    service_account_id: svc.id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("delete");
    }
}

fn check(user: &str, org: &str, p: Permission) -> CheckPermissionRequest {
    CheckPermissionRequest {
        user_id: user.into(),
        organization_id: org.into(),
        permission: p as i32,
    }
}

/// The RPCs a scope opens, each with a request that succeeds for a
/// platform account holding that scope, in organization `org` about `user`.
fn scoped_rpcs(org: &str, user: &str) -> Vec<(&'static str, Rpc)> {
    vec![
        (
            PERMISSIONS_CHECK,
            Rpc::CheckPermission(check(user, org, Permission::Device)),
        ),
        (
            PERMISSIONS_CHECK,
            Rpc::CheckPermissions(CheckPermissionsRequest {
                items: vec![
                    check(user, org, Permission::Device),
                    check(user, org, Permission::Vpn),
                ],
            }),
        ),
        (
            REVOCATIONS_WATCH,
            Rpc::WatchRevocations(WatchRevocationsRequest::default()),
        ),
        (
            MEMBERS_READ,
            Rpc::ListMembers(ListMembersRequest {
                organization_id: org.into(),
                ..Default::default()
            }),
        ),
        (
            MEMBERS_READ,
            Rpc::GetMember(GetMemberRequest {
                organization_id: org.into(),
                user_id: user.into(),
            }),
        ),
        (
            USERS_READ,
            Rpc::GetUser(GetUserRequest {
                user_id: user.into(),
            }),
        ),
        (USERS_READ, Rpc::ListUsers(ListUsersRequest::default())),
        (
            AUDIT_READ,
            Rpc::ListAuditEvents(ListAuditEventsRequest {
                organization_id: Some(org.into()),
                ..Default::default()
            }),
        ),
        (
            AUDIT_READ,
            Rpc::ExportAuditEvents(ExportAuditEventsRequest {
                organization_id: Some(org.into()),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            }),
        ),
    ]
}

/// RPCs no scope opens: every change, and the reads that are a person's.
fn closed_rpcs(org: &str, user: &str) -> Vec<Rpc> {
    vec![
        Rpc::GetMe(GetMeRequest {}),
        Rpc::ListMyMemberships(ListMyMembershipsRequest::default()),
        Rpc::ListOrganizations(ListOrganizationsRequest::default()),
        Rpc::GetOrganization(GetOrganizationRequest {
            organization_id: org.into(),
        }),
        Rpc::UpdateOrganization(UpdateOrganizationRequest {
            organization: Some(Organization {
                organization_id: org.into(),
                name: "Taken".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        }),
        Rpc::DeleteOrganization(DeleteOrganizationRequest {
            organization_id: org.into(),
        }),
        Rpc::AddMember(AddMemberRequest {
            organization_id: org.into(),
            user_id: user.into(),
            role: Role::Member as i32,
        }),
        Rpc::ChangeRole(ChangeRoleRequest {
            organization_id: org.into(),
            user_id: user.into(),
            role: Role::Manager as i32,
        }),
        Rpc::SetPermissions(SetPermissionsRequest {
            organization_id: org.into(),
            user_id: user.into(),
            permissions: vec![Permission::Vpn as i32],
        }),
        Rpc::RemoveMember(RemoveMemberRequest {
            organization_id: org.into(),
            user_id: user.into(),
        }),
        Rpc::CreatePermissionTemplate(CreatePermissionTemplateRequest {
            organization_id: org.into(),
            name: "t".into(),
            permissions: vec![Permission::Vpn as i32],
        }),
        Rpc::SendPasswordReset(SendPasswordResetRequest {
            organization_id: org.into(),
            user_id: user.into(),
        }),
        Rpc::CreateInvitation(CreateInvitationRequest {
            organization_id: org.into(),
            email: "new@x.io".into(),
            role: Role::Member as i32,
            ..Default::default()
        }),
        Rpc::ListJoinRequests(ListJoinRequestsRequest {
            organization_id: Some(org.into()),
            ..Default::default()
        }),
        Rpc::CreateUser(CreateUserRequest {
            email: "made@x.io".into(),
            name: "Made".into(),
            password: PASSWORD.into(),
            platform_admin: true,
        }),
        Rpc::DeactivateUser(DeactivateUserRequest {
            user_id: user.into(),
        }),
        Rpc::SetPlatformAdmin(SetPlatformAdminRequest {
            user_id: user.into(),
            platform_admin: true,
        }),
        Rpc::DeleteUser(DeleteUserRequest {
            user_id: user.into(),
        }),
    ]
}

/// The `scope` metadata of a SCOPE_REQUIRED refusal.
fn missing_scope(st: &Status) -> String {
    assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
    assert_eq!(reason(st), "SCOPE_REQUIRED", "{st:?}");
    st.get_details_error_info()
        .and_then(|i| i.metadata.get("scope").cloned())
        .expect("scope metadata")
}

async fn each_scope_opens_its_rpcs_and_no_other(backend: Backend) {
    let env = Env::start(backend).await;
    let c = env.s.clients().await;
    for scope in SCOPES {
        let svc = env.service(None, &[scope]).await;
        for (needs, rpc) in scoped_rpcs(&env.x, &env.x_mem) {
            let name = rpc.name();
            let got = rpc.send(&c, Some(&svc.token), None).await;
            if needs == scope {
                got.unwrap_or_else(|e| panic!("{name} with {scope}: {e:?}"));
            } else {
                let st = got.expect_err(name);
                assert_eq!(missing_scope(&st), needs, "{name} with {scope}");
            }
        }
    }
    // Every scope together opens nothing else, and changes nothing.
    let all = env.service(None, &SCOPES).await;
    for rpc in closed_rpcs(&env.x, &env.x_bare) {
        let name = rpc.name();
        let st = rpc.send(&c, Some(&all.token), None).await.expect_err(name);
        assert_eq!(missing_scope(&st), "", "{name}");
    }
    let member = env
        .s
        .members()
        .await
        .get_member(authed(
            GetMemberRequest {
                organization_id: env.x.clone(),
                user_id: env.x_bare.clone(),
            },
            &env.admin,
        ))
        .await
        .expect("still a member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(member.role, Role::Member as i32);
    assert!(member.granted_permissions.is_empty());
}

async fn an_organizations_account_stays_in_its_organization(backend: Backend) {
    let env = Env::start(backend).await;
    let c = env.s.clients().await;
    let own = env.service(Some(&env.x), &SCOPES).await;
    // Inside X: every scoped RPC works.
    for (_, rpc) in scoped_rpcs(&env.x, &env.x_mem) {
        let name = rpc.name();
        let got = rpc.send(&c, Some(&own.token), None).await;
        match name {
            // Accounts and the revocation feed are platform-wide reads.
            "UserService/ListUsers" | "UserService/GetUser" | "AuthService/WatchRevocations" => {
                assert_status(got, Code::PermissionDenied, "PLATFORM_ACCOUNT_REQUIRED");
            }
            _ => got.unwrap_or_else(|e| panic!("{name} in its organization: {e:?}")),
        }
    }
    // In Y, and about Y's users: nothing exists.
    for (_, rpc) in scoped_rpcs(&env.y, &env.y_mem) {
        let name = rpc.name();
        let got = rpc.send(&c, Some(&own.token), None).await;
        match name {
            "UserService/ListUsers" | "UserService/GetUser" | "AuthService/WatchRevocations" => {
                assert_status(got, Code::PermissionDenied, "PLATFORM_ACCOUNT_REQUIRED");
            }
            _ => {
                assert_status(got, Code::NotFound, "NOT_FOUND");
            }
        }
    }
    // Reading accounts is a PlatformAdmin's, which X's Managers may not:
    // GetUser is refused for X's own members too (members.read reads them).
    let mut users = env.s.users().await;
    for user in [&env.nobody, &env.x_bare, &env.y_mem] {
        let got = users
            .get_user(authed(
                GetUserRequest {
                    user_id: user.clone(),
                },
                &own.token,
            ))
            .await;
        assert_status(got, Code::PermissionDenied, "PLATFORM_ACCOUNT_REQUIRED");
    }
    // Every organization's trail is not its to read.
    assert_status(
        env.s
            .audit()
            .await
            .list_audit_events(authed(ListAuditEventsRequest::default(), &own.token))
            .await,
        Code::PermissionDenied,
        "PLATFORM_ACCOUNT_REQUIRED",
    );
    // One item in Y among allowed ones refuses the whole bulk check.
    let mut items: Vec<_> = (0..50)
        .map(|_| check(&env.x_mem, &env.x, Permission::Device))
        .collect();
    items[31] = check(&env.x_mem, &env.y, Permission::Device);
    let st = assert_status(
        env.s
            .members()
            .await
            .check_permissions(authed(CheckPermissionsRequest { items }, &own.token))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(st.message().starts_with("items[31]:"), "{st:?}");
    // Y's own account is just as blind to X.
    let theirs = env.service(Some(&env.y), &SCOPES).await;
    assert_status(
        env.s
            .members()
            .await
            .check_permission(authed(
                check(&env.x_mem, &env.x, Permission::Device),
                &theirs.token,
            ))
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn a_service_answers_checks_like_a_platform_admin_inside_its_reach(backend: Backend) {
    let env = Env::start(backend).await;
    let mut m = env.s.members().await;
    let own = env.service(Some(&env.x), &[PERMISSIONS_CHECK]).await;
    let platform = env.service(None, &[PERMISSIONS_CHECK]).await;
    let mut items = Vec::new();
    for user in [&env.x_mgr, &env.x_mem, &env.x_bare, &env.y_mem, &env.nobody] {
        for p in [Permission::Device, Permission::Vpn, Permission::Audit] {
            items.push(check(user, &env.x, p));
        }
    }
    let mut expected = Vec::new();
    for it in &items {
        expected.push(
            m.check_permission(authed(it.clone(), &env.admin))
                .await
                .expect("admin check")
                .into_inner()
                .allowed,
        );
    }
    assert!(expected.iter().any(|a| *a) && expected.iter().any(|a| !*a));
    for svc in [&own, &platform] {
        let mut singles = Vec::new();
        for it in &items {
            singles.push(
                m.check_permission(authed(it.clone(), &svc.token))
                    .await
                    .expect("service check")
                    .into_inner()
                    .allowed,
            );
        }
        assert_eq!(singles, expected);
        let bulk: Vec<bool> = m
            .check_permissions(authed(
                CheckPermissionsRequest {
                    items: items.clone(),
                },
                &svc.token,
            ))
            .await
            .expect("service bulk check")
            .into_inner()
            .results
            .iter()
            .map(|r| r.allowed)
            .collect();
        assert_eq!(bulk, expected);
    }
    // A platform account checks in Y as well; bad input is judged as for people.
    assert!(m
        .check_permission(authed(
            check(&env.y_mem, &env.y, Permission::Device),
            &platform.token
        ))
        .await
        .is_ok());
    assert_invalid(
        m.check_permission(authed(check("bad", &env.x, Permission::Device), &own.token))
            .await,
        "user_id",
    );
    // A change committed before the check is seen at once.
    env.grant(&env.x, &env.x_mem, vec![]).await;
    let allowed = m
        .check_permission(authed(
            check(&env.x_mem, &env.x, Permission::Device),
            &own.token,
        ))
        .await
        .expect("check")
        .into_inner()
        .allowed;
    assert!(!allowed);
}

async fn watch(s: &TestServer, token: &str) -> tonic::Streaming<WatchRevocationsResponse> {
    s.auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), token))
        .await
        .expect("watch")
        .into_inner()
}

/// The revocation feed names users of every organization: an
/// organization's account holding revocations.watch may not follow it
/// (R25, PLATFORM_ACCOUNT_REQUIRED); a platform account may.
async fn an_organizations_account_cannot_watch_revocations(backend: Backend) {
    let env = Env::start(backend).await;
    let own = env.service(Some(&env.x), &[REVOCATIONS_WATCH]).await;
    let got = env
        .s
        .auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), &own.token))
        .await;
    assert_status(got, Code::PermissionDenied, "PLATFORM_ACCOUNT_REQUIRED");
    let platform = env.service(None, &[REVOCATIONS_WATCH]).await;
    watch(&env.s, &platform.token).await;
}

/// Reads a stream until it ends: its final error.
async fn ends<T>(mut stream: tonic::Streaming<T>) -> Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => panic!("the stream is still open 10 s after the account lost the right"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(e)) => return e,
        }
    }
}

async fn export(
    s: &TestServer,
    token: &str,
    org: &str,
) -> tonic::Streaming<ExportAuditEventsResponse> {
    s.audit()
        .await
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.into()),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("export")
        .into_inner()
}

async fn service_streams_end_when_the_account_loses_the_right(backend: Backend) {
    let env = Env::start(backend).await;
    let both = [REVOCATIONS_WATCH, AUDIT_READ];

    // The credential of its token removed.
    let svc = env.service(None, &both).await;
    let stream = watch(&env.s, &svc.token).await;
    env.remove_credential(&svc).await;
    let e = ends(stream).await;
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "SESSION_REVOKED", "{e:?}");

    // The scope taken from the account (another scope kept): narrowing
    // revokes the token as a whole (scopes_changed), here as offline.
    let svc = env.service(None, &both).await;
    let stream = watch(&env.s, &svc.token).await;
    env.set_scopes(&svc, &[AUDIT_READ]).await;
    assert_eq!(reason(&ends(stream).await), "SESSION_REVOKED");

    // The account disabled, and deleted.
    let svc = env.service(None, &both).await;
    let stream = watch(&env.s, &svc.token).await;
    env.disable(&svc).await;
    let e = ends(stream).await;
    assert_eq!(reason(&e), "ACCOUNT_DISABLED", "{e:?}");
    let svc = env.service(None, &both).await;
    let stream = watch(&env.s, &svc.token).await;
    env.delete(&svc).await;
    let e = ends(stream).await;
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "INVALID_TOKEN", "{e:?}");

    // Exports too large to fit the buffers, not being read.
    bulk_audit(&env.s, &env.x, 20_000).await;
    let svc = env.service(Some(&env.x), &both).await;
    let mut stream = export(&env.s, &svc.token, &env.x).await;
    stream.message().await.expect("first chunk").expect("data");
    env.set_scopes(&svc, &[REVOCATIONS_WATCH]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reason(&ends(stream).await), "SESSION_REVOKED");

    let svc = env.service(Some(&env.x), &both).await;
    let mut stream = export(&env.s, &svc.token, &env.x).await;
    stream.message().await.expect("first chunk").expect("data");
    env.remove_credential(&svc).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reason(&ends(stream).await), "SESSION_REVOKED");
}

async fn a_disabled_or_deleted_account_is_refused_on_every_scoped_rpc(backend: Backend) {
    let env = Env::start(backend).await;
    let c = env.s.clients().await;
    let disabled = env.service(None, &SCOPES).await;
    let deleted = env.service(None, &SCOPES).await;
    let removed = env.service(None, &SCOPES).await;
    env.disable(&disabled).await;
    env.delete(&deleted).await;
    env.remove_credential(&removed).await;
    for (svc, want) in [
        (&disabled, "ACCOUNT_DISABLED"),
        (&deleted, "INVALID_TOKEN"),
        (&removed, "SESSION_REVOKED"),
    ] {
        for (_, rpc) in scoped_rpcs(&env.x, &env.x_mem) {
            let name = rpc.name();
            let st = rpc.send(&c, Some(&svc.token), None).await.expect_err(name);
            assert_eq!(st.code(), Code::Unauthenticated, "{name}: {st:?}");
            assert_eq!(reason(&st), want, "{name}: {st:?}");
        }
    }
}

async fn a_services_export_is_audited_as_a_service(backend: Backend) {
    let env = Env::start(backend).await;
    let svc = env.service(Some(&env.x), &[AUDIT_READ]).await;
    // Reading the trail is not audited; exporting it is, once, as the service.
    env.s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                organization_id: Some(env.x.clone()),
                ..Default::default()
            },
            &svc.token,
        ))
        .await
        .expect("list as service");
    // (Its token exchange is on the record as its own action.)
    let reads = |events: Vec<AuditEvent>| -> Vec<AuditEvent> {
        events
            .into_iter()
            .filter(|e| e.action != "service_account.token_issued")
            .collect()
    };
    assert!(reads(events_by(&env, &svc.id).await).is_empty());
    assert!(export_all(&env.s, &svc.token, &env.x).await > 0);
    let events = reads(events_by(&env, &svc.id).await);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.action, "audit.exported");
    assert_eq!(e.actor_type, "service");
    assert_eq!(e.actor_id, svc.id);
    assert_eq!(e.actor_email, "");
    assert_eq!(e.organization_id, env.x);
    let details: serde_json::Value = serde_json::from_str(&e.details_json).expect("details");
    assert_eq!(details["format"], "json_lines");
    // A person's export is not audited.
    let admin_id = token_claims(&env.admin)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    let before = events_by(&env, &admin_id).await.len();
    assert!(export_all(&env.s, &env.admin, &env.x).await > 0);
    assert_eq!(events_by(&env, &admin_id).await.len(), before);
}

async fn export_all(s: &TestServer, token: &str, org: &str) -> usize {
    let mut stream = export(s, token, org).await;
    let mut bytes = 0;
    while let Some(m) = stream.message().await.expect("export") {
        bytes += m.chunk.len();
    }
    bytes
}

/// The events `actor` caused, as the PlatformAdmin reads them.
async fn events_by(env: &Env, actor: &str) -> Vec<AuditEvent> {
    env.s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                actor_id: actor.into(),
                page_size: 500,
                ..Default::default()
            },
            &env.admin,
        ))
        .await
        .expect("list")
        .into_inner()
        .audit_events
}
