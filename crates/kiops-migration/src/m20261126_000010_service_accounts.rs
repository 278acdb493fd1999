//! Service accounts (R25): machine identities owned by one organization or
//! by the platform, their credentials (Ed25519 public keys and hashed client
//! secrets) and the `jti`s of assertions already exchanged, so that an
//! assertion is accepted once.
//!
//! `owner_key` is the owning organization's id, or '' for the platform, so
//! that one unique index says "names are unique per owner" on both backends
//! (a NULL would never collide). Failed secret exchanges lock an account out
//! like failed passwords lock a user: `failed_attempts` and `locked_until`.
//! `tokens_not_before` is when the account's access was last narrowed
//! (disabled, scopes taken, binding changed): tokens issued before it stay
//! refused here after an Enable or a re-grant, as they do offline.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "CREATE TABLE service_accounts (
                id TEXT NOT NULL PRIMARY KEY,
                organization_id TEXT REFERENCES organizations (id) ON DELETE CASCADE,
                owner_key TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                scopes TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL,
                certificate_identity TEXT,
                created_by TEXT,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                failed_attempts INTEGER NOT NULL DEFAULT 0,
                locked_until BIGINT,
                tokens_not_before BIGINT NOT NULL DEFAULT 0
            )",
            "CREATE UNIQUE INDEX service_accounts_owner_name_idx \
                ON service_accounts (owner_key, name)",
            "CREATE INDEX service_accounts_org_idx ON service_accounts (organization_id)",
            "CREATE TABLE service_account_credentials (
                id TEXT NOT NULL PRIMARY KEY,
                service_account_id TEXT NOT NULL \
                    REFERENCES service_accounts (id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                public_key TEXT,
                secret_hash TEXT,
                fingerprint TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                last_used_at BIGINT
            )",
            "CREATE INDEX service_account_credentials_account_idx \
                ON service_account_credentials (service_account_id)",
            "CREATE TABLE service_assertion_jtis (
                service_account_id TEXT NOT NULL,
                jti TEXT NOT NULL,
                expires_at BIGINT NOT NULL,
                PRIMARY KEY (service_account_id, jti)
            )",
            "CREATE INDEX service_assertion_jtis_expiry_idx \
                ON service_assertion_jtis (expires_at)",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
