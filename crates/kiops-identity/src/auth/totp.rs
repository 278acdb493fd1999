//! TOTP (RFC 6238 over RFC 4226's HOTP, HMAC-SHA1, 6 digits, 30 seconds)
//! and recovery codes. The shared secret is sealed at rest by
//! `service::totp` (`mail::seal`, bound to the account); recovery codes are
//! stored as SHA-256 digests only, like other single-use secrets.

use crate::auth::secrets::hash_token;
use data_encoding::BASE32_NOPAD;
use rand::RngCore;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Seconds per time step.
pub const PERIOD_SECS: i64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Recovery codes handed out at a time.
pub const RECOVERY_CODES: usize = 10;
/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "KIOPS";
/// Bytes of a secret (RFC 4226's recommended 160 bits).
const SECRET_LEN: usize = 20;
/// Base32 characters of a recovery code (100 bits), shown in groups of 5.
const RECOVERY_LEN: usize = 20;

/// A new random secret, base32 without padding.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    BASE32_NOPAD.encode(&bytes)
}

/// The otpauth:// URI of `secret` for `email` (Key Uri Format).
pub fn otpauth_uri(email: &str, secret: &str) -> String {
    let label = percent(&format!("{ISSUER}:{email}"));
    format!(
        "otpauth://totp/{label}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}"
    )
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// HMAC-SHA1 (RFC 2104).
fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha1::new().chain_update(&ipad).chain_update(msg).finalize();
    let outer = Sha1::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    let mut out = [0u8; 20];
    out.copy_from_slice(&outer);
    out
}

/// HOTP value of `key` at counter `step`, `digits` long (RFC 4226 5.3).
fn hotp(key: &[u8], step: u64, digits: u32) -> String {
    let mac = hmac_sha1(key, &step.to_be_bytes());
    let offset = (mac[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        mac[offset],
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]) & 0x7fff_ffff;
    let value = bin % 10u32.pow(digits);
    format!("{value:0width$}", width = digits as usize)
}

/// The time step of `now_ms`.
pub fn step_at(now_ms: i64) -> i64 {
    now_ms.div_euclid(1000).div_euclid(PERIOD_SECS)
}

/// The step among now-1, now, now+1 whose code is `code` (clock drift of
/// one step either way), or None. Every candidate is computed and compared
/// in constant time, so the time taken says nothing about which matched.
pub fn matching_step(secret_b32: &str, code: &str, now_ms: i64) -> Option<i64> {
    let key = BASE32_NOPAD.decode(secret_b32.as_bytes()).ok()?;
    let now = step_at(now_ms);
    let mut found = None;
    for step in [now - 1, now, now + 1] {
        if step < 0 {
            continue;
        }
        let expected = hotp(&key, step as u64, DIGITS as u32);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Whether `code` is shaped like a TOTP code.
pub fn is_code(code: &str) -> bool {
    code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// A new recovery code, e.g. `ABCDE-FGHIJ-KLMNO-PQRST`.
pub fn new_recovery_code() -> String {
    let mut bytes = [0u8; RECOVERY_LEN * 5 / 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let plain = BASE32_NOPAD.encode(&bytes);
    plain
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// The canonical form of a typed recovery code (dashes, spaces and case
/// ignored), or None when it cannot be one.
pub fn normalize_recovery_code(code: &str) -> Option<String> {
    let plain: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = plain.len() == RECOVERY_LEN
        && plain
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    ok.then_some(plain)
}

/// What is stored for a recovery code (any typed form of it).
pub fn recovery_code_hash(normalized: &str) -> String {
    hash_token(&format!("krc_{normalized}"))
}

/// What the seal binds a secret to (its account).
pub fn seal_context(user_id: &str) -> String {
    format!("totp:{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA1 (the 20-byte ASCII key "12345678901234567890").
    #[test]
    fn rfc6238_test_vectors() {
        let key = b"12345678901234567890";
        for (t, code) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(hotp(key, t / 30, 8), code, "t={t}");
        }
        // The same at 6 digits through the public path.
        let b32 = BASE32_NOPAD.encode(key);
        assert_eq!(matching_step(&b32, "287082", 59_000), Some(1));
        assert_eq!(matching_step(&b32, "287082", 59_000 + 30_000), Some(1));
        assert_eq!(matching_step(&b32, "287082", 59_000 + 60_000), None);
        assert_eq!(matching_step(&b32, "000000", 59_000), None);
    }

    #[test]
    fn rfc2202_hmac_sha1() {
        assert_eq!(
            hex::encode(hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex::encode(hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn recovery_codes_normalize_and_differ() {
        let a = new_recovery_code();
        assert_eq!(a.len(), 23);
        assert_ne!(a, new_recovery_code());
        let n = normalize_recovery_code(&a.to_lowercase()).expect("valid");
        assert_eq!(
            Some(n.clone()),
            normalize_recovery_code(&a.replace('-', " "))
        );
        assert_eq!(recovery_code_hash(&n).len(), 64);
        assert!(normalize_recovery_code("123456").is_none());
        assert!(normalize_recovery_code(&"1".repeat(20)).is_none());
    }

    #[test]
    fn secrets_and_uris() {
        let s = new_secret();
        assert_eq!(s.len(), 32);
        assert_ne!(s, new_secret());
        let uri = otpauth_uri("kim+x@example.com", &s);
        assert!(uri.starts_with("otpauth://totp/KIOPS:kim%2Bx@example.com?secret="));
        assert!(uri.ends_with("&issuer=KIOPS&algorithm=SHA1&digits=6&period=30"));
    }
}
