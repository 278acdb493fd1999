//! Service-account assertions (R25): a compact JWS the account signs with
//! one of its Ed25519 keys, RFC 7523 style. Parsing and the checks that
//! need no database live here; the `jti`'s single use is the store's.

use super::error::{reason, DomainError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

/// Longest accepted assertion lifetime (`kiops_token::service_account`).
pub const MAX_LIFETIME_SECS: u64 = kiops_token::service_account::MAX_ASSERTION_LIFETIME_SECS;
/// Clock difference tolerated between the signer and this server.
pub const SKEW_SECS: u64 = 30;
/// Longer input is refused before it is decoded.
pub const MAX_ASSERTION_CHARS: usize = 4096;
pub const MAX_JTI_CHARS: usize = 128;

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    iss: String,
    sub: String,
    aud: Audience,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    jti: String,
}

/// `aud` may be one string or a list (RFC 7519).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// An assertion whose claims passed every check but the signature and the
/// `jti`'s single use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub account_id: String,
    /// The `kid`: which of the account's keys signed it.
    pub credential_id: String,
    pub jti: String,
    pub exp: u64,
    /// `header.payload`, what the signature covers.
    pub signed: Vec<u8>,
    pub signature: [u8; 64],
}

fn invalid(message: &str) -> DomainError {
    DomainError::unauthenticated(
        reason::INVALID_ASSERTION,
        format!("invalid assertion: {message}"),
    )
}

/// Parses `token` and checks its claims for `audience` at `now`.
pub fn parse(token: &str, audience: &str, now: u64) -> Result<Assertion, DomainError> {
    if token.len() > MAX_ASSERTION_CHARS {
        return Err(invalid("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not a compact JWS"));
    };
    let header: Header = decode_json(h).ok_or_else(|| invalid("bad header"))?;
    if header.alg != "EdDSA" {
        return Err(invalid("alg must be EdDSA"));
    }
    let credential_id = header
        .kid
        .ok_or_else(|| invalid("kid (the credential id) is required"))?;
    let payload: Payload = decode_json(p).ok_or_else(|| invalid("bad claims"))?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid("bad signature encoding"))?;
    if payload.iss != payload.sub {
        return Err(invalid("iss and sub must both be the service account id"));
    }
    if !payload.aud.contains(audience) {
        return Err(invalid("aud is not this issuer"));
    }
    if payload.exp <= now {
        return Err(invalid("expired"));
    }
    if payload.exp > now + MAX_LIFETIME_SECS + SKEW_SECS {
        return Err(invalid("exp is more than 5 minutes ahead"));
    }
    if let Some(iat) = payload.iat {
        if iat > now + SKEW_SECS || payload.exp.saturating_sub(iat) > MAX_LIFETIME_SECS {
            return Err(invalid(
                "iat is in the future or the lifetime exceeds 5 minutes",
            ));
        }
    }
    if payload.nbf.is_some_and(|nbf| nbf > now + SKEW_SECS) {
        return Err(invalid("not yet valid"));
    }
    if payload.jti.is_empty() || payload.jti.len() > MAX_JTI_CHARS {
        return Err(invalid("jti must be 1 to 128 characters"));
    }
    Ok(Assertion {
        account_id: payload.sub,
        credential_id,
        jti: payload.jti,
        exp: payload.exp,
        signed: token.as_bytes()[..h.len() + 1 + p.len()].to_vec(),
        signature,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `public_key` made the assertion's signature (strict Ed25519:
/// no malleable signatures, no weak keys).
pub fn signed_by(a: &Assertion, public_key: &[u8; 32]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&a.signature);
    key.verify_strict(&a.signed, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiops_token::service_account::{generate_key, sign_assertion, AssertionClaims, KeyFile};

    const AUD: &str = "https://id.example";

    fn claims(exp: u64, iat: Option<u64>) -> AssertionClaims {
        AssertionClaims {
            iss: "sa".into(),
            sub: "sa".into(),
            aud: AUD.into(),
            exp,
            iat,
            jti: "j1".into(),
        }
    }

    fn reason_of(r: Result<Assertion, DomainError>) -> &'static str {
        match r {
            Err(DomainError::Unauthenticated { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_assertion_parses_and_verifies_with_its_key_only() {
        let (pem, public) = generate_key().expect("key");
        let (_, other) = generate_key().expect("key");
        let t = KeyFile::new("sa", "c1", AUD, &pem)
            .assertion(1000, 300)
            .expect("sign");
        let a = parse(&t, AUD, 1000).expect("valid");
        assert_eq!(
            (a.account_id.as_str(), a.credential_id.as_str()),
            ("sa", "c1")
        );
        assert!(signed_by(&a, &public));
        assert!(!signed_by(&a, &other));
    }

    #[test]
    fn expired_long_lived_foreign_and_malformed_assertions_are_refused() {
        let (pem, _) = generate_key().expect("key");
        let sign = |c: &AssertionClaims| sign_assertion(&pem, "c1", c).expect("sign");
        let now = 10_000;
        assert_eq!(
            reason_of(parse(&sign(&claims(now - 1, None)), AUD, now)),
            reason::INVALID_ASSERTION
        );
        assert_eq!(
            reason_of(parse(&sign(&claims(now + 3600, None)), AUD, now)),
            reason::INVALID_ASSERTION
        );
        assert_eq!(
            reason_of(parse(&sign(&claims(now + 200, Some(now - 400))), AUD, now)),
            reason::INVALID_ASSERTION
        );
        assert_eq!(
            reason_of(parse(&sign(&claims(now + 60, None)), "https://other", now)),
            reason::INVALID_ASSERTION
        );
        let mut c = claims(now + 60, None);
        c.iss = "other".into();
        assert_eq!(
            reason_of(parse(&sign(&c), AUD, now)),
            reason::INVALID_ASSERTION
        );
        for junk in ["", "a.b", "a.b.c.d", "x.y.z", &"a".repeat(5000)] {
            assert_eq!(reason_of(parse(junk, AUD, now)), reason::INVALID_ASSERTION);
        }
        // alg "none" with an empty signature.
        let t = sign(&claims(now + 60, None));
        let mut parts: Vec<&str> = t.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"c1"}"#);
        parts[0] = &none;
        parts[2] = "";
        assert_eq!(
            reason_of(parse(&parts.join("."), AUD, now)),
            reason::INVALID_ASSERTION
        );
    }
}
