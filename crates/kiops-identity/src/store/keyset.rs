//! Pieces shared by the paged listings: the keyset condition that starts a
//! page after the previous page's last row, and the row of a `COUNT(*)`.

use sea_orm::sea_query::{Cond, Expr, ExprTrait, SimpleExpr};
use sea_orm::FromQueryResult;
use serde_json::Value;

/// `(key, id) > (k, i)` (or `<` descending), portable across backends.
pub fn keyset_after(key: Expr, id: Expr, k: Value, i: String, descending: bool) -> Cond {
    let kv: SimpleExpr = match k {
        Value::Number(n) => Expr::value(n.as_i64().unwrap_or_default()),
        Value::String(s) => Expr::value(s),
        _ => Expr::value(String::new()),
    };
    // Written as `key >= k AND (key > k OR id > i)`: the same rows as
    // `key > k OR (key = k AND id > i)`, but the first term is a range both
    // planners can seek to, so a deep page starts at the cursor instead of
    // scanning everything before it.
    let (bound, first, tie) = if descending {
        (key.clone().lte(kv.clone()), key.lt(kv), id.lt(i))
    } else {
        (key.clone().gte(kv.clone()), key.gt(kv), id.gt(i))
    };
    Cond::all().add(bound).add(Cond::any().add(first).add(tie))
}

#[derive(Debug, FromQueryResult)]
pub struct Count {
    pub n: i64,
}
