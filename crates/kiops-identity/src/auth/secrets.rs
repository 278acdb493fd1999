//! Opaque secrets (refresh, invitation and reset tokens): 256 random bits,
//! shown once, stored only as a SHA-256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// `<prefix>_<43 base64url chars>`. The prefix tells a leaked token's kind
/// (for secret scanners) without revealing anything.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored and looked up. Lookup by hash equality in the database is
/// safe against timing attacks: the attacker controls the preimage, not the
/// compared value.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = random_token("kr");
        let b = random_token("kr");
        assert_ne!(a, b);
        assert!(a.starts_with("kr_") && a.len() == 3 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
    }
}
