//! The tables of single-use tokens kept as hashes (password reset R14,
//! email verification): a token is used by one conditional UPDATE, so of two
//! racing uses only one can win.

use super::db_err;
use super::entity::{email_verification_token as evt, password_reset_token as prt};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PrimaryKeyTrait, QueryFilter};

/// A table of `(token_hash, user_id, created_at, expires_at, used_at)`.
pub trait TokenTable: EntityTrait<Model: TokenRow> {
    const TOKEN_HASH: Self::Column;
    const USER_ID: Self::Column;
    const EXPIRES_AT: Self::Column;
    const USED_AT: Self::Column;
}

/// A row of a [`TokenTable`].
pub trait TokenRow {
    fn usable(&self, now: i64) -> bool;
    fn into_user_id(self) -> String;
}

macro_rules! token_table {
    ($m:ident) => {
        impl TokenTable for $m::Entity {
            const TOKEN_HASH: $m::Column = $m::Column::TokenHash;
            const USER_ID: $m::Column = $m::Column::UserId;
            const EXPIRES_AT: $m::Column = $m::Column::ExpiresAt;
            const USED_AT: $m::Column = $m::Column::UsedAt;
        }

        impl TokenRow for $m::Model {
            fn usable(&self, now: i64) -> bool {
                self.used_at.is_none() && self.expires_at > now
            }
            fn into_user_id(self) -> String {
                self.user_id
            }
        }
    };
}

token_table!(evt);
token_table!(prt);

/// The user of a token that is still usable (unused, unexpired), without
/// using it.
pub async fn owner<E, C>(
    conn: &C,
    token_hash: &str,
    now: i64,
) -> Result<Option<String>, DomainError>
where
    E: TokenTable,
    String: Into<<E::PrimaryKey as PrimaryKeyTrait>::ValueType>,
    C: ConnectionTrait,
{
    Ok(E::find_by_id(token_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .filter(|t| t.usable(now))
        .map(TokenRow::into_user_id))
}

/// Uses the token if it is still usable and, with `user_id`, still that
/// user's; whether it did (the checked row count).
pub async fn use_one<E: TokenTable, C: ConnectionTrait>(
    conn: &C,
    token_hash: &str,
    user_id: Option<&str>,
    now: i64,
) -> Result<bool, DomainError> {
    let mut q = E::update_many()
        .col_expr(E::USED_AT, Expr::value(now))
        .filter(E::TOKEN_HASH.eq(token_hash));
    if let Some(user_id) = user_id {
        q = q.filter(E::USER_ID.eq(user_id));
    }
    let n = q
        .filter(E::USED_AT.is_null())
        .filter(E::EXPIRES_AT.gt(now))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(n == 1)
}

/// Uses every outstanding token of `user_id`.
pub async fn use_all<E: TokenTable, C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    E::update_many()
        .col_expr(E::USED_AT, Expr::value(now))
        .filter(E::USER_ID.eq(user_id))
        .filter(E::USED_AT.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
