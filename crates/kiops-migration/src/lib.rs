//! Schema migrations for kiops-identity, portable across SQLite and PostgreSQL.
//!
//! Times are stored as BIGINT milliseconds since the Unix epoch: both backends
//! compare and index them the same way, and the server's clock can be injected
//! in tests without fighting database time functions.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_initial;
mod m20261123_000002_revocation_sessions;
mod m20261124_000003_membership_search;
mod m20261125_000004_check_permission_covering;
mod m20261126_000005_session_access_facts;
mod m20261126_000006_login_attempts;
mod m20261126_000007_email_verification;
mod m20261126_000009_revocation_commit_order;
mod m20261126_000010_service_accounts;
mod m20261126_000011_session_clients;
mod m20261126_000012_totp;
mod m20261126_000013_second_factor_policy;
mod m20261126_000014_invitation_ready;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_initial::Migration),
            Box::new(m20261123_000002_revocation_sessions::Migration),
            Box::new(m20261124_000003_membership_search::Migration),
            Box::new(m20261125_000004_check_permission_covering::Migration),
            Box::new(m20261126_000005_session_access_facts::Migration),
            Box::new(m20261126_000006_login_attempts::Migration),
            Box::new(m20261126_000007_email_verification::Migration),
            Box::new(m20261126_000009_revocation_commit_order::Migration),
            Box::new(m20261126_000010_service_accounts::Migration),
            Box::new(m20261126_000011_session_clients::Migration),
            Box::new(m20261126_000012_totp::Migration),
            Box::new(m20261126_000013_second_factor_policy::Migration),
            Box::new(m20261126_000014_invitation_ready::Migration),
        ]
    }
}
