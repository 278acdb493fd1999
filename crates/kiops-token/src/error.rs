use thiserror::Error;

/// Why a token was refused. Downstream services map every variant to
/// UNAUTHENTICATED; the variants exist for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm {0} is not allowed (EdDSA only)")]
    AlgorithmNotAllowed(String),
    #[error("token type must be at+jwt")]
    WrongType,
    #[error("token has no key id")]
    MissingKeyId,
    #[error("token key id is unknown")]
    UnknownKeyId,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is wrong")]
    WrongIssuer,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token lacks required claim {0}")]
    MissingClaim(String),
    #[error("token was revoked")]
    Revoked,
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("invalid Ed25519 private key: {0}")]
    InvalidPrivateKey(String),
    #[error("invalid Ed25519 public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    #[error("signing failed: {0}")]
    Signing(String),
}
