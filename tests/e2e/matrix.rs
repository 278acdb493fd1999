//! The tenant-isolation matrix: every RPC of every service, called by every
//! kind of caller against the resources of one organization, must answer
//! the code that `tests/isolation-matrix.md` states for that cell.
//!
//! Each cell runs in a fresh world (a new organization with the callers'
//! memberships, a target member, a template, an invitation, a join request as
//! the row needs), so a call that succeeds cannot change what the next cell
//! sees. Rows whose call consumes the caller (ChangePassword, DeleteMe) get a
//! fresh caller of the same kind.

use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::Channel;
use tonic::{Code, Status};

crate::both_backends!(
    every_rpc_for_every_caller_matches_the_table,
    every_rpc_for_every_service_account_matches_the_table,
);

/// Column order of the table.
const CALLERS: [&str; 14] = [
    "anon",
    "garbage",
    "expired",
    "member",
    "m:infra",
    "m:service",
    "m:backup",
    "m:device",
    "m:database",
    "m:vpn",
    "m:audit",
    "other-mgr",
    "manager",
    "admin",
];

/// Column order of the service-account table: who holds the token.
const SERVICE_CALLERS: [&str; 10] = [
    "sa:platform",
    "sa:own",
    "sa:other",
    "sa:check",
    "sa:watch",
    "sa:members",
    "sa:users",
    "sa:audit",
    "sa:disabled",
    "sa:removed",
];

const ALL_SCOPES: [&str; 5] = [
    "permissions.check",
    "revocations.watch",
    "members.read",
    "users.read",
    "audit.read",
];

const PERMS: [(&str, Permission); 7] = [
    ("m:infra", Permission::Infra),
    ("m:service", Permission::Service),
    ("m:backup", Permission::Backup),
    ("m:device", Permission::Device),
    ("m:database", Permission::Database),
    ("m:vpn", Permission::Vpn),
    ("m:audit", Permission::Audit),
];

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Unauthenticated => "UNAUTH",
        Code::PermissionDenied => "DENIED",
        Code::NotFound => "NOTFOUND",
        Code::AlreadyExists => "EXISTS",
        Code::FailedPrecondition => "PRECOND",
        Code::InvalidArgument => "INVALID",
        Code::ResourceExhausted => "EXHAUSTED",
        Code::Unimplemented => "UNIMPL",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}

struct User {
    id: String,
    email: String,
    token: String,
}

struct Env {
    s: TestServer,
    sink: SmtpSink,
    c: Clients,
    admin: String,
    expired: String,
    /// A PlatformAdmin's unexpired token whose session was logged out.
    revoked: String,
    users: BTreeMap<&'static str, User>,
    /// The organization `other-mgr` manages.
    other_org: String,
    /// A member of the world's organization besides the callers.
    target: User,
    /// A second Manager, so removing or demoting one never hits R5.
    manager2: User,
    /// Not a member of the world's organization (for AddMember).
    outsider: User,
    n: AtomicUsize,
}

/// What one cell works on.
#[derive(Default)]
struct World {
    org: String,
    target: String,
    template: String,
    invitation: String,
    invite_token: String,
    join_request: String,
    /// A platform service account and one of its client secrets.
    service_secret: (String, String),
    refresh_token: String,
    reset_token: String,
    verify_token: String,
    /// A service account of the organization, and its one secret.
    service_account: String,
    credential: String,
    /// Fresh callers for rows that consume the caller.
    fresh: BTreeMap<&'static str, String>,
    /// A live session of the row's target (RevokeSession).
    session: String,
    /// A second-factor challenge of the row's target and a code for it
    /// (VerifySecondFactor).
    challenge: String,
    code: String,
}

fn field_mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

impl Env {
    async fn new(backend: Backend) -> Env {
        let sink = SmtpSink::start().await;
        let key = kiops_token::SigningKey::generate();
        let dir = tempfile::tempdir().expect("dir");
        let pem = dir.path().join("signing.pem");
        std::fs::write(&pem, key.to_pkcs8_pem().expect("pem")).expect("pem");
        let s = TestServer::start_with(
            backend,
            ServerOptions {
                // The callers' tokens are issued once, here: a run slowed
                // by a loaded machine must not outlive them (the `expired`
                // caller has a token of its own, an hour old).
                extra_args: vec![
                    "--smtp-url".into(),
                    sink.url(),
                    "--signing-key-file".into(),
                    pem.display().to_string(),
                    "--access-token-ttl".into(),
                    "3600".into(),
                ],
                ..Default::default()
            },
        )
        .await;
        let admin = s.admin_token().await;
        let admin_id = token_sub(&admin);
        // A PlatformAdmin's token, correctly signed, expired an hour ago.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let expired = kiops_token::Issuer::new(key, "kiops-identity", "kiops", 300)
            .issue_at(
                kiops_token::IssueRequest {
                    subject: admin_id,
                    email: ADMIN_EMAIL.into(),
                    name: "admin".into(),
                    platform_admin: true,
                    orgs: Default::default(),
                    session_id: None,
                    email_verified: false,
                    amr: Vec::new(),
                },
                now - 3600,
            )
            .expect("issue")
            .token;
        let revoked = {
            let pair = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
            s.auth()
                .await
                .logout(authed(
                    LogoutRequest {
                        refresh_token: pair.refresh_token,
                    },
                    &pair.access_token,
                ))
                .await
                .expect("logout");
            pair.access_token
        };
        let c = s.clients().await;
        let mut users = BTreeMap::new();
        for kind in CALLERS.iter().skip(3) {
            if *kind == "admin" {
                continue;
            }
            let email = format!("{}@matrix.io", kind.replace(':', "-"));
            let (id, token) = s.user(&email).await;
            users.insert(*kind, User { id, email, token });
        }
        users.insert(
            "admin",
            User {
                id: token_sub(&admin),
                email: ADMIN_EMAIL.into(),
                token: admin.clone(),
            },
        );
        let other_org = s.create_org(&admin, "Other", "other-org").await;
        s.add_member(&admin, &other_org, &users["other-mgr"].id, Role::Manager)
            .await;
        let mk = |e: &str| e.to_string();
        let target = {
            let (id, token) = s.user("target@matrix.io").await;
            User {
                id,
                email: mk("target@matrix.io"),
                token,
            }
        };
        let manager2 = {
            let (id, token) = s.user("manager2@matrix.io").await;
            User {
                id,
                email: mk("manager2@matrix.io"),
                token,
            }
        };
        let outsider = {
            let (id, token) = s.user("outsider@matrix.io").await;
            User {
                id,
                email: mk("outsider@matrix.io"),
                token,
            }
        };
        Env {
            s,
            sink,
            c,
            admin,
            expired,
            revoked,
            users,
            other_org,
            target,
            manager2,
            outsider,
            n: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        self.n.fetch_add(1, Ordering::Relaxed)
    }

    fn members(&self) -> MembershipServiceClient<Channel> {
        self.c.members.clone()
    }

    async fn add(&self, org: &str, user: &str, role: Role) {
        self.members()
            .add_member(authed(
                AddMemberRequest {
                    organization_id: org.into(),
                    user_id: user.into(),
                    role: role as i32,
                },
                &self.admin,
            ))
            .await
            .expect("add member");
    }

    async fn grant(&self, org: &str, user: &str, perms: Vec<i32>) {
        self.members()
            .set_permissions(authed(
                SetPermissionsRequest {
                    organization_id: org.into(),
                    user_id: user.into(),
                    permissions: perms,
                },
                &self.admin,
            ))
            .await
            .expect("set permissions");
    }

    /// A new user (PASSWORD) and its token; `platform_admin` via CreateUser.
    async fn new_user(&self, prefix: &str, platform_admin: bool) -> User {
        let email = format!("{prefix}-{}@matrix.io", self.next());
        let id = self
            .s
            .users()
            .await
            .create_user(authed(
                CreateUserRequest {
                    email: email.clone(),
                    name: prefix.into(),
                    password: PASSWORD.into(),
                    platform_admin,
                },
                &self.admin,
            ))
            .await
            .expect("create user")
            .into_inner()
            .user
            .expect("user")
            .user_id;
        let token = self
            .s
            .login(&email, PASSWORD)
            .await
            .expect("login")
            .access_token;
        User { id, email, token }
    }

    /// A fresh organization with every caller in its place.
    async fn world(&self, rpc: &str) -> World {
        let n = self.next();
        let org = self
            .s
            .create_org(&self.admin, "World", &format!("world-{n}"))
            .await;
        self.add(&org, &self.users["manager"].id, Role::Manager)
            .await;
        self.add(&org, &self.manager2.id, Role::Manager).await;
        self.add(&org, &self.users["member"].id, Role::Member).await;
        for (kind, perm) in PERMS {
            self.add(&org, &self.users[kind].id, Role::Member).await;
            self.grant(&org, &self.users[kind].id, vec![perm as i32])
                .await;
        }
        let mut w = World {
            org: org.clone(),
            ..Default::default()
        };
        w.target = self.target_for(rpc, &mut w).await;
        self.add(&org, &w.target, Role::Member).await;
        if rpc == "UserService/ReactivateUser" {
            self.s
                .users()
                .await
                .deactivate_user(authed(
                    DeactivateUserRequest {
                        user_id: w.target.clone(),
                    },
                    &self.admin,
                ))
                .await
                .expect("deactivate");
        }
        if rpc == "AuthService/Refresh" {
            w.refresh_token = self
                .s
                .login(&self.target.email, PASSWORD)
                .await
                .expect("login")
                .refresh_token;
        }
        if rpc.contains("PermissionTemplate") || rpc.ends_with("(with template)") {
            w.template = self
                .members()
                .create_permission_template(authed(
                    CreatePermissionTemplateRequest {
                        organization_id: org.clone(),
                        name: format!("tpl-{n}"),
                        permissions: vec![Permission::Infra as i32],
                    },
                    &self.admin,
                ))
                .await
                .expect("template")
                .into_inner()
                .template
                .expect("template")
                .template_id;
        }
        if rpc.starts_with("InvitationService/")
            && !rpc.starts_with("InvitationService/CreateInvitation")
        {
            let email = format!("invitee-{n}@matrix.io");
            w.invitation = self
                .c
                .invitations
                .clone()
                .create_invitation(authed(
                    CreateInvitationRequest {
                        organization_id: org.clone(),
                        email: email.clone(),
                        role: Role::Member as i32,
                        ..Default::default()
                    },
                    &self.admin,
                ))
                .await
                .expect("invite")
                .into_inner()
                .invitation
                .expect("invitation")
                .invitation_id;
            if rpc.ends_with("AcceptInvitation") || rpc.ends_with("DeclineInvitation") {
                let mail = self.sink.wait_for(&email, 1).await;
                w.invite_token = mail.token("ki").expect("invitation token");
            }
        }
        if rpc.ends_with("ApproveJoinRequest") || rpc.ends_with("RejectJoinRequest") {
            let email = format!("joiner-{n}@matrix.io");
            w.join_request = self
                .s
                .auth()
                .await
                .sign_up(SignUpRequest {
                    email: email.clone(),
                    name: "Joiner".into(),
                    password: PASSWORD.into(),
                    organization_id: Some(org.clone()),
                })
                .await
                .expect("sign up")
                .into_inner()
                .join_request
                .expect("join request")
                .join_request_id;
            // Only a verified address can be approved (issue 20 item 8).
            let mail = self.sink.wait_for(&email, 1).await;
            self.s
                .auth()
                .await
                .verify_email(VerifyEmailRequest {
                    token: mail.token("kv").expect("verification token"),
                })
                .await
                .expect("verify");
        }
        if rpc == "AuthService/VerifyEmail" {
            let email = format!("verifier-{n}@matrix.io");
            self.s
                .auth()
                .await
                .sign_up(SignUpRequest {
                    email: email.clone(),
                    name: "Verifier".into(),
                    password: PASSWORD.into(),
                    organization_id: None,
                })
                .await
                .expect("sign up");
            let mail = self.sink.wait_for(&email, 1).await;
            w.verify_token = mail.token("kv").expect("verification token");
        }
        if rpc == "AuthService/IssueServiceAccountToken" {
            w.service_secret = self.service_secret(n).await;
        }
        if matches!(
            rpc,
            "UserService/ChangePassword"
                | "UserService/DeleteMe"
                | "UserService/RevokeOtherSessions"
                | "UserService/StartTotpEnrollment"
                | "UserService/ConfirmTotpEnrollment"
                | "UserService/DisableTotp"
                | "UserService/RegenerateRecoveryCodes"
        ) {
            w.fresh = self.fresh_callers(&org).await;
        }
        if rpc.starts_with("ServiceAccountService/")
            && rpc != "ServiceAccountService/CreateServiceAccount"
        {
            self.service_account(&mut w, n, rpc.ends_with("/EnableServiceAccount"))
                .await;
        }
        w
    }

    /// An account of the world's organization with one secret, made by the
    /// PlatformAdmin; `disabled` for the row that enables it.
    async fn service_account(&self, w: &mut World, n: usize, disabled: bool) {
        let mut sa = self.c.service_accounts.clone();
        w.service_account = sa
            .create_service_account(authed(
                CreateServiceAccountRequest {
                    organization_id: w.org.clone(),
                    name: format!("sa-{n}"),
                    scopes: vec!["permissions.check".into()],
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("create service account")
            .into_inner()
            .service_account
            .expect("service account")
            .service_account_id;
        w.credential = sa
            .add_service_account_secret(authed(
                AddServiceAccountSecretRequest {
                    service_account_id: w.service_account.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("add secret")
            .into_inner()
            .credential
            .expect("credential")
            .credential_id;
        if disabled {
            sa.disable_service_account(authed(
                DisableServiceAccountRequest {
                    service_account_id: w.service_account.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("disable");
        }
    }

    /// A new platform service account and a client secret of it.
    async fn service_secret(&self, n: usize) -> (String, String) {
        let mut c = self.c.service_accounts.clone();
        let id = c
            .create_service_account(authed(
                CreateServiceAccountRequest {
                    name: format!("matrix-{n}"),
                    scopes: vec!["permissions.check".into()],
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("service account")
            .into_inner()
            .service_account
            .expect("account")
            .service_account_id;
        let secret = c
            .add_service_account_secret(authed(
                AddServiceAccountSecretRequest {
                    service_account_id: id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("secret")
            .into_inner()
            .secret;
        (id, secret)
    }

    /// A token of service-account caller `kind` for world `w`: an account
    /// owned by the world's organization (`sa:platform`: the platform,
    /// `sa:other`: the organization `other-mgr` manages) holding every scope
    /// or the one its column names; `sa:disabled` is disabled and
    /// `sa:removed` lost its credential after the token was issued.
    async fn service_token(&self, w: &World, kind: &str) -> String {
        let scopes: Vec<&str> = match kind {
            "sa:check" => vec!["permissions.check"],
            "sa:watch" => vec!["revocations.watch"],
            "sa:members" => vec!["members.read"],
            "sa:users" => vec!["users.read"],
            "sa:audit" => vec!["audit.read"],
            _ => ALL_SCOPES.to_vec(),
        };
        let owner = match kind {
            "sa:platform" => String::new(),
            "sa:other" => self.other_org.clone(),
            _ => w.org.clone(),
        };
        let mut c = self.c.service_accounts.clone();
        let id = c
            .create_service_account(authed(
                CreateServiceAccountRequest {
                    organization_id: owner,
                    name: format!("sa-{}", self.next()),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("service account")
            .into_inner()
            .service_account
            .expect("account")
            .service_account_id;
        let added = c
            .add_service_account_secret(authed(
                AddServiceAccountSecretRequest {
                    service_account_id: id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("secret")
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
            .expect("service token")
            .into_inner()
            .access_token;
        if kind == "sa:disabled" {
            c.disable_service_account(authed(
                DisableServiceAccountRequest {
                    service_account_id: id.clone(),
                },
                &self.admin,
            ))
            .await
            .expect("disable");
        }
        if kind == "sa:removed" {
            c.remove_service_account_credential(authed(
                RemoveServiceAccountCredentialRequest {
                    service_account_id: id,
                    credential_id: added.credential.expect("credential").credential_id,
                },
                &self.admin,
            ))
            .await
            .expect("remove credential");
        }
        token
    }

    /// The target of row `rpc`: a Member. Rows that change the account
    /// itself get a new one each time, with the session or reset token the
    /// row needs in `w`.
    async fn target_for(&self, rpc: &str, w: &mut World) -> String {
        let account_rows = [
            "UserService/DeactivateUser",
            "UserService/ReactivateUser",
            "UserService/DeleteUser",
            "UserService/SetPlatformAdmin",
            "UserService/UnlockUser",
            "UserService/RevokeUserSessions",
            "UserService/RevokeSession",
            "AuthService/Logout",
            "AuthService/ResetPassword",
            "AuthService/VerifySecondFactor",
            "UserService/ResetUserSecondFactor",
        ];
        if account_rows.contains(&rpc) {
            let t = self.new_user("target", false).await;
            if rpc.ends_with("SecondFactor") {
                // A target with TOTP enabled (R30).
                let (app, _) = crate::support::totp::enable_totp(&self.s, &t.token).await;
                if rpc == "AuthService/VerifySecondFactor" {
                    w.challenge = crate::support::totp::challenge(&self.s, &t.email).await;
                    // The next step: the confirming code used this one.
                    w.code = crate::support::totp::code_at_step(&app.secret, app.step() + 1);
                }
            }
            if rpc == "AuthService/Logout" {
                w.refresh_token = self
                    .s
                    .login(&t.email, PASSWORD)
                    .await
                    .expect("login")
                    .refresh_token;
            }
            if rpc == "UserService/RevokeSession" {
                // Someone else's live session: never the caller's to end.
                let access = self
                    .s
                    .login(&t.email, PASSWORD)
                    .await
                    .expect("login")
                    .access_token;
                w.session = token_claims(&access)["sid"]
                    .as_str()
                    .expect("sid")
                    .to_string();
            }
            if rpc == "AuthService/ResetPassword" {
                self.s
                    .auth()
                    .await
                    .request_password_reset(RequestPasswordResetRequest {
                        email: t.email.clone(),
                    })
                    .await
                    .expect("reset request");
                let mail = self.sink.wait_for(&t.email, 1).await;
                w.reset_token = mail.token("kp").expect("reset token");
            }
            t.id
        } else {
            self.target.id.clone()
        }
    }

    /// A new caller of each kind with a user behind it, placed in `org` as
    /// that kind is: for rows whose call consumes the caller.
    async fn fresh_callers(&self, org: &str) -> BTreeMap<&'static str, String> {
        let mut fresh = BTreeMap::new();
        for kind in CALLERS.iter().skip(3) {
            let u = self
                .new_user(&kind.replace(':', "-"), *kind == "admin")
                .await;
            match *kind {
                "manager" => self.add(org, &u.id, Role::Manager).await,
                "other-mgr" => self.add(&self.other_org, &u.id, Role::Manager).await,
                "admin" => {}
                "member" => self.add(org, &u.id, Role::Member).await,
                m => {
                    self.add(org, &u.id, Role::Member).await;
                    let perm = PERMS.iter().find(|(k, _)| *k == m).expect("perm").1;
                    self.grant(org, &u.id, vec![perm as i32]).await;
                }
            }
            fresh.insert(*kind, u.token);
        }
        fresh
    }

    fn token<'a>(&'a self, w: &'a World, caller: &str) -> Option<&'a str> {
        match caller {
            "anon" => None,
            "garbage" => Some("garbage"),
            "expired" => Some(&self.expired),
            c => Some(
                w.fresh
                    .get(c)
                    .map(String::as_str)
                    .unwrap_or(&self.users[c].token),
            ),
        }
    }

    /// Calls row `rpc` in world `w` with bearer token `t`.
    async fn call(&self, rpc: &str, w: &World, t: Option<&str>) -> Result<(), Status> {
        self.request(rpc, w).send(&self.c, t, None).await
    }

    /// What row `rpc` sends in world `w`.
    fn request(&self, rpc: &str, w: &World) -> Rpc {
        let org = w.org.clone();
        let sa = w.service_account.clone();
        let fresh_email = || format!("new-{}@matrix.io", self.next());
        match rpc {
            "ApprovalService/RequestToJoin" => Rpc::RequestToJoin(RequestToJoinRequest {
                organization_id: org,
            }),
            "ApprovalService/ListJoinRequests" => Rpc::ListJoinRequests(ListJoinRequestsRequest {
                organization_id: Some(org),
                ..Default::default()
            }),
            "ApprovalService/ApproveJoinRequest" => {
                Rpc::ApproveJoinRequest(ApproveJoinRequestRequest {
                    join_request_id: w.join_request.clone(),
                })
            }
            "ApprovalService/RejectJoinRequest" => {
                Rpc::RejectJoinRequest(RejectJoinRequestRequest {
                    join_request_id: w.join_request.clone(),
                    reason: None,
                })
            }
            "AuditService/ListAuditEvents" => Rpc::ListAuditEvents(ListAuditEventsRequest {
                organization_id: Some(org),
                ..Default::default()
            }),
            "AuditService/ExportAuditEvents" => Rpc::ExportAuditEvents(ExportAuditEventsRequest {
                organization_id: Some(org),
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            }),
            "AuthService/Login" => Rpc::Login(LoginRequest {
                email: self.target.email.clone(),
                password: PASSWORD.into(),
                organization_id: None,
            }),
            "AuthService/Refresh" => Rpc::Refresh(RefreshRequest {
                refresh_token: w.refresh_token.clone(),
                organization_id: None,
            }),
            "AuthService/Logout" => Rpc::Logout(LogoutRequest {
                refresh_token: w.refresh_token.clone(),
            }),
            "AuthService/SignUp" => Rpc::SignUp(SignUpRequest {
                email: fresh_email(),
                name: "New".into(),
                password: PASSWORD.into(),
                organization_id: Some(org),
            }),
            "AuthService/RequestPasswordReset" => {
                Rpc::RequestPasswordReset(RequestPasswordResetRequest {
                    email: self.target.email.clone(),
                })
            }
            "AuthService/ResetPassword" => Rpc::ResetPassword(ResetPasswordRequest {
                token: w.reset_token.clone(),
                new_password: "a brand new long password".into(),
            }),
            "AuthService/VerifyEmail" => Rpc::VerifyEmail(VerifyEmailRequest {
                token: w.verify_token.clone(),
            }),
            "AuthService/ResendVerificationEmail" => {
                Rpc::ResendVerificationEmail(ResendVerificationEmailRequest {
                    email: self.target.email.clone(),
                })
            }
            "AuthService/GetJwks" => Rpc::GetJwks(GetJwksRequest {}),
            "AuthService/IssueServiceAccountToken" => {
                Rpc::IssueServiceAccountToken(IssueServiceAccountTokenRequest {
                    credential: Some(
                        issue_service_account_token_request::Credential::ClientSecret(
                            ClientSecret {
                                service_account_id: w.service_secret.0.clone(),
                                secret: w.service_secret.1.clone(),
                            },
                        ),
                    ),
                })
            }
            "AuthService/WatchRevocations" => {
                Rpc::WatchRevocations(WatchRevocationsRequest::default())
            }
            "InvitationService/CreateInvitation" => {
                Rpc::CreateInvitation(CreateInvitationRequest {
                    organization_id: org,
                    email: fresh_email(),
                    role: Role::Member as i32,
                    ..Default::default()
                })
            }
            "InvitationService/CreateInvitation (with permissions)" => {
                Rpc::CreateInvitation(CreateInvitationRequest {
                    organization_id: org,
                    email: fresh_email(),
                    role: Role::Member as i32,
                    name: Some("Ready Invitee".into()),
                    permissions: vec![Permission::Infra as i32, Permission::Vpn as i32],
                    ..Default::default()
                })
            }
            "InvitationService/CreateInvitation (with template)" => {
                Rpc::CreateInvitation(CreateInvitationRequest {
                    organization_id: org,
                    email: fresh_email(),
                    role: Role::Member as i32,
                    template_id: Some(w.template.clone()),
                    ..Default::default()
                })
            }
            "InvitationService/ListInvitations" => Rpc::ListInvitations(ListInvitationsRequest {
                organization_id: org,
                ..Default::default()
            }),
            "InvitationService/ResendInvitation" => {
                Rpc::ResendInvitation(ResendInvitationRequest {
                    invitation_id: w.invitation.clone(),
                })
            }
            "InvitationService/RevokeInvitation" => {
                Rpc::RevokeInvitation(RevokeInvitationRequest {
                    invitation_id: w.invitation.clone(),
                })
            }
            "InvitationService/AcceptInvitation" => {
                Rpc::AcceptInvitation(AcceptInvitationRequest {
                    token: w.invite_token.clone(),
                    name: Some("Invitee".into()),
                    password: Some(PASSWORD.into()),
                })
            }
            "InvitationService/DeclineInvitation" => {
                Rpc::DeclineInvitation(DeclineInvitationRequest {
                    token: w.invite_token.clone(),
                })
            }
            "MembershipService/AddMember" => Rpc::AddMember(AddMemberRequest {
                organization_id: org,
                user_id: self.outsider.id.clone(),
                role: Role::Member as i32,
            }),
            "MembershipService/ListMembers" => Rpc::ListMembers(ListMembersRequest {
                organization_id: org,
                ..Default::default()
            }),
            "MembershipService/GetMember" => Rpc::GetMember(GetMemberRequest {
                organization_id: org,
                user_id: w.target.clone(),
            }),
            "MembershipService/ChangeRole (promote)" => Rpc::ChangeRole(ChangeRoleRequest {
                organization_id: org,
                user_id: w.target.clone(),
                role: Role::Manager as i32,
            }),
            "MembershipService/ChangeRole (demote)" => Rpc::ChangeRole(ChangeRoleRequest {
                organization_id: org,
                user_id: self.manager2.id.clone(),
                role: Role::Member as i32,
            }),
            "MembershipService/SetPermissions" => Rpc::SetPermissions(SetPermissionsRequest {
                organization_id: org,
                user_id: w.target.clone(),
                permissions: vec![Permission::Device as i32],
            }),
            "MembershipService/RemoveMember" => Rpc::RemoveMember(RemoveMemberRequest {
                organization_id: org,
                user_id: w.target.clone(),
            }),
            "MembershipService/LeaveOrganization" => {
                Rpc::LeaveOrganization(LeaveOrganizationRequest {
                    organization_id: org,
                })
            }
            "MembershipService/ListMyMemberships" => {
                Rpc::ListMyMemberships(ListMyMembershipsRequest::default())
            }
            "MembershipService/CheckPermission" => Rpc::CheckPermission(CheckPermissionRequest {
                user_id: w.target.clone(),
                organization_id: org,
                permission: Permission::Device as i32,
            }),
            // Two checks on the target: a refusal of either refuses the call.
            "MembershipService/CheckPermissions" => {
                Rpc::CheckPermissions(CheckPermissionsRequest {
                    items: [Permission::Device, Permission::Audit]
                        .map(|p| CheckPermissionRequest {
                            user_id: w.target.clone(),
                            organization_id: org.clone(),
                            permission: p as i32,
                        })
                        .to_vec(),
                })
            }
            "MembershipService/CreatePermissionTemplate" => {
                Rpc::CreatePermissionTemplate(CreatePermissionTemplateRequest {
                    organization_id: org,
                    name: format!("new-{}", self.next()),
                    permissions: vec![Permission::Vpn as i32],
                })
            }
            "MembershipService/ListPermissionTemplates" => {
                Rpc::ListPermissionTemplates(ListPermissionTemplatesRequest {
                    organization_id: org,
                    ..Default::default()
                })
            }
            "MembershipService/UpdatePermissionTemplate" => {
                Rpc::UpdatePermissionTemplate(UpdatePermissionTemplateRequest {
                    template: Some(PermissionTemplate {
                        template_id: w.template.clone(),
                        organization_id: org,
                        name: format!("renamed-{}", self.next()),
                        ..Default::default()
                    }),
                    update_mask: field_mask(&["name"]),
                })
            }
            "MembershipService/DeletePermissionTemplate" => {
                Rpc::DeletePermissionTemplate(DeletePermissionTemplateRequest {
                    organization_id: org,
                    template_id: w.template.clone(),
                })
            }
            "MembershipService/ApplyPermissionTemplate" => {
                Rpc::ApplyPermissionTemplate(ApplyPermissionTemplateRequest {
                    organization_id: org,
                    user_id: w.target.clone(),
                    template_id: w.template.clone(),
                })
            }
            "MembershipService/SendPasswordReset" => {
                Rpc::SendPasswordReset(SendPasswordResetRequest {
                    organization_id: org,
                    user_id: w.target.clone(),
                })
            }
            "OrganizationService/CreateOrganization" => {
                Rpc::CreateOrganization(CreateOrganizationRequest {
                    name: "New".into(),
                    code: format!("new-{}", self.next()),
                    description: String::new(),
                })
            }
            "OrganizationService/GetOrganization" => Rpc::GetOrganization(GetOrganizationRequest {
                organization_id: org,
            }),
            "OrganizationService/ListOrganizations" => {
                Rpc::ListOrganizations(ListOrganizationsRequest::default())
            }
            "OrganizationService/UpdateOrganization" => {
                Rpc::UpdateOrganization(UpdateOrganizationRequest {
                    organization: Some(Organization {
                        organization_id: org,
                        name: "Renamed".into(),
                        ..Default::default()
                    }),
                    update_mask: field_mask(&["name"]),
                })
            }
            "OrganizationService/DeleteOrganization" => {
                Rpc::DeleteOrganization(DeleteOrganizationRequest {
                    organization_id: org,
                })
            }
            "ServiceAccountService/CreateServiceAccount" => {
                Rpc::CreateServiceAccount(CreateServiceAccountRequest {
                    organization_id: org,
                    name: format!("sa-new-{}", self.next()),
                    scopes: vec!["permissions.check".into()],
                    ..Default::default()
                })
            }
            "ServiceAccountService/GetServiceAccount" => {
                Rpc::GetServiceAccount(GetServiceAccountRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/ListServiceAccounts" => {
                Rpc::ListServiceAccounts(ListServiceAccountsRequest {
                    organization_id: org,
                    ..Default::default()
                })
            }
            "ServiceAccountService/UpdateServiceAccount" => {
                Rpc::UpdateServiceAccount(UpdateServiceAccountRequest {
                    service_account: Some(ServiceAccount {
                        service_account_id: sa,
                        description: "changed".into(),
                        ..Default::default()
                    }),
                    update_mask: field_mask(&["description"]),
                })
            }
            "ServiceAccountService/DisableServiceAccount" => {
                Rpc::DisableServiceAccount(DisableServiceAccountRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/EnableServiceAccount" => {
                Rpc::EnableServiceAccount(EnableServiceAccountRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/DeleteServiceAccount" => {
                Rpc::DeleteServiceAccount(DeleteServiceAccountRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/AddServiceAccountKey" => {
                Rpc::AddServiceAccountKey(AddServiceAccountKeyRequest {
                    service_account_id: sa,
                    public_key_pem: String::new(),
                })
            }
            "ServiceAccountService/AddServiceAccountSecret" => {
                Rpc::AddServiceAccountSecret(AddServiceAccountSecretRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/ListServiceAccountCredentials" => {
                Rpc::ListServiceAccountCredentials(ListServiceAccountCredentialsRequest {
                    service_account_id: sa,
                })
            }
            "ServiceAccountService/RemoveServiceAccountCredential" => {
                Rpc::RemoveServiceAccountCredential(RemoveServiceAccountCredentialRequest {
                    service_account_id: sa,
                    credential_id: w.credential.clone(),
                })
            }
            "UserService/GetMe" => Rpc::GetMe(GetMeRequest {}),
            "UserService/UpdateMe" => Rpc::UpdateMe(UpdateMeRequest {
                name: "Renamed".into(),
                update_mask: field_mask(&["name"]),
                ..Default::default()
            }),
            "UserService/ChangePassword" => Rpc::ChangePassword(ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "a brand new long password".into(),
            }),
            "UserService/DeleteMe" => Rpc::DeleteMe(DeleteMeRequest {
                current_password: PASSWORD.into(),
            }),
            "UserService/ListUsers" => Rpc::ListUsers(ListUsersRequest::default()),
            "UserService/GetUser" => Rpc::GetUser(GetUserRequest {
                user_id: w.target.clone(),
            }),
            "UserService/CreateUser" => Rpc::CreateUser(CreateUserRequest {
                email: fresh_email(),
                name: "New".into(),
                password: PASSWORD.into(),
                platform_admin: false,
            }),
            "UserService/DeactivateUser" => Rpc::DeactivateUser(DeactivateUserRequest {
                user_id: w.target.clone(),
            }),
            "UserService/ReactivateUser" => Rpc::ReactivateUser(ReactivateUserRequest {
                user_id: w.target.clone(),
            }),
            "UserService/UnlockUser" => Rpc::UnlockUser(UnlockUserRequest {
                user_id: w.target.clone(),
            }),
            "UserService/DeleteUser" => Rpc::DeleteUser(DeleteUserRequest {
                user_id: w.target.clone(),
            }),
            "UserService/SetPlatformAdmin" => Rpc::SetPlatformAdmin(SetPlatformAdminRequest {
                user_id: w.target.clone(),
                platform_admin: true,
            }),
            "UserService/ListMySessions" => Rpc::ListMySessions(ListMySessionsRequest {}),
            "UserService/RevokeSession" => Rpc::RevokeSession(RevokeSessionRequest {
                session_id: w.session.clone(),
            }),
            "UserService/RevokeOtherSessions" => {
                Rpc::RevokeOtherSessions(RevokeOtherSessionsRequest {})
            }
            "UserService/ListUserSessions" => Rpc::ListUserSessions(ListUserSessionsRequest {
                user_id: w.target.clone(),
            }),
            "UserService/RevokeUserSessions" => {
                Rpc::RevokeUserSessions(RevokeUserSessionsRequest {
                    user_id: w.target.clone(),
                })
            }
            // TOTP (R30): the caller's own factor, never anyone else's.
            "AuthService/VerifySecondFactor" => {
                Rpc::VerifySecondFactor(VerifySecondFactorRequest {
                    challenge: w.challenge.clone(),
                    code: w.code.clone(),
                    recovery_code: String::new(),
                })
            }
            "UserService/StartTotpEnrollment" => {
                Rpc::StartTotpEnrollment(StartTotpEnrollmentRequest {
                    current_password: PASSWORD.into(),
                })
            }
            "UserService/ConfirmTotpEnrollment" => {
                Rpc::ConfirmTotpEnrollment(ConfirmTotpEnrollmentRequest {
                    code: "123456".into(),
                })
            }
            "UserService/DisableTotp" => Rpc::DisableTotp(DisableTotpRequest {
                code: "123456".into(),
                recovery_code: String::new(),
            }),
            "UserService/RegenerateRecoveryCodes" => {
                Rpc::RegenerateRecoveryCodes(RegenerateRecoveryCodesRequest {
                    code: "123456".into(),
                })
            }
            "UserService/ResetUserSecondFactor" => {
                Rpc::ResetUserSecondFactor(ResetUserSecondFactorRequest {
                    user_id: w.target.clone(),
                })
            }
            // Sets the policy to what it is (off): a cell never changes
            // the platform for the cells after it.
            "PlatformService/GetPlatformPolicy" => {
                Rpc::GetPlatformPolicy(GetPlatformPolicyRequest {})
            }
            "PlatformService/UpdatePlatformPolicy" => {
                Rpc::UpdatePlatformPolicy(UpdatePlatformPolicyRequest {
                    policy: Some(PlatformPolicy {
                        platform_admin_second_factor_required: false,
                    }),
                    update_mask: None,
                })
            }
            "PlatformService/SendTestEmail" => Rpc::SendTestEmail(SendTestEmailRequest {
                to: "test-email@matrix.test".into(),
            }),
            other => panic!("the matrix has a row for {other} but no call for it"),
        }
    }
}

fn token_sub(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("jwt");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    v["sub"].as_str().expect("sub").to_string()
}

/// Rows of tests/isolation-matrix.md: (rpc, expected label per caller).
fn table() -> Vec<(String, Vec<String>)> {
    table_of("| RPC |", &CALLERS)
}

/// The rows of the table whose header starts with `header`, whose caller
/// columns must be `callers`.
fn table_of(header: &str, callers: &[&str]) -> Vec<(String, Vec<String>)> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/isolation-matrix.md");
    let text = std::fs::read_to_string(&path).expect("tests/isolation-matrix.md");
    let mut rows = Vec::new();
    let mut header_seen = false;
    let start = text
        .find(&format!("\n{header}"))
        .unwrap_or_else(|| panic!("a table headed {header}"))
        + 1;
    for line in text[start..].lines().take_while(|l| l.starts_with('|')) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect();
        if !header_seen {
            assert_eq!(&cells[1..], callers, "caller columns");
            header_seen = true;
            continue;
        }
        if cells[0].starts_with('-') {
            continue;
        }
        assert_eq!(cells.len(), callers.len() + 1, "row {line}");
        rows.push((cells[0].clone(), cells[1..].to_vec()));
    }
    rows
}

/// Every RPC in the proto files, so a new RPC without a row fails here.
fn all_rpcs() -> Vec<String> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/kiops/identity/v1");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("proto dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("proto");
        let mut service = String::new();
        for line in text.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("service ") {
                service = rest.trim_end_matches(['{', ' ']).to_string();
            }
            if let Some(rest) = l.strip_prefix("rpc ") {
                let name = rest.split('(').next().expect("rpc name").trim();
                out.push(format!("{service}/{name}"));
            }
        }
    }
    out
}

async fn every_rpc_for_every_caller_matches_the_table(backend: Backend) {
    let rows = table();
    let covered: Vec<String> = rows
        .iter()
        .map(|(r, _)| r.split(' ').next().unwrap_or_default().to_string())
        .collect();
    for rpc in all_rpcs() {
        assert!(
            covered.contains(&rpc),
            "{rpc} has no row in tests/isolation-matrix.md"
        );
        assert!(
            Rpc::ALL.contains(&rpc.as_str()),
            "{rpc} is missing from the RPC table (tests/e2e/support/rpc.rs)"
        );
    }
    let env = Env::new(backend).await;
    let mut mismatches = Vec::new();
    let mut actual_table = String::new();
    let mut cells = 0;
    for (rpc, expected) in &rows {
        let mut actual = Vec::new();
        for (i, caller) in CALLERS.iter().enumerate() {
            let w = env.world(rpc).await;
            let got = match env.call(rpc, &w, env.token(&w, caller)).await {
                Ok(()) => "OK",
                Err(s) => {
                    assert_ne!(s.code(), Code::Internal, "{rpc} as {caller}: {s:?}");
                    code_label(s.code())
                }
            };
            cells += 1;
            if got != expected[i] {
                mismatches.push(format!(
                    "{rpc} as {caller}: expected {}, got {got}",
                    expected[i]
                ));
            }
            actual.push(got);
        }
        actual_table.push_str(&format!("| `{rpc}` | {} |\n", actual.join(" | ")));
        // The `revoked` caller is not a column: it must answer exactly as
        // `expired` does, and say why when it is refused.
        let w = env.world(rpc).await;
        let got = match env.call(rpc, &w, Some(&env.revoked)).await {
            Ok(()) => "OK",
            Err(s) => {
                assert_ne!(s.code(), Code::Internal, "{rpc} as revoked: {s:?}");
                if s.code() == Code::Unauthenticated {
                    assert_eq!(reason(&s), "SESSION_REVOKED", "{rpc} as revoked: {s:?}");
                }
                code_label(s.code())
            }
        };
        cells += 1;
        if got != expected[2] {
            mismatches.push(format!(
                "{rpc} as revoked: expected {} (as expired), got {got}",
                expected[2]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ from tests/isolation-matrix.md:\n{}\n\nactual rows:\n{actual_table}",
        mismatches.len(),
        mismatches.join("\n")
    );
    println!(
        "isolation matrix ({backend:?}): {} RPC rows × {} callers = {cells} cells as stated",
        rows.len(),
        CALLERS.len() + 1
    );
    drop(env.sink);
}

/// Issue 22: the same rows, called with service-account tokens
/// (`tests/isolation-matrix.md`, second table). A service account reaches
/// only what one of its scopes opens, only inside its owner organization
/// (R25); a disabled account or a removed credential is refused at once.
async fn every_rpc_for_every_service_account_matches_the_table(backend: Backend) {
    let rows = table_of("| RPC (service accounts) |", &SERVICE_CALLERS);
    let people: Vec<String> = table().into_iter().map(|(r, _)| r).collect();
    let covered: Vec<String> = rows.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        covered, people,
        "the service table has the rows of the people table"
    );
    let env = Env::new(backend).await;
    let mut mismatches = Vec::new();
    let mut actual_table = String::new();
    let mut cells = 0;
    for (rpc, expected) in &rows {
        let mut actual = Vec::new();
        for (i, caller) in SERVICE_CALLERS.iter().enumerate() {
            let w = env.world(rpc).await;
            let token = env.service_token(&w, caller).await;
            let got = match env.call(rpc, &w, Some(&token)).await {
                Ok(()) => "OK",
                Err(s) => {
                    assert_ne!(s.code(), Code::Internal, "{rpc} as {caller}: {s:?}");
                    // A missing scope, or a cross-organization read by an
                    // organization's account: never a people-only reason.
                    if s.code() == Code::PermissionDenied {
                        let why = reason(&s);
                        assert!(
                            why == "SCOPE_REQUIRED" || why == "PLATFORM_ACCOUNT_REQUIRED",
                            "{rpc} as {caller}: {s:?}"
                        );
                    }
                    code_label(s.code())
                }
            };
            cells += 1;
            if got != expected[i] {
                mismatches.push(format!(
                    "{rpc} as {caller}: expected {}, got {got}",
                    expected[i]
                ));
            }
            actual.push(got);
        }
        actual_table.push_str(&format!("| `{rpc}` | {} |\n", actual.join(" | ")));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ from tests/isolation-matrix.md:\n{}\n\nactual rows:\n{actual_table}",
        mismatches.len(),
        mismatches.join("\n")
    );
    println!(
        "service-account matrix ({backend:?}): {} RPC rows × {} service callers = {cells} cells as stated",
        rows.len(),
        SERVICE_CALLERS.len()
    );
    drop(env.sink);
}
