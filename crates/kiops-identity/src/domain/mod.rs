//! The rules of docs/rules.md as plain functions over plain types.
//!
//! Nothing in here knows about tonic or sea-orm: every rule can be unit-tested
//! without a server or a database, and the api/ and store/ layers only decode,
//! call these, and apply the decision.

pub mod access;
pub mod assertion;
pub mod audit;
pub mod error;
pub mod invitation;
pub mod join_request;
pub mod membership;
pub mod model;
pub mod organization;
pub mod page_token;
pub mod password_policy;
pub mod second_factor;
pub mod service_account;
pub mod session;
pub mod user;
pub mod validate;

pub use error::{DomainError, FieldViolation};
pub use model::{Caller, Permission, Role};
