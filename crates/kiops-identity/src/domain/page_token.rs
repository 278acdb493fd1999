//! Opaque, tamper-safe page tokens for keyset pagination (AIP-158).
//!
//! A token carries the sort key of the last row returned and a fingerprint of
//! the listing's parameters (organization, query, filters, order), signed with
//! HMAC-SHA256. Keyset pagination stays correct while rows are inserted between
//! pages; a token edited by the client, or reused with other parameters, is
//! refused as INVALID_ARGUMENT.

use super::error::FieldViolation;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The signing key for page tokens, shared by all replicas (derived from the
/// token signing key material, so it needs no configuration of its own).
#[derive(Clone)]
pub struct PageKey([u8; 32]);

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageKey(..)")
    }
}

impl PageKey {
    pub fn derive(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"kiops-identity page token v1\0");
        h.update(secret);
        Self(h.finalize().into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// Fingerprint of the listing parameters.
    f: String,
    /// Sort key of the last row of the previous page.
    k: Vec<Value>,
}

/// A short digest of the parameters a token is valid for.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}

pub fn encode(key: &PageKey, fingerprint: &str, last_key: Vec<Value>) -> String {
    let body = serde_json::to_vec(&Body {
        f: fingerprint.to_string(),
        k: last_key,
    })
    .unwrap_or_default();
    let mut mac = key.mac();
    mac.update(&body);
    let sig = mac.finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// The sort key of the last row, or a violation on `page_token`.
pub fn decode(key: &PageKey, fingerprint: &str, token: &str) -> Result<Vec<Value>, FieldViolation> {
    let bad = || FieldViolation::new("page_token", "is not a valid page token for this request");
    if token.len() > 2048 {
        return Err(bad());
    }
    let (body_b64, sig_b64) = token.split_once('.').ok_or_else(bad)?;
    let body = URL_SAFE_NO_PAD.decode(body_b64).map_err(|_| bad())?;
    let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| bad())?;
    let mut mac = key.mac();
    mac.update(&body);
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| bad())?;
    let body: Body = serde_json::from_slice(&body).map_err(|_| bad())?;
    if body.f != fingerprint {
        return Err(bad());
    }
    Ok(body.k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_tamper() {
        let key = PageKey::derive(b"secret");
        let fp = fingerprint(&["org", "kim", "email"]);
        let t = encode(&key, &fp, vec![json!("a@b.io"), json!("id")]);
        assert_eq!(
            decode(&key, &fp, &t).unwrap(),
            vec![json!("a@b.io"), json!("id")]
        );
        // Other parameters.
        assert!(decode(&key, &fingerprint(&["org", "lee", "email"]), &t).is_err());
        // Other key.
        assert!(decode(&PageKey::derive(b"other"), &fp, &t).is_err());
        // Edited body with the old signature.
        let (_, sig) = t.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"f":"x","k":["zzz"]}"#);
        assert!(decode(&key, &fp, &format!("{forged_body}.{sig}")).is_err());
        for garbage in ["", ".", "abc", "a.b", &"x".repeat(5000)] {
            assert!(decode(&key, &fp, garbage).is_err());
        }
    }
}
