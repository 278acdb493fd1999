use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revocation_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Empty: every user (of the organization).
    pub user_id: String,
    pub organization_id: Option<String>,
    pub revoked_at: i64,
    pub reason: String,
    pub session_id: Option<String>,
    /// Commit order (migration 9): `None` until the sequencer numbers it.
    pub seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
