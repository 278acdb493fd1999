//! Revocations can name a session (logout, refresh-token reuse).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE revocation_events ADD COLUMN session_id TEXT")
            .await?;
        Ok(())
    }
}
