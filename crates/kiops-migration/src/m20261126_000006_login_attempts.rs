//! Lockout is decided before hashing: each password attempt reserves one of
//! the `failed_login_count` slots with a conditional UPDATE, and this column
//! remembers when the latest one was taken. A reservation whose request
//! died before it finished (crash, cancelled call) stays counted as a failure
//! (fail closed); when every slot is held this way the account is refused
//! until the lockout duration has passed since this time.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE users ADD COLUMN last_login_attempt_at BIGINT")
            .await?;
        Ok(())
    }
}
