//! An authenticator app for the TOTP tests (R30): RFC 6238 codes computed
//! here, independently of the server's code, from the secret that
//! StartTotpEnrollment returns, at the server's (test-advanced) time.

use super::*;
use sha1::{Digest, Sha1};
use std::time::{SystemTime, UNIX_EPOCH};

/// HMAC-SHA1 (RFC 2104), written out for the test side.
fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.resize(64, 0);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner = Sha1::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    Sha1::digest(&outer).to_vec()
}

/// The 6-digit code of base32 `secret` at time step `step`.
pub fn code_at_step(secret: &str, step: i64) -> String {
    let key = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .expect("base32 secret");
    let mac = hmac_sha1(&key, &(step as u64).to_be_bytes());
    let o = (mac[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([mac[o], mac[o + 1], mac[o + 2], mac[o + 3]]) & 0x7fff_ffff;
    format!("{:06}", bin % 1_000_000)
}

/// The app of one enrolled secret, following the server's clock.
pub struct Authenticator {
    pub secret: String,
    /// How far this test moved the server's clock.
    pub offset_ms: i64,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_string(),
            offset_ms: 0,
        }
    }

    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            + self.offset_ms
    }

    /// The server's current time step.
    pub fn step(&self) -> i64 {
        self.now_ms() / 1000 / 30
    }

    /// The code shown now.
    pub fn code(&self) -> String {
        code_at_step(&self.secret, self.step())
    }

    /// A code the server has not accepted yet: the clock moved one step on.
    pub fn next_code(&mut self, s: &TestServer) -> String {
        self.advance(s, Duration::from_secs(30));
        self.code()
    }

    /// Moves the server's clock (and this app's view of it).
    pub fn advance(&mut self, s: &TestServer, by: Duration) {
        s.advance_clock(by);
        self.offset_ms += by.as_millis() as i64;
    }

    /// A 6-digit code that is none of the accepted window's.
    pub fn wrong_code(&self, salt: u32) -> String {
        let step = self.step();
        let window: Vec<String> = (step - 1..=step + 1)
            .map(|t| code_at_step(&self.secret, t))
            .collect();
        (0..)
            .map(|i: u32| format!("{:06}", (salt.wrapping_mul(7919) + i * 104_729) % 1_000_000))
            .find(|c| !window.contains(c))
            .expect("a wrong code")
    }
}

/// Starts and confirms TOTP for the account of `token`: the app and the
/// recovery codes.
pub async fn enable_totp(s: &TestServer, token: &str) -> (Authenticator, Vec<String>) {
    enable_totp_with(s, token, PASSWORD).await
}

/// [`enable_totp`] for an account whose password is `password`.
pub async fn enable_totp_with(
    s: &TestServer,
    token: &str,
    password: &str,
) -> (Authenticator, Vec<String>) {
    let started = s
        .users()
        .await
        .start_totp_enrollment(authed(
            StartTotpEnrollmentRequest {
                current_password: password.into(),
            },
            token,
        ))
        .await
        .expect("start enrollment")
        .into_inner();
    let app = Authenticator::new(&started.secret);
    let codes = s
        .users()
        .await
        .confirm_totp_enrollment(authed(
            ConfirmTotpEnrollmentRequest { code: app.code() },
            token,
        ))
        .await
        .expect("confirm enrollment")
        .into_inner()
        .recovery_codes;
    (app, codes)
}

/// Logs in with PASSWORD and expects a challenge.
pub async fn challenge(s: &TestServer, email: &str) -> String {
    let r = s.login(email, PASSWORD).await.expect("login");
    assert!(
        r.access_token.is_empty() && r.refresh_token.is_empty(),
        "{r:?}"
    );
    r.second_factor
        .expect("a second-factor challenge")
        .challenge
}

pub async fn verify(
    s: &TestServer,
    challenge: &str,
    code: &str,
    recovery_code: &str,
) -> Result<VerifySecondFactorResponse, Status> {
    s.auth()
        .await
        .verify_second_factor(VerifySecondFactorRequest {
            challenge: challenge.into(),
            code: code.into(),
            recovery_code: recovery_code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[test]
fn rfc6238_vectors_on_the_test_side() {
    // RFC 6238 Appendix B (SHA1), last 6 digits.
    let secret = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
    assert_eq!(code_at_step(&secret, 59 / 30), "287082");
    assert_eq!(code_at_step(&secret, 1111111109 / 30), "081804");
    assert_eq!(code_at_step(&secret, 2000000000 / 30), "279037");
}
