//! sea-orm entities, one per table of the migration.

pub mod audit_event;
pub mod email_outbox;
pub mod email_verification_token;
pub mod invitation;
pub mod join_request;
pub mod membership;
pub mod organization;
pub mod password_reset_token;
pub mod permission_template;
pub mod platform_settings;
pub mod refresh_token;
pub mod revocation_event;
pub mod service_account;
pub mod service_account_credential;
pub mod session;
pub mod signing_key;
pub mod user;
