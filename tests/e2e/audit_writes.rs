//! Every change writes exactly one audit event with it; a refused call writes
//! none. Read straight from the database (the reading RPCs come with the
//! audit trail issue).

use crate::both_backends;
use crate::support::*;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};

both_backends!(membership_changes_are_audited_once);

async fn events(s: &TestServer, action: &str) -> Vec<(String, String, String, String)> {
    let db = Database::connect(&s.db.url).await.expect("connect");
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => {
            "SELECT actor_email, organization_id, target_id, details FROM audit_events WHERE action = $1 ORDER BY id"
        }
        _ => "SELECT actor_email, organization_id, target_id, details FROM audit_events WHERE action = ? ORDER BY id",
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [action.into()],
        ))
        .await
        .expect("query");
    let out = rows
        .into_iter()
        .map(|r| {
            (
                r.try_get::<Option<String>>("", "actor_email")
                    .expect("actor")
                    .unwrap_or_default(),
                r.try_get::<Option<String>>("", "organization_id")
                    .expect("org")
                    .unwrap_or_default(),
                r.try_get::<String>("", "target_id").expect("target"),
                r.try_get::<String>("", "details").expect("details"),
            )
        })
        .collect();
    let _ = db.close().await;
    out
}

async fn membership_changes_are_audited_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Acme", "acme").await;
    let (mgr_id, _) = s.user("mgr@acme.io").await;
    let (mem_id, mem) = s.user("mem@acme.io").await;
    s.add_member(&admin, &org, &mgr_id, Role::Manager).await;
    s.add_member(&admin, &org, &mem_id, Role::Member).await;
    let mgr = s
        .login("mgr@acme.io", PASSWORD)
        .await
        .expect("login")
        .access_token;
    let mut m = s.members().await;

    m.set_permissions(authed(
        SetPermissionsRequest {
            organization_id: org.clone(),
            user_id: mem_id.clone(),
            permissions: vec![Permission::Device as i32],
        },
        &mgr,
    ))
    .await
    .expect("grant");
    // Refused calls: a Member tries, and R5 refuses the last Manager's demotion.
    let _ = m
        .set_permissions(authed(
            SetPermissionsRequest {
                organization_id: org.clone(),
                user_id: mem_id.clone(),
                permissions: vec![1],
            },
            &mem,
        ))
        .await
        .expect_err("member refused");
    let _ = m
        .change_role(authed(
            ChangeRoleRequest {
                organization_id: org.clone(),
                user_id: mgr_id.clone(),
                role: Role::Member as i32,
            },
            &admin,
        ))
        .await
        .expect_err("last manager");

    let granted = events(&s, "membership.permissions_changed").await;
    assert_eq!(granted.len(), 1, "{granted:?}");
    let (actor, event_org, target, details) = &granted[0];
    assert_eq!(actor, "mgr@acme.io");
    assert_eq!(event_org, &org);
    assert_eq!(target, &mem_id);
    let details: serde_json::Value = serde_json::from_str(details).expect("json");
    assert_eq!(details["before"]["permissions"], serde_json::json!([]));
    assert_eq!(
        details["after"]["permissions"],
        serde_json::json!(["device"])
    );
    assert!(
        events(&s, "membership.role_changed").await.is_empty(),
        "refused change left an event"
    );
    assert_eq!(events(&s, "membership.added").await.len(), 2);
    assert_eq!(events(&s, "organization.created").await.len(), 1);
    // Login failures are recorded too, without the password.
    let _ = s.login("mem@acme.io", "wrong password here").await;
    let failed = events(&s, "auth.login_failed").await;
    assert_eq!(failed.len(), 1);
    assert!(!failed[0].3.contains("wrong password here"));
}
