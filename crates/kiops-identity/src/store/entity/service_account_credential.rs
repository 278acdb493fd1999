use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "service_account_credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub service_account_id: String,
    /// 'key' or 'secret'.
    pub kind: String,
    /// Keys: standard base64 of the 32 raw Ed25519 public key bytes.
    pub public_key: Option<String>,
    /// Secrets: hex SHA-256 of the secret (never the secret).
    pub secret_hash: Option<String>,
    pub fingerprint: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
