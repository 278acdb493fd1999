//! Covering indexes for CheckPermission's one read.
//!
//! CheckPermission looks up a random member of an organization on every
//! call. Through the primary keys that is an index seek and then a seek into
//! the table, whose rows are wide (a user row carries the password hash), so
//! the pages a stream of checks touches are most of both tables. These two
//! indexes hold every column the read needs: it walks only them, and their
//! pages (about 60 bytes per user and 90 per membership) stay in the
//! database's cache where the tables would not.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "CREATE INDEX users_access_facts_idx ON users (id, status, platform_admin, email)",
            "CREATE INDEX memberships_access_facts_idx \
                ON memberships (organization_id, user_id, role, permissions)",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
