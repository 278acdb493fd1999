//! Issue 24, sessions you can see: where each session was opened (the
//! client's user agent and address at login) and how it was authenticated
//! (`amr`, space-separated methods: `pwd` for every session before this).
//! The live sessions of a user are listed newest first.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN peer_address TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd'",
    "CREATE INDEX sessions_user_live_idx ON sessions (user_id, revoked_at, created_at)",
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
