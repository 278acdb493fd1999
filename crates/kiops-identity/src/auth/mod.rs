//! Credentials and tokens: password hashing, secret tokens, access-token
//! minting and verification (with the same `kiops-token` code downstream
//! services use).

pub mod password;
pub mod secrets;
pub mod throttle;
pub mod tokens;
pub mod totp;
