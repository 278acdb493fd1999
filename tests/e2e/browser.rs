//! The example console (examples/console) in a real browser: headless
//! Chromium (Debian's package, driven by playwright-core from npm) loads the
//! page from a static server, calls the real server over gRPC-Web with CORS,
//! and examples/console/test/console.mjs checks what the page shows: sign-in,
//! the Organization Users tab (search, sort, role filter, paging, Pending
//! Approval count), a Member's refusal with its ErrorInfo reason, a server
//! stream (WatchRevocations) and that a page from an origin not on the
//! allow-list cannot sign in. Nothing is skipped: without node or Chromium
//! the test fails and says how to install them.

use crate::support::*;
use axum::http::header::CONTENT_TYPE;
use kiops_proto::v1::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::Code;

crate::both_backends!(console_in_a_browser);

const CONSOLE_SCRIPT: &str = "examples/console/test/console.mjs";
/// Rows per page the script asks for; the seed makes more members than this.
const PAGE_SIZE: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Builds target/console once per test process: both backends' tests run in
/// parallel here and must not generate into the same folder at once.
fn built() -> &'static Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = Command::new(root().join("examples/console/build"))
            .current_dir(root())
            .output()
            .map_err(|e| format!("examples/console/build: {e} (it needs bash and npm)"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("examples/console/build failed:\n{text}"));
        }
        if Command::new("node").arg("--version").output().is_err() {
            return Err("node is needed to drive the browser: apt-get install nodejs".into());
        }
        if !chromium().exists() {
            return Err(format!(
                "{} is missing; install Debian's browser (as root: apt-get update && \
                 apt-get install -y --no-install-recommends chromium), or set CHROMIUM \
                 to a Chromium binary. examples/console/build does it when run as root.\n{text}",
                chromium().display()
            ));
        }
        Ok(())
    })
}

/// Serves target/console's two files on 127.0.0.1 (an ephemeral port).
async fn static_server() -> u16 {
    use axum::routing::get;
    let dir = root().join("target/console");
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("target/console/{name}: {e}"))
    };
    let (html, js) = (read("index.html"), read("app.js"));
    let app = axum::Router::new()
        .route(
            "/",
            get(move || async move { ([(CONTENT_TYPE, "text/html; charset=utf-8")], html) }),
        )
        .route(
            "/app.js",
            get(move || async move { ([(CONTENT_TYPE, "text/javascript")], js) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind static server");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A user with PASSWORD, created with `admin`'s token; returns its id.
async fn create_user(s: &TestServer, admin: &str, email: &str) -> String {
    s.users()
        .await
        .create_user(authed(
            CreateUserRequest {
                email: email.into(),
                name: email.split('@').next().unwrap_or("x").into(),
                password: PASSWORD.into(),
                platform_admin: false,
            },
            admin,
        ))
        .await
        .expect("create user")
        .into_inner()
        .user
        .expect("user")
        .user_id
}

async fn console_in_a_browser(backend: Backend) {
    if let Err(e) = tokio::task::spawn_blocking(built).await.expect("build") {
        panic!("{e}");
    }
    let port = static_server().await;
    let page = format!("http://127.0.0.1:{port}/");
    // The same static server under another name is another origin.
    let blocked_page = format!("http://localhost:{port}/");
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--cors-allowed-origins".into(),
                page.trim_end_matches('/').into(),
            ],
            ..Default::default()
        },
    )
    .await;

    // An organization with a Manager, six Members (one of them signs in as
    // `member`) and two pending join requests.
    let admin = s.admin_token().await;
    let org = s.create_org(&admin, "Console", "console").await;
    let manager = "mia@console.test";
    let member = "frank@console.test";
    let manager_id = create_user(&s, &admin, manager).await;
    s.add_member(&admin, &org, &manager_id, Role::Manager).await;
    let mut members = vec![manager.to_string()];
    let mut member_id = String::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let email = format!("{name}@console.test");
        let id = create_user(&s, &admin, &email).await;
        s.add_member(&admin, &org, &id, Role::Member).await;
        if email == member {
            member_id = id;
        }
        members.push(email);
    }
    assert!(members.len() > PAGE_SIZE, "at least two pages");
    let applicants = ["pat@console.test", "quinn@console.test"];
    for email in applicants {
        create_user(&s, &admin, email).await;
        let token = s.login(email, PASSWORD).await.expect("login").access_token;
        s.approvals()
            .await
            .request_to_join(authed(
                RequestToJoinRequest {
                    organization_id: org.clone(),
                },
                &token,
            ))
            .await
            .expect("request to join");
    }

    // What the server refuses a Member on the tab, and with which reason:
    // the page must show exactly this.
    let member_token = s.login(member, PASSWORD).await.expect("login").access_token;
    let refusal = s
        .members()
        .await
        .list_members(authed(
            ListMembersRequest {
                organization_id: org.clone(),
                ..Default::default()
            },
            &member_token,
        ))
        .await;
    let refusal = assert_status(refusal, Code::PermissionDenied, "MANAGER_REQUIRED");

    let config = serde_json::json!({
        "page": page,
        "blockedPage": blocked_page,
        "server": s.grpc_url(),
        "admin": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD },
        "manager": { "email": manager, "password": PASSWORD },
        "member": { "email": member, "password": PASSWORD, "userId": member_id },
        "members": members,
        "pending": applicants.len(),
        "pageSize": PAGE_SIZE,
        "search": { "query": "car", "hits": ["carol@console.test"] },
        "memberRefusal": { "code": "PERMISSION_DENIED", "reason": reason(&refusal) },
    });
    let run = tokio::process::Command::new("node")
        .arg(CONSOLE_SCRIPT)
        .current_dir(root())
        .env("KIOPS_CONSOLE_TEST", config.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser script did not finish within 5 minutes")
        .unwrap_or_else(|e| {
            panic!("node {CONSOLE_SCRIPT}: {e} (install node: apt-get install nodejs)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{CONSOLE_SCRIPT} failed on {backend:?}:\n{text}\nserver log:\n{}",
        s.logs()
    );
}
