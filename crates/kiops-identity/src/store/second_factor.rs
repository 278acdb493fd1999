//! The facts R31 (a required second factor) decides on: which
//! organizations require one, whether the platform requires one of
//! PlatformAdmins, which sessions hold one; and the policy changes, each
//! with its audit event and revocations in the caller's transaction.

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{organization, platform_settings, session, user};
use super::{db_err, revocations};
use crate::domain::second_factor::{amr_has_second_factor, REVOCATION_REASON};
use crate::domain::DomainError;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QuerySelect,
};
use serde_json::json;
use std::collections::HashSet;

/// The one row of `platform_settings`.
const PLATFORM_ROW: i32 = 1;

/// Whether the platform requires a second factor of PlatformAdmins.
pub async fn platform_required<C: ConnectionTrait>(conn: &C) -> Result<bool, DomainError> {
    Ok(platform_settings::Entity::find_by_id(PLATFORM_ROW)
        .one(conn)
        .await
        .map_err(db_err)?
        .is_some_and(|r| r.platform_admin_second_factor_required))
}

/// The platform policy, its row locked until the end of the transaction on
/// PostgreSQL (SQLite's write transaction already is exclusive), so
/// parallel changes are serialized and each audits what it changed.
pub async fn lock_platform<C: ConnectionTrait>(conn: &C) -> Result<bool, DomainError> {
    let mut q = platform_settings::Entity::find_by_id(PLATFORM_ROW);
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    Ok(q.one(conn)
        .await
        .map_err(db_err)?
        .is_some_and(|r| r.platform_admin_second_factor_required))
}

/// Sets the platform policy (the row locked by `lock_platform`, which read
/// `before`). A change is audited (`platform.policy_changed`); turning it on
/// revokes every PlatformAdmin's tokens issued so far, so offline verifiers
/// drop the `pa` they carry (a session with a second factor just refreshes).
pub async fn set_platform<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: bool,
    after: bool,
    now: i64,
) -> Result<(), DomainError> {
    if before == after {
        return Ok(());
    }
    platform_settings::Entity::update_many()
        .col_expr(
            platform_settings::Column::PlatformAdminSecondFactorRequired,
            Expr::value(after),
        )
        .col_expr(platform_settings::Column::UpdatedAt, Expr::value(now))
        .filter(platform_settings::Column::Id.eq(PLATFORM_ROW))
        .exec(conn)
        .await
        .map_err(db_err)?;
    let mut revoked = 0u64;
    if after {
        let admins: Vec<String> = user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .filter(user::Column::PlatformAdmin.eq(true))
            .into_tuple()
            .all(conn)
            .await
            .map_err(db_err)?;
        for id in &admins {
            revocations::record(conn, revocations::Scope::user(id), REVOCATION_REASON, now).await?;
        }
        revoked = admins.len() as u64;
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "platform.policy_changed", "platform", "platform").details(json!({
            "before": {"platform_admin_second_factor_required": before},
            "after": {"platform_admin_second_factor_required": after},
            "platform_admins_revoked": revoked,
        })),
        now,
    )
    .await
}

/// Sets an organization's policy (its row locked by the caller). A change is
/// audited (`organization.second_factor_policy_changed`); turning it on
/// writes one revocation event for the organization (every user's tokens
/// issued so far that name it), so offline verifiers drop them; members
/// whose session holds a second factor just refresh.
pub async fn set_org<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    org: &str,
    before: bool,
    after: bool,
    now: i64,
) -> Result<(), DomainError> {
    if before == after {
        return Ok(());
    }
    organization::Entity::update_many()
        .col_expr(
            organization::Column::SecondFactorRequired,
            Expr::value(after),
        )
        .col_expr(organization::Column::UpdatedAt, Expr::value(now))
        .filter(organization::Column::Id.eq(org))
        .exec(conn)
        .await
        .map_err(db_err)?;
    if after {
        revocations::record(
            conn,
            revocations::Scope::membership("", org),
            REVOCATION_REASON,
            now,
        )
        .await?;
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(
            actor,
            "organization.second_factor_policy_changed",
            "organization",
            org,
        )
        .org(org)
        .details(json!({
            "before": {"second_factor_required": before},
            "after": {"second_factor_required": after},
        })),
        now,
    )
    .await
}

/// The organizations among `orgs` that require a second factor.
pub async fn orgs_requiring<C: ConnectionTrait>(
    conn: &C,
    orgs: &[&str],
) -> Result<HashSet<String>, DomainError> {
    if orgs.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<String> = organization::Entity::find()
        .select_only()
        .column(organization::Column::Id)
        .filter(organization::Column::Id.is_in(orgs.iter().copied()))
        .filter(organization::Column::SecondFactorRequired.eq(true))
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(ids.into_iter().collect())
}

/// A session's `amr` (empty when there is no such session).
pub async fn session_amr<C: ConnectionTrait>(
    conn: &C,
    session_id: &str,
) -> Result<String, DomainError> {
    Ok(session::Entity::find_by_id(session_id.to_string())
        .one(conn)
        .await
        .map_err(db_err)?
        .map(|s| s.amr)
        .unwrap_or_default())
}

/// What CheckPermission(s) needs of R31 beyond its one read: the
/// organizations asked about that require a second factor, the platform
/// policy, the users asked about who have a live session holding one, and
/// whether the asking session holds one.
#[derive(Debug, Default, Clone)]
pub struct GateFacts {
    pub platform_required: bool,
    pub orgs_requiring: HashSet<String>,
    pub users_with_second_factor: HashSet<String>,
    pub caller_session: bool,
}

impl GateFacts {
    pub fn org_required(&self, org: &str) -> bool {
        self.orgs_requiring.contains(org)
    }
}

/// Reads `GateFacts`; the sessions only when some policy is on.
pub async fn gate_facts<C: ConnectionTrait>(
    conn: &C,
    orgs: &[&str],
    users: &[&str],
    caller_session: Option<&str>,
    now: i64,
) -> Result<GateFacts, DomainError> {
    let mut g = GateFacts {
        platform_required: platform_required(conn).await?,
        orgs_requiring: orgs_requiring(conn, orgs).await?,
        ..GateFacts::default()
    };
    if !g.platform_required && g.orgs_requiring.is_empty() {
        return Ok(g);
    }
    let mut who = Condition::any().add(session::Column::UserId.is_in(users.iter().copied()));
    if let Some(sid) = caller_session {
        who = who.add(session::Column::Id.eq(sid));
    }
    let rows: Vec<(String, String, String)> = session::Entity::find()
        .select_only()
        .column(session::Column::Id)
        .column(session::Column::UserId)
        .column(session::Column::Amr)
        .filter(who)
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    for (id, user_id, amr) in rows {
        if !amr_has_second_factor(&amr) {
            continue;
        }
        if caller_session == Some(id.as_str()) {
            g.caller_session = true;
        }
        if users.contains(&user_id.as_str()) {
            g.users_with_second_factor.insert(user_id);
        }
    }
    Ok(g)
}
