//! Invariants under concurrency: thousands of random operations at once
//! (role changes, removals, re-adds, concurrent approvals and rejections of
//! the same join request, wrong-password logins) across many organizations,
//! then every invariant is checked in the database itself:
//!
//! - no organization lost all its Managers (R5);
//! - no duplicate membership;
//! - every join request was decided at most once, by exactly one OK call,
//!   with exactly one audit event;
//! - failed-login counts equal the wrong passwords sent;
//! - one audit event per change: each call carries its own x-request-id, and
//!   the audit trail holds exactly one event for each call that changed
//!   something and none for a refused call.
//!
//! `KIOPS_STRESS_OPS` (default 1500) sets the number of operations per
//! backend; the long variant is e.g. `KIOPS_STRESS_OPS=50000`.

use crate::support::*;
use kiops_proto::v1::approval_service_client::ApprovalServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::*;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Database, Statement};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::{Code, Request};

crate::both_backends!(random_concurrent_operations_keep_every_invariant);

const ORGS: usize = 6;
const MANAGERS: usize = 3;
const MEMBERS: usize = 5;
const JOINERS: usize = 12;
const VICTIMS: usize = 4;
const WORKERS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    ChangeRole,
    Remove,
    Add,
    Approve,
    Reject,
    WrongPassword,
}

/// What one call did, keyed by its request id.
#[derive(Debug, Clone)]
struct Outcome {
    kind: Kind,
    code: Code,
    join_request: Option<String>,
}

struct Org {
    id: String,
    /// (user id, token) of everyone who may be in it; the first MANAGERS
    /// started as Managers.
    people: Vec<(String, String)>,
    join_requests: Vec<String>,
}

fn with_id<T>(msg: T, token: &str, id: &str) -> Request<T> {
    let mut r = authed(msg, token);
    r.metadata_mut()
        .insert("x-request-id", id.parse().expect("request id"));
    r
}

async fn random_concurrent_operations_keep_every_invariant(backend: Backend) {
    let ops: usize = std::env::var("KIOPS_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            // Exact failed-login counts need no lockout in the way.
            extra_args: vec!["--lockout-threshold".into(), "1000000".into()],
            ..Default::default()
        },
    )
    .await;
    let admin = s.admin_token().await;
    let orgs = stress_world(&s, &admin).await;
    let orgs = Arc::new(orgs);
    let outcomes: Arc<Mutex<HashMap<String, Outcome>>> = Arc::default();
    let wrong: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let elapsed = run_load(&s, ops, &orgs, &admin, &outcomes, &wrong).await;
    let outcomes = outcomes.lock().expect("outcomes").clone();
    for o in outcomes.values() {
        assert_ne!(o.code, Code::Internal, "{o:?}");
        assert_ne!(o.code, Code::Unknown, "{o:?}");
    }

    // --- invariants, read from the database itself ---
    let db = Database::connect(&s.db.url).await.expect("db");
    let q = |sql: String| {
        let db = &db;
        async move {
            db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .expect("query")
        }
    };
    for org in orgs.iter() {
        let rows = q(format!(
            "SELECT COUNT(*) AS n FROM memberships WHERE organization_id = '{}' AND role = 'manager'",
            org.id
        ))
        .await;
        let n: i64 = rows[0].try_get("", "n").expect("n");
        assert!(n >= 1, "organization {} lost all its Managers", org.id);
    }
    let dups = q(
        "SELECT organization_id, user_id, COUNT(*) AS n FROM memberships \
                  GROUP BY organization_id, user_id HAVING COUNT(*) > 1"
            .into(),
    )
    .await;
    assert!(dups.is_empty(), "duplicate memberships");

    // Audit events by request id.
    let rows = q("SELECT request_id, action FROM audit_events".into()).await;
    let mut events: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        let id: String = r.try_get("", "request_id").expect("request_id");
        let action: String = r.try_get("", "action").expect("action");
        events.entry(id).or_default().push(action);
    }
    let mut changes = 0;
    let mut decided_ok: HashMap<String, usize> = HashMap::new();
    for (id, o) in &outcomes {
        let got = events.get(id).cloned().unwrap_or_default();
        if o.code != Code::Ok {
            assert!(
                got.is_empty(),
                "refused call {id} {o:?} left events {got:?}"
            );
            continue;
        }
        // The events one successful call must leave, in any order. An
        // approval is one change with two facts: the decision and the new
        // membership.
        let want: &[&str] = match o.kind {
            Kind::ChangeRole => &["membership.role_changed"],
            Kind::Remove => &["membership.removed"],
            Kind::Add => &["membership.added"],
            Kind::Approve => &["join_request.approved", "membership.added"],
            Kind::Reject => &["join_request.rejected"],
            Kind::WrongPassword => panic!("a wrong password was accepted"),
        };
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want_sorted.sort();
        if got.is_empty() && o.kind == Kind::ChangeRole {
            // A ChangeRole to the role someone already has changes nothing.
        } else {
            assert_eq!(got_sorted, want_sorted, "audit events of call {id} {o:?}");
            changes += 1;
        }
        if let Some(jr) = &o.join_request {
            *decided_ok.entry(jr.clone()).or_default() += 1;
        }
    }
    for (jr, n) in &decided_ok {
        assert_eq!(*n, 1, "join request {jr} decided {n} times");
    }
    let rows = q("SELECT id, status FROM join_requests".into()).await;
    let mut decided_in_db = 0;
    for r in rows {
        let id: String = r.try_get("", "id").expect("id");
        let status: String = r.try_get("", "status").expect("status");
        if status != "pending" {
            decided_in_db += 1;
            assert_eq!(
                decided_ok.get(&id),
                Some(&1),
                "join request {id} is {status} without exactly one OK decision"
            );
        }
    }
    assert_eq!(decided_in_db, decided_ok.len());

    let wrong = wrong.lock().expect("wrong").clone();
    let mut wrong_total = 0;
    for (email, sent) in &wrong {
        let rows = q(format!(
            "SELECT failed_login_count AS n FROM users WHERE email = '{email}'"
        ))
        .await;
        let n: i32 = rows[0].try_get("", "n").expect("n");
        assert_eq!(n as usize, *sent, "failed logins of {email}");
        wrong_total += sent;
    }
    let mut by_kind: HashMap<(Kind, Code), usize> = HashMap::new();
    for o in outcomes.values() {
        *by_kind.entry((o.kind, o.code)).or_default() += 1;
    }
    let mut summary: Vec<String> = by_kind
        .iter()
        .map(|((k, c), n)| format!("{k:?}/{c:?}={n}"))
        .collect();
    summary.sort();
    println!(
        "stress ({backend:?}): {} operations by {WORKERS} workers in {:.1}s across {ORGS} organizations; \
         {changes} changes each with one audit event, {} join requests decided once, \
         {wrong_total} wrong passwords counted exactly, every organization kept a Manager\n  {}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        decided_ok.len(),
        summary.join(" ")
    );
    assert!(changes > 0 && !decided_ok.is_empty(), "nothing happened");
}

async fn worker_op(
    ch: &Channel,
    rng: &mut rand::rngs::StdRng,
    orgs: &[Org],
    admin: &str,
    outcomes: &Mutex<HashMap<String, Outcome>>,
    wrong: &Mutex<HashMap<String, usize>>,
) {
    let org = &orgs[rng.gen_range(0..orgs.len())];
    let mut m = MembershipServiceClient::new(ch.clone());
    let record = |id: String, kind: Kind, code: Code, jr: Option<String>| {
        outcomes.lock().expect("outcomes").insert(
            id,
            Outcome {
                kind,
                code,
                join_request: jr,
            },
        );
    };
    let code_of = |r: Result<(), tonic::Status>| match r {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    };
    let id = uuid::Uuid::now_v7().to_string();
    // Actors: one of the organization's first Managers (maybe demoted or
    // removed by now), sometimes the PlatformAdmin.
    let actor = if rng.gen_bool(0.25) {
        admin.to_string()
    } else {
        org.people[rng.gen_range(0..MANAGERS)].1.clone()
    };
    let target = org.people[rng.gen_range(0..org.people.len())].0.clone();
    match rng.gen_range(0..100) {
        0..=34 => {
            let role = if rng.gen_bool(0.5) {
                Role::Manager
            } else {
                Role::Member
            };
            let r = m
                .change_role(with_id(
                    ChangeRoleRequest {
                        organization_id: org.id.clone(),
                        user_id: target,
                        role: role as i32,
                    },
                    &actor,
                    &id,
                ))
                .await
                .map(drop);
            record(id, Kind::ChangeRole, code_of(r), None);
        }
        35..=54 => {
            let r = m
                .remove_member(with_id(
                    RemoveMemberRequest {
                        organization_id: org.id.clone(),
                        user_id: target,
                    },
                    &actor,
                    &id,
                ))
                .await
                .map(drop);
            record(id, Kind::Remove, code_of(r), None);
        }
        55..=69 => {
            let r = m
                .add_member(with_id(
                    AddMemberRequest {
                        organization_id: org.id.clone(),
                        user_id: target,
                        role: Role::Member as i32,
                    },
                    admin,
                    &id,
                ))
                .await
                .map(drop);
            record(id, Kind::Add, code_of(r), None);
        }
        70..=84 => {
            // Two deciders race on the same request.
            let jr = org.join_requests[rng.gen_range(0..org.join_requests.len())].clone();
            let other = org.people[rng.gen_range(0..MANAGERS)].1.clone();
            let id2 = uuid::Uuid::now_v7().to_string();
            let mut a = ApprovalServiceClient::new(ch.clone());
            let mut b = ApprovalServiceClient::new(ch.clone());
            let (ra, rb) = tokio::join!(
                a.approve_join_request(with_id(
                    ApproveJoinRequestRequest {
                        join_request_id: jr.clone(),
                    },
                    &actor,
                    &id,
                )),
                b.reject_join_request(with_id(
                    RejectJoinRequestRequest {
                        join_request_id: jr.clone(),
                        reason: None,
                    },
                    &other,
                    &id2,
                ))
            );
            record(id, Kind::Approve, code_of(ra.map(drop)), Some(jr.clone()));
            record(id2, Kind::Reject, code_of(rb.map(drop)), Some(jr));
        }
        _ => {
            let email = format!("victim{}@stress.io", rng.gen_range(0..VICTIMS));
            let r = auth_service_client::AuthServiceClient::new(ch.clone())
                .login(LoginRequest {
                    email: email.clone(),
                    password: "not the password!".into(),
                    organization_id: None,
                })
                .await;
            let code = code_of(r.map(drop));
            assert_eq!(code, Code::Unauthenticated, "wrong password for {email}");
            *wrong.lock().expect("wrong").entry(email).or_default() += 1;
            record(id, Kind::WrongPassword, code, None);
        }
    }
}

/// ORGS organizations, each with its Managers, Members and pending join
/// requests; and VICTIMS users outside them.
async fn stress_world(s: &TestServer, admin: &str) -> Vec<Org> {
    let mut orgs = Vec::new();
    for o in 0..ORGS {
        let id = s.create_org(admin, "Stress", &format!("stress-{o}")).await;
        let mut people = Vec::new();
        for p in 0..MANAGERS + MEMBERS {
            let (uid, token) = s.user(&format!("p{p}@stress-{o}.io")).await;
            let role = if p < MANAGERS {
                Role::Manager
            } else {
                Role::Member
            };
            s.add_member(admin, &id, &uid, role).await;
            people.push((uid, token));
        }
        let mut join_requests = Vec::new();
        for j in 0..JOINERS {
            let (_, token) = s.user(&format!("j{j}@stress-{o}.io")).await;
            let jr = s
                .approvals()
                .await
                .request_to_join(authed(
                    RequestToJoinRequest {
                        organization_id: id.clone(),
                    },
                    &token,
                ))
                .await
                .expect("request to join")
                .into_inner()
                .join_request
                .expect("join request")
                .join_request_id;
            join_requests.push(jr);
        }
        orgs.push(Org {
            id,
            people,
            join_requests,
        });
    }
    for v in 0..VICTIMS {
        s.create_user(&format!("victim{v}@stress.io"), "Victim", PASSWORD)
            .await;
    }
    orgs
}

/// `ops` random operations spread over WORKERS concurrent workers, each on
/// its own connection; returns how long they took.
async fn run_load(
    s: &TestServer,
    ops: usize,
    orgs: &Arc<Vec<Org>>,
    admin: &str,
    outcomes: &Arc<Mutex<HashMap<String, Outcome>>>,
    wrong: &Arc<Mutex<HashMap<String, usize>>>,
) -> std::time::Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let ch = s.channel().await;
        let (orgs, outcomes, wrong, next, admin) = (
            orgs.clone(),
            outcomes.clone(),
            wrong.clone(),
            next.clone(),
            admin.to_string(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ops {
                worker_op(&ch, &mut rng, &orgs, &admin, &outcomes, &wrong).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    started.elapsed()
}
