//! Crash safety: the server is killed with SIGKILL again and again in the
//! middle of a concurrent write load and restarted on the same database.
//! Every change a client got an OK for must be there with its audit event,
//! and no change may be half-applied (an organization without its
//! `organization.created` event, a membership without its
//! `membership.added` event, or an event without its row).
//!
//! `KIOPS_CRASH_ROUNDS` (default 4) sets the number of kills per backend.

use crate::support::*;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::organization_service_client::OrganizationServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Request;

crate::both_backends!(kill_9_under_write_load_loses_nothing_acknowledged);

const WRITERS: usize = 8;

/// Acknowledged changes: (request id, organization id, Some(user) for an
/// added membership).
type Acked = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

fn with_id<T>(msg: T, token: &str, id: &str) -> Request<T> {
    let mut r = authed(msg, token);
    r.metadata_mut()
        .insert("x-request-id", id.parse().expect("request id"));
    r
}

async fn kill_9_under_write_load_loses_nothing_acknowledged(backend: Backend) {
    let rounds: usize = std::env::var("KIOPS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut s = TestServer::start(backend).await;
    let admin = s.admin_token().await;
    let mut people = Vec::new();
    for p in 0..4 {
        people.push(
            s.create_user(&format!("p{p}@crash.io"), "P", PASSWORD)
                .await,
        );
    }
    let people = Arc::new(people);
    let acked: Acked = Arc::default();
    let seq = Arc::new(AtomicUsize::new(0));
    let mut attempted = 0;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            writers.push(tokio::spawn(write_until_stopped(
                s.channel().await,
                admin.clone(),
                acked.clone(),
                seq.clone(),
                stop.clone(),
                people.clone(),
            )));
        }
        // Let the load run, then pull the plug mid-flight.
        tokio::time::sleep(Duration::from_millis(300 + 150 * (round as u64 % 4))).await;
        s.child.kill().expect("SIGKILL");
        let _ = s.child.wait();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            attempted += w.await.expect("writer");
        }
        // Restart on the same database.
        let url = s.db.url.clone();
        let db = std::mem::replace(&mut s.db, TestDb::shared(&url));
        let backend = s.backend;
        drop(s);
        s = TestServer::start_on(db, backend, ServerOptions::default()).await;
    }

    // Everything acknowledged is there, with its audit event.
    let db = Database::connect(&s.db.url).await.expect("db");
    let q = |sql: &str| {
        let db = &db;
        let sql = sql.to_string();
        async move {
            db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .expect("query")
        }
    };
    let orgs: HashSet<String> = q("SELECT id FROM organizations WHERE code LIKE 'crash-%'")
        .await
        .iter()
        .map(|r| r.try_get("", "id").expect("id"))
        .collect();
    let members: HashSet<(String, String)> = q("SELECT organization_id, user_id FROM memberships")
        .await
        .iter()
        .map(|r| {
            (
                r.try_get("", "organization_id").expect("org"),
                r.try_get("", "user_id").expect("user"),
            )
        })
        .collect();
    let mut events: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    let mut created_events: HashMap<String, usize> = HashMap::new();
    let mut added_events: HashMap<(String, String), usize> = HashMap::new();
    for r in q("SELECT request_id, action, organization_id, target_id FROM audit_events").await {
        let rid: String = r.try_get("", "request_id").expect("rid");
        let action: String = r.try_get("", "action").expect("action");
        let org: Option<String> = r.try_get("", "organization_id").expect("org");
        let target: String = r.try_get("", "target_id").expect("target");
        let org = org.unwrap_or_default();
        match action.as_str() {
            "organization.created" => *created_events.entry(target.clone()).or_default() += 1,
            "membership.added" => {
                *added_events
                    .entry((org.clone(), target.clone()))
                    .or_default() += 1
            }
            _ => {}
        }
        events.entry(rid).or_default().push((action, org, target));
    }
    let acked = acked.lock().expect("acked").clone();
    for (rid, org, user) in &acked {
        let ev = events.get(rid).cloned().unwrap_or_default();
        match user {
            None => {
                assert!(orgs.contains(org), "acknowledged organization {org} lost");
                assert_eq!(ev.len(), 1, "events of {rid}: {ev:?}");
                assert_eq!(ev[0].0, "organization.created");
            }
            Some(u) => {
                assert!(
                    members.contains(&(org.clone(), u.clone())),
                    "acknowledged membership {org}/{u} lost"
                );
                assert_eq!(ev.len(), 1, "events of {rid}: {ev:?}");
                assert_eq!(ev[0].0, "membership.added");
            }
        }
    }
    // Nothing half-applied: rows and their events come together or not at all.
    for org in &orgs {
        assert_eq!(
            created_events.get(org),
            Some(&1),
            "organization {org} without exactly one created event"
        );
    }
    for (org, n) in &created_events {
        if *n > 0 && !orgs.contains(org) {
            // Only crash-% organizations are checked; others exist too.
            let exists = !q(&format!("SELECT id FROM organizations WHERE id = '{org}'"))
                .await
                .is_empty();
            assert!(
                exists,
                "created event for organization {org} that does not exist"
            );
        }
    }
    for (org, user) in members.iter().filter(|(o, _)| orgs.contains(o)) {
        assert_eq!(
            added_events.get(&(org.clone(), user.clone())),
            Some(&1),
            "membership {org}/{user} without exactly one added event"
        );
    }
    for (org, user) in added_events.keys() {
        if orgs.contains(org) {
            assert!(
                members.contains(&(org.clone(), user.clone())),
                "added event without membership {org}/{user}"
            );
        }
    }
    // And the restarted server works.
    s.create_org(&admin, "After", "after-crashes").await;
    println!(
        "crash safety ({backend:?}): {rounds} SIGKILLs under {WRITERS} writers, {attempted} write attempts, \
         {} acknowledged changes all present with their audit events, 0 lost, 0 half-applied \
         ({} organizations, {} memberships checked)",
        acked.len(),
        orgs.len(),
        members.iter().filter(|(o, _)| orgs.contains(o)).count()
    );
    assert!(acked.len() >= rounds, "too little load to mean anything");
}

/// One writer of the load: creates organizations and adds a Manager to each,
/// recording what was acknowledged, until stopped or refused; returns how
/// many it tried.
async fn write_until_stopped(
    ch: Channel,
    admin: String,
    acked: Acked,
    seq: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    people: Arc<Vec<String>>,
) -> usize {
    let mut tries = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tries += 1;
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let id = uuid::Uuid::now_v7().to_string();
        let created = OrganizationServiceClient::new(ch.clone())
            .create_organization(with_id(
                CreateOrganizationRequest {
                    name: "Crash".into(),
                    code: format!("crash-{n}"),
                    description: String::new(),
                },
                &admin,
                &id,
            ))
            .await;
        let Ok(created) = created else { break };
        let org = created
            .into_inner()
            .organization
            .expect("organization")
            .organization_id;
        acked.lock().expect("acked").push((id, org.clone(), None));
        let user = people[n % people.len()].clone();
        let id = uuid::Uuid::now_v7().to_string();
        let added = MembershipServiceClient::new(ch.clone())
            .add_member(with_id(
                AddMemberRequest {
                    organization_id: org.clone(),
                    user_id: user.clone(),
                    role: Role::Manager as i32,
                },
                &admin,
                &id,
            ))
            .await;
        if added.is_err() {
            break;
        }
        acked.lock().expect("acked").push((id, org, Some(user)));
    }
    tries
}
