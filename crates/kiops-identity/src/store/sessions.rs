//! Login sessions and their rotating refresh tokens (R15).

use super::db_err;
use super::entity::{refresh_token, session, user};
use crate::domain::DomainError;
use kiops_token::OrgClaims;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult,
    QueryFilter, Set, Statement,
};
use std::collections::BTreeMap;

pub use session::Model as Session;

pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub refresh_hash: String,
    pub now: i64,
    pub session_ttl_ms: i64,
    pub refresh_ttl_ms: i64,
}

pub async fn create<C: ConnectionTrait>(
    conn: &C,
    s: NewSession<'_>,
) -> Result<Session, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let model = session::ActiveModel {
        id: Set(id.clone()),
        user_id: Set(s.user_id.to_string()),
        created_at: Set(s.now),
        last_used_at: Set(s.now),
        expires_at: Set(s.now + s.session_ttl_ms),
        revoked_at: Set(None),
        revoke_reason: Set(None),
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    insert_refresh(
        conn,
        &id,
        s.refresh_hash,
        s.now,
        (s.now + s.refresh_ttl_ms).min(model.expires_at),
    )
    .await?;
    Ok(model)
}

async fn insert_refresh<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
    hash: String,
    now: i64,
    expires_at: i64,
) -> Result<(), DomainError> {
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        token_hash: Set(hash),
        session_id: Set(session_id.to_string()),
        created_at: Set(now),
        expires_at: Set(expires_at),
        used_at: Set(None),
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current; `session` continues with the new token.
    Rotated { session: Session },
    /// The token had already been rotated (or raced with itself): it leaked,
    /// and the whole session has now been revoked.
    Reused { session: Session },
    /// Unknown, expired, or of a revoked or expired session.
    Invalid,
}

/// Classifies `presented_hash` and rotates it to `new_hash` if it is current,
/// inside the caller's write transaction. The conditional UPDATE on `used_at IS NULL` makes the token
/// single-use even when two requests present it at once.
pub async fn rotate<C: ConnectionTrait>(
    conn: &C,
    presented_hash: &str,
    new_hash: String,
    now: i64,
    refresh_ttl_ms: i64,
) -> Result<Rotation, DomainError> {
    // The common case (a current token of a live session) is taken by
    // `refresh_candidate` + `claim_candidate` before this runs; what arrives
    // here is unusual (unknown, used, expired, revoked) or lost a race, and
    // is classified.
    let Some(token) = refresh_token::Entity::find_by_id(presented_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(Rotation::Invalid);
    };
    let Some(sess) = session::Entity::find_by_id(token.session_id.clone())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(Rotation::Invalid);
    };
    if sess.revoked_at.is_some() || sess.expires_at <= now {
        return Ok(Rotation::Invalid);
    }
    if token.used_at.is_some() {
        revoke(conn, &sess.id, "refresh_token_reused", now).await?;
        return Ok(Rotation::Reused { session: sess });
    }
    if token.expires_at <= now {
        return Ok(Rotation::Invalid);
    }
    let won = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::UsedAt, Expr::value(now))
        .filter(refresh_token::Column::TokenHash.eq(presented_hash))
        .filter(refresh_token::Column::UsedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected
        == 1;
    if !won {
        revoke(conn, &sess.id, "refresh_token_reused", now).await?;
        return Ok(Rotation::Reused { session: sess });
    }
    insert_refresh(
        conn,
        &sess.id,
        new_hash,
        now,
        (now + refresh_ttl_ms).min(sess.expires_at),
    )
    .await?;
    session::Entity::update_many()
        .col_expr(session::Column::LastUsedAt, Expr::value(now))
        .filter(session::Column::Id.eq(&sess.id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(Rotation::Rotated { session: sess })
}

/// A refresh token that looked current when read outside any transaction:
/// its session (live then), that session's user, and the user's memberships
/// as token claims (only `only_org`'s when a scoped token is asked for).
#[derive(Debug)]
pub struct RefreshCandidate {
    pub session_id: String,
    pub session_expires_at: i64,
    pub user: user::Model,
    pub orgs: BTreeMap<String, OrgClaims>,
}

/// One row per membership (user columns repeated; people have a handful),
/// or one row with NULL membership columns. Shared with the inline SQLite
/// path (`sqlite_direct`).
pub(super) const REFRESH_CANDIDATE_SQL: &str = "SELECT s.id AS rotating_session_id, \
     s.expires_at AS rotating_session_expires_at, \
     m.organization_id AS member_org, m.role AS member_role, \
     m.permissions AS member_permissions, u.* \
     FROM refresh_tokens r \
     JOIN sessions s ON s.id = r.session_id \
     JOIN users u ON u.id = s.user_id \
     LEFT JOIN memberships m ON m.user_id = u.id \
       AND (CAST($3 AS TEXT) IS NULL OR m.organization_id = $3) \
     WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > $2 \
     AND s.revoked_at IS NULL AND s.expires_at > $2";

/// Reads what a refresh needs, in one query, before anything is written. A
/// profile of the refresh benchmark was half context switches between tokio
/// and SQLite's worker threads (one pair per statement), and on SQLite every
/// write holds the single writer connection: so the reads happen here, on
/// the shared pool (on SQLite inline, see `Store::refresh_candidate`), and
/// the write is one call (`claim_candidate`). `None`
/// when anything is unusual (unknown, used, expired, revoked); the caller
/// then takes the classifying path, which also detects reuse. Nothing read
/// here is trusted on its own: `claim_candidate` re-checks as it writes.
pub async fn refresh_candidate<C: ConnectionTrait>(
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
    let user = user::Model::from_query_result(first, "").map_err(db_err)?;
    let mut memberships = Vec::new();
    for row in &rows {
        let org: Option<String> = row.try_get("", "member_org").map_err(db_err)?;
        if let Some(org) = org {
            let role: String = row.try_get("", "member_role").map_err(db_err)?;
            let perms: i32 = row.try_get("", "member_permissions").map_err(db_err)?;
            memberships.push((org, role, perms));
        }
    }
    Ok(Some(RefreshCandidate {
        session_id: first.try_get("", "rotating_session_id").map_err(db_err)?,
        session_expires_at: first
            .try_get("", "rotating_session_expires_at")
            .map_err(db_err)?,
        orgs: super::memberships::org_claims(user.platform_admin, memberships),
        user,
    }))
}

/// Uses the presented token of `candidate` and stores its successor, in one
/// database call: the token must still be unused and unexpired and its
/// session still live at `now`, checked by the write itself, so a concurrent
/// use, logout or revocation since `refresh_candidate` makes this return
/// false and change nothing.
pub async fn claim_candidate(
    store: &super::Store,
    presented_hash: &str,
    candidate: &RefreshCandidate,
    new_hash: String,
    now: i64,
    refresh_ttl_ms: i64,
) -> Result<bool, DomainError> {
    let expires = (now + refresh_ttl_ms).min(candidate.session_expires_at);
    if let Some(claims) = store.claims() {
        // SQLite: with whatever other rotations are waiting (`claim_batch`).
        return claims
            .claim(super::claim_batch::Claim {
                presented_hash: presented_hash.to_string(),
                session_id: candidate.session_id.clone(),
                now,
                new_hash,
                expires,
            })
            .await;
    }
    let conn = store.writer();
    let backend = conn.get_database_backend();
    if backend == DatabaseBackend::Sqlite {
        // An in-memory database has no file for the batcher to open: the
        // caller's classifying path rotates in a transaction of its own.
        return Ok(false);
    }
    // One statement, atomic by itself; the session row lock orders it
    // against a concurrent revocation.
    let stmt = Statement::from_sql_and_values(
        backend,
        "WITH live AS (SELECT id FROM sessions \
           WHERE id = $2 AND revoked_at IS NULL AND expires_at > $3 FOR UPDATE), \
         claimed AS (UPDATE refresh_tokens SET used_at = $3 \
           WHERE token_hash = $1 AND session_id IN (SELECT id FROM live) \
           AND used_at IS NULL AND expires_at > $3 RETURNING session_id), \
         touched AS (UPDATE sessions SET last_used_at = $3 \
           WHERE id IN (SELECT session_id FROM claimed) RETURNING id) \
         INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at, used_at) \
         SELECT $4, id, $3, $5, NULL FROM touched",
        [
            presented_hash.into(),
            candidate.session_id.clone().into(),
            now.into(),
            new_hash.into(),
            expires.into(),
        ],
    );
    let changed = conn
        .execute_raw(stmt)
        .await
        .map_err(db_err)?
        .rows_affected();
    Ok(changed == 1)
}

/// The live session a refresh token belongs to, without using it (Logout).
pub async fn find_by_refresh<C: ConnectionTrait>(
    conn: &C,
    presented_hash: &str,
) -> Result<Option<Session>, DomainError> {
    let Some(token) = refresh_token::Entity::find_by_id(presented_hash.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let sess = session::Entity::find_by_id(token.session_id)
        .one(conn)
        .await
        .map_err(db_err)?;
    Ok(sess.filter(|s| s.revoked_at.is_none()))
}

/// Revokes one session; returns whether it was live.
pub async fn revoke<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
    reason: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(n > 0)
}

/// Revokes every live session of a user, optionally sparing one.
pub async fn revoke_all_for_user<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    except_session: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<u64, DomainError> {
    let mut q = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(now))
        .col_expr(session::Column::RevokeReason, Expr::value(reason))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = except_session {
        q = q.filter(session::Column::Id.ne(keep));
    }
    Ok(q.exec(conn).await.map_err(db_err)?.rows_affected)
}
