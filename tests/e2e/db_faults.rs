//! Database faults: the server reaches PostgreSQL through a TCP proxy that
//! the test cuts under load (every open connection dropped, new ones
//! refused) and later restores. While the database is gone, calls fail fast
//! with UNAVAILABLE, `/readyz` is 503 and the gRPC health status is
//! NOT_SERVING (liveness stays SERVING); nothing panics; when the database is
//! back the service recovers by itself.
//!
//! PostgreSQL only: the embedded SQLite database is a local file with no
//! connection to lose.

use crate::support::*;
use kiops_proto::v1::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A TCP proxy that can cut every connection and refuse new ones, or
/// freeze: keep every connection open and pass nothing (a half-open
/// network, where a read waits until TCP gives up).
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    freeze_now: Arc<tokio::sync::Notify>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let frozen = Arc::new(AtomicBool::new(false));
        let freeze_now = Arc::new(tokio::sync::Notify::new());
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let (frozen2, freeze_now2) = (frozen.clone(), freeze_now.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let upstream = upstream.clone();
                let (frozen, freeze_now) = (frozen2.clone(), freeze_now2.clone());
                let task = tokio::spawn(async move {
                    let freeze = freeze_now.notified();
                    if frozen.load(Ordering::SeqCst) {
                        // Hold the client's socket open, answer nothing.
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = freeze => std::future::pending::<()>().await,
                        }
                    }
                    drop(client);
                });
                conns2.lock().expect("conns").push(task);
            }
        });
        Proxy {
            port,
            up,
            frozen,
            freeze_now,
            conns,
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        self.freeze_now.notify_waiters();
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().expect("conns").drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A fresh PostgreSQL database and a server that reaches it through a proxy.
async fn behind_proxy() -> (TestDb, Proxy, TestServer) {
    let db = TestDb::create(Backend::Postgres).await;
    // postgres://user@host:port/name → the same through the proxy.
    let (before_at, rest) = db.url.split_once('@').expect("url with @");
    let (hostport, name) = rest.split_once('/').expect("url with db");
    let proxy = Proxy::start(hostport.to_string()).await;
    let proxied = format!("{before_at}@127.0.0.1:{}/{name}", proxy.port);
    let s = TestServer::start_on(
        TestDb::shared(&proxied),
        Backend::Postgres,
        ServerOptions::default(),
    )
    .await;
    (db, proxy, s)
}

/// The `sub` claim of an access token (decoded, not verified).
fn user_id_of(token: &str) -> String {
    token_claims(token)["sub"]
        .as_str()
        .expect("sub")
        .to_string()
}

async fn check_permission(
    ch: &tonic::transport::Channel,
    token: &str,
    org: &str,
    user: &str,
) -> Result<bool, tonic::Status> {
    membership_service_client::MembershipServiceClient::new(ch.clone())
        .check_permission(authed(
            CheckPermissionRequest {
                organization_id: org.into(),
                user_id: user.into(),
                permission: Permission::Device as i32,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().allowed)
}

/// A database that stops answering without closing its connections (a
/// half-open network): a CheckPermission fails UNAVAILABLE within the
/// batch statement's timeout (5 s; the request timeout is 30 s and TCP
/// would wait for minutes), and checks answer again once the network is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stall_fails_checks_in_seconds_and_recovers() {
    let (db, proxy, s) = behind_proxy().await;
    let admin = s.admin_token().await;
    let admin_id = user_id_of(&admin);
    let org = s.create_org(&admin, "Stalled", "stalled").await;
    let ch = s.channel().await;
    assert!(check_permission(&ch, &admin, &org, &admin_id)
        .await
        .expect("check"));

    proxy.freeze();
    let t = Instant::now();
    let status = check_permission(&ch, &admin, &org, &admin_id)
        .await
        .expect_err("no answer from a stalled database");
    let took = t.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "failed after {took:?}"
    );

    // The network comes back: the frozen connections die, new ones work.
    proxy.cut();
    proxy.restore();
    let back = Instant::now();
    loop {
        if check_permission(&ch, &admin, &org, &admin_id).await.ok() == Some(true) {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
    drop(s);
    drop(db);
}

/// ListMembers of `org` as `admin`.
async fn list_members(
    ch: &tonic::transport::Channel,
    admin: &str,
    org: &str,
) -> Result<tonic::Response<ListMembersResponse>, tonic::Status> {
    membership_service_client::MembershipServiceClient::new(ch.clone())
        .list_members(authed(
            ListMembersRequest {
                organization_id: org.into(),
                ..Default::default()
            },
            admin,
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_and_recovers() {
    let (db, proxy, s) = behind_proxy().await;
    let admin = s.admin_token().await;
    let admin_id = user_id_of(&admin);
    let org = s.create_org(&admin, "Faulty", "faulty").await;
    let ch = s.channel().await;

    // Load: callers listing members the whole time, recording each outcome.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(Instant, Code, Duration)>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ch, stop, log, admin, org) = (
            ch.clone(),
            stop.clone(),
            log.clone(),
            admin.clone(),
            org.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = list_members(&ch, &admin, &org).await;
                let code = r.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
                log.lock().expect("log").push((t, code, t.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let health = |service: &str| {
        let mut h = HealthClient::new(ch.clone());
        let service = service.to_string();
        async move {
            h.check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health("").await, 1, "SERVING before the outage");

    // Outage.
    proxy.cut();
    let cut_at = Instant::now();
    let mut unready_after = None;
    while cut_at.elapsed() < Duration::from_secs(15) {
        if s.http("GET", "/readyz").0 == 503 && health("").await == 2 {
            unready_after = Some(cut_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unready_after =
        unready_after.expect("/readyz 503 and health NOT_SERVING during the outage");
    assert_eq!(
        health(kiops_identity::server::LIVENESS).await,
        1,
        "liveness stays SERVING"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let direct = list_members(&ch, &admin, &org).await;
    let status = direct.expect_err("no database, no answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE");
    // CheckPermission reads through its own batching worker: the same.
    let status = check_permission(&ch, &admin, &org, &admin_id)
        .await
        .expect_err("no database, no check");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE");

    // Recovery, by itself.
    proxy.restore();
    let restored_at = Instant::now();
    let mut recovered_after = None;
    while restored_at.elapsed() < Duration::from_secs(30) {
        let ok = list_members(&ch, &admin, &org).await.is_ok();
        let checks = check_permission(&ch, &admin, &org, &admin_id).await.is_ok();
        if ok && checks && s.http("GET", "/readyz").0 == 200 && health("").await == 1 {
            recovered_after = Some(restored_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_after = recovered_after.expect("recovered within 30 s of the database returning");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }

    let log = log.lock().expect("log").clone();
    let during: Vec<_> = log
        .iter()
        .filter(|(t, _, _)| *t >= cut_at && *t < restored_at)
        .collect();
    let failed: Vec<_> = during.iter().filter(|(_, c, _)| *c != Code::Ok).collect();
    for (_, code, _) in &failed {
        assert_eq!(
            *code,
            Code::Unavailable,
            "outage answers must be UNAVAILABLE"
        );
    }
    let slowest = failed.iter().map(|(_, _, d)| *d).max().unwrap_or_default();
    // Fail fast: bounded by the pool's 5 s acquire timeout, never a hang.
    assert!(
        slowest <= Duration::from_secs(6),
        "a failing call took {slowest:?}"
    );
    assert!(!failed.is_empty(), "the outage was not noticed by any call");
    let after_ok = log
        .iter()
        .filter(|(t, c, _)| *t >= restored_at + recovered_after && *c == Code::Ok)
        .count();
    assert!(after_ok > 0, "no successful call after recovery");
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
    println!(
        "database outage: unready after {:.2}s, {} calls failed UNAVAILABLE (slowest {:.2}s), \
         recovered {:.2}s after the database returned, {} calls OK since",
        unready_after.as_secs_f64(),
        failed.len(),
        slowest.as_secs_f64(),
        recovered_after.as_secs_f64(),
        after_ok
    );
    drop(s);
    drop(db);
}
