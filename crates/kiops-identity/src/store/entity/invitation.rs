use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invitations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: String,
    pub inviter_id: String,
    /// pending, accepted, rejected, revoked (EXPIRED is derived from expires_at).
    pub status: String,
    /// SHA-256 of the single-use token; the token itself is only in the email.
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
