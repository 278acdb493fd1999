use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "memberships")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub role: String,
    /// 7-bit set of granted categories.
    pub permissions: i32,
    pub joined_at: i64,
    /// Copies of the member's `users.email` / `users.name_lower`, so member
    /// search stays inside this table (migration 3 says why). Written with
    /// the membership and on every name change.
    pub email: String,
    pub name_lower: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
