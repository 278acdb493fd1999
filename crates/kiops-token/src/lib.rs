//! Access tokens of the KIOPS platform.
//!
//! `kiops-identity` issues short-lived EdDSA (Ed25519) JWTs; every other KIOPS
//! service verifies them offline with this crate, without a database or the
//! identity server. The crate therefore depends on no server code: only the
//! claims, the [`Role`] and [`Permission`] vocabulary, key handling, the
//! [`Issuer`] (used by the server) and the [`Verifier`] (used downstream).
//!
//! ```
//! use kiops_token::{Issuer, IssueRequest, Permission, Role, SigningKey, Verifier, OrgClaims};
//! use std::collections::BTreeMap;
//!
//! let key = SigningKey::generate();
//! let issuer = Issuer::new(key.clone(), "https://id.kiops.example", "kiops", 300);
//! let mut orgs = BTreeMap::new();
//! orgs.insert("org-1".to_string(), OrgClaims { role: Role::Member, perms: vec![Permission::Device] });
//! let token = issuer.issue(IssueRequest {
//!     subject: "user-1".into(), email: "kim@example.com".into(), name: "Kim".into(),
//!     platform_admin: false, orgs, session_id: None, email_verified: true, amr: vec![],
//! }).unwrap();
//!
//! let verifier = Verifier::new(key.public_jwk_set(), "https://id.kiops.example", "kiops").unwrap();
//! let claims = verifier.verify(&token.token).unwrap();
//! assert!(claims.allows("org-1", Permission::Device));
//! assert!(!claims.allows("org-1", Permission::Vpn));
//! ```

mod authority;
mod claims;
mod error;
mod issuer;
mod keys;
mod model;
pub mod service_account;
mod verifier;

#[cfg(feature = "tonic")]
pub mod guard;
#[cfg(feature = "remote")]
pub mod remote;

pub use authority::{Authority, Denial, Revocation};
pub use claims::{scope, Claims, OrgClaims, TokenKind};
pub use error::{KeyError, VerifyError};
pub use issuer::{IssueRequest, IssuedToken, Issuer, ServiceIssueRequest};
pub use keys::{Jwk, JwkSet, SigningKey};
pub use model::{ParseError, Permission, Role};
pub use verifier::Verifier;

/// The JOSE `typ` header of access tokens (RFC 9068). Checked by the verifier
/// because jsonwebtoken does not.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
