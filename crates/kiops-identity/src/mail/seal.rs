//! Sealed tokens in the outbox (H3). A queued message keeps
//! its single-use token until delivery; on PostgreSQL the row versions
//! written before delivery stay in the pages (and WAL) of every physical
//! copy until vacuumed. With a key that is not in the database (an outbox
//! key file, or one derived from the signing key file) the token is stored
//! only encrypted (ChaCha20-Poly1305), so such a copy holds no usable link.
//! Every replica must use the same key: any of them may deliver.

use anyhow::Context;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use std::path::Path;

/// Marks a sealed value; anything else is a token stored as is.
const PREFIX: &str = "s1:";
const NONCE_LEN: usize = 12;
const DERIVE_INFO: &[u8] = b"kiops-identity outbox seal v1";

/// Where the key came from (for the startup log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealSource {
    KeyFile,
    SigningKeyFile,
    None,
}

/// Seals with the first key, opens with any of them (keys derived from
/// `--previous-key-file` open messages queued before a key rotation).
#[derive(Clone, Default)]
pub struct SecretSeal {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SecretSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretSeal({} key(s))", self.keys.len())
    }
}

impl SecretSeal {
    /// No key: tokens are stored as they are.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn with_keys(keys: Vec<[u8; 32]>) -> Self {
        Self { keys }
    }

    /// The same keys and `extra` last: sealing uses the first key (the
    /// server's own when it has one, else `extra`), opening tries all.
    pub fn with_extra_key(&self, extra: [u8; 32]) -> Self {
        let mut keys = self.keys.clone();
        keys.push(extra);
        Self { keys }
    }

    /// The key, in this order: the outbox key file, else derived from the
    /// signing key file (and the previous ones, to open older messages),
    /// else none.
    pub fn load(
        key_file: Option<&Path>,
        signing_key_pem: Option<&str>,
        previous_key_pems: &[String],
    ) -> anyhow::Result<(Self, SealSource)> {
        if let Some(path) = key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read outbox key file {}", path.display()))?;
            let key = parse_key(&text)
                .map_err(|e| anyhow::anyhow!("outbox key file {}: {e}", path.display()))?;
            return Ok((Self::with_keys(vec![key]), SealSource::KeyFile));
        }
        if let Some(pem) = signing_key_pem {
            let mut keys = vec![derive(pem).context("signing key file")?];
            for p in previous_key_pems {
                keys.push(derive(p).context("previous key file")?);
            }
            return Ok((Self::with_keys(keys), SealSource::SigningKeyFile));
        }
        Ok((Self::none(), SealSource::None))
    }

    /// The value to store for `token`, bound to the address it goes to.
    pub fn seal(&self, token: &str, to: &str) -> String {
        let Some(key) = self.keys.first() else {
            return token.to_string();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(&Key::from(*key));
        let Ok(ct) = cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: token.as_bytes(),
                aad: to.as_bytes(),
            },
        ) else {
            // Only on a message over 256 GiB, which a token never is. Fail
            // closed, never in the clear: a value nothing opens, so the
            // sender gives the message up.
            tracing::error!("sealing an emailed token failed");
            return PREFIX.to_string();
        };
        let mut out = nonce.to_vec();
        out.extend(ct);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The token from a stored value: a value without the prefix is a
    /// token stored as is (no key, or queued by an older version).
    pub fn open(&self, stored: &str, to: &str) -> Result<String, String> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        if self.keys.is_empty() {
            return Err(
                "its single-use link is sealed and this server has no outbox key \
                 (every replica needs the same --outbox-key-file or --signing-key-file)"
                    .into(),
            );
        }
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| "its sealed single-use link is malformed".to_string())?;
        if raw.len() <= NONCE_LEN {
            return Err("its sealed single-use link is malformed".into());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::from(<[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| "malformed")?);
        for key in &self.keys {
            let cipher = ChaCha20Poly1305::new(&Key::from(*key));
            if let Ok(pt) = cipher.decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: to.as_bytes(),
                },
            ) {
                return String::from_utf8(pt)
                    .map_err(|_| "its sealed single-use link is malformed".to_string());
            }
        }
        Err("its single-use link was sealed with another outbox key \
             (every replica needs the same --outbox-key-file or --signing-key-file)"
            .into())
    }
}

/// 32 bytes as 64 hex characters, or base64 (standard or URL-safe).
fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(t).map_err(|e| e.to_string())?
    } else {
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or_else(|| {
                "expected 32 random bytes as 64 hex characters or base64 \
                 (e.g. `openssl rand -hex 32`)"
                    .to_string()
            })?
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "expected 32 random bytes as 64 hex characters or base64, got {} bytes",
            b.len()
        )
    })
}

/// HKDF-SHA256 over the Ed25519 seed of a PKCS#8 PEM key: the same file
/// gives the same key on every replica, whatever its formatting.
fn derive(pem: &str) -> anyhow::Result<[u8; 32]> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 PEM key: {e}"))?;
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, key.as_bytes())
        .expand(DERIVE_INFO, &mut out)
        .map_err(|e| anyhow::anyhow!("key derivation: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_key_and_address() {
        let a = SecretSeal::with_keys(vec![[7; 32]]);
        let s = a.seal("kp_SECRET", "a@b.c");
        assert!(s.starts_with(PREFIX));
        assert!(!s.contains("kp_SECRET"));
        assert_ne!(s, a.seal("kp_SECRET", "a@b.c"), "fresh nonce each time");
        assert_eq!(a.open(&s, "a@b.c").as_deref(), Ok("kp_SECRET"));
        assert!(a.open(&s, "x@b.c").is_err(), "bound to the address");
        assert!(SecretSeal::with_keys(vec![[8; 32]])
            .open(&s, "a@b.c")
            .is_err());
        assert!(SecretSeal::none().open(&s, "a@b.c").is_err());
        // An older key still opens after a rotation.
        let rotated = SecretSeal::with_keys(vec![[8; 32], [7; 32]]);
        assert_eq!(rotated.open(&s, "a@b.c").as_deref(), Ok("kp_SECRET"));
        // Plain values (no key, older versions) pass through.
        assert_eq!(a.open("kp_PLAIN", "a@b.c").as_deref(), Ok("kp_PLAIN"));
        assert_eq!(SecretSeal::none().seal("kp_PLAIN", "a@b.c"), "kp_PLAIN");
        assert!(a.open("s1:!!", "a@b.c").is_err());
        assert!(a.open("s1:AAAA", "a@b.c").is_err());
    }

    #[test]
    fn key_files_are_hex_or_base64_of_32_bytes() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        assert_eq!(parse_key(hex64).map(|k| k[1]), Ok(0x11));
        let b64 = STANDARD.encode([9u8; 32]);
        assert_eq!(parse_key(&b64), Ok([9; 32]));
        assert_eq!(parse_key(&URL_SAFE_NO_PAD.encode([9u8; 32])), Ok([9; 32]));
        assert!(parse_key("").is_err());
        assert!(parse_key("too short").is_err());
        assert!(parse_key(&STANDARD.encode([9u8; 16])).is_err());
        assert!(parse_key(&"g".repeat(64)).is_err());
    }

    #[test]
    fn the_derived_key_depends_on_the_signing_key_only() {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey};
        let k1 = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let k2 = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let pem1 = k1.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let pem1_crlf = k1.to_pkcs8_pem(LineEnding::CRLF).expect("pem");
        let pem2 = k2.to_pkcs8_pem(LineEnding::LF).expect("pem");
        assert_eq!(derive(&pem1).ok(), derive(&pem1_crlf).ok());
        assert_ne!(derive(&pem1).ok(), derive(&pem2).ok());
        assert!(derive("not a key").is_err());
    }
}
