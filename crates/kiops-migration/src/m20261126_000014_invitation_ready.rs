//! Issue 24, invitations that arrive ready: an invitation carries the
//! invitee's name and the permissions the membership starts with (a copy
//! of a template's, when one was named: `template_id` only says which).
//! Each outbox message of an invitation points at it, and records when it
//! was last tried, so the invitation shows its email's delivery state.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE invitations ADD COLUMN name TEXT NULL",
    "ALTER TABLE invitations ADD COLUMN permissions INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE invitations ADD COLUMN template_id TEXT NULL",
    "ALTER TABLE email_outbox ADD COLUMN invitation_id TEXT NULL",
    "ALTER TABLE email_outbox ADD COLUMN last_attempt_at BIGINT NULL",
    "CREATE INDEX email_outbox_invitation_idx ON email_outbox (invitation_id, created_at)",
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
