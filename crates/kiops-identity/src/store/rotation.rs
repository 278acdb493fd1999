//! Refresh's rotation (R15): one contract, [`rotate`], whatever the backend.
//!
//! A current refresh token of a live session is used once and replaced by a
//! successor; a token used a second time has leaked, and its whole session is
//! revoked (with its revocation event and `session.revoked`, R16, R19).
//!
//! The common case (a current token) takes the fast path: one read before
//! anything is written (inline on SQLite, `sqlite_direct`; else on the
//! pool), the access token issued from what it read, then one conditional
//! write (`claim_batch`: batched rusqlite transactions on SQLite, one array
//! statement on PostgreSQL) that re-checks everything the read saw. A
//! profile of the refresh benchmark was half context switches between tokio
//! and SQLite's worker threads (one pair per statement), and on SQLite every
//! write holds the single writer connection: hence reads first, on the
//! shared pool, and one write call. Everything unusual (unknown, used,
//! expired, revoked, raced, or an in-memory SQLite database, which has no
//! file for the batcher to open) takes the classifying path: one write
//! transaction, run in a task of its own so a caller's deadline cannot drop
//! it half-way and hand its connection back to the pool inside it.

use super::entity::{refresh_token, session, user};
use super::logins::actor_of;
use super::sessions::{insert_refresh, revoke};
use super::users::{self, User};
use super::{audit, claim_batch, db_err, memberships, revocations, Store, WriteTx};
use crate::domain::audit::{Actor, AuditEntry, RequestMeta};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, QueryFilter,
    Statement,
};
use serde_json::json;
use tracing::Instrument;

/// A presented refresh token and the successor it is to be rotated to.
#[derive(Debug, Clone)]
pub struct Presented {
    pub hash: String,
    pub new_hash: String,
    /// A token scoped to this organization is asked for.
    pub only_org: Option<String>,
    pub now: i64,
    pub refresh_ttl_ms: i64,
}

/// How a rotation ended.
#[derive(Debug)]
pub enum Refreshed<T> {
    /// Rotated; what the issuer made of it.
    Issued(T),
    /// Unknown, expired, of a revoked or expired session, or of a user gone.
    Invalid,
    /// Already used: the session has been revoked (committed).
    Reused,
}

pub use super::memberships::TokenOrgs;

/// Rotates `p`. `issue` makes the answer from the session's user, the
/// user's memberships (only `only_org`'s when set), the session id and its
/// `amr` (as stored); it
/// runs before the rotation commits, and its error cancels the rotation (the
/// token stays unused).
pub async fn rotate<T, F>(
    store: &Store,
    meta: &RequestMeta,
    p: Presented,
    issue: F,
) -> Result<Refreshed<T>, DomainError>
where
    T: Send + 'static,
    F: Fn(&User, TokenOrgs, &str, &str) -> Result<T, DomainError> + Send + Sync + 'static,
{
    if let Some(mut c) = candidate(store, &p).await? {
        let issued = issue(
            &c.user,
            std::mem::take(&mut c.orgs),
            &c.session_id,
            &c.session_amr,
        )?;
        if claim(store, &p, &c).await? {
            return Ok(Refreshed::Issued(issued));
        }
    }
    let (store, meta) = (store.clone(), meta.clone());
    tokio::spawn(async move { classify(&store, &meta, &p, &issue).await }.in_current_span())
        .await
        .map_err(|e| DomainError::internal(format!("refresh task: {e}")))?
}

/// A refresh token that looked current when read outside any transaction:
/// its session (live then), that session's user, and the user's memberships
/// as token claims (only `only_org`'s when a scoped token is asked for).
#[derive(Debug)]
pub struct RefreshCandidate {
    pub session_id: String,
    pub session_expires_at: i64,
    /// The session's `amr`, as stored.
    pub session_amr: String,
    pub user: User,
    pub orgs: TokenOrgs,
}

/// One row per membership (user columns repeated; people have a handful),
/// or one row with NULL membership columns. Shared with the inline SQLite
/// path (`sqlite_direct`).
pub(super) const REFRESH_CANDIDATE_SQL: &str = "SELECT s.id AS rotating_session_id, \
     s.expires_at AS rotating_session_expires_at, s.amr AS rotating_session_amr, \
     m.organization_id AS member_org, m.role AS member_role, \
     m.permissions AS member_permissions, \
     o.second_factor_required AS member_org_second_factor, \
     (SELECT p.platform_admin_second_factor_required FROM platform_settings p \
       WHERE p.id = 1) AS platform_second_factor, u.* \
     FROM refresh_tokens r \
     JOIN sessions s ON s.id = r.session_id \
     JOIN users u ON u.id = s.user_id \
     LEFT JOIN memberships m ON m.user_id = u.id \
       AND (CAST($3 AS TEXT) IS NULL OR m.organization_id = $3) \
     LEFT JOIN organizations o ON o.id = m.organization_id \
     WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > $2 \
     AND s.revoked_at IS NULL AND s.expires_at > $2";

/// The fast path's read: inline on SQLite when it can be, else on the pool.
/// `None` when anything is unusual. Nothing read here is trusted on its
/// own: `claim` re-checks as it writes.
async fn candidate(store: &Store, p: &Presented) -> Result<Option<RefreshCandidate>, DomainError> {
    let only_org = p.only_org.as_deref();
    if let Some(direct) = &store.direct {
        if let Some(c) = direct.refresh_candidate(&p.hash, only_org, p.now) {
            return Ok(c);
        }
    }
    pooled_candidate(store.conn(), &p.hash, only_org, p.now).await
}

async fn pooled_candidate<C: ConnectionTrait>(
    conn: &C,
    presented_hash: &str,
    only_org: Option<&str>,
    now: i64,
) -> Result<Option<RefreshCandidate>, DomainError> {
    static SQLITE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| REFRESH_CANDIDATE_SQL.replace('$', "?"));
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Sqlite => SQLITE.clone(),
        _ => REFRESH_CANDIDATE_SQL.to_string(),
    };
    let stmt = Statement::from_sql_and_values(
        backend,
        sql,
        [
            presented_hash.into(),
            now.into(),
            only_org.map(str::to_string).into(),
        ],
    );
    let rows = conn.query_all_raw(stmt).await.map_err(db_err)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let user = User::try_from(user::Model::from_query_result(first, "").map_err(db_err)?)?;
    let mut memberships = Vec::new();
    for row in &rows {
        let org: Option<String> = row.try_get("", "member_org").map_err(db_err)?;
        if let Some(org) = org {
            let role: String = row.try_get("", "member_role").map_err(db_err)?;
            let perms: i32 = row.try_get("", "member_permissions").map_err(db_err)?;
            let required: Option<bool> = row
                .try_get("", "member_org_second_factor")
                .map_err(db_err)?;
            memberships.push((org, role, perms, required.unwrap_or(false)));
        }
    }
    let amr: String = first.try_get("", "rotating_session_amr").map_err(db_err)?;
    let platform_required: Option<bool> = first
        .try_get("", "platform_second_factor")
        .map_err(db_err)?;
    Ok(Some(RefreshCandidate {
        session_id: first.try_get("", "rotating_session_id").map_err(db_err)?,
        session_expires_at: first
            .try_get("", "rotating_session_expires_at")
            .map_err(db_err)?,
        orgs: memberships::token_facts(
            user.platform_admin,
            platform_required.unwrap_or(false),
            &amr,
            memberships,
        ),
        session_amr: amr,
        user,
    }))
}

/// The fast path's write: uses the candidate's token and stores its
/// successor in one database call (`claim_batch`). The token must still be
/// unused and unexpired and its session live at `now`, checked by the write
/// itself, so a concurrent use, logout or revocation since the read makes
/// this false and change nothing. False too without a batcher (in-memory
/// SQLite).
async fn claim(store: &Store, p: &Presented, c: &RefreshCandidate) -> Result<bool, DomainError> {
    let Some(claims) = &store.claims else {
        return Ok(false);
    };
    claims
        .claim(claim_batch::Claim {
            presented_hash: p.hash.clone(),
            session_id: c.session_id.clone(),
            now: p.now,
            new_hash: p.new_hash.clone(),
            expires: (p.now + p.refresh_ttl_ms).min(c.session_expires_at),
        })
        .await
}

/// The classifying path, in one write transaction: a used token revokes its
/// session; a current one rotates (the conditional UPDATE on
/// `used_at IS NULL` keeps it single-use against a concurrent request).
async fn classify<T, F>(
    store: &Store,
    meta: &RequestMeta,
    p: &Presented,
    issue: &F,
) -> Result<Refreshed<T>, DomainError>
where
    F: Fn(&User, TokenOrgs, &str, &str) -> Result<T, DomainError>,
{
    let tx = store.begin_write().await?;
    let Some(token) = refresh_token::Entity::find_by_id(p.hash.clone())
        .one(&tx)
        .await
        .map_err(db_err)?
    else {
        return Ok(Refreshed::Invalid);
    };
    let Some(sess) = session::Entity::find_by_id(token.session_id.clone())
        .one(&tx)
        .await
        .map_err(db_err)?
    else {
        return Ok(Refreshed::Invalid);
    };
    if sess.revoked_at.is_some() || sess.expires_at <= p.now {
        return Ok(Refreshed::Invalid);
    }
    if token.used_at.is_some() {
        return reused(tx, meta, &sess, p.now).await;
    }
    if token.expires_at <= p.now {
        return Ok(Refreshed::Invalid);
    }
    let won = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(p.now))
        .filter(refresh_token::Column::TokenHash.eq(&p.hash))
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(&tx)
        .await
        .map_err(db_err)?
        .rows_affected
        == 1;
    if !won {
        return reused(tx, meta, &sess, p.now).await;
    }
    insert_refresh(
        &tx,
        &sess.id,
        p.new_hash.clone(),
        p.now,
        (p.now + p.refresh_ttl_ms).min(sess.expires_at),
    )
    .await?;
    session::Entity::update_many()
        .col_expr(session::Column::LastUsedAt, Expr::value(p.now))
        .filter(session::Column::Id.eq(&sess.id))
        .exec(&tx)
        .await
        .map_err(db_err)?;
    let Some(user) = users::find_by_id(&tx, &sess.user_id).await? else {
        return Ok(Refreshed::Invalid);
    };
    let orgs = memberships::token_orgs(
        &tx,
        &user.id,
        user.platform_admin,
        &sess.id,
        p.only_org.as_deref(),
    )
    .await?;
    let issued = issue(&user, orgs, &sess.id, &sess.amr)?;
    tx.commit().await?;
    Ok(Refreshed::Issued(issued))
}

/// A reused token's session: revoked, with its revocation event and
/// `session.revoked`, committed.
async fn reused<T>(
    tx: WriteTx,
    meta: &RequestMeta,
    sess: &session::Model,
    now: i64,
) -> Result<Refreshed<T>, DomainError> {
    // A racing call (RevokeSession, Logout) ended it since `classify` read
    // it (no lock on PostgreSQL): it has its one event already.
    if !revoke(&tx, &sess.id, "refresh_token_reused", now).await? {
        return Ok(Refreshed::Reused);
    }
    revocations::record(
        &tx,
        revocations::Scope::session(&sess.user_id, &sess.id),
        "session_revoked",
        now,
    )
    .await?;
    let actor = users::find_by_id(&tx, &sess.user_id)
        .await?
        .map(|u| actor_of(&u))
        .unwrap_or(Actor::Anonymous);
    audit::record(
        &tx,
        meta,
        AuditEntry::new(actor, "session.revoked", "session", &sess.id)
            .details(json!({"reason": "refresh_token_reused"})),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Refreshed::Reused)
}
