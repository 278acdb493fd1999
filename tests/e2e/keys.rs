//! Key rotation (R15): `kiops-identity keys rotate` against the database of a
//! running server; the old key stays published so its tokens keep verifying,
//! new tokens carry the new `kid`.

use crate::both_backends;
use crate::support::*;
use std::process::Command;
use std::time::{Duration, Instant};

both_backends!(rotation_keeps_old_tokens_valid);

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let h = token.split('.').next().expect("header");
    let v: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .expect("b64"),
    )
    .expect("json");
    v["kid"].as_str().expect("kid").to_string()
}

fn jwks(s: &TestServer) -> kiops_token::JwkSet {
    serde_json::from_str(&s.http("GET", "/.well-known/jwks.json").1).expect("jwks")
}

async fn rotation_keeps_old_tokens_valid(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--key-refresh".into(), "1".into()],
            ..Default::default()
        },
    )
    .await;
    let old = s.admin_token().await;
    let old_kid = kid_of(&old);
    let out = Command::new(binary())
        .args(["keys", "rotate", "--database-url", &s.db.url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("keys rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running servers pick the new key up by themselves.
    let deadline = Instant::now() + Duration::from_secs(15);
    let new = loop {
        let t = s.admin_token().await;
        if kid_of(&t) != old_kid {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "server did not switch to the new key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let set = jwks(&s);
    assert_eq!(set.keys.len(), 2, "old key still published");
    let verifier = kiops_token::Verifier::new(set, "kiops-identity", "kiops").expect("verifier");
    verifier
        .verify(&old)
        .expect("token of the old key still verifies");
    verifier
        .verify(&new)
        .expect("token of the new key verifies");
    // The server itself accepts both.
    let mut users = s.users().await;
    users
        .get_me(authed(kiops_proto::v1::GetMeRequest {}, &old))
        .await
        .expect("old token accepted");
    users
        .get_me(authed(kiops_proto::v1::GetMeRequest {}, &new))
        .await
        .expect("new token accepted");
    let list = Command::new(binary())
        .args(["keys", "list", "--database-url", &s.db.url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("keys list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(&old_kid) && text.contains("retiring") && text.contains("active"),
        "{text}"
    );
    // After the retire window the old key is no longer published.
    s.advance_clock(Duration::from_secs(601));
    let deadline = Instant::now() + Duration::from_secs(15);
    while jwks(&s).keys.len() != 1 {
        assert!(Instant::now() < deadline, "old key never retired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
