//! Test harness: starts the real `kiops-identity` binary on free ports against
//! a fresh SQLite file or a fresh PostgreSQL database, and gives tests
//! generated tonic clients.
//!
//! PostgreSQL is taken from `KIOPS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). If it cannot be reached the
//! PostgreSQL tests fail loudly: they are never skipped.

#![allow(dead_code)]

pub mod grpc_web;
pub mod rpc;
pub mod service;
pub mod sessions;
pub mod smtp;
pub mod totp;

pub use rpc::Rpc;

use kiops_proto::v1::approval_service_client::ApprovalServiceClient;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::invitation_service_client::InvitationServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::organization_service_client::OrganizationServiceClient;
use kiops_proto::v1::platform_service_client::PlatformServiceClient;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::user_service_client::UserServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub const ADMIN_EMAIL: &str = "admin@kiops.test";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests-0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a test body once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}

pub fn postgres_admin_url() -> String {
    std::env::var("KIOPS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database made for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}/kiops.db", dir.path().display()),
                pg_name: None,
                dir,
            },
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("kiops_test_{}", uuid::Uuid::now_v7().simple());
                let db = Database::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for these tests ({admin}): {e}")
                });
                db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let _ = db.close().await;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    dir,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let admin = postgres_admin_url();
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(db) = Database::connect(&admin).await {
                        let _ = db
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                        let _ = db.close().await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiops-identity"))
}

/// A running server process.
pub struct TestServer {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub db: TestDb,
    pub backend: Backend,
    /// The threads copying stdout/stderr into `logs`; joined after exit so
    /// the last lines (e.g. "stopped") are there when a test reads them.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Options for a server start.
pub struct ServerOptions {
    pub bootstrap_admin: bool,
    pub extra_args: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bootstrap_admin: true,
            extra_args: vec![],
            extra_env: vec![],
            workdir: None,
        }
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, ServerOptions::default()).await
    }

    pub async fn start_with(backend: Backend, opts: ServerOptions) -> TestServer {
        let db = TestDb::create(backend).await;
        Self::start_on(db, backend, opts).await
    }

    /// Starts a server on an existing database (e.g. a restart).
    pub async fn start_on(db: TestDb, backend: Backend, opts: ServerOptions) -> TestServer {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--database-url", &db.url])
            .arg("--unsafe-test-clock")
            .args(&opts.extra_args)
            .env_remove("DATABASE_URL")
            .env_remove("KIOPS_BOOTSTRAP_ADMIN_EMAIL")
            .env_remove("KIOPS_BOOTSTRAP_ADMIN_PASSWORD")
            // Tests log in far more often than people do; the throttle has
            // its own test with low limits given as flags (flags beat env).
            .env("KIOPS_LOGIN_RATE_PER_PEER", "100000")
            .env("KIOPS_LOGIN_RATE_PER_EMAIL", "100000")
            .env("RUST_LOG", "info")
            .env("KIOPS_LOG_FORMAT", "text")
            .current_dir(
                opts.workdir
                    .clone()
                    .unwrap_or_else(|| db.dir.path().to_path_buf()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if opts.bootstrap_admin {
            cmd.env("KIOPS_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
                .env("KIOPS_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD);
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kiops-identity");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("KIOPS_TEST_ECHO_LOGS").is_some() {
                        eprintln!("[server] {line}");
                    }
                    // Record the line before announcing readiness, so a test
                    // that reads the logs right after start sees the ready line.
                    let ready = parse_ready(&line);
                    logs.lock().expect("logs").push(line);
                    if let Some(addrs) = ready {
                        let _ = tx.send(addrs);
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let (grpc, http) = loop {
            if let Ok(addrs) = rx.recv_timeout(Duration::from_millis(100)) {
                break addrs;
            }
            if let Ok(Some(status)) = child.try_wait() {
                for reader in readers.drain(..) {
                    let _ = reader.join();
                }
                panic!(
                    "server exited early with {status}:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "server not ready within 60 s:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        TestServer {
            child,
            grpc,
            http,
            logs,
            db,
            backend,
            readers,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_url())
            .expect("url")
            .connect()
            .await
            .expect("connect to server")
    }

    /// Clients of all eight services on one new connection.
    pub async fn clients(&self) -> Clients {
        Clients::new(self.channel().await)
    }

    // One client on a new connection each.

    pub async fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn orgs(&self) -> OrganizationServiceClient<Channel> {
        OrganizationServiceClient::new(self.channel().await)
    }

    pub async fn members(&self) -> MembershipServiceClient<Channel> {
        MembershipServiceClient::new(self.channel().await)
    }

    pub async fn invitations(&self) -> InvitationServiceClient<Channel> {
        InvitationServiceClient::new(self.channel().await)
    }

    pub async fn approvals(&self) -> ApprovalServiceClient<Channel> {
        ApprovalServiceClient::new(self.channel().await)
    }

    pub async fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel().await)
    }

    pub async fn service_accounts(&self) -> ServiceAccountServiceClient<Channel> {
        ServiceAccountServiceClient::new(self.channel().await)
    }

    pub async fn platform(&self) -> PlatformServiceClient<Channel> {
        PlatformServiceClient::new(self.channel().await)
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse, Status> {
        self.auth()
            .await
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
                organization_id: None,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Refresh tokens of `n` fresh sessions of the admin.
    pub async fn admin_sessions(&self, n: usize) -> Vec<String> {
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            let pair = self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
            sessions.push(pair.expect("login").refresh_token);
        }
        sessions
    }

    /// One unlabeled series of `/metrics`, which must be there.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, page) = self.http("GET", "/metrics");
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{page}"))
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            .await
            .expect("admin login")
            .access_token
    }

    /// Creates a user through the API as the bootstrap admin; returns its id.
    pub async fn create_user(&self, email: &str, name: &str, password: &str) -> String {
        let token = self.admin_token().await;
        self.users()
            .await
            .create_user(authed(
                CreateUserRequest {
                    email: email.into(),
                    name: name.into(),
                    password: password.into(),
                    platform_admin: false,
                },
                &token,
            ))
            .await
            .expect("create user")
            .into_inner()
            .user
            .expect("user")
            .user_id
    }

    /// Plain HTTP/1.1 GET on the HTTP port: (status, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.http).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.http
        )
        .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read");
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    /// Moves the server's clock forward (needs `--unsafe-test-clock`).
    pub fn advance_clock(&self, by: Duration) {
        let (status, _) = self.http(
            "POST",
            &format!("/test/clock/advance?ms={}", by.as_millis()),
        );
        assert_eq!(status, 200, "advance clock");
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The pipes close with the process: drain what it wrote last.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not stop within 30 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Typed clients of the eight gRPC services, sharing one connection.
#[derive(Clone)]
pub struct Clients {
    pub auth: AuthServiceClient<Channel>,
    pub users: UserServiceClient<Channel>,
    pub orgs: OrganizationServiceClient<Channel>,
    pub members: MembershipServiceClient<Channel>,
    pub invitations: InvitationServiceClient<Channel>,
    pub approvals: ApprovalServiceClient<Channel>,
    pub audit: AuditServiceClient<Channel>,
    pub service_accounts: ServiceAccountServiceClient<Channel>,
    pub platform: PlatformServiceClient<Channel>,
}

impl Clients {
    pub fn new(ch: Channel) -> Clients {
        Clients {
            auth: AuthServiceClient::new(ch.clone()),
            users: UserServiceClient::new(ch.clone()),
            orgs: OrganizationServiceClient::new(ch.clone()),
            members: MembershipServiceClient::new(ch.clone()),
            invitations: InvitationServiceClient::new(ch.clone()),
            approvals: ApprovalServiceClient::new(ch.clone()),
            audit: AuditServiceClient::new(ch.clone()),
            service_accounts: ServiceAccountServiceClient::new(ch.clone()),
            platform: PlatformServiceClient::new(ch),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = &line[line.find("ready: ")? + 7..];
    let mut grpc = None;
    let mut http = None;
    for part in rest.split_whitespace() {
        // Text or JSON log lines: strip quotes and the closing braces.
        let part = part.trim_matches(|c| c == '"' || c == '}' || c == ',');
        if let Some(v) = part.strip_prefix("grpc=") {
            grpc = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("http=") {
            http = v.parse().ok();
        }
    }
    Some((grpc?, http?))
}

/// Wraps a message with `authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    r
}

/// The `ErrorInfo.reason` of a status (empty if none).
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Fields named by `BadRequest` violations.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with `code` and `reason`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    res: Result<T, Status>,
    code: Code,
    want_reason: &str,
) -> Status {
    let status = match res {
        Ok(v) => panic!("expected {code:?}/{want_reason}, got Ok({v:?})"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "status: {status:?}");
    assert_eq!(reason(&status), want_reason, "status: {status:?}");
    status
}

/// Asserts INVALID_ARGUMENT naming `field` in BadRequest.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(res: Result<T, Status>, field: &str) {
    let status = match res {
        Ok(v) => panic!("expected INVALID_ARGUMENT on {field}, got Ok({v:?})"),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "status: {status:?}");
    assert!(
        bad_fields(&status).iter().any(|f| f == field),
        "expected a violation on {field}: {status:?}"
    );
}

pub const PASSWORD: &str = "correct horse battery staple";

impl TestServer {
    /// Creates an organization as the bootstrap admin; returns its id.
    pub async fn create_org(&self, admin: &str, name: &str, code: &str) -> String {
        self.orgs()
            .await
            .create_organization(authed(
                CreateOrganizationRequest {
                    name: name.into(),
                    code: code.into(),
                    description: String::new(),
                },
                admin,
            ))
            .await
            .expect("create organization")
            .into_inner()
            .organization
            .expect("organization")
            .organization_id
    }

    pub async fn add_member(&self, admin: &str, org: &str, user: &str, role: Role) {
        self.members()
            .await
            .add_member(authed(
                AddMemberRequest {
                    organization_id: org.into(),
                    user_id: user.into(),
                    role: role as i32,
                },
                admin,
            ))
            .await
            .expect("add member");
    }

    /// A user with PASSWORD; returns (user id, access token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let id = self
            .create_user(email, email.split('@').next().unwrap_or("x"), PASSWORD)
            .await;
        let token = self
            .login(email, PASSWORD)
            .await
            .expect("login")
            .access_token;
        (id, token)
    }

    /// Number of Managers of `org`, read as the PlatformAdmin.
    pub async fn manager_count(&self, admin: &str, org: &str) -> i64 {
        self.members()
            .await
            .list_members(authed(
                ListMembersRequest {
                    organization_id: org.into(),
                    role: Role::Manager as i32,
                    ..Default::default()
                },
                admin,
            ))
            .await
            .expect("list managers")
            .into_inner()
            .total_size
    }
}

/// The claims of an access token (decoded, not verified).
pub fn token_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("json")
}

/// The `orgs` claim of an access token (decoded, not verified).
pub fn token_orgs(token: &str) -> serde_json::Value {
    token_claims(token)["orgs"].clone()
}

impl TestDb {
    /// The same database, not owned (a replica must not drop it).
    pub fn shared(url: &str) -> TestDb {
        TestDb {
            url: url.to_string(),
            pg_name: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl TestServer {
    /// Another server process on the same database: a replica.
    pub async fn replica(&self, opts: ServerOptions) -> TestServer {
        TestServer::start_on(TestDb::shared(&self.db.url), self.backend, opts).await
    }
}

/// `n` audit events of `org`, written straight to the database: enough for
/// an export that cannot fit in the buffers between server and client.
pub async fn bulk_audit(s: &TestServer, org: &str, n: usize) {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(&s.db.url).await.expect("db");
    let pad = "x".repeat(300);
    for start in (0..n).step_by(500) {
        let values: Vec<String> = (start..(start + 500).min(n))
            .map(|i| {
                format!(
                    "('bulk-{i:07}', {}, 'user', NULL, 'bulk@example.com', '{org}', 'bulk.event', \
                     'user', 't', '{{\"pad\":\"{pad}\"}}', 'r', '')",
                    1_000 + i
                )
            })
            .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO audit_events (id, occurred_at, actor_type, actor_id, actor_email, \
             organization_id, action, target_type, target_id, details, request_id, peer_address) \
             VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("bulk audit");
    }
    // Closed here, not dropped with the runtime: a SQLite pool left open
    // at a test's end once kept sqlx's maintenance task spinning and the
    // runtime from shutting down (a hung test in CI).
    db.close().await.expect("close");
}
