//! A covering index for the session check that every authenticated call
//! makes (an access token is refused once its session has ended).
//!
//! The check rides along with the caller's account read (and, for
//! CheckPermission, with its one read of access facts), so like migration 4
//! it should touch only small index pages, never the table's rows.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX sessions_access_facts_idx \
                 ON sessions (id, user_id, revoked_at, expires_at)",
            )
            .await?;
        Ok(())
    }
}
