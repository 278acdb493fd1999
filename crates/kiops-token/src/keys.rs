//! Ed25519 signing keys and their public JWK form.

use crate::error::KeyError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A public key in JWK form (RFC 8037, OKP / Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub crv: String,
    #[serde(default)]
    pub x: String,
    #[serde(default)]
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

impl Jwk {
    /// The raw 32-byte public key, after checking this is an Ed25519 signing key.
    pub fn ed25519_public_key(&self) -> Result<[u8; 32], KeyError> {
        if self.kty != "OKP" || self.crv != "Ed25519" {
            return Err(KeyError::InvalidJwk(format!(
                "kty {:?} crv {:?} is not OKP/Ed25519",
                self.kty, self.crv
            )));
        }
        if let Some(alg) = &self.alg {
            if alg != "EdDSA" {
                return Err(KeyError::InvalidJwk(format!("alg {alg:?} is not EdDSA")));
            }
        }
        if self.kid.is_empty() {
            return Err(KeyError::InvalidJwk("missing kid".into()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(&self.x)
            .map_err(|_| KeyError::InvalidJwk("x is not base64url".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::InvalidJwk("x is not 32 bytes".into()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map_err(|_| KeyError::InvalidJwk("x is not an Ed25519 point".into()))?;
        Ok(arr)
    }
}

/// A JWK Set document, as served on `/.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"keys\":[]}".to_string())
    }
}

/// An Ed25519 private key with its derived key id.
///
/// The `kid` is the RFC 7638 thumbprint of the public JWK, so it is stable for
/// a key wherever the key is loaded from (database or PEM file).
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let inner = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_dalek(inner)
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> Self {
        let x = URL_SAFE_NO_PAD.encode(inner.verifying_key().as_bytes());
        // RFC 7638: members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Self { inner, kid }
    }

    /// From a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))?;
        Ok(Self::from_dalek(inner))
    }

    /// PKCS#8 PEM, for storage. Treat the result as a secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        self.inner
            .to_pkcs8_pem(Default::default())
            .map(|z| z.to_string())
            .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))
    }

    #[cfg(test)]
    pub(crate) fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        self.inner
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| KeyError::InvalidPrivateKey(e.to_string()))
    }

    pub(crate) fn dalek(&self) -> &ed25519_dalek::SigningKey {
        &self.inner
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.inner.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: Some("EdDSA".into()),
            key_use: Some("sig".into()),
        }
    }

    /// A JWK Set holding just this key's public half.
    pub fn public_jwk_set(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let k = SigningKey::generate();
        let pem = k.to_pkcs8_pem().unwrap();
        let k2 = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(k.kid(), k2.kid());
        assert_eq!(k.public_jwk(), k2.public_jwk());
        assert!(!format!("{k:?}").contains(&pem));
    }

    #[test]
    fn jwk_checks_shape() {
        let k = SigningKey::generate();
        assert!(k.public_jwk().ed25519_public_key().is_ok());
        let mut short = k.public_jwk();
        short.x = URL_SAFE_NO_PAD.encode([1u8; 8]);
        assert!(short.ed25519_public_key().is_err());
        let mut rsa = k.public_jwk();
        rsa.kty = "RSA".into();
        assert!(rsa.ed25519_public_key().is_err());
    }
}
