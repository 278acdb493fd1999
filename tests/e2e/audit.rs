//! The audit trail (R19): one event per change, in the same transaction, for
//! every mutating RPC; none for refused calls; visibility; filters; request
//! ids; streaming export in constant server memory.

use crate::both_backends;
use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

both_backends!(
    user_and_organization_changes_write_one_event_each,
    membership_changes_write_one_event_each,
    template_changes_write_one_event_each,
    invitations_write_one_event_each,
    sign_up_and_approvals_write_one_event_each,
    self_service_and_sessions_write_one_event_each,
    account_administration_writes_one_event_each,
    refused_calls_write_no_event,
    audit_holders_see_their_organization_with_request_ids,
    platform_admins_filter_and_page_the_whole_trail,
    exports_agree_with_the_list,
    export_streams_100k_events_in_constant_memory,
);

struct Audit {
    client: AuditServiceClient<Channel>,
    admin: String,
}

impl Audit {
    async fn events(&mut self, action: &str, target: &str) -> Vec<AuditEvent> {
        self.client
            .list_audit_events(authed(
                ListAuditEventsRequest {
                    action: action.into(),
                    target_id: target.into(),
                    page_size: 500,
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("list audit events")
            .into_inner()
            .audit_events
    }

    /// Exactly one event `action` on `target`, by `actor`, in `org`.
    async fn one(
        &mut self,
        action: &str,
        target: &str,
        actor: &str,
        org: Option<&str>,
    ) -> serde_json::Value {
        let found: Vec<_> = self
            .events(action, target)
            .await
            .into_iter()
            .filter(|e| e.action == action)
            .collect();
        assert_eq!(found.len(), 1, "{action} on {target}: {found:?}");
        let e = &found[0];
        assert_eq!(e.actor_email, actor, "{action}: actor");
        if let Some(o) = org {
            assert_eq!(e.organization_id, o, "{action}: organization");
        }
        assert!(
            !e.request_id.is_empty() && !e.peer_address.is_empty(),
            "{action}: request id and peer"
        );
        serde_json::from_str(&e.details_json).expect("details json")
    }

    async fn total(&mut self) -> i64 {
        self.client
            .list_audit_events(authed(
                ListAuditEventsRequest {
                    page_size: 1,
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .expect("list")
            .into_inner()
            .total_size
    }
}
/// A server that mails to a sink, its admin's token and the audit reader.
struct Trail {
    sink: SmtpSink,
    s: TestServer,
    admin: String,
    a: Audit,
    c: Clients,
}

async fn trail(backend: Backend) -> Trail {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--smtp-url".into(), sink.url()],
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let a = Audit {
        client: s.audit().await,
        admin: admin.clone(),
    };
    let c = s.clients().await;
    Trail {
        sink,
        s,
        admin,
        a,
        c,
    }
}

/// Acme with Kim as its only Manager: (org, Kim's id, Kim's token).
async fn acme_managed_by_kim(s: &TestServer, admin: &str) -> (String, String, String) {
    let kim = s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let org = s.create_org(admin, "Acme", "acme").await;
    s.add_member(admin, &org, &kim, Role::Manager).await;
    let kim_t = s
        .login("kim@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    (org, kim, kim_t)
}

/// S1 signed up to `org`, proved the address and was approved by `manager`:
/// (S1's id, the approved join request, S1's token).
async fn s1_approved_into(t: &Trail, org: &str, manager: &str) -> (String, String, String) {
    let mut c = t.c.clone();
    let r = c
        .auth
        .sign_up(SignUpRequest {
            email: "s1@example.com".into(),
            name: "S".into(),
            password: PASSWORD.into(),
            organization_id: Some(org.into()),
        })
        .await
        .expect("sign up")
        .into_inner();
    let (s1, jr1) = (
        r.user.expect("u").user_id,
        r.join_request.expect("jr").join_request_id,
    );
    let kv = t
        .sink
        .wait_for("s1@example.com", 1)
        .await
        .token("kv")
        .expect("verification token");
    c.auth
        .verify_email(VerifyEmailRequest { token: kv })
        .await
        .expect("verify email");
    c.approvals
        .approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr1.clone(),
            },
            manager,
        ))
        .await
        .expect("approve");
    let s1_t =
        t.s.login("s1@example.com", PASSWORD)
            .await
            .expect("login")
            .access_token;
    (s1, jr1, s1_t)
}

async fn user_and_organization_changes_write_one_event_each(backend: Backend) {
    let Trail {
        sink: _sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients { mut orgs, .. } = c;
    let kim = s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let d = a.one("user.created", &kim, ADMIN_EMAIL, None).await;
    assert_eq!(d["after"]["email"], "kim@example.com");
    assert!(!d.to_string().contains(PASSWORD), "no secrets in details");
    let org = s.create_org(&admin, "Acme", "acme").await;
    a.one("organization.created", &org, ADMIN_EMAIL, Some(&org))
        .await;
    orgs.update_organization(authed(
        UpdateOrganizationRequest {
            organization: Some(Organization {
                organization_id: org.clone(),
                name: "Acme Inc".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        },
        &admin,
    ))
    .await
    .expect("update org");
    let d = a
        .one("organization.updated", &org, ADMIN_EMAIL, Some(&org))
        .await;
    assert_eq!(
        (d["before"]["name"].as_str(), d["after"]["name"].as_str()),
        (Some("Acme"), Some("Acme Inc"))
    );
}

async fn membership_changes_write_one_event_each(backend: Backend) {
    let Trail {
        sink: _sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients { members: mut m, .. } = c;
    let kim = s.create_user("kim@example.com", "Kim", PASSWORD).await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    s.add_member(&admin, &org, &kim, Role::Member).await;
    a.one("membership.added", &kim, ADMIN_EMAIL, Some(&org))
        .await;
    m.change_role(authed(
        ChangeRoleRequest {
            organization_id: org.clone(),
            user_id: kim.clone(),
            role: 2,
        },
        &admin,
    ))
    .await
    .expect("promote");
    let d = a
        .one("membership.role_changed", &kim, ADMIN_EMAIL, Some(&org))
        .await;
    assert_eq!(
        (d["before"]["role"].as_str(), d["after"]["role"].as_str()),
        (Some("member"), Some("manager"))
    );
    let kim_t = s
        .login("kim@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let kim_logins: Vec<_> = a
        .events("auth.login_succeeded", "")
        .await
        .into_iter()
        .filter(|e| e.actor_email == "kim@example.com")
        .collect();
    assert_eq!(kim_logins.len(), 1);
    assert_eq!(kim_logins[0].target_type, "session");
    let lee = s.create_user("lee@example.com", "Lee", PASSWORD).await;
    s.add_member(&admin, &org, &lee, Role::Member).await;
    m.set_permissions(authed(
        SetPermissionsRequest {
            organization_id: org.clone(),
            user_id: lee.clone(),
            permissions: vec![4],
        },
        &kim_t,
    ))
    .await
    .expect("grant");
    let d = a
        .one(
            "membership.permissions_changed",
            &lee,
            "kim@example.com",
            Some(&org),
        )
        .await;
    assert_eq!(d["after"]["permissions"], serde_json::json!(["device"]));
    m.remove_member(authed(
        RemoveMemberRequest {
            organization_id: org.clone(),
            user_id: lee.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("remove");
    a.one("membership.removed", &lee, "kim@example.com", Some(&org))
        .await;
    s.add_member(&admin, &org, &lee, Role::Member).await;
    let lee_t = s
        .login("lee@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    m.leave_organization(authed(
        LeaveOrganizationRequest {
            organization_id: org.clone(),
        },
        &lee_t,
    ))
    .await
    .expect("leave");
    a.one("membership.left", &lee, "lee@example.com", Some(&org))
        .await;
    m.send_password_reset(authed(
        SendPasswordResetRequest {
            organization_id: org.clone(),
            user_id: kim.clone(),
        },
        &admin,
    ))
    .await
    .expect("send reset");
    a.one("user.password_reset_requested", &kim, ADMIN_EMAIL, None)
        .await;
}

async fn template_changes_write_one_event_each(backend: Backend) {
    let Trail {
        sink: _sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients { members: mut m, .. } = c;
    // Kim manages Acme; Lee is a Member.
    let (org, _, kim_t) = acme_managed_by_kim(&s, &admin).await;
    let lee = s.create_user("lee@example.com", "Lee", PASSWORD).await;
    s.add_member(&admin, &org, &lee, Role::Member).await;
    let tpl = m
        .create_permission_template(authed(
            CreatePermissionTemplateRequest {
                organization_id: org.clone(),
                name: "ops".into(),
                permissions: vec![1],
            },
            &kim_t,
        ))
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("t")
        .template_id;
    a.one("template.created", &tpl, "kim@example.com", Some(&org))
        .await;
    m.update_permission_template(authed(
        UpdatePermissionTemplateRequest {
            template: Some(PermissionTemplate {
                template_id: tpl.clone(),
                organization_id: org.clone(),
                name: "ops2".into(),
                permissions: vec![1, 3],
                ..Default::default()
            }),
            update_mask: None,
        },
        &kim_t,
    ))
    .await
    .expect("update template");
    a.one("template.updated", &tpl, "kim@example.com", Some(&org))
        .await;
    m.apply_permission_template(authed(
        ApplyPermissionTemplateRequest {
            organization_id: org.clone(),
            user_id: lee.clone(),
            template_id: tpl.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("apply");
    a.one(
        "membership.template_applied",
        &lee,
        "kim@example.com",
        Some(&org),
    )
    .await;
    m.delete_permission_template(authed(
        DeletePermissionTemplateRequest {
            organization_id: org.clone(),
            template_id: tpl.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("delete template");
    a.one("template.deleted", &tpl, "kim@example.com", Some(&org))
        .await;
}

async fn invitations_write_one_event_each(backend: Backend) {
    let Trail {
        sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients {
        invitations: mut inv,
        ..
    } = c;
    let (org, _, kim_t) = acme_managed_by_kim(&s, &admin).await;
    let create = |email: &str| {
        authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: email.into(),
                role: 1,
                ..Default::default()
            },
            &kim_t,
        )
    };
    let i1 = inv
        .create_invitation(create("a@example.com"))
        .await
        .expect("invite")
        .into_inner()
        .invitation
        .expect("i")
        .invitation_id;
    a.one("invitation.created", &i1, "kim@example.com", Some(&org))
        .await;
    inv.resend_invitation(authed(
        ResendInvitationRequest {
            invitation_id: i1.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("resend");
    a.one("invitation.resent", &i1, "kim@example.com", Some(&org))
        .await;
    inv.revoke_invitation(authed(
        RevokeInvitationRequest {
            invitation_id: i1.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("revoke");
    a.one("invitation.revoked", &i1, "kim@example.com", Some(&org))
        .await;
    let i2 = inv
        .create_invitation(create("b@example.com"))
        .await
        .expect("invite")
        .into_inner()
        .invitation
        .expect("i")
        .invitation_id;
    let t2 = sink
        .wait_for("b@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    inv.decline_invitation(DeclineInvitationRequest { token: t2 })
        .await
        .expect("decline");
    a.one("invitation.declined", &i2, "", Some(&org)).await;
    let i3 = inv
        .create_invitation(create("c@example.com"))
        .await
        .expect("invite")
        .into_inner()
        .invitation
        .expect("i")
        .invitation_id;
    let t3 = sink
        .wait_for("c@example.com", 1)
        .await
        .token("ki")
        .expect("token");
    let c = inv
        .accept_invitation(AcceptInvitationRequest {
            token: t3,
            name: Some("C".into()),
            password: Some(PASSWORD.into()),
        })
        .await
        .expect("accept")
        .into_inner()
        .member
        .expect("m")
        .user_id;
    a.one("invitation.accepted", &i3, "c@example.com", Some(&org))
        .await;
    a.one("user.created", &c, "", None).await;
    a.one("membership.added", &c, "c@example.com", Some(&org))
        .await;
}

async fn sign_up_and_approvals_write_one_event_each(backend: Backend) {
    let Trail {
        sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients {
        mut auth,
        approvals: mut ap,
        ..
    } = c;
    let (org, _, kim_t) = acme_managed_by_kim(&s, &admin).await;
    let signup = |email: &str| SignUpRequest {
        email: email.into(),
        name: "S".into(),
        password: PASSWORD.into(),
        organization_id: Some(org.clone()),
    };
    let r = auth
        .sign_up(signup("s1@example.com"))
        .await
        .expect("sign up")
        .into_inner();
    let (s1, jr1) = (
        r.user.expect("u").user_id,
        r.join_request.expect("jr").join_request_id,
    );
    a.one("user.created", &s1, "", None).await;
    a.one("join_request.created", &jr1, "s1@example.com", Some(&org))
        .await;
    a.one("user.verification_email_sent", &s1, "s1@example.com", None)
        .await;
    // Issue 20 item 8: the address is proven before the approval.
    let kv = sink
        .wait_for("s1@example.com", 1)
        .await
        .token("kv")
        .expect("verification token");
    auth.verify_email(VerifyEmailRequest { token: kv })
        .await
        .expect("verify email");
    a.one("user.email_verified", &s1, "s1@example.com", None)
        .await;
    ap.approve_join_request(authed(
        ApproveJoinRequestRequest {
            join_request_id: jr1.clone(),
        },
        &kim_t,
    ))
    .await
    .expect("approve");
    a.one("join_request.approved", &jr1, "kim@example.com", Some(&org))
        .await;
    a.one("membership.added", &s1, "kim@example.com", Some(&org))
        .await;
    let jr2 = auth
        .sign_up(signup("s2@example.com"))
        .await
        .expect("sign up")
        .into_inner()
        .join_request
        .expect("jr")
        .join_request_id;
    ap.reject_join_request(authed(
        RejectJoinRequestRequest {
            join_request_id: jr2.clone(),
            reason: Some("no".into()),
        },
        &kim_t,
    ))
    .await
    .expect("reject");
    a.one("join_request.rejected", &jr2, "kim@example.com", Some(&org))
        .await;
    let s1_t = s
        .login("s1@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let org2 = s.create_org(&admin, "Beta", "beta").await;
    let jr3 = ap
        .request_to_join(authed(
            RequestToJoinRequest {
                organization_id: org2.clone(),
            },
            &s1_t,
        ))
        .await
        .expect("request")
        .into_inner()
        .join_request
        .expect("jr")
        .join_request_id;
    a.one("join_request.created", &jr3, "s1@example.com", Some(&org2))
        .await;
}

async fn self_service_and_sessions_write_one_event_each(backend: Backend) {
    let Trail {
        sink,
        s,
        admin: _,
        mut a,
        c,
    } = trail(backend).await;
    let Clients {
        mut auth,
        mut users,
        ..
    } = c;
    let lee = s.create_user("lee@example.com", "Lee", PASSWORD).await;
    let lee_t = s
        .login("lee@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let sess = s.login("lee@example.com", PASSWORD).await.expect("login");
    auth.logout(authed(
        LogoutRequest {
            refresh_token: sess.refresh_token.clone(),
        },
        &sess.access_token,
    ))
    .await
    .expect("logout");
    assert_eq!(a.events("auth.logout", "").await.len(), 1);
    users
        .update_me(authed(
            UpdateMeRequest {
                name: "Lee Park".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                ..Default::default()
            },
            &lee_t,
        ))
        .await
        .expect("update me");
    let d = a.one("user.updated", &lee, "lee@example.com", None).await;
    assert_eq!(d["after"]["name"], "Lee Park");
    users
        .change_password(authed(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "lee's second passphrase".into(),
            },
            &lee_t,
        ))
        .await
        .expect("change password");
    a.one("user.password_changed", &lee, "lee@example.com", None)
        .await;
    let _ = s.login("lee@example.com", "definitely wrong pw").await;
    assert!(a.events("auth.login_failed", &lee).await.len() == 1);
    auth.request_password_reset(RequestPasswordResetRequest {
        email: "lee@example.com".into(),
    })
    .await
    .expect("reset request");
    let reset = sink
        .wait_for("lee@example.com", 1)
        .await
        .token("kp")
        .expect("token");
    auth.reset_password(ResetPasswordRequest {
        token: reset,
        new_password: "lee's third passphrase".into(),
    })
    .await
    .expect("reset");
    a.one("user.password_reset", &lee, "lee@example.com", None)
        .await;
}

async fn account_administration_writes_one_event_each(backend: Backend) {
    let Trail {
        sink: _sink,
        s,
        admin,
        mut a,
        c,
    } = trail(backend).await;
    let Clients {
        mut users,
        mut orgs,
        ..
    } = c;
    // Lee, and C a Member of Acme, as the other areas leave them; Beta to
    // delete.
    let lee = s.create_user("lee@example.com", "Lee", PASSWORD).await;
    let lee_t = s
        .login("lee@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let c = s.create_user("c@example.com", "C", PASSWORD).await;
    s.add_member(&admin, &org, &c, Role::Member).await;
    let org2 = s.create_org(&admin, "Beta", "beta").await;
    // Lee renamed themselves before (see the self-service test).
    users
        .update_me(authed(
            UpdateMeRequest {
                name: "Lee Park".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                ..Default::default()
            },
            &lee_t,
        ))
        .await
        .expect("update me");
    for (action, f) in [("user.deactivated", 0), ("user.reactivated", 1)] {
        if f == 0 {
            users
                .deactivate_user(authed(
                    DeactivateUserRequest {
                        user_id: lee.clone(),
                    },
                    &admin,
                ))
                .await
                .expect("deactivate");
        } else {
            users
                .reactivate_user(authed(
                    ReactivateUserRequest {
                        user_id: lee.clone(),
                    },
                    &admin,
                ))
                .await
                .expect("reactivate");
        }
        a.one(action, &lee, ADMIN_EMAIL, None).await;
    }
    for _ in 0..5 {
        let _ = s.login("lee@example.com", "definitely wrong pw").await;
    }
    a.one("user.locked", &lee, "lee@example.com", None).await;
    users
        .unlock_user(authed(
            UnlockUserRequest {
                user_id: lee.clone(),
            },
            &admin,
        ))
        .await
        .expect("unlock");
    a.one("user.unlocked", &lee, ADMIN_EMAIL, None).await;
    users
        .set_platform_admin(authed(
            SetPlatformAdminRequest {
                user_id: lee.clone(),
                platform_admin: true,
            },
            &admin,
        ))
        .await
        .expect("pa");
    let d = a
        .one("user.platform_admin_changed", &lee, ADMIN_EMAIL, None)
        .await;
    assert_eq!(d["after"]["platform_admin"], true);
    users
        .delete_user(authed(
            DeleteUserRequest {
                user_id: lee.clone(),
            },
            &admin,
        ))
        .await
        .expect("delete user");
    let d = a.one("user.deleted", &lee, ADMIN_EMAIL, None).await;
    assert_eq!(d["before"]["email"], "lee@example.com");
    // The deleted user's earlier events stay, with the email of the time.
    assert_eq!(
        a.events("user.updated", &lee).await[0].actor_email,
        "lee@example.com"
    );
    let c_t = s
        .login("c@example.com", PASSWORD)
        .await
        .expect("login")
        .access_token;
    users
        .delete_me(authed(
            DeleteMeRequest {
                current_password: PASSWORD.into(),
            },
            &c_t,
        ))
        .await
        .expect("delete me");
    a.one("user.deleted", &c, "c@example.com", None).await;
    orgs.delete_organization(authed(
        DeleteOrganizationRequest {
            organization_id: org2.clone(),
        },
        &admin,
    ))
    .await
    .expect("delete org");
    a.one("organization.deleted", &org2, ADMIN_EMAIL, Some(&org2))
        .await;
}

async fn refused_calls_write_no_event(backend: Backend) {
    let t = trail(backend).await;
    let (s, admin) = (&t.s, t.admin.clone());
    let mut a = Audit {
        client: t.c.audit.clone(),
        admin: admin.clone(),
    };
    let Clients {
        mut users,
        mut orgs,
        members: mut m,
        invitations: mut inv,
        approvals: mut ap,
        ..
    } = t.c.clone();
    let me = |t: &str| authed(GetMeRequest {}, t);
    let admin_id = users
        .get_me(me(&admin))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("u")
        .user_id;
    // Kim the only Manager of Acme; S1 a Member by an approved join request.
    let (org, kim, kim_t) = acme_managed_by_kim(s, &admin).await;
    let (_, jr1, s1_t) = s1_approved_into(&t, &org, &kim_t).await;
    let before = a.total().await;
    let refused: Vec<Result<(), tonic::Status>> = vec![
        m.set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.clone(),
                user_id: kim.clone(),
                permissions: vec![1],
            },
            &s1_t,
        ))
        .await
        .map(|_| ()),
        m.change_role(authed(
            ChangeRoleRequest {
                organization_id: org.clone(),
                user_id: kim.clone(),
                role: 1,
            },
            &admin,
        ))
        .await
        .map(|_| ()),
        orgs.create_organization(authed(
            CreateOrganizationRequest {
                name: "X".into(),
                code: "acme".into(),
                description: String::new(),
            },
            &admin,
        ))
        .await
        .map(|_| ()),
        users
            .create_user(authed(
                CreateUserRequest {
                    email: "kim@example.com".into(),
                    name: "K".into(),
                    password: PASSWORD.into(),
                    platform_admin: false,
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        m.add_member(authed(
            AddMemberRequest {
                organization_id: org.clone(),
                user_id: kim.clone(),
                role: 1,
            },
            &admin,
        ))
        .await
        .map(|_| ()),
        users
            .set_platform_admin(authed(
                SetPlatformAdminRequest {
                    user_id: admin_id.clone(),
                    platform_admin: false,
                },
                &admin,
            ))
            .await
            .map(|_| ()),
        inv.create_invitation(authed(
            CreateInvitationRequest {
                organization_id: org.clone(),
                email: "x".into(),
                role: 1,
                ..Default::default()
            },
            &kim_t,
        ))
        .await
        .map(|_| ()),
        ap.approve_join_request(authed(
            ApproveJoinRequestRequest {
                join_request_id: jr1.clone(),
            },
            &kim_t,
        ))
        .await
        .map(|_| ()),
    ];
    assert!(refused.iter().all(|r| r.is_err()), "{refused:?}");
    assert_eq!(a.total().await, before, "refused calls wrote events");
}
/// Acme with an audit holder and a Member, Beta with a Manager; the audit
/// permission granted with a request id of the caller's.
struct Visibility {
    s: TestServer,
    admin: String,
    org: String,
    other: String,
    aud_id: String,
    mem: String,
    omgr: String,
    aud: String,
    c: AuditServiceClient<Channel>,
    /// What the grant's answer echoed as `x-request-id`.
    echoed: Option<String>,
}

async fn visibility(backend: Backend) -> Visibility {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let other = s.create_org(&admin, "Beta", "beta").await;
    let (aud_id, _) = s.user("auditor@acme.io").await;
    let (mem_id, mem) = s.user("member@acme.io").await;
    let (omgr_id, omgr) = s.user("mgr@beta.io").await;
    s.add_member(&admin, &org, &aud_id, Role::Member).await;
    s.add_member(&admin, &org, &mem_id, Role::Member).await;
    s.add_member(&admin, &other, &omgr_id, Role::Manager).await;
    let mut m = s.members().await;
    // A request id from the caller is stored on the event and echoed back.
    let mut req = authed(
        SetPermissionsRequest {
            organization_id: org.clone(),
            user_id: aud_id.clone(),
            permissions: vec![Permission::Audit as i32],
        },
        &admin,
    );
    req.metadata_mut()
        .insert("x-request-id", "req-audit-42".parse().expect("hdr"));
    let resp = m.set_permissions(req).await.expect("grant audit");
    let echoed = resp
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let aud = s
        .login("auditor@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let c = s.audit().await;
    Visibility {
        s,
        admin,
        org,
        other,
        aud_id,
        mem,
        omgr,
        aud,
        c,
        echoed,
    }
}

fn list(org: Option<&str>, action: &str, t: &str) -> tonic::Request<ListAuditEventsRequest> {
    authed(
        ListAuditEventsRequest {
            organization_id: org.map(str::to_string),
            action: action.into(),
            page_size: 100,
            ..Default::default()
        },
        t,
    )
}

async fn audit_holders_see_their_organization_with_request_ids(backend: Backend) {
    let Visibility {
        s: _server,
        org,
        other,
        mem,
        omgr,
        aud,
        mut c,
        echoed,
        ..
    } = visibility(backend).await;
    assert_eq!(echoed.as_deref(), Some("req-audit-42"));
    // The audit holder sees their organization's events only.
    let mine = c
        .list_audit_events(list(Some(&org), "", &aud))
        .await
        .expect("auditor lists")
        .into_inner();
    assert!(mine.total_size >= 3);
    assert!(mine.audit_events.iter().all(|e| e.organization_id == org));
    let granted = mine
        .audit_events
        .iter()
        .find(|e| e.action == "membership.permissions_changed")
        .expect("grant event");
    assert_eq!(granted.request_id, "req-audit-42");
    assert!(granted.peer_address.starts_with("127.0.0.1:"));
    // Newest first.
    let times: Vec<i64> = mine
        .audit_events
        .iter()
        .map(|e| e.event_time.as_ref().expect("t").seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    // Everyone else is refused.
    assert_status(
        c.list_audit_events(list(Some(&org), "", &mem)).await,
        Code::PermissionDenied,
        "AUDIT_PERMISSION_REQUIRED",
    );
    assert_status(
        c.list_audit_events(list(Some(&org), "", &omgr)).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_status(
        c.list_audit_events(list(None, "", &aud)).await,
        Code::PermissionDenied,
        "PLATFORM_ADMIN_REQUIRED",
    );
    // A Manager holds every category, audit included, for their organization.
    c.list_audit_events(list(Some(&other), "", &omgr))
        .await
        .expect("manager reads own org");
}

async fn platform_admins_filter_and_page_the_whole_trail(backend: Backend) {
    let Visibility {
        s,
        admin,
        other,
        aud_id,
        mut c,
        ..
    } = visibility(backend).await;
    // PlatformAdmin: everything; filters.
    let all = c
        .list_audit_events(list(None, "", &admin))
        .await
        .expect("all")
        .into_inner();
    assert!(all.audit_events.iter().any(|e| e.organization_id == other));
    let memberships = c
        .list_audit_events(list(None, "membership.", &admin))
        .await
        .expect("prefix")
        .into_inner();
    assert!(
        memberships.total_size >= 4
            && memberships
                .audit_events
                .iter()
                .all(|e| e.action.starts_with("membership."))
    );
    let by_target = c
        .list_audit_events(authed(
            ListAuditEventsRequest {
                target_id: aud_id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("target")
        .into_inner();
    assert!(
        by_target.audit_events.iter().all(|e| e.target_id == aud_id) && by_target.total_size >= 2
    );
    let admin_id = s
        .users()
        .await
        .get_me(authed(GetMeRequest {}, &admin))
        .await
        .expect("me")
        .into_inner()
        .user
        .expect("u")
        .user_id;
    let by_actor = c
        .list_audit_events(authed(
            ListAuditEventsRequest {
                actor_id: admin_id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("actor")
        .into_inner();
    assert!(by_actor.audit_events.iter().all(|e| e.actor_id == admin_id));
    let future = prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    };
    let none = c
        .list_audit_events(authed(
            ListAuditEventsRequest {
                start_time: Some(future),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("time")
        .into_inner();
    assert_eq!(none.total_size, 0);
    // Keyset pages cover everything once.
    let mut seen = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let p = c
            .list_audit_events(authed(
                ListAuditEventsRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .expect("page")
            .into_inner();
        for e in p.audit_events {
            assert!(seen.insert(e.event_id), "duplicate across pages");
        }
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(seen.len() as i64, all.total_size);
    // Bad input.
    assert_invalid(
        c.list_audit_events(authed(
            ListAuditEventsRequest {
                action: "DROP TABLE".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await,
        "action",
    );
    assert_invalid(
        c.list_audit_events(authed(
            ListAuditEventsRequest {
                start_time: Some(future),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
            &admin,
        ))
        .await,
        "end_time",
    );
    assert_invalid(
        c.list_audit_events(authed(
            ListAuditEventsRequest {
                actor_id: "x".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await,
        "actor_id",
    );
}

async fn exports_agree_with_the_list(backend: Backend) {
    let Visibility {
        s: _server,
        org,
        mem,
        aud,
        mut c,
        ..
    } = visibility(backend).await;
    let mine = c
        .list_audit_events(list(Some(&org), "", &aud))
        .await
        .expect("auditor lists")
        .into_inner();
    // Exports agree with the list, in both formats.
    let export = |format: ExportFormat| {
        authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.clone()),
                format: format as i32,
                ..Default::default()
            },
            &aud,
        )
    };
    let jsonl = collect(
        c.export_audit_events(export(ExportFormat::JsonLines))
            .await
            .expect("export"),
    )
    .await;
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len() as i64, mine.total_size);
    assert!(lines
        .iter()
        .all(|l| l["organization_id"] == org.as_str() && l["details"].is_object()));
    let csv = collect(
        c.export_audit_events(export(ExportFormat::Csv))
            .await
            .expect("export"),
    )
    .await;
    assert!(csv
        .starts_with("event_id,event_time,actor_type,actor_id,actor_email,organization_id,action"));
    assert!(csv.contains("\"{\"\"")); // details JSON quoted per RFC 4180
    assert_invalid(
        c.export_audit_events(export(ExportFormat::Unspecified))
            .await
            .map(|_| ()),
        "format",
    );
    assert_status(
        c.export_audit_events(authed(
            ExportAuditEventsRequest {
                organization_id: Some(org.clone()),
                format: 1,
                ..Default::default()
            },
            &mem,
        ))
        .await
        .map(|_| ()),
        Code::PermissionDenied,
        "AUDIT_PERMISSION_REQUIRED",
    );
}

async fn collect(r: tonic::Response<tonic::Streaming<ExportAuditEventsResponse>>) -> String {
    let mut s = r.into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await.expect("chunk") {
        out.extend(c.chunk);
    }
    String::from_utf8(out).expect("utf-8")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const SEEDED: usize = 100_000;

/// 100,000 events seeded straight into the database, then exported through
/// the real server while its RSS is sampled: the export must stream.
async fn export_streams_100k_events_in_constant_memory(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let db = Database::connect(&s.db.url).await.expect("db");
    let details = r#"{"before":{"permissions":[]},"after":{"permissions":["device","vpn"]},"note":"seeded to measure export memory, padded to a realistic size"}"#;
    for batch in 0..(SEEDED / 1000) {
        let mut sql = String::from("INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, actor_email, organization_id, action, target_type, target_id, details, request_id, peer_address) VALUES ");
        for i in 0..1000 {
            let n = batch * 1000 + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('seed-{n:08}', {}, 'user', 'seed-actor', 'seeder@example.com', NULL, 'membership.permissions_changed', 'user', 'seed-target-{n}', '{details}', 'seed-request-{n}', '127.0.0.1:1')",
                1_700_000_000_000i64 + n as i64
            ));
        }
        db.execute_unprepared(&sql).await.expect("seed");
    }
    let _ = db.close().await;
    let pid = s.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut c = s.audit().await;
    let mut stream = c
        .export_audit_events(authed(
            ExportAuditEventsRequest {
                format: ExportFormat::JsonLines as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("export")
        .into_inner();
    let (mut lines, mut bytes, mut peak) = (0usize, 0usize, before);
    while let Some(chunk) = stream.message().await.expect("chunk") {
        lines += chunk.chunk.iter().filter(|b| **b == b'\n').count();
        bytes += chunk.chunk.len();
        peak = peak.max(rss_kib(pid));
    }
    assert!(lines > SEEDED, "exported {lines} lines");
    let growth_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "export ({backend:?}): {lines} events, {:.1} MiB streamed, server RSS {:.1} → peak {:.1} MiB (+{growth_mib:.1})",
        bytes as f64 / 1048576.0,
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    // Loading everything would cost more than the export's size in memory.
    assert!(
        bytes > 30 * 1024 * 1024,
        "export too small to prove anything"
    );
    assert!(
        growth_mib < 24.0,
        "server memory grew {growth_mib:.1} MiB while streaming {:.1} MiB",
        bytes as f64 / 1048576.0
    );
}
