//! Access-token verification (what every KIOPS service runs on every call):
//! arbitrary text must be refused without a panic, and a token whose
//! signature is valid but whose claims are arbitrary must either be refused
//! or come out with the checked invariants (issuer, audience, times).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: u64 = 1_800_000_000;

struct Keys {
    dalek: ed25519_dalek::SigningKey,
    kid: String,
    verifier: kiops_token::Verifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dalek = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pem = dalek
            .to_pkcs8_pem(Default::default())
            .expect("pem")
            .to_string();
        let key = kiops_token::SigningKey::from_pkcs8_pem(&pem).expect("key");
        let verifier = kiops_token::Verifier::new(key.public_jwk_set(), "kiops-identity", "kiops")
            .expect("verifier");
        Keys {
            kid: key.kid().to_string(),
            dalek,
            verifier,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Any text at all.
        let _ = k.verifier.verify_at(&String::from_utf8_lossy(rest), NOW);
        return;
    }
    // A correctly signed token around arbitrary claims bytes.
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": k.kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(rest)
    );
    let sig = k.dalek.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    if let Ok(claims) = k.verifier.verify_at(&token, NOW) {
        assert_eq!(claims.iss, "kiops-identity");
        assert!(claims.exp + 30 >= NOW, "expired token accepted");
        assert!(claims.nbf <= NOW + 30, "not-yet-valid token accepted");
        // Permission checks on whatever came in never panic.
        for p in kiops_token::Permission::ALL {
            let _ = claims.allows("org", p);
        }
    }
});
