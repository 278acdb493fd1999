//! The client side of a service account (R25): its key file and the signed
//! assertion (RFC 7523 style) it exchanges for an access token with
//! `AuthService.IssueServiceAccountToken`.

use crate::error::KeyError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// `type` of a key file.
pub const KEY_FILE_TYPE: &str = "kiops_service_account_key";

/// Longest lifetime of an assertion the server accepts, in seconds.
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// What `AddServiceAccountKey` (server-generated key) and `kiops-identity
/// service-accounts create --key-out` write: everything a client needs to
/// sign assertions. The private key is a secret: keep the file 0600 or in a
/// Kubernetes Secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub service_account_id: String,
    /// The credential id: `kid` of the assertions.
    pub credential_id: String,
    /// The server's issuer: `aud` of the assertions.
    pub issuer: String,
    /// PKCS#8 PEM of the Ed25519 private key.
    pub private_key_pem: String,
}

impl std::fmt::Debug for KeyFile {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("service_account_id", &self.service_account_id)
            .field("credential_id", &self.credential_id)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Claims of an assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    pub jti: String,
}

impl KeyFile {
    pub fn new(
        service_account_id: &str,
        credential_id: &str,
        issuer: &str,
        private_key_pem: &str,
    ) -> Self {
        Self {
            kind: KEY_FILE_TYPE.to_string(),
            service_account_id: service_account_id.to_string(),
            credential_id: credential_id.to_string(),
            issuer: issuer.to_string(),
            private_key_pem: private_key_pem.to_string(),
        }
    }

    pub fn from_json(json: &str) -> Result<Self, KeyError> {
        let f: KeyFile = serde_json::from_str(json)
            .map_err(|e| KeyError::InvalidPrivateKey(format!("key file: {e}")))?;
        if f.kind != KEY_FILE_TYPE {
            return Err(KeyError::InvalidPrivateKey(format!(
                "key file: type is not {KEY_FILE_TYPE}"
            )));
        }
        Ok(f)
    }

    pub fn to_json(&self) -> Result<String, KeyError> {
        serde_json::to_string_pretty(self).map_err(|e| KeyError::Signing(e.to_string()))
    }

    /// A fresh assertion valid for `lifetime_secs` (at most 300) from `now`.
    pub fn assertion(&self, now: u64, lifetime_secs: u64) -> Result<String, KeyError> {
        let claims = AssertionClaims {
            iss: self.service_account_id.clone(),
            sub: self.service_account_id.clone(),
            aud: self.issuer.clone(),
            exp: now + lifetime_secs.min(MAX_ASSERTION_LIFETIME_SECS),
            iat: Some(now),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        sign_assertion(&self.private_key_pem, &self.credential_id, &claims)
    }
}

/// Signs `claims` as a compact JWS (EdDSA, `kid` = credential id).
pub fn sign_assertion(
    private_key_pem: &str,
    credential_id: &str,
    claims: &AssertionClaims,
) -> Result<String, KeyError> {
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(private_key_pem)
        .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))?;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": credential_id});
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Signing(e.to_string()))?;
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    Ok(token)
}

/// The raw 32-byte Ed25519 public key of an SPKI PEM (`PUBLIC KEY`).
pub fn public_key_from_pem(pem: &str) -> Result<[u8; 32], KeyError> {
    ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
        .map(|k| k.to_bytes())
        .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))
}

/// SPKI PEM of a raw Ed25519 public key.
pub fn public_key_to_pem(raw: &[u8; 32]) -> Result<String, KeyError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
        .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))?;
    key.to_public_key_pem(Default::default())
        .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))
}

/// A new key pair: (PKCS#8 PEM private key, raw public key).
pub fn generate_key() -> Result<(String, [u8; 32]), KeyError> {
    let key = crate::SigningKey::generate();
    let public = key.dalek().verifying_key().to_bytes();
    Ok((private_key_to_pem(key.dalek())?, public))
}

/// PKCS#8 v1 PEM of a private key (RFC 8410: the private key alone). The
/// key file is read by other languages: ed25519-dalek's own encoding is v2
/// (RFC 5958, the public key appended), which OpenSSL 3 and Python's
/// `cryptography` refuse; every library reads v1, ed25519-dalek included.
fn private_key_to_pem(key: &ed25519_dalek::SigningKey) -> Result<String, KeyError> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .map(|pem| pem.to_string())
    .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_signs_assertions_its_public_key_verifies() {
        let (private, public) = generate_key().expect("key");
        let file = KeyFile::new("sa1", "cred1", "https://id.example", &private);
        let again = KeyFile::from_json(&file.to_json().expect("json")).expect("parse");
        let a = again.assertion(1_000, 600).expect("sign");
        let pem = public_key_to_pem(&public).expect("pem");
        assert_eq!(public_key_from_pem(&pem).expect("raw"), public);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["https://id.example"]);
        v.validate_exp = false;
        let decoded = jsonwebtoken::decode::<AssertionClaims>(
            &a,
            &jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).expect("decoding key"),
            &v,
        )
        .expect("verifies");
        assert_eq!(decoded.header.kid.as_deref(), Some("cred1"));
        assert_eq!(decoded.claims.sub, "sa1");
        assert_eq!(decoded.claims.exp, 1_000 + MAX_ASSERTION_LIFETIME_SECS);
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }

    #[test]
    fn generated_private_keys_are_pkcs8_v1() {
        let (private, public) = generate_key().expect("key");
        let body: String = private
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        // SEQUENCE (46 bytes) { INTEGER 0, AlgorithmIdentifier Ed25519,
        // OCTET STRING { OCTET STRING key } } and nothing after it.
        assert_eq!(der.len(), 48, "{der:02x?}");
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&private).expect("dalek reads v1");
        assert_eq!(key.verifying_key().to_bytes(), public);
    }

    #[test]
    fn other_files_are_not_key_files() {
        assert!(KeyFile::from_json(
            r#"{"type":"x","service_account_id":"a",
            "credential_id":"c","issuer":"i","private_key_pem":"p"}"#
        )
        .is_err());
        assert!(KeyFile::from_json("not json").is_err());
    }
}
