//! Member search reads only the memberships table.
//!
//! "Organization Users" searches by substring of email or name inside one
//! organization. Joining users for every candidate row made a search in a
//! 20,000-member organization cost 25–100 ms (a lookup per member, plus a
//! hash join over all users for the count on PostgreSQL). A copy of the two
//! searchable fields on the membership, kept in step by the store in the same
//! transaction as any name change, lets both the count and the page walk one
//! organization's slice of one index, in email order.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE memberships ADD COLUMN email TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE memberships ADD COLUMN name_lower TEXT NOT NULL DEFAULT ''",
            "UPDATE memberships SET \
                email = (SELECT users.email FROM users WHERE users.id = memberships.user_id), \
                name_lower = (SELECT users.name_lower FROM users WHERE users.id = memberships.user_id)",
            "CREATE INDEX memberships_org_search_idx \
                ON memberships (organization_id, email, user_id, name_lower)",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
