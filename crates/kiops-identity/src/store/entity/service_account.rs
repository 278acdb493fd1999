use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "service_accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// `None` for a platform account.
    pub organization_id: Option<String>,
    /// The organization id, or '' for the platform: names are unique per
    /// owner through one index (a NULL would never collide).
    pub owner_key: String,
    pub name: String,
    pub description: String,
    /// Space-separated scope names.
    pub scopes: String,
    pub status: String,
    pub certificate_identity: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Secret lockout (the token exchange's).
    pub failed_attempts: i32,
    pub locked_until: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
