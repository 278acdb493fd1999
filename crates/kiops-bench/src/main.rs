//! kiops-bench: seeds a data set, starts the real `kiops-identity` binary on
//! it, and drives scenarios with the generated tonic client: N concurrent
//! callers for D seconds each, printing throughput, p50/p99/p999 latency,
//! errors, and the server's memory. Figures of one run are comparable with
//! each other (ratios), not across machines.
//!
//! cargo build --release -p kiops-identity -p kiops-bench
//! target/release/kiops-bench --backend sqlite
//! target/release/kiops-bench --backend postgres
//! target/release/kiops-bench --smoke            # seconds, tiny data, CI

mod seed;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::*;
use rand::Rng;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmarks for kiops-identity")]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// PostgreSQL server for --backend postgres (a fresh database is
    /// created, and dropped at the end). By default the local server's Unix
    /// socket if it has one (`LOCAL_SOCKET_URL`), else 127.0.0.1:5432.
    #[arg(long)]
    postgres_admin_url: Option<String>,
    /// The server binary (defaults to the one next to this binary).
    #[arg(long)]
    server: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Concurrent callers for list-members, whose target is a latency (p99)
    /// for an interactive search, not a saturation figure.
    #[arg(long, default_value_t = 4)]
    list_concurrency: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[arg(long, default_value_t = 1_000)]
    orgs: usize,
    #[arg(long, default_value_t = 20_000)]
    big_org_members: usize,
    /// Runs of the whole scenario set (memory must not grow between them).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Comma-separated subset of: baseline, check-permission,
    /// check-permission-grpc-web, check-permission-grpc-web-h2,
    /// check-permissions-bulk, list-members, login, refresh, mixed, verify.
    #[arg(
        long,
        default_value = "baseline,check-permission,check-permission-grpc-web,check-permission-grpc-web-h2,check-permissions-bulk,list-members,login,refresh,mixed,verify"
    )]
    scenarios: String,
    /// CI mode: tiny data set, 1 second per scenario, one round.
    #[arg(long)]
    smoke: bool,
    /// The server's request threads (`serve --worker-threads`); 0 for the
    /// server's default, one per core. One by default: on a two-core
    /// machine the load generator takes the other core (argon2 hashing has
    /// two threads of its own either way), and with two runtimes of a
    /// thread per core on two cores the kernel preempts threads mid-request,
    /// which put even Health/Check's p99 at 4.5 ms (BENCHMARKS.md).
    #[arg(long, default_value_t = 1)]
    server_threads: u16,
    /// This load generator's runtime threads; 0 for one per core.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Seeding mode: seed this (empty, new) database URL and exit, without
    /// running scenarios; for inspecting query plans or load-testing with
    /// other tools.
    #[arg(long, value_name = "DATABASE_URL")]
    seed_only: Option<String>,
}

struct Server {
    child: Child,
    grpc: SocketAddr,
    pid: u32,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(
    bin: &std::path::Path,
    url: &str,
    dir: &std::path::Path,
    threads: u16,
) -> anyhow::Result<Server> {
    let mut child = Command::new(bin)
        .arg("serve")
        .args((threads > 0).then(|| format!("--worker-threads={threads}")))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            url,
        ])
        // A benchmark is one peer doing thousands of logins: lift the throttle.
        .args([
            "--login-rate-per-peer",
            "100000000",
            "--login-rate-per-email",
            "100000000",
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn,kiops_identity=info")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ready: grpc=").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(120))
        .context("server did not start")?
        .parse()?;
    let pid = child.id();
    Ok(Server {
        child,
        grpc: addr,
        pid,
    })
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// The server under test, so every scenario can report the server's CPU
/// time per request (user + system, from /proc): the figure that says where
/// time goes when client and server share the cores.
static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn server_cpu_secs() -> f64 {
    SERVER_PID.get().map_or(0.0, |pid| cpu_secs(*pid))
}

/// CPU time of this process (the load generator): on a machine where client
/// and server share the cores, a scenario's throughput is bounded by the sum
/// of both sides' cost per call, so both are printed.
fn client_cpu_secs() -> f64 {
    cpu_secs(std::process::id())
}

fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 (1-based) of the whole line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    server_cpu: f64,
    client_cpu: f64,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn calls(&self) -> f64 {
        (self.latencies_us.len() as f64 + self.errors as f64).max(1.0)
    }

    fn throughput(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  errors {}  server CPU {:.0} µs/req, client {:.0}",
            self.throughput(),
            self.pct(0.50),
            self.pct(0.99),
            self.pct(0.999),
            self.errors,
            1e6 * self.server_cpu / self.calls(),
            1e6 * self.client_cpu / self.calls(),
        )
    }
}

/// Failed calls of every scenario so far: a run with any fails at the end,
/// after its figures, so that neither a full run nor CI's smoke run passes
/// off figures of calls that did not do their work.
static FAILED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Runs `calls` from `n` concurrent tasks for `d`; each call returns Ok/Err.
async fn run<F, Fut>(n: usize, d: Duration, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Mutex::new(Vec::new()));
    let cpu0 = server_cpu_secs();
    let client0 = client_cpu_secs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..n {
        let (stop, errors, all, call) = (stop.clone(), errors.clone(), all.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(1 << 14);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = call(t).await;
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                if ok {
                    mine.push(us);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut g) = all.lock() {
                g.extend(mine);
            }
        }));
    }
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let server_cpu = server_cpu_secs() - cpu0;
    let client_cpu = client_cpu_secs() - client0;
    let mut latencies_us = std::mem::take(&mut *all.lock().expect("lock"));
    latencies_us.sort_unstable();
    let errors = errors.load(Ordering::Relaxed);
    FAILED_CALLS.fetch_add(errors, Ordering::Relaxed);
    Stats {
        latencies_us,
        errors,
        elapsed,
        server_cpu,
        client_cpu,
    }
}

/// Checks per CheckPermissions call in `check-permissions-bulk`: the most
/// one call takes.
const BULK_ITEMS: usize = 100;

type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `Bearer <token>`, built once and cloned per call (a reference count), as
/// `kiops-client` does: a client that formats and validates the header for
/// every call spends its CPU, on these shared cores, beside the server's.
fn bearer(token: &str) -> anyhow::Result<Bearer> {
    let mut v: Bearer = format!("Bearer {token}").parse()?;
    v.set_sensitive(true);
    Ok(v)
}

fn authed<T>(msg: T, bearer: &Bearer) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(v)
}

/// A gRPC-Web "channel": tonic-web's client layer over hyper's pooled
/// client, as a browser's gRPC-Web library calls.
type WebChannel = tonic_web::GrpcWebClientService<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

/// HTTP/1.1: one pool, which opens a keep-alive connection per call in
/// flight (a call at a time on each). HTTP/2 (`http2`): one connection per
/// client, calls multiplexed on it.
fn web_channel(http2: bool) -> WebChannel {
    use tower::Layer;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(http2)
        .build(connector);
    tonic_web::GrpcWebClientLayer::new().layer(client)
}

async fn login(ch: &Channel, email: &str) -> anyhow::Result<LoginResponse> {
    Ok(AuthServiceClient::new(ch.clone())
        .login(LoginRequest {
            email: email.into(),
            password: seed::PASSWORD.into(),
            organization_id: None,
        })
        .await?
        .into_inner())
}

/// Mean argon2id verify time with the production parameters, in this
/// process, with `threads` verifying at once (1 is the target's figure;
/// `cores` shows what the hardware gives when every core hashes, since
/// argon2's 19 MiB per hash compete for cache and memory bandwidth). Each
/// thread reuses one block buffer, as the server's hashing threads do: the
/// strictest ideal, pure hashing with no allocation or page faults in it.
fn argon2_verify_secs(threads: usize) -> anyhow::Result<f64> {
    use kiops_identity::auth::password::*;
    let params = argon2::Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let blocks = params.block_count();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let n = 20;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut memory = vec![argon2::Block::default(); blocks];
                let mut out = [0u8; 32];
                for _ in 0..n {
                    let _ = a.hash_password_into_with_memory(
                        b"correct horse battery staple",
                        b"sixteen byte salt",
                        &mut out,
                        &mut memory[..],
                    );
                }
            });
        }
    });
    Ok(t.elapsed().as_secs_f64() / n as f64)
}

fn verify_bench() -> String {
    use kiops_token::*;
    let key = SigningKey::generate();
    let issuer = Issuer::new(key.clone(), "kiops-identity", "kiops", 300);
    let mut orgs = std::collections::BTreeMap::new();
    orgs.insert(
        "org".to_string(),
        OrgClaims {
            role: Role::Member,
            perms: vec![Permission::Device],
        },
    );
    let token = match issuer.issue(IssueRequest {
        subject: "u".into(),
        email: "e@x.io".into(),
        name: "n".into(),
        platform_admin: false,
        orgs,
        session_id: None,
        email_verified: true,
        amr: Vec::new(),
    }) {
        Ok(t) => t.token,
        Err(e) => return format!("verify: {e}"),
    };
    let Ok(verifier) = Verifier::new(key.public_jwk_set(), "kiops-identity", "kiops") else {
        return "verify: bad key".into();
    };
    let Ok(authority) = Authority::new(key.public_jwk_set(), "kiops-identity", "kiops") else {
        return "verify: bad key".into();
    };
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(verifier.verify(&token).is_ok());
    }
    let cold = t.elapsed().as_nanos() as f64 / n as f64 / 1000.0;
    let t = Instant::now();
    for _ in 0..n * 50 {
        std::hint::black_box(authority.verify(&token, Some("org")).is_ok());
    }
    let warm = t.elapsed().as_nanos() as f64 / (n * 50) as f64 / 1000.0;
    let Ok(claims) = verifier.verify(&token) else {
        return "verify: failed".into();
    };
    let t = Instant::now();
    let m = 1_000_000;
    for _ in 0..m {
        std::hint::black_box(claims.allows(std::hint::black_box("org"), Permission::Device));
    }
    let allows = t.elapsed().as_nanos() as f64 / m as f64;
    format!(
        "{:<28} first sight {cold:.1} µs (target ≤ 50), repeated token {warm:.2} µs, allows {allows:.1} ns (target ≤ 1000)",
        "verify (in-process)"
    )
}

fn seed_config(args: &Args) -> seed::SeedConfig {
    seed::SeedConfig {
        users: args.users,
        orgs: args.orgs,
        big_org_members: args.big_org_members,
        memberships_per_user: 2,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.client_threads > 0 {
        runtime.worker_threads(args.client_threads);
    }
    runtime.enable_all().build()?.block_on(run_bench(args))
}

async fn run_bench(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.users = 300;
        args.orgs = 10;
        args.big_org_members = 200;
        args.duration = 1;
        args.rounds = 1;
        args.concurrency = args.concurrency.min(8);
    }
    let scenarios: Vec<String> = args
        .scenarios
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let bin = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kiops-identity"),
    };
    let dir = tempfile::tempdir()?;
    if let Some(url) = &args.seed_only {
        let t = Instant::now();
        let seeded = seed::seed(url, &seed_config(&args)).await?;
        println!(
            "seeded {} users, {} organizations, {} members in organization {}, in {:.1} s; every password: {:?}",
            seeded.user_count,
            args.orgs,
            seeded.big_org_members.len(),
            seeded.big_org,
            t.elapsed().as_secs_f64(),
            seed::PASSWORD
        );
        return Ok(());
    }
    let (url, pg_name) = match args.backend {
        Backend::Sqlite => (format!("sqlite://{}/bench.db", dir.path().display()), None),
        Backend::Postgres => {
            use sea_orm::ConnectionTrait;
            let name = format!("kiops_bench_{}", uuid::Uuid::now_v7().simple());
            let admin_url = postgres_admin_url(&args);
            println!("PostgreSQL: {admin_url}");
            let db = sea_orm::Database::connect(&admin_url).await?;
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await?;
            (database_url(&admin_url, &name), Some((db, name)))
        }
    };
    // Whatever happens in the run, the database made above is dropped.
    let outcome = run_rounds(&args, &scenarios, &bin, dir.path(), &url).await;
    if let Some((db, name)) = pg_name {
        use sea_orm::ConnectionTrait;
        let _ = db
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
    outcome
}

/// A server on the same machine is reached through its Unix socket, as
/// libpq and psql reach it by default: over loopback TCP every statement
/// also pays the TCP stack on both sides, which on two shared cores cost
/// CheckPermission about a sixth of its throughput (BENCHMARKS.md).
const LOCAL_SOCKET_URL: &str = "postgres://postgres@localhost/postgres?host=/var/run/postgresql";
const LOCAL_SOCKET: &str = "/var/run/postgresql/.s.PGSQL.5432";
const LOCAL_TCP_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn postgres_admin_url(args: &Args) -> String {
    match &args.postgres_admin_url {
        Some(url) => url.clone(),
        None if std::path::Path::new(LOCAL_SOCKET).exists() => LOCAL_SOCKET_URL.into(),
        None => LOCAL_TCP_URL.into(),
    }
}

/// `admin_url` with its database name replaced by `name`, its options
/// (`?sslmode=…`, `?host=/socket/dir`) kept for the server's connections.
fn database_url(admin_url: &str, name: &str) -> String {
    let (path, query) = match admin_url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (admin_url, None),
    };
    let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Seeds the database at `url`, starts the server on it and runs the
/// scenarios in `scenarios`, `args.rounds` times.
async fn run_rounds(
    args: &Args,
    scenarios: &[String],
    bin: &std::path::Path,
    dir: &std::path::Path,
    url: &str,
) -> anyhow::Result<()> {
    let want = |s: &str| scenarios.iter().any(|x| x == s);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let threads = |n: usize| match n {
        0 => "one per core".to_string(),
        n => n.to_string(),
    };
    println!(
        "kiops-bench: backend {:?}, {} cores, {} concurrent callers, {} s per scenario; \
         server request threads: {}, client threads: {}",
        args.backend,
        cores,
        args.concurrency,
        args.duration,
        threads(usize::from(args.server_threads)),
        threads(args.client_threads),
    );
    let t = Instant::now();
    let seeded = seed::seed(url, &seed_config(args)).await?;
    println!(
        "seeded {} users, {} organizations, {} members in the big one, in {:.1} s",
        seeded.user_count,
        args.orgs,
        seeded.big_org_members.len(),
        t.elapsed().as_secs_f64()
    );

    let server = start_server(bin, url, dir, args.server_threads)?;
    let _ = SERVER_PID.set(server.pid);
    let chans = channels(server.grpc, 4).await?;
    let admin = bearer(&login(&chans[0], seed::ADMIN_EMAIL).await?.access_token)?;
    let d = Duration::from_secs(args.duration);
    let n = args.concurrency;
    let members = Arc::new(seeded.big_org_members.clone());
    let big_org = seeded.big_org.clone();
    let pick = |v: &Arc<Vec<String>>| v[rand::thread_rng().gen_range(0..v.len())].clone();
    let mut rss_after_round = Vec::new();

    for round in 1..=args.rounds {
        println!("\n== round {round}");
        let mut baseline_tp = 0.0;
        let mut single_check_tp = 0.0;
        if want("baseline") {
            let cs = chans.clone();
            let s = run(n, d, move |t| {
                let mut h =
                    tonic_health::pb::health_client::HealthClient::new(cs[t % cs.len()].clone());
                async move {
                    h.check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
                }
            })
            .await;
            baseline_tp = s.throughput();
            println!("{}", s.line("baseline (Health/Check)"));
        }
        if want("check-permission") {
            let (cs, m, org, tok) = (
                chans.clone(),
                members.clone(),
                big_org.clone(),
                admin.clone(),
            );
            let s = run(n, d, move |t| {
                let mut c = MembershipServiceClient::new(cs[t % cs.len()].clone());
                let req = authed(
                    CheckPermissionRequest {
                        user_id: pick(&m),
                        organization_id: org.clone(),
                        permission: rand::thread_rng().gen_range(1..8),
                    },
                    &tok,
                );
                async move { c.check_permission(req).await.is_ok() }
            })
            .await;
            println!("{}", s.line("check-permission"));
            if baseline_tp > 0.0 {
                println!("  check-permission / baseline throughput = {:.0}% (target ≥ 50%), p99 {:.2} ms (target ≤ 2)", 100.0 * s.throughput() / baseline_tp, s.pct(0.99));
            }
            single_check_tp = s.throughput();
        }
        // The same load over gRPC-Web (issue 23: within 20% of native in the
        // same run): HTTP/1.1, what browsers mostly use on a plaintext or
        // proxied port, then HTTP/2 with one connection per client as above.
        for (scenario, http2) in [
            ("check-permission-grpc-web", false),
            ("check-permission-grpc-web-h2", true),
        ] {
            if !want(scenario) {
                continue;
            }
            let origin: tonic::codegen::http::Uri = format!("http://{}", server.grpc).parse()?;
            let clients: Vec<_> = (0..if http2 { chans.len() } else { 1 })
                .map(|_| MembershipServiceClient::with_origin(web_channel(http2), origin.clone()))
                .collect();
            let (cs, m, org, tok) = (
                Arc::new(clients),
                members.clone(),
                big_org.clone(),
                admin.clone(),
            );
            let s = run(n, d, move |t| {
                let mut c = cs[t % cs.len()].clone();
                let req = authed(
                    CheckPermissionRequest {
                        user_id: pick(&m),
                        organization_id: org.clone(),
                        permission: rand::thread_rng().gen_range(1..8),
                    },
                    &tok,
                );
                async move { c.check_permission(req).await.is_ok() }
            })
            .await;
            println!("{}", s.line(scenario));
            if single_check_tp > 0.0 {
                println!(
                    "  {scenario} / check-permission throughput = {:.0}% (target ≥ 80%)",
                    100.0 * s.throughput() / single_check_tp
                );
            }
        }
        if want("check-permissions-bulk") {
            // The same checks as check-permission, BULK_ITEMS to a call.
            let (cs, m, org, tok) = (
                chans.clone(),
                members.clone(),
                big_org.clone(),
                admin.clone(),
            );
            let s = run(n, d, move |t| {
                let mut c = MembershipServiceClient::new(cs[t % cs.len()].clone());
                let mut rng = rand::thread_rng();
                let items = (0..BULK_ITEMS)
                    .map(|_| CheckPermissionRequest {
                        user_id: pick(&m),
                        organization_id: org.clone(),
                        permission: rng.gen_range(1..8),
                    })
                    .collect();
                let req = authed(CheckPermissionsRequest { items }, &tok);
                async move {
                    c.check_permissions(req)
                        .await
                        .is_ok_and(|r| r.into_inner().results.len() == BULK_ITEMS)
                }
            })
            .await;
            let items = s.throughput() * BULK_ITEMS as f64;
            println!(
                "{}  ({BULK_ITEMS} items a call)",
                s.line("check-permissions-bulk")
            );
            if single_check_tp > 0.0 {
                println!(
                    "  check-permissions-bulk {items:.0} items/s = {:.1}× check-permission's calls/s (target ≥ 5×)",
                    items / single_check_tp
                );
            } else {
                println!("  check-permissions-bulk {items:.0} items/s");
            }
        }
        if want("list-members") {
            // A deep page: walk to about the middle of the matches first.
            let mut c = MembershipServiceClient::new(chans[0].clone());
            let q = |token: String, size: i32| {
                authed(
                    ListMembersRequest {
                        organization_id: big_org.clone(),
                        query: "user1".into(),
                        page_size: size,
                        page_token: token,
                        ..Default::default()
                    },
                    &admin,
                )
            };
            let first = c.list_members(q(String::new(), 500)).await?.into_inner();
            let total = first.total_size;
            let mut token = first.next_page_token;
            for _ in 0..((total / 2) / 500).max(0) {
                if token.is_empty() {
                    break;
                }
                token = c
                    .list_members(q(token, 500))
                    .await?
                    .into_inner()
                    .next_page_token;
            }
            for (label, page) in [
                ("list-members first page", String::new()),
                ("list-members deep page", token),
            ] {
                let (cs, org, tok, page) = (chans.clone(), big_org.clone(), admin.clone(), page);
                let s = run(args.list_concurrency, d, move |t| {
                    let mut c = MembershipServiceClient::new(cs[t % cs.len()].clone());
                    let req = authed(
                        ListMembersRequest {
                            organization_id: org.clone(),
                            query: "user1".into(),
                            page_size: 50,
                            page_token: page.clone(),
                            ..Default::default()
                        },
                        &tok,
                    );
                    async move { c.list_members(req).await.is_ok() }
                })
                .await;
                println!(
                    "{}  (matches: {total}, {} callers, target p99 ≤ 25 ms)",
                    s.line(label),
                    args.list_concurrency
                );
            }
        }
        if want("login") {
            // Measured just before and just after the run and averaged: a
            // shared machine's speed drifts by tens of percent in a minute.
            let verify_before = argon2_verify_secs(1)?;
            let verify_all_before = argon2_verify_secs(cores)?;
            let cs = chans.clone();
            let users = seeded.user_count;
            let s = run(n, d, move |t| {
                let ch = cs[t % cs.len()].clone();
                let email = seed::user_email(rand::thread_rng().gen_range(0..users.max(1)));
                async move { login(&ch, &email).await.is_ok() }
            })
            .await;
            let verify = (verify_before + argon2_verify_secs(1)?) / 2.0;
            let verify_all = (verify_all_before + argon2_verify_secs(cores)?) / 2.0;
            let ideal = cores as f64 / verify;
            println!("{}", s.line("login"));
            println!("  argon2id verify (m=19 MiB, t=2, p=1) {:.1} ms here; ideal {ideal:.0}/s; login = {:.0}% of ideal (target ≥ 85%)", verify * 1000.0, 100.0 * s.throughput() / ideal);
            println!(
                "  with {cores} verifies at once each takes {:.1} ms: the hardware's own ceiling is {:.0}/s, login = {:.0}% of it",
                verify_all * 1000.0,
                cores as f64 / verify_all,
                100.0 * s.throughput() * verify_all / cores as f64
            );
        }
        if want("refresh") {
            let mut tokens = Vec::new();
            for t in 0..n {
                tokens.push(Arc::new(tokio::sync::Mutex::new(
                    login(
                        &chans[t % chans.len()],
                        &seed::user_email(t % seeded.user_count.max(1)),
                    )
                    .await?
                    .refresh_token,
                )));
            }
            let (cs, tokens) = (chans.clone(), Arc::new(tokens));
            let s = run(n, d, move |t| {
                let mut c = AuthServiceClient::new(cs[t % cs.len()].clone());
                let slot = tokens[t].clone();
                async move {
                    let mut g = slot.lock().await;
                    match c
                        .refresh(RefreshRequest {
                            refresh_token: g.clone(),
                            organization_id: None,
                        })
                        .await
                    {
                        Ok(r) => {
                            *g = r.into_inner().refresh_token;
                            true
                        }
                        Err(_) => false,
                    }
                }
            })
            .await;
            println!("{}", s.line("refresh"));
            println!(
                "  refresh per core {:.0}/s (target ≥ 1500)",
                s.throughput() / cores as f64
            );
        }
        if want("mixed") {
            let (cs, m, org, tok) = (
                chans.clone(),
                members.clone(),
                big_org.clone(),
                admin.clone(),
            );
            let users = seeded.user_count;
            let logins = {
                let cs = chans.clone();
                tokio::spawn(run(n / 2, d, move |t| {
                    let ch = cs[t % cs.len()].clone();
                    let email = seed::user_email(rand::thread_rng().gen_range(0..users.max(1)));
                    async move { login(&ch, &email).await.is_ok() }
                }))
            };
            let s = run(n / 2, d, move |t| {
                let mut c = MembershipServiceClient::new(cs[t % cs.len()].clone());
                let req = authed(
                    CheckPermissionRequest {
                        user_id: pick(&m),
                        organization_id: org.clone(),
                        permission: 4,
                    },
                    &tok,
                );
                async move { c.check_permission(req).await.is_ok() }
            })
            .await;
            let l = logins.await?;
            println!("{}", l.line("mixed: login"));
            println!(
                "{}  (target p99 ≤ 10 ms)",
                s.line("mixed: check-permission")
            );
        }
        if want("verify") {
            println!("{}", verify_bench());
        }
        let rss = rss_mib(server.pid, "VmRSS:");
        println!(
            "server memory after round {round}: RSS {rss:.1} MiB, peak {:.1} MiB (target ≤ 150)",
            rss_mib(server.pid, "VmHWM:")
        );
        rss_after_round.push(rss);
    }
    if rss_after_round.len() > 1 {
        println!(
            "RSS across rounds: {:?} MiB",
            rss_after_round
                .iter()
                .map(|r| (r * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
    }
    drop(server);
    let failed = FAILED_CALLS.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} calls failed (the errors column above)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bench_database_keeps_the_admin_urls_options() {
        assert_eq!(
            super::database_url("postgres://postgres@127.0.0.1:5432/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            super::database_url(super::LOCAL_SOCKET_URL, "b1"),
            "postgres://postgres@localhost/b1?host=/var/run/postgresql"
        );
        assert_eq!(
            super::database_url("postgres://u@h/db?sslmode=disable&x=/a/b", "b1"),
            "postgres://u@h/b1?sslmode=disable&x=/a/b"
        );
    }
}
