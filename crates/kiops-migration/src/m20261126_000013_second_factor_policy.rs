//! Issue 24, second-factor policy: an organization's Managers may require a
//! second factor of its members, and a PlatformAdmin of every PlatformAdmin
//! (the platform's settings, one row).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE organizations ADD COLUMN second_factor_required BOOLEAN NOT NULL DEFAULT FALSE",
    "CREATE TABLE platform_settings (\
        id INTEGER NOT NULL PRIMARY KEY, \
        platform_admin_second_factor_required BOOLEAN NOT NULL DEFAULT FALSE, \
        updated_at BIGINT NOT NULL DEFAULT 0)",
    "INSERT INTO platform_settings (id, platform_admin_second_factor_required, updated_at) \
        VALUES (1, FALSE, 0)",
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
