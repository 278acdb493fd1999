//! Accounts (R11, R12, R14): rows converted to [`User`] here, and every
//! change written together with its audit event (R19) and, where it ends
//! access, its sessions' revocation (R21) and a revocation event (R16).

use super::audit::{self, Actor, AuditEntry, RequestMeta};
use super::entity::{membership, user};
use super::revocations::{self, Scope};
use super::{db_err, memberships, sessions, taken};
use crate::domain::error::reason;
use crate::domain::user::StoredStatus;
use crate::domain::{Caller, DomainError};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, Set, Statement, Unchanged, UpdateMany,
};
use serde_json::json;

pub use crate::domain::user::{NewUser, ProfileChanges, User};

/// A row whose status is no known text is refused, not read as active.
impl TryFrom<user::Model> for User {
    type Error = DomainError;

    fn try_from(m: user::Model) -> Result<Self, DomainError> {
        let status = StoredStatus::from_stored(&m.status).ok_or_else(|| {
            DomainError::internal(format!("user {} has unknown status {:?}", m.id, m.status))
        })?;
        Ok(User {
            id: m.id,
            email: m.email,
            name: m.name,
            name_lower: m.name_lower,
            phone: m.phone,
            avatar_url: m.avatar_url,
            password_hash: m.password_hash,
            status,
            platform_admin: m.platform_admin,
            failed_login_count: m.failed_login_count,
            locked_until: m.locked_until,
            created_at: m.created_at,
            updated_at: m.updated_at,
            email_verified: m.email_verified,
        })
    }
}

fn one(row: Result<Option<user::Model>, sea_orm::DbErr>) -> Result<Option<User>, DomainError> {
    row.map_err(db_err)?.map(User::try_from).transpose()
}

/// The revocation scope of everything a user holds.
pub async fn create<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    new: NewUser,
    now: i64,
) -> Result<User, DomainError> {
    let id = uuid::Uuid::now_v7().to_string();
    let model = user::ActiveModel {
        id: Set(id.clone()),
        email: Set(new.email.clone()),
        name_lower: Set(new.name.to_lowercase()),
        name: Set(new.name.clone()),
        phone: Set(None),
        avatar_url: Set(None),
        password_hash: Set(new.password_hash),
        status: Set(StoredStatus::Active.as_str().to_string()),
        platform_admin: Set(new.platform_admin),
        failed_login_count: Set(0),
        locked_until: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        email_verified: Set(new.email_verified),
    }
    .insert(conn)
    .await
    .map_err(taken(
        reason::EMAIL_TAKEN,
        "an account with this email already exists",
    ))?;
    let user = User::try_from(model)?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.created", "user", &id).details(json!({
            "after": {"email": new.email, "name": new.name, "platform_admin": new.platform_admin, "email_verified": new.email_verified}
        })),
        now,
    )
    .await?;
    Ok(user)
}

pub async fn find_by_email<C: ConnectionTrait>(
    conn: &C,
    email: &str,
) -> Result<Option<User>, DomainError> {
    one(user::Entity::find()
        .filter(user::Column::Email.eq(email))
        .one(conn)
        .await)
}

pub async fn find_by_id<C: ConnectionTrait>(
    conn: &C,
    id: &str,
) -> Result<Option<User>, DomainError> {
    one(user::Entity::find_by_id(id.to_string()).one(conn).await)
}

/// The user row, locked until the end of the transaction on PostgreSQL
/// (SQLite write transactions are already serialised by `begin_write`).
pub async fn lock<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<User>, DomainError> {
    let mut q = user::Entity::find_by_id(id.to_string());
    if conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        q = sea_orm::QuerySelect::lock_exclusive(q);
    }
    one(q.one(conn).await)
}

/// Marks the address proven; true if this call changed it.
pub async fn mark_email_verified<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    now: i64,
) -> Result<bool, DomainError> {
    let n = user::Entity::update_many()
        .col_expr(user::Column::EmailVerified, Expr::value(true))
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
        .filter(user::Column::Id.eq(id))
        .filter(user::Column::EmailVerified.eq(false))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    Ok(n == 1)
}

pub async fn platform_admin_exists<C: ConnectionTrait>(conn: &C) -> Result<bool, DomainError> {
    let n = user::Entity::find()
        .filter(user::Column::PlatformAdmin.eq(true))
        .count(conn)
        .await
        .map_err(db_err)?;
    Ok(n > 0)
}

/// Ids of the active PlatformAdmins, locked for the rest of the transaction
/// (PostgreSQL: `FOR NO KEY UPDATE` in id order, so two transactions that
/// would each remove one of the last two queue instead of both deciding on
/// the old set, and cannot deadlock; the second re-reads the rows the first
/// changed. SQLite: `begin_write` already serialises writers). Every change
/// that can shrink the set calls this before deciding.
pub async fn lock_active_platform_admins<C: ConnectionTrait>(
    conn: &C,
) -> Result<Vec<String>, DomainError> {
    use sea_orm::sea_query::LockType;
    use sea_orm::{DatabaseBackend, QueryOrder, QuerySelect};
    let mut q = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::PlatformAdmin.eq(true))
        .filter(user::Column::Status.eq(StoredStatus::Active.as_str()))
        .order_by_asc(user::Column::Id);
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock(LockType::NoKeyUpdate);
    }
    q.into_tuple::<String>().all(conn).await.map_err(db_err)
}

/// Password attempts admitted and not finished (`reserve_login_attempt`);
/// not in the entity: only the lockout statements here read it.
fn pending() -> sea_orm::sea_query::Alias {
    sea_orm::sea_query::Alias::new("login_attempts_pending")
}

/// The statement `pg` for the backend of `conn`: `$n` placeholders for
/// PostgreSQL, `?n` for SQLite.
fn statement<C: ConnectionTrait, const N: usize>(
    conn: &C,
    pg: &'static str,
    values: [sea_orm::Value; N],
) -> Statement {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Postgres => pg.to_string(),
        _ => pg.replace('$', "?"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Reserves one password attempt for the account, before its password is
/// hashed: one conditional UPDATE that only matches an active, unlocked
/// account whose failures plus pending attempts are under `threshold`, and
/// holds a slot (`login_attempts_pending`). Parallel attempts therefore
/// cannot evaluate more than `threshold` wrong passwords before the lock:
/// the row is the arbiter, on both backends. `finish_login` or `fail_login`
/// gives the slot back. A slot whose request never finishes (crash,
/// cancelled call) stays held: fail closed. Once every slot is held so, the
/// account is refused until the latest reservation is older than
/// `stale_before` (now minus the lockout duration); then the dead slots are
/// dropped.
///
/// `None` for an unknown, inactive, locked or full account: the caller
/// cannot tell them apart and must not evaluate the password. The same
/// single statement runs for known and unknown emails (no timing oracle).
pub async fn reserve_login_attempt<C: ConnectionTrait>(
    conn: &C,
    email: &str,
    threshold: i32,
    now: i64,
    stale_before: i64,
) -> Result<Option<User>, DomainError> {
    reserve_attempt(conn, AttemptKey::Email(email), threshold, now, stale_before).await
}

/// `reserve_login_attempt` for a second-factor code (R30): the same
/// conditional UPDATE on the same counters, by account id, so wrong codes
/// and wrong passwords share one lockout and one bound under parallel
/// attempts. None for an inactive, locked, full or deleted account.
pub async fn reserve_factor_attempt<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    threshold: i32,
    now: i64,
    stale_before: i64,
) -> Result<Option<User>, DomainError> {
    reserve_attempt(conn, AttemptKey::Id(user_id), threshold, now, stale_before).await
}

/// Which account a reservation counts on.
enum AttemptKey<'a> {
    Email(&'a str),
    Id(&'a str),
}

/// The one conditional UPDATE behind both reservations.
async fn reserve_attempt<C: ConnectionTrait>(
    conn: &C,
    key: AttemptKey<'_>,
    threshold: i32,
    now: i64,
    stale_before: i64,
) -> Result<Option<User>, DomainError> {
    macro_rules! reserve {
        ($column:literal) => {
            concat!(
                "UPDATE users SET \
                 login_attempts_pending = CASE WHEN last_login_attempt_at IS NULL \
                   OR last_login_attempt_at <= $4 THEN 1 ELSE login_attempts_pending + 1 END, \
                 last_login_attempt_at = $2 WHERE ",
                $column,
                " = $1 AND status = $5 \
                 AND (locked_until IS NULL OR locked_until <= $2) \
                 AND (failed_login_count + login_attempts_pending < $3 \
                   OR last_login_attempt_at IS NULL OR last_login_attempt_at <= $4) \
                 RETURNING *"
            )
        };
    }
    let sql = match key {
        AttemptKey::Email(_) => reserve!("email"),
        AttemptKey::Id(_) => reserve!("id"),
    };
    let (AttemptKey::Email(k) | AttemptKey::Id(k)) = key;
    let stmt = statement(
        conn,
        sql,
        [
            k.into(),
            now.into(),
            threshold.into(),
            stale_before.into(),
            StoredStatus::Active.as_str().into(),
        ],
    );
    let row = conn.query_one_raw(stmt).await.map_err(db_err)?;
    one(row
        .map(|r| user::Model::from_query_result(&r, ""))
        .transpose())
}

/// The right password of an account with a second factor (R30): gives the
/// attempt's slot back WITHOUT clearing the failure count (only a right
/// code does, in `finish_login`), so logging in again cannot reset the
/// count of wrong codes. Conditional like `finish_login`.
pub async fn pass_password<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    verified_hash: &str,
    now: i64,
) -> Result<bool, DomainError> {
    const SQL: &str = "UPDATE users SET \
         login_attempts_pending = CASE WHEN login_attempts_pending > 0 \
           THEN login_attempts_pending - 1 ELSE 0 END \
         WHERE id = $1 AND status = $3 AND (locked_until IS NULL OR locked_until <= $2) \
         AND password_hash = $4";
    let stmt = statement(
        conn,
        SQL,
        [
            user_id.into(),
            now.into(),
            StoredStatus::Active.as_str().into(),
            verified_hash.into(),
        ],
    );
    let res = conn.execute_raw(stmt).await.map_err(db_err)?;
    Ok(res.rows_affected() == 1)
}

/// How a failed attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Admitted and the password was wrong: counts, may lock.
    WrongPassword,
    /// Admitted, password right, but the account was locked (or deactivated)
    /// meanwhile: gives the slot back, counts nothing.
    RefusedAfterCheck,
    /// Not admitted (unknown, inactive, locked or full account).
    Refused,
}

/// Completes a failed attempt inside the caller's transaction: gives its
/// slot back, counts an evaluated wrong password while the account is
/// unlocked, and locks the account (for `lock_ms`, the count restarting)
/// when that count reaches `threshold`. Every kind of failure, for known and
/// unknown emails, runs the very same two statements (the parameters make
/// the no-op ones change nothing), so a failure costs the same database work
/// whatever the account (no timing oracle). True when this attempt locked it.
pub async fn fail_login<C: ConnectionTrait>(
    conn: &C,
    email: &str,
    failure: Failure,
    threshold: i32,
    lock_ms: i64,
    now: i64,
) -> Result<bool, DomainError> {
    const COUNT: &str = "UPDATE users SET \
         failed_login_count = CASE WHEN locked_until IS NULL OR locked_until <= $2 \
           THEN failed_login_count + $3 ELSE failed_login_count END, \
         login_attempts_pending = CASE WHEN login_attempts_pending >= $4 \
           THEN login_attempts_pending - $4 ELSE 0 END \
         WHERE email = $1";
    const LOCK: &str = "UPDATE users SET locked_until = $4, failed_login_count = 0 \
         WHERE email = $1 AND failed_login_count >= $2 \
         AND (locked_until IS NULL OR locked_until <= $3)";
    let (counts, held) = match failure {
        Failure::WrongPassword => (1, 1),
        Failure::RefusedAfterCheck => (0, 1),
        Failure::Refused => (0, 0),
    };
    conn.execute_raw(statement(
        conn,
        COUNT,
        [email.into(), now.into(), counts.into(), held.into()],
    ))
    .await
    .map_err(db_err)?;
    let lock_at = if counts == 1 { threshold } else { i32::MAX };
    let locked = conn
        .execute_raw(statement(
            conn,
            LOCK,
            [
                email.into(),
                lock_at.into(),
                now.into(),
                (now + lock_ms).into(),
            ],
        ))
        .await
        .map_err(db_err)?;
    Ok(locked.rows_affected() == 1)
}

/// The success half of a reserved attempt, in the transaction that acts on
/// it: gives the slot back and clears the count, only if the account is
/// still active and unlocked at this instant. False (nothing written) means
/// a parallel attempt locked it (or it was deactivated) after the
/// reservation: the caller must refuse (`Failure::RefusedAfterCheck`).
pub async fn finish_login<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    verified_hash: &str,
    now: i64,
) -> Result<bool, DomainError> {
    // `password_hash = $4`: the password was checked against a hash read
    // before this transaction; a ChangePassword or ResetPassword committed
    // since then must win, or a login with the old password would open a
    // session the change never revoked. A deleted account matches no row.
    const SQL: &str = "UPDATE users SET failed_login_count = 0, locked_until = NULL, \
         login_attempts_pending = CASE WHEN login_attempts_pending > 0 \
           THEN login_attempts_pending - 1 ELSE 0 END \
         WHERE id = $1 AND status = $3 AND (locked_until IS NULL OR locked_until <= $2) \
         AND password_hash = $4";
    let stmt = statement(
        conn,
        SQL,
        [
            user_id.into(),
            now.into(),
            StoredStatus::Active.as_str().into(),
            verified_hash.into(),
        ],
    );
    let res = conn.execute_raw(stmt).await.map_err(db_err)?;
    Ok(res.rows_affected() == 1)
}

/// Gives back the slot of an admitted attempt that ended in an error
/// unrelated to the password (nothing counted).
pub async fn release_attempt<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
) -> Result<(), DomainError> {
    const SQL: &str = "UPDATE users SET login_attempts_pending = \
         CASE WHEN login_attempts_pending > 0 THEN login_attempts_pending - 1 ELSE 0 END \
         WHERE id = $1";
    conn.execute_raw(statement(conn, SQL, [user_id.into()]))
        .await
        .map_err(db_err)?;
    Ok(())
}

/// UnlockUser (R12): clears the failures, the lock and any slots held by
/// attempts that never finished, and audits the lockout as it was.
pub async fn unlock<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &User,
    now: i64,
) -> Result<(), DomainError> {
    user::Entity::update_many()
        .col_expr(user::Column::FailedLoginCount, Expr::value(0))
        .col_expr(user::Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(pending(), Expr::value(0))
        .filter(user::Column::Id.eq(&before.id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.unlocked", "user", &before.id).details(json!({
            "before": {"failed_login_count": before.failed_login_count, "locked_until": before.locked_until}
        })),
        now,
    )
    .await
}

fn profile(u: &User) -> serde_json::Value {
    json!({"name": u.name, "phone": u.phone, "avatar_url": u.avatar_url})
}

pub async fn update_profile<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: User,
    changes: ProfileChanges,
    now: i64,
) -> Result<User, DomainError> {
    let mut am = user::ActiveModel {
        id: Unchanged(before.id.clone()),
        ..Default::default()
    };
    if let Some(n) = changes.name {
        am.name_lower = Set(n.to_lowercase());
        am.name = Set(n);
    }
    if let Some(p) = changes.phone {
        am.phone = Set(p);
    }
    if let Some(a) = changes.avatar_url {
        am.avatar_url = Set(a);
    }
    am.updated_at = Set(now);
    let after = User::try_from(am.update(conn).await.map_err(db_err)?)?;
    if after.name_lower != before.name_lower {
        // Keep member search's copy in step (same transaction).
        membership::Entity::update_many()
            .col_expr(
                membership::Column::NameLower,
                Expr::value(after.name_lower.clone()),
            )
            .filter(membership::Column::UserId.eq(after.id.clone()))
            .exec(conn)
            .await
            .map_err(db_err)?;
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.updated", "user", &after.id)
            .details(json!({"before": profile(&before), "after": profile(&after)})),
        now,
    )
    .await?;
    Ok(after)
}

/// A new password hash for the account, clearing any lockout (R12: a
/// password reset also unlocks).
fn new_password(user_id: &str, password_hash: String, now: i64) -> UpdateMany<user::Entity> {
    user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::value(password_hash))
        .col_expr(user::Column::FailedLoginCount, Expr::value(0))
        .col_expr(user::Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(pending(), Expr::value(0))
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
        .filter(user::Column::Id.eq(user_id))
}

/// Sets a new password hash and clears any lockout.
pub async fn set_password<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    password_hash: String,
    now: i64,
) -> Result<(), DomainError> {
    new_password(user_id, password_hash, now)
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// ChangePassword (R14): the new hash, only while the stored one is still
/// `verified` (the one the caller checked); then every session but the
/// caller's ends (R21) and the change is audited. False, with nothing written, when
/// the password changed meanwhile.
pub async fn change_password<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    caller: &Caller,
    user_id: &str,
    verified: &str,
    password_hash: String,
    now: i64,
) -> Result<bool, DomainError> {
    let res = new_password(user_id, password_hash, now)
        .filter(user::Column::PasswordHash.eq(verified))
        .exec(conn)
        .await
        .map_err(db_err)?;
    if res.rows_affected != 1 {
        return Ok(false);
    }
    let keep = caller.session_id.as_deref();
    let revoked =
        sessions::revoke_all_for_user(conn, user_id, keep, "password_changed", now).await?;
    revocations::record(conn, Scope::user(user_id), "password_changed", now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(caller.actor(), "user.password_changed", "user", user_id)
            .details(json!({"other_sessions_revoked": revoked})),
        now,
    )
    .await?;
    Ok(true)
}

/// Whether the account's password hash is still `expected`, holding the row
/// (PostgreSQL `FOR UPDATE`; SQLite's writer is already exclusive) so it
/// cannot change before the transaction ends.
pub async fn holds_password<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    expected: &str,
) -> Result<bool, DomainError> {
    use sea_orm::QuerySelect;
    let mut q = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Id.eq(user_id))
        .filter(user::Column::PasswordHash.eq(expected));
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    Ok(q.into_tuple::<String>()
        .one(conn)
        .await
        .map_err(db_err)?
        .is_some())
}

/// Sets one column of the account `user_id`, and its `updated_at`.
async fn set_column<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    column: user::Column,
    value: impl Into<sea_orm::Value>,
    now: i64,
) -> Result<(), DomainError> {
    user::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .col_expr(user::Column::UpdatedAt, Expr::value(now))
        .filter(user::Column::Id.eq(user_id))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn set_status<C: ConnectionTrait>(
    conn: &C,
    user_id: &str,
    status: StoredStatus,
    now: i64,
) -> Result<(), DomainError> {
    set_column(conn, user_id, user::Column::Status, status.as_str(), now).await
}

/// ReactivateUser (R11).
pub async fn reactivate<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    set_status(conn, user_id, StoredStatus::Active, now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.reactivated", "user", user_id),
        now,
    )
    .await
}

/// DeactivateUser (R11): the account's sessions end at once (R21).
pub async fn deactivate<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user_id: &str,
    now: i64,
) -> Result<(), DomainError> {
    set_status(conn, user_id, StoredStatus::Inactive, now).await?;
    let revoked = sessions::revoke_all_for_user(conn, user_id, None, "deactivated", now).await?;
    revocations::record(conn, Scope::user(user_id), "deactivated", now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.deactivated", "user", user_id)
            .details(json!({"sessions_revoked": revoked})),
        now,
    )
    .await
}

/// SetPlatformAdmin (R3): revoking the flag is a revocation event (R16).
pub async fn set_platform_admin<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    before: &User,
    platform_admin: bool,
    now: i64,
) -> Result<(), DomainError> {
    let column = user::Column::PlatformAdmin;
    set_column(conn, &before.id, column, platform_admin, now).await?;
    if !platform_admin {
        revocations::record(conn, Scope::user(&before.id), "platform_admin_revoked", now).await?;
    }
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.platform_admin_changed", "user", &before.id).details(json!({
            "before": {"platform_admin": before.platform_admin},
            "after": {"platform_admin": platform_admin}
        })),
        now,
    )
    .await
}

/// Deletes the account for good (R11, R14): first each of its memberships,
/// audited and revoked one by one; then the row, whose sessions, join
/// requests and reset tokens go with it (ON DELETE CASCADE); then a
/// revocation event. Audit events stay, with the email as it was.
pub async fn delete<C: ConnectionTrait>(
    conn: &C,
    meta: &RequestMeta,
    actor: Actor,
    user: &User,
    now: i64,
) -> Result<(), DomainError> {
    memberships::remove_all_for_deleted_account(conn, meta, actor.clone(), &user.id, now).await?;
    audit::record(
        conn,
        meta,
        AuditEntry::new(actor, "user.deleted", "user", &user.id).details(json!({
            "before": {"email": user.email, "name": user.name, "platform_admin": user.platform_admin}
        })),
        now,
    )
    .await?;
    user::Entity::delete_by_id(user.id.clone())
        .exec(conn)
        .await
        .map_err(db_err)?;
    revocations::record(conn, Scope::user(&user.id), "deleted", now).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    Email,
    Name,
    CreateTime,
}

pub struct UserQuery<'a> {
    pub query: &'a str,
    pub status: Option<super::memberships::StatusFilter>,
    pub platform_admin: Option<bool>,
    pub order: UserOrder,
    pub descending: bool,
    pub after: Option<Vec<serde_json::Value>>,
    pub limit: u64,
    pub now: i64,
}

impl UserOrder {
    pub fn key(self, u: &User) -> serde_json::Value {
        match self {
            UserOrder::Email => json!(u.email),
            UserOrder::Name => json!(u.name_lower),
            UserOrder::CreateTime => json!(u.created_at),
        }
    }
}

/// "All Users": one page and the total, with the same search, sort, filter
/// and keyset pagination as ListMembers.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    q: UserQuery<'_>,
) -> Result<(Vec<User>, u64), DomainError> {
    use sea_orm::{QueryOrder, QuerySelect};
    let mut cond = super::memberships::user_search_conditions(q.query, q.status, q.now);
    if let Some(pa) = q.platform_admin {
        cond = cond.add(Expr::col((user::Entity, user::Column::PlatformAdmin)).eq(pa));
    }
    let total = user::Entity::find()
        .filter(cond.clone())
        .count(conn)
        .await
        .map_err(db_err)?;
    let key_col = match q.order {
        UserOrder::Email => user::Column::Email,
        UserOrder::Name => user::Column::NameLower,
        UserOrder::CreateTime => user::Column::CreatedAt,
    };
    if let Some(after) = q.after {
        let mut it = after.into_iter();
        let k = it.next().unwrap_or(serde_json::Value::Null);
        let i = it
            .next()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        cond = cond.add(super::keyset::keyset_after(
            Expr::col((user::Entity, key_col)),
            Expr::col((user::Entity, user::Column::Id)),
            k,
            i,
            q.descending,
        ));
    }
    let mut select = user::Entity::find().filter(cond);
    select = if q.descending {
        select
            .order_by_desc(key_col)
            .order_by_desc(user::Column::Id)
    } else {
        select.order_by_asc(key_col).order_by_asc(user::Column::Id)
    };
    let rows = select.limit(q.limit).all(conn).await.map_err(db_err)?;
    let rows = rows
        .into_iter()
        .map(User::try_from)
        .collect::<Result<_, _>>()?;
    Ok((rows, total))
}
