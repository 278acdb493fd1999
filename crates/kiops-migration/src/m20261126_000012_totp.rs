//! Issue 24, TOTP second factor (RFC 6238): one credential per user (its
//! secret sealed, never in clear; pending until confirmed by a first code;
//! the last accepted time step, so a code is used once), the hashed
//! recovery codes, and the hashed challenges a Login answers with when a
//! second factor is required.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    r#"CREATE TABLE totp_credentials (
        user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        sealed_secret TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        confirmed_at BIGINT,
        last_step BIGINT
    )"#,
    r#"CREATE TABLE totp_recovery_codes (
        code_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        used_at BIGINT
    )"#,
    "CREATE INDEX totp_recovery_codes_user_idx ON totp_recovery_codes (user_id)",
    r#"CREATE TABLE second_factor_challenges (
        challenge_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        password_digest TEXT NOT NULL,
        organization_id TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    )"#,
    "CREATE INDEX second_factor_challenges_user_idx ON second_factor_challenges (user_id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for s in STATEMENTS {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }
}
