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
    /// The invitee's display name, for the account made on accept.
    pub name: Option<String>,
    /// Granted permissions the membership starts with (7-bit set).
    pub permissions: i32,
    /// The template `permissions` were copied from, if any.
    pub template_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
