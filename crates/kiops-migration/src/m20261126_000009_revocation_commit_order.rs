//! Revocation events get a second number, `seq`, given in commit order.
//!
//! `id` is taken from a sequence (or rowid) when the row is inserted, not
//! when its transaction commits: on PostgreSQL a transaction holding id 7
//! can commit after the one holding id 8, and a watcher that had resumed
//! from 8 would never see 7. `seq` is given only to rows already committed,
//! by one sequencer at a time (`store::revocations::sequence`), so the rows
//! a reader can see always form a prefix of `seq` order. Existing rows keep
//! their order: `seq = id`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in [
            "ALTER TABLE revocation_events ADD COLUMN seq BIGINT NULL",
            "UPDATE revocation_events SET seq = id",
            "CREATE UNIQUE INDEX revocation_events_seq_idx ON revocation_events (seq)",
            "CREATE INDEX revocation_events_unsequenced_idx \
                ON revocation_events (id) WHERE seq IS NULL",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
