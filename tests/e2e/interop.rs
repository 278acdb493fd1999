//! The contract from another language: tests/interop/generate makes the
//! Python client with buf.gen.yaml (plugins from PyPI and npm, installed on
//! first use), then tests/interop/interop.py drives the real server with it,
//! including a service account whose assertions are built with PyJWT.
//! Nothing is skipped: without python3/pip/npm the test fails and says why.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

crate::both_backends!(python_client_interoperates);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Generates the SDKs once per test run (both backends share the output).
fn generated() -> &'static Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let out = Command::new(root().join("tests/interop/generate"))
            .current_dir(root())
            .output()
            .map_err(|e| format!("tests/interop/generate: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("tests/interop/generate failed:\n{text}"))
        }
    })
}

async fn python_client_interoperates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let root = root();
    let generated = tokio::task::spawn_blocking(generated)
        .await
        .expect("generate");
    if let Err(e) = generated {
        panic!("{e}");
    }
    let tools = std::env::var("KIOPS_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/tools"));
    let out = Command::new(tools.join("sdk-venv/bin/python"))
        .arg(root.join("tests/interop/interop.py"))
        .env("PYTHONPATH", root.join("target/sdk/python"))
        .env("KIOPS_GRPC", server.grpc.to_string())
        .env("KIOPS_ISSUER", "kiops-identity")
        .env("KIOPS_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("KIOPS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "interop.py failed:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.starts_with("interop: "))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    println!("{backend:?}: {summary}");
    assert!(summary.ends_with("checks passed"), "{text}");
    // The service-account part ran: its key checks are in the output.
    for line in [
        "ok: IssueServiceAccountToken: a PyJWT EdDSA assertion buys a Bearer token",
        "ok: CheckPermission as the service account: device yes, vpn no",
        "ok: a replayed assertion is UNAUTHENTICATED / ASSERTION_REPLAYED",
    ] {
        assert!(text.contains(line), "missing `{line}`:\n{text}");
    }
}
