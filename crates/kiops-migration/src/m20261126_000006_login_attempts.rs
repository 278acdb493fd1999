//! Lockout is decided before hashing: each password attempt reserves a slot
//! (`login_attempts_pending`) with a conditional UPDATE, admitted only while
//! failures plus pending attempts stay under the threshold, so parallel
//! attempts cannot evaluate more wrong passwords than the threshold.
//! `last_login_attempt_at` is when the latest slot was taken: a slot whose
//! request died before finishing (crash, cancelled call) stays held, which
//! refuses the account (fail closed) until the lockout duration has passed
//! since then.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE users ADD COLUMN login_attempts_pending INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN last_login_attempt_at BIGINT",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
