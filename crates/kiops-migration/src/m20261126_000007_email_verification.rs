//! Issue 20, items 3 and 8.
//!
//! - `users.email_verified`: sign-up must prove the address. Accounts that
//!   exist when this runs were made before the rule (by a PlatformAdmin, an
//!   invitation or an earlier sign-up that a Manager may already have
//!   approved): they count as verified, hence `DEFAULT TRUE`; new sign-ups
//!   write FALSE explicitly.
//! - `email_verification_tokens`: only a SHA-256 of each token, like
//!   password-reset tokens.
//! - `email_outbox.secret`: the single-use token of a message is kept apart
//!   from its text and erased when the message is delivered or its token
//!   expires, so a database copy holds no usable link. Messages already
//!   delivered lose their text here (it held the link in the clear).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT TRUE",
    r#"CREATE TABLE email_verification_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    )"#,
    "CREATE INDEX email_verification_tokens_user_idx ON email_verification_tokens (user_id)",
    "ALTER TABLE email_outbox ADD COLUMN secret TEXT",
    "ALTER TABLE email_outbox ADD COLUMN secret_expires_at BIGINT",
    "UPDATE email_outbox SET body_text = '(removed after delivery: it held a single-use link)' \
     WHERE sent_at IS NOT NULL AND kind IN ('invitation', 'password_reset')",
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
