//! Offline verification cost: a realistic token (3 organizations), verified
//! against a JWKS of two keys, then `allows`. Prints the median of 7 runs of
//! N iterations each (robust against a noisy, shared machine).
//! Targets (issue 7/8): verify ≤ 50 µs, allows ≤ 1 µs.

use kiops_token::{
    Authority, IssueRequest, Issuer, JwkSet, OrgClaims, Permission, Role, SigningKey,
};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

fn median_ns(runs: usize, iters: u32, mut f: impl FnMut()) -> f64 {
    let mut per = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        per.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    per[runs / 2]
}

fn main() {
    let key = SigningKey::generate();
    let other = SigningKey::generate();
    let jwks = JwkSet {
        keys: vec![other.public_jwk(), key.public_jwk()],
    };
    let issuer = Issuer::new(key, "kiops-identity", "kiops", 300);
    let mut orgs = BTreeMap::new();
    for (i, perms) in [
        vec![Permission::Device],
        vec![Permission::Infra, Permission::Backup],
        vec![],
    ]
    .into_iter()
    .enumerate()
    {
        orgs.insert(
            format!("01a205b3-8623-710f-8817-c9cf0cf3919{i}"),
            OrgClaims {
                role: Role::Member,
                perms,
            },
        );
    }
    let token = issuer
        .issue(IssueRequest {
            subject: "01a205b3-8623-710f-8817-c9cf0cf39190".into(),
            email: "kim@example.com".into(),
            name: "Kim Lee".into(),
            platform_admin: false,
            orgs,
            session_id: Some("01a205b3-a970-7604-baa2-fc8f7d5be91d".into()),
            email_verified: true,
            amr: Vec::new(),
        })
        .expect("issue")
        .token;
    let authority_jwks = jwks.clone();
    let authority = Authority::new(jwks, "kiops-identity", "kiops").expect("authority");
    let org = "01a205b3-8623-710f-8817-c9cf0cf39190";
    let claims = authority.verify(&token, Some(org)).expect("verifies");

    // Cold: a fresh Authority per token, so the signature is checked.
    let verifier = kiops_token::Verifier::new(authority_jwks.clone(), "kiops-identity", "kiops")
        .expect("verifier");
    let verify = median_ns(7, 2_000, || {
        black_box(verifier.verify(black_box(&token)).is_ok());
    });
    // Warm: the same token again (what a service sees on every call).
    let verify_cached = median_ns(7, 200_000, || {
        black_box(authority.verify(black_box(&token), Some(org)).is_ok());
    });
    let allows = median_ns(7, 1_000_000, || {
        black_box(claims.allows(black_box(org), black_box(Permission::Device)));
    });
    let guard = median_ns(7, 2_000, || {
        black_box(
            authority
                .authorize(
                    Some(&format!("Bearer {token}")),
                    Some(org),
                    Permission::Device,
                )
                .is_ok(),
        );
    });
    // The primitive alone, for reference.
    use ed25519_dalek::{Signer, Verifier as _};
    let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let msg = token.as_bytes();
    let sig = sk.sign(msg);
    let vk = sk.verifying_key();
    let raw = median_ns(7, 2_000, || {
        black_box(vk.verify(black_box(msg), &sig).is_ok());
    });
    let strict = median_ns(7, 2_000, || {
        black_box(vk.verify_strict(black_box(msg), &sig).is_ok());
    });
    println!(
        "ed25519 primitive alone on this CPU: verify {raw:.0} ns, verify_strict {strict:.0} ns"
    );
    println!("token: {} bytes", token.len());
    println!(
        "verify, first sight (signature + claims):   {:>9.0} ns  (target ≤ 50000)",
        verify
    );
    println!(
        "verify, repeated token (cache + times + revocations): {:>9.0} ns",
        verify_cached
    );
    println!(
        "allows(org, permission):                    {:>9.1} ns  (target ≤ 1000)",
        allows
    );
    println!(
        "authorize (what the guard does per call):   {:>9.0} ns",
        guard
    );
}
