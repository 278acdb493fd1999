use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub occurred_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub organization_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: String,
    pub request_id: String,
    pub peer_address: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
