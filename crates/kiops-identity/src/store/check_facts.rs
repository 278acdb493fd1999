//! CheckPermission's read (R16): the caller's current account, session and
//! role, and the subject's account and membership, in one round trip.
//!
//! CheckPermission sits on other services' request paths, so this is one
//! statement rather than the two or three reads the general path
//! (authenticate, then caller role, then facts) would take. This module is
//! the one definition of that read; the backends differ only in how it is
//! run (`Store::check_facts` picks the path; the batch worker,
//! `check_batch`, only queues and calls [`read_batch`]):
//! - SQLite file: inline on the calling thread (`sqlite_direct`), pinned to
//!   the covering indexes of migrations 4 and 5;
//! - PostgreSQL: many concurrent checks to a statement (`check_batch`),
//!   each (user, organization) and session read once;
//! - otherwise, or when the inline read hands back: the same single
//!   statement through the pool.
//!
//! Every form answers with [`CheckFacts`] in the same terms (tested below).

use super::memberships::parse_role;
use super::sqlite_direct::DirectReader;
use super::{db_err, DomainError};
use crate::domain::membership::{CallerState, CheckFacts, SubjectState};
use crate::domain::model::{SessionState, StoredStatus};
use sea_orm::sqlx::postgres::PgConnection;
use sea_orm::sqlx::{self, Row};
use sea_orm::{ConnectionTrait, DatabaseBackend, FromQueryResult, Statement};
use std::collections::HashMap;
use std::sync::LazyLock;

/// One check: who asks (with the session their token names), about whom,
/// in which organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckKey {
    pub caller_id: String,
    pub caller_session: String,
    pub subject_id: String,
    pub org: String,
}

/// The single-check statement. `sqlite` numbers parameters `?N` instead of
/// `$N`; `covering` pins each table to its covering index (SQLite's planner
/// prefers the primary keys' unique indexes, one row either way, and would
/// then read the wide table rows too). Should an index be missing,
/// preparing the pinned form fails and the pool answers.
fn single_sql(sqlite: bool, covering: bool) -> String {
    let p = |n: u8| {
        if sqlite {
            format!("?{n}")
        } else {
            format!("${n}")
        }
    };
    let table = |name: &str, alias: &str, index: &str| {
        if covering {
            format!("{name} {alias} INDEXED BY {index}")
        } else {
            format!("{name} {alias}")
        }
    };
    format!(
        "SELECT c.email AS caller_email, c.status AS caller_status, \
         c.platform_admin AS caller_platform_admin, cm.role AS caller_role, \
         s.id AS subject_exists, s.status AS subject_status, \
         s.platform_admin AS subject_platform_admin, sm.role AS subject_role, \
         sm.permissions AS subject_permissions, \
         cs.id AS caller_session_id, cs.revoked_at AS caller_session_revoked_at, \
         cs.expires_at AS caller_session_expires_at \
         FROM {users_c} \
         LEFT JOIN {memberships_cm} ON cm.organization_id = {org} AND cm.user_id = c.id \
         LEFT JOIN {sessions_cs} ON cs.id = {sid} AND cs.user_id = c.id \
         LEFT JOIN {users_s} ON s.id = {subject} \
         LEFT JOIN {memberships_sm} ON sm.organization_id = {org} AND sm.user_id = s.id \
         WHERE c.id = {caller}",
        users_c = table("users", "c", "users_access_facts_idx"),
        memberships_cm = table("memberships", "cm", "memberships_access_facts_idx"),
        sessions_cs = table("sessions", "cs", "sessions_access_facts_idx"),
        users_s = table("users", "s", "users_access_facts_idx"),
        memberships_sm = table("memberships", "sm", "memberships_access_facts_idx"),
        caller = p(1),
        subject = p(2),
        org = p(3),
        sid = p(4),
    )
}

static POSTGRES_SQL: LazyLock<String> = LazyLock::new(|| single_sql(false, false));
static SQLITE_SQL: LazyLock<String> = LazyLock::new(|| single_sql(true, false));
static INLINE_SQL: LazyLock<String> = LazyLock::new(|| single_sql(true, true));

/// The single statement's row, as read; decoded once by `From`.
#[derive(Debug, Clone, FromQueryResult)]
struct FactsRow {
    caller_email: String,
    caller_status: String,
    caller_platform_admin: bool,
    caller_role: Option<String>,
    subject_exists: Option<String>,
    subject_status: Option<String>,
    subject_platform_admin: Option<bool>,
    subject_role: Option<String>,
    subject_permissions: Option<i32>,
    caller_session_id: Option<String>,
    caller_session_revoked_at: Option<i64>,
    caller_session_expires_at: Option<i64>,
}

impl From<FactsRow> for CheckFacts {
    fn from(r: FactsRow) -> Self {
        let subject = match (r.subject_exists, r.subject_status) {
            (Some(_), Some(status)) => Some(SubjectState {
                status: StoredStatus::parse(&status),
                platform_admin: r.subject_platform_admin.unwrap_or(false),
                role: r.subject_role.as_deref().map(parse_role),
                permissions: r.subject_permissions.unwrap_or(0) as u8,
            }),
            _ => None,
        };
        CheckFacts {
            caller: CallerState {
                email: r.caller_email,
                status: StoredStatus::parse(&r.caller_status),
                platform_admin: r.caller_platform_admin,
                session: SessionState {
                    found: r.caller_session_id.is_some(),
                    revoked_at_ms: r.caller_session_revoked_at,
                    expires_at_ms: r.caller_session_expires_at,
                },
                // R31's facts are read after this read, when they can
                // change the answer (`second_factor::gate_facts`).
                second_factor: false,
                platform_second_factor_required: false,
            },
            caller_role: r.caller_role.as_deref().map(parse_role),
            subject,
        }
    }
}

pub(super) async fn read_pooled<C: ConnectionTrait>(
    conn: &C,
    key: &CheckKey,
) -> Result<Option<CheckFacts>, DomainError> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Sqlite => SQLITE_SQL.clone(),
        _ => POSTGRES_SQL.clone(),
    };
    let stmt = Statement::from_sql_and_values(
        backend,
        sql,
        [
            key.caller_id.as_str().into(),
            key.subject_id.as_str().into(),
            key.org.as_str().into(),
            key.caller_session.as_str().into(),
        ],
    );
    Ok(FactsRow::find_by_statement(stmt)
        .one(conn)
        .await
        .map_err(db_err)?
        .map(CheckFacts::from))
}

/// The read on the calling thread: `Some(answer)`, or `None` when the pool
/// must answer instead.
pub(super) fn read_inline(direct: &DirectReader, key: &CheckKey) -> Option<Option<CheckFacts>> {
    direct.with_conn(|conn| {
        let mut stmt = conn.prepare_cached(&INLINE_SQL)?;
        let mut rows = stmt.query([
            &key.caller_id,
            &key.subject_id,
            &key.org,
            &key.caller_session,
        ])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        // By position (`COLUMNS`, pinned by a test): a lookup by name scans
        // the column names on every get, 12 per check.
        Ok(Some(CheckFacts::from(FactsRow {
            caller_email: row.get(0)?,
            caller_status: row.get(1)?,
            caller_platform_admin: row.get(2)?,
            caller_role: row.get(3)?,
            subject_exists: row.get(4)?,
            subject_status: row.get(5)?,
            subject_platform_admin: row.get(6)?,
            subject_role: row.get(7)?,
            subject_permissions: row.get(8)?,
            caller_session_id: row.get(9)?,
            caller_session_revoked_at: row.get(10)?,
            caller_session_expires_at: row.get(11)?,
        })))
    })
}

/// The columns of the single statement in order, as `read_inline` reads them.
#[cfg(test)]
const COLUMNS: [&str; 12] = [
    "caller_email",
    "caller_status",
    "caller_platform_admin",
    "caller_role",
    "subject_exists",
    "subject_status",
    "subject_platform_admin",
    "subject_role",
    "subject_permissions",
    "caller_session_id",
    "caller_session_revoked_at",
    "caller_session_expires_at",
];

/// The batched form on PostgreSQL: one row per distinct (user,
/// organization) key of the batch, the user's account and their membership
/// there, if any. A check needs two keys, its caller's and its subject's,
/// and a batch shares most of them: a downstream service checks for many
/// subjects as one caller, and a caller asking about itself is one key, not
/// two. Reading each key once halved PostgreSQL's work per check (about 22
/// index lookups for 11 checks became 12; `pgbench` of the statement alone,
/// 0.41 → 0.34 ms, a round trip of 0.16 ms included).
///
/// The keys come from the array row, so both lookups are index-only scans
/// of the covering indexes `users (id, status, platform_admin, email)` and
/// `memberships (organization_id, user_id, role, permissions)`. One
/// statement, one snapshot: a check's caller and subject are read at the
/// same moment, as in the single statement.
///
/// Then one row per distinct session of the batch's callers (the tokens'
/// `sid`), its index negated, from the covering index of migration 5: a
/// token of an ended session is refused here as on every RPC. Sessions are
/// few (a caller's checks share its token), so they are read apart from
/// the keys rather than joined to every key row.
const BATCH_SQL: &str = "SELECT q.i, u.email, u.status, u.platform_admin, m.role, m.permissions, \
     NULL::text, NULL::bigint, NULL::bigint \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(user_id, org_id, i) \
     JOIN users u ON u.id = q.user_id \
     LEFT JOIN memberships m ON (m.organization_id, m.user_id) = (q.org_id, q.user_id) \
     UNION ALL \
     SELECT -q.i, NULL, NULL, NULL, NULL, NULL, s.user_id, s.revoked_at, s.expires_at \
     FROM unnest($3::text[]) WITH ORDINALITY AS q(sid, i) \
     JOIN sessions s ON s.id = q.sid";

/// One key's row of `BATCH_SQL`: an account that exists, and its
/// membership in the key's organization (`None`, `None` outside it).
#[derive(Debug, Clone)]
struct KeyFacts {
    email: String,
    status: String,
    platform_admin: bool,
    role: Option<String>,
    permissions: Option<i32>,
}

/// One session's row of `BATCH_SQL`.
#[derive(Debug, Clone)]
struct SessionFacts {
    user_id: String,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
}

/// A user's id and an organization's: one row of `BATCH_SQL`.
type Key<'a> = (&'a str, &'a str);

/// What a batch reads once each, and for each check where its parts are.
#[derive(Debug, Default)]
struct Distinct<'a> {
    keys: Vec<Key<'a>>,
    sessions: Vec<&'a str>,
    /// Per check: its caller's key, its subject's key, its caller's session.
    checks: Vec<(usize, usize, usize)>,
}

fn position<K: std::hash::Hash + Eq + Copy>(
    list: &mut Vec<K>,
    index: &mut HashMap<K, usize>,
    item: K,
) -> usize {
    *index.entry(item).or_insert_with(|| {
        list.push(item);
        list.len() - 1
    })
}

/// The batch's distinct keys and sessions.
fn distinct<'a>(batch: &[&'a CheckKey]) -> Distinct<'a> {
    let mut d = Distinct {
        keys: Vec::with_capacity(batch.len() + 1),
        sessions: Vec::new(),
        checks: Vec::with_capacity(batch.len()),
    };
    let mut keys = HashMap::with_capacity(batch.len() + 1);
    let mut sessions = HashMap::new();
    for p in batch {
        let caller = position(
            &mut d.keys,
            &mut keys,
            (p.caller_id.as_str(), p.org.as_str()),
        );
        let subject = position(
            &mut d.keys,
            &mut keys,
            (p.subject_id.as_str(), p.org.as_str()),
        );
        let session = position(&mut d.sessions, &mut sessions, p.caller_session.as_str());
        d.checks.push((caller, subject, session));
    }
    d
}

/// A check's answer from its two keys' rows and its caller's session row:
/// what the single statement answers for the same state (`None` when the
/// caller's account does not exist; no session unless it is the caller's).
fn assemble(
    key: &CheckKey,
    caller: Option<&KeyFacts>,
    subject: Option<&KeyFacts>,
    session: Option<&SessionFacts>,
) -> Option<CheckFacts> {
    let caller = caller?;
    let session = session.filter(|s| s.user_id == key.caller_id);
    Some(CheckFacts::from(FactsRow {
        caller_email: caller.email.clone(),
        caller_status: caller.status.clone(),
        caller_platform_admin: caller.platform_admin,
        caller_role: caller.role.clone(),
        subject_exists: subject.map(|_| key.subject_id.clone()),
        subject_status: subject.map(|s| s.status.clone()),
        subject_platform_admin: subject.map(|s| s.platform_admin),
        subject_role: subject.and_then(|s| s.role.clone()),
        subject_permissions: subject.and_then(|s| s.permissions),
        caller_session_id: session.map(|_| key.caller_session.clone()),
        caller_session_revoked_at: session.and_then(|s| s.revoked_at),
        caller_session_expires_at: session.and_then(|s| s.expires_at),
    }))
}

/// One statement for the whole batch; the answers in the batch's order.
pub(super) async fn read_batch(
    conn: &mut PgConnection,
    batch: &[&CheckKey],
) -> Result<Vec<Option<CheckFacts>>, sqlx::Error> {
    let d = distinct(batch);
    let users: Vec<&str> = d.keys.iter().map(|k| k.0).collect();
    let orgs: Vec<&str> = d.keys.iter().map(|k| k.1).collect();
    let rows = sqlx::query(BATCH_SQL)
        .bind(users)
        .bind(orgs)
        .bind(&d.sessions)
        .fetch_all(conn)
        .await?;
    let mut facts: Vec<Option<KeyFacts>> = vec![None; d.keys.len()];
    let mut sessions: Vec<Option<SessionFacts>> = vec![None; d.sessions.len()];
    let out_of_range = |i: i64| sqlx::Error::Decode(format!("batch row {i} out of range").into());
    for row in rows {
        // By position, in `BATCH_SQL`'s order (a name lookup per column
        // per row was measurable at this rate).
        let i: i64 = row.try_get(0)?;
        if i > 0 {
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| facts.get_mut(i))
                .ok_or_else(|| out_of_range(i))?;
            *slot = Some(KeyFacts {
                email: row.try_get(1)?,
                status: row.try_get(2)?,
                platform_admin: row.try_get(3)?,
                role: row.try_get(4)?,
                permissions: row.try_get(5)?,
            });
        } else {
            let slot = usize::try_from(-i - 1)
                .ok()
                .and_then(|i| sessions.get_mut(i))
                .ok_or_else(|| out_of_range(i))?;
            *slot = Some(SessionFacts {
                user_id: row.try_get(6)?,
                revoked_at: row.try_get(7)?,
                expires_at: row.try_get(8)?,
            });
        }
    }
    let facts_of = |k: usize| facts.get(k).and_then(Option::as_ref);
    Ok(batch
        .iter()
        .zip(&d.checks)
        .map(|(key, &(caller, subject, session))| {
            assemble(
                key,
                facts_of(caller),
                facts_of(subject),
                sessions.get(session).and_then(Option::as_ref),
            )
        })
        .collect())
}

/// CheckPermissions' read, one statement for a whole call: per (user,
/// organization) key, the user's account and their membership there (the
/// asking person's own keys give their role), and, as the row numbered
/// -1, the asking person's account and the session their token names, as
/// `callers::caller_state` reads them. One statement is one snapshot on
/// both backends, so no transaction is needed: on PostgreSQL a transaction
/// would add four round trips (BEGIN, SET TRANSACTION, COMMIT and a second
/// statement), a third of the call's database time. Each key is two index
/// lookups, the person two more.
///
/// The keys travel as one parameter, so the statement text is the same for
/// any count: on PostgreSQL two text-array literals (`unnest`, like
/// `BATCH_SQL`; sea-orm binds no arrays without its array feature, and the
/// literal costs less to take apart than JSON, ~195 against ~270 µs for
/// 100 keys in a PL/pgSQL loop), on SQLite a JSON array of pairs
/// (`json_each`). `covering` pins each table to its covering index, as
/// `single_sql` does.
fn many_sql(backend: DatabaseBackend, covering: bool) -> String {
    let pin = |index: &str| {
        if covering {
            format!(" INDEXED BY {index}")
        } else {
            String::new()
        }
    };
    let (index, keys, user, org, person, session, null_text, null_int) = match backend {
        DatabaseBackend::Sqlite => (
            "q.key",
            "json_each(?1) AS q",
            "(q.value ->> 0)",
            "(q.value ->> 1)",
            "?2",
            "?3",
            "NULL",
            "NULL",
        ),
        _ => (
            "q.i - 1",
            "unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(user_id, org_id, i)",
            "q.user_id",
            "q.org_id",
            "$3",
            "$4",
            "NULL::text",
            "NULL::bigint",
        ),
    };
    format!(
        "SELECT {index}, u.status, u.platform_admin, m.role, m.permissions, \
         {null_text}, {null_text}, {null_int}, {null_int} \
         FROM {keys} \
         JOIN users u{users} ON u.id = {user} \
         LEFT JOIN memberships m{memberships} \
         ON m.organization_id = {org} AND m.user_id = {user} \
         UNION ALL \
         SELECT -1, c.status, c.platform_admin, NULL, NULL, \
         c.email, s.id, s.revoked_at, s.expires_at \
         FROM users c{users} \
         LEFT JOIN sessions s{sessions} ON s.id = {session} AND s.user_id = c.id \
         WHERE c.id = {person}",
        users = pin("users_access_facts_idx"),
        memberships = pin("memberships_access_facts_idx"),
        sessions = pin("sessions_access_facts_idx"),
    )
}

static MANY_SQLITE: LazyLock<String> = LazyLock::new(|| many_sql(DatabaseBackend::Sqlite, false));
static MANY_POSTGRES: LazyLock<String> =
    LazyLock::new(|| many_sql(DatabaseBackend::Postgres, false));
static MANY_INLINE: LazyLock<String> = LazyLock::new(|| many_sql(DatabaseBackend::Sqlite, true));

/// What CheckPermissions reads in one snapshot: the asking person's
/// account and session (`None` when no person asked, or their account
/// does not exist), and the facts of each key in the order given (`None`
/// for a user that does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManyFacts {
    pub caller: Option<CallerState>,
    pub keys: Vec<Option<SubjectState>>,
}

/// The asking person (user id, the session id of their token; None for a
/// service account) and the distinct (user, organization) keys to read.
pub type ManyKey<'a> = (Option<(&'a str, &'a str)>, &'a [(&'a str, &'a str)]);

/// One row of `many_sql`, as read.
struct ManyRow {
    index: i64,
    status: String,
    platform_admin: bool,
    role: Option<String>,
    permissions: Option<i32>,
    email: Option<String>,
    session_id: Option<String>,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
}

/// The rows of one read, in any order, as `ManyFacts` for `keys` keys.
fn assemble_many(
    keys: usize,
    rows: impl IntoIterator<Item = ManyRow>,
) -> Result<ManyFacts, DomainError> {
    let mut out = ManyFacts {
        caller: None,
        keys: vec![None; keys],
    };
    for r in rows {
        if r.index < 0 {
            out.caller = Some(CallerState {
                email: r.email.unwrap_or_default(),
                status: StoredStatus::parse(&r.status),
                platform_admin: r.platform_admin,
                session: SessionState {
                    found: r.session_id.is_some(),
                    revoked_at_ms: r.revoked_at,
                    expires_at_ms: r.expires_at,
                },
                second_factor: false,
                platform_second_factor_required: false,
            });
            continue;
        }
        let slot = usize::try_from(r.index)
            .ok()
            .and_then(|i| out.keys.get_mut(i))
            .ok_or_else(|| DomainError::internal(format!("key row {} out of range", r.index)))?;
        *slot = Some(SubjectState {
            status: StoredStatus::parse(&r.status),
            platform_admin: r.platform_admin,
            role: r.role.as_deref().map(parse_role),
            permissions: r.permissions.unwrap_or(0) as u8,
        });
    }
    Ok(out)
}

/// A PostgreSQL text-array literal of `items`, each element quoted.
fn pg_text_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn keys_json(keys: &[(&str, &str)]) -> Result<String, DomainError> {
    serde_json::to_string(keys).map_err(|e| DomainError::internal(e.to_string()))
}

/// The read through the pool: one statement, on either backend.
pub(super) async fn read_many<C: ConnectionTrait>(
    conn: &C,
    key: ManyKey<'_>,
) -> Result<ManyFacts, DomainError> {
    let (person, keys) = key;
    let (person_id, session_id) = person.unwrap_or_default();
    let backend = conn.get_database_backend();
    let stmt = match backend {
        DatabaseBackend::Sqlite => Statement::from_sql_and_values(
            backend,
            MANY_SQLITE.as_str(),
            [keys_json(keys)?.into(), person_id.into(), session_id.into()],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            MANY_POSTGRES.as_str(),
            [
                pg_text_array(keys.iter().map(|k| k.0)).into(),
                pg_text_array(keys.iter().map(|k| k.1)).into(),
                person_id.into(),
                session_id.into(),
            ],
        ),
    };
    let rows = conn.query_all_raw(stmt).await.map_err(db_err)?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(ManyRow {
                index: r.try_get_by_index(0)?,
                status: r.try_get_by_index(1)?,
                platform_admin: r.try_get_by_index(2)?,
                role: r.try_get_by_index(3)?,
                permissions: r.try_get_by_index(4)?,
                email: r.try_get_by_index(5)?,
                session_id: r.try_get_by_index(6)?,
                revoked_at: r.try_get_by_index(7)?,
                expires_at: r.try_get_by_index(8)?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()
        .map_err(db_err)?;
    assemble_many(keys.len(), rows)
}

/// The read on the calling thread (SQLite file), pinned to the covering
/// indexes; `None` when the pool must answer instead.
pub(super) fn read_many_inline(direct: &DirectReader, key: ManyKey<'_>) -> Option<ManyFacts> {
    let (person, keys) = key;
    let (person_id, session_id) = person.unwrap_or_default();
    let json = keys_json(keys).ok()?;
    let rows = direct.with_conn(|conn| {
        let mut stmt = conn.prepare_cached(&MANY_INLINE)?;
        let rows = stmt.query_map(rusqlite::params![json, person_id, session_id], |r| {
            Ok(ManyRow {
                index: r.get(0)?,
                status: r.get(1)?,
                platform_admin: r.get(2)?,
                role: r.get(3)?,
                permissions: r.get(4)?,
                email: r.get(5)?,
                session_id: r.get(6)?,
                revoked_at: r.get(7)?,
                expires_at: r.get(8)?,
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })?;
    assemble_many(keys.len(), rows).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Role;
    use rusqlite::Connection;
    use std::path::Path;

    fn key(caller: &str, session: &str, subject: &str, org: &str) -> CheckKey {
        CheckKey {
            caller_id: caller.into(),
            caller_session: session.into(),
            subject_id: subject.into(),
            org: org.into(),
        }
    }

    #[test]
    fn one_statement_in_three_forms() {
        assert_eq!(POSTGRES_SQL.replace('$', "?"), *SQLITE_SQL);
        assert!(!SQLITE_SQL.contains("INDEXED BY"));
        assert_eq!(INLINE_SQL.matches(" INDEXED BY ").count(), 5);
        let unpinned = INLINE_SQL
            .split(" INDEXED BY ")
            .enumerate()
            .map(|(i, part)| match i {
                0 => part,
                _ => part.split_once(' ').map_or("", |(_, rest)| rest),
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(unpinned, *SQLITE_SQL);
    }

    fn schema(path: &Path, journal: &str) -> Connection {
        let c = Connection::open(path).expect("open");
        c.execute_batch(&format!(
            "PRAGMA journal_mode = {journal};
             CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, status TEXT NOT NULL,
                                 platform_admin BOOLEAN NOT NULL);
             CREATE TABLE memberships (organization_id TEXT NOT NULL, user_id TEXT NOT NULL,
                                       role TEXT NOT NULL, permissions INTEGER NOT NULL,
                                       PRIMARY KEY (organization_id, user_id));
             CREATE TABLE sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL,
                                    revoked_at BIGINT, expires_at BIGINT NOT NULL);
             CREATE INDEX users_access_facts_idx ON users (id, status, platform_admin, email);
             CREATE INDEX sessions_access_facts_idx
                 ON sessions (id, user_id, revoked_at, expires_at);
             CREATE INDEX memberships_access_facts_idx
                 ON memberships (organization_id, user_id, role, permissions);
             INSERT INTO users VALUES ('c', 'c@x.io', 'active', 0), ('s', 's@x.io', 'active', 0);
             INSERT INTO memberships VALUES ('o', 'c', 'manager', 0), ('o', 's', 'member', 5);
             INSERT INTO sessions VALUES ('cs', 'c', NULL, 1000), ('ss', 's', 7, 1000);"
        ))
        .expect("schema");
        c
    }

    /// The inline read of `key` against a fresh `schema` database.
    fn inline(r: &DirectReader, k: [&str; 4]) -> Option<Option<CheckFacts>> {
        read_inline(r, &key(k[0], k[1], k[2], k[3]))
    }

    #[test]
    fn reads_the_same_facts_as_the_query_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let _owner = schema(&path, "wal");
        let r = DirectReader::new(&path);
        let f = inline(&r, ["c", "cs", "s", "o"])
            .expect("read")
            .expect("row");
        assert_eq!(f.caller_role, Some(Role::Manager));
        assert_eq!(
            f.caller.session,
            SessionState {
                found: true,
                revoked_at_ms: None,
                expires_at_ms: Some(1000)
            }
        );
        // Another user's session is not the caller's.
        let f = inline(&r, ["c", "ss", "s", "o"])
            .expect("read")
            .expect("row");
        assert!(!f.caller.session.found);
        let s = f.subject.expect("subject");
        assert_eq!((s.role, s.permissions), (Some(Role::Member), 5));
        // Unknown subject: the row is there, the subject is not.
        let f = inline(&r, ["c", "cs", "nobody", "o"])
            .expect("read")
            .expect("row");
        assert_eq!(f.subject, None);
        // Unknown caller: no row.
        assert!(inline(&r, ["nobody", "cs", "s", "o"])
            .expect("read")
            .is_none());
        // The connection went back to the pool and is reused.
        assert_eq!(r.idle_len(), 1);
    }

    #[test]
    fn columns_are_read_by_the_positions_the_query_gives_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        let stmt = owner.prepare(&INLINE_SQL).expect("prepare");
        assert_eq!(stmt.column_names(), COLUMNS);
    }

    #[test]
    fn the_read_walks_only_the_covering_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        let plan: Vec<String> = owner
            .prepare(&format!("EXPLAIN QUERY PLAN {}", *INLINE_SQL))
            .and_then(|mut s| {
                s.query_map(["c", "s", "o", "cs"], |r| r.get::<_, String>(3))?
                    .collect()
            })
            .expect("plan");
        assert_eq!(plan.len(), 5, "{plan:?}");
        assert!(
            plan.iter().all(|p| p.contains("COVERING INDEX")),
            "{plan:?}"
        );
    }

    #[test]
    fn without_the_indexes_the_pool_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        owner
            .execute_batch("DROP INDEX users_access_facts_idx")
            .expect("drop");
        assert!(inline(&DirectReader::new(&path), ["c", "cs", "s", "o"]).is_none());
    }

    #[test]
    fn each_key_and_session_is_read_once_per_batch() {
        let batch = [
            key("svc", "svc-session", "a", "o1"),
            key("svc", "svc-session", "b", "o1"),
            key("a", "a-session", "a", "o1"),
            key("svc", "svc-session", "a", "o2"),
            key("b", "b-session", "svc", "o1"),
        ];
        let refs: Vec<&CheckKey> = batch.iter().collect();
        let d = distinct(&refs);
        assert_eq!(
            d.keys,
            [
                ("svc", "o1"),
                ("a", "o1"),
                ("b", "o1"),
                ("svc", "o2"),
                ("a", "o2")
            ]
        );
        assert_eq!(d.sessions, ["svc-session", "a-session", "b-session"]);
        assert_eq!(
            d.checks,
            [(0, 1, 0), (0, 2, 0), (1, 1, 1), (3, 4, 0), (2, 0, 2)]
        );
        // Every check's parts are the ones it asked about.
        for (p, (c, s, sess)) in batch.iter().zip(&d.checks) {
            assert_eq!(d.keys[*c], (p.caller_id.as_str(), p.org.as_str()));
            assert_eq!(d.keys[*s], (p.subject_id.as_str(), p.org.as_str()));
            assert_eq!(d.sessions[*sess], p.caller_session);
        }
    }

    fn key_facts(
        status: &str,
        admin: bool,
        role: Option<&str>,
        permissions: Option<i32>,
    ) -> KeyFacts {
        KeyFacts {
            email: format!("{status}@example.com"),
            status: status.into(),
            platform_admin: admin,
            role: role.map(Into::into),
            permissions,
        }
    }

    fn session(user: &str) -> SessionFacts {
        SessionFacts {
            user_id: user.into(),
            revoked_at: None,
            expires_at: Some(9),
        }
    }

    #[test]
    fn batch_answers_match_the_single_read() {
        let k = key("c", "sid", "s", "o");
        let caller = key_facts("active", false, Some("manager"), Some(3));
        let subject = key_facts("inactive", true, Some("member"), Some(64));
        let f = assemble(&k, Some(&caller), Some(&subject), Some(&session("c")))
            .expect("caller exists");
        assert_eq!(
            (
                f.caller.email.as_str(),
                f.caller.status,
                f.caller.platform_admin
            ),
            ("active@example.com", StoredStatus::Active, false)
        );
        assert_eq!(f.caller_role, Some(Role::Manager));
        assert_eq!(
            f.subject,
            Some(SubjectState {
                status: StoredStatus::Inactive,
                platform_admin: true,
                role: Some(Role::Member),
                permissions: 64,
            })
        );
        // The caller's session: live until it expires.
        assert!(f.caller.session.found);
        assert!(f.caller.session.is_live(8));
        assert!(!f.caller.session.is_live(9));
        // Another user's session is no session of the caller's.
        let f = assemble(&k, Some(&caller), None, Some(&session("x"))).expect("caller exists");
        assert!(!f.caller.session.found);

        // A subject outside the organization: the account, no membership.
        let outsider = key_facts("active", false, None, None);
        let f = assemble(&k, Some(&caller), Some(&outsider), None).expect("caller exists");
        let s = f.subject.expect("subject");
        assert_eq!((s.role, s.permissions), (None, 0));

        // No such subject.
        let f = assemble(&k, Some(&caller), None, None).expect("caller exists");
        assert_eq!(f.subject, None);

        // No such caller: no answer at all, as the single read's inner join.
        assert!(assemble(&k, None, Some(&subject), None).is_none());
    }

    #[test]
    fn a_locked_database_hands_the_read_back_at_once() {
        // A rollback-journal database with an exclusive writer is the one
        // way to make a reader wait deterministically; in WAL mode the same
        // SQLITE_BUSY comes from recovery or a log reset.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "delete");
        owner
            .execute_batch("BEGIN EXCLUSIVE; UPDATE users SET status = 'inactive';")
            .expect("lock");
        let r = DirectReader::new(&path);
        let t = std::time::Instant::now();
        assert!(inline(&r, ["c", "cs", "s", "o"]).is_none());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        owner.execute_batch("ROLLBACK").expect("unlock");
        assert!(inline(&r, ["c", "cs", "s", "o"]).is_some());
    }

    #[test]
    fn one_read_gives_the_person_and_every_key_in_order_from_covering_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let owner = schema(&path, "wal");
        let r = DirectReader::new(&path);
        let keys = [("s", "o"), ("nobody", "o"), ("c", "o"), ("s", "elsewhere")];
        let f = read_many_inline(&r, (Some(("c", "cs")), &keys)).expect("read");
        let caller = f.caller.expect("caller");
        assert_eq!(caller.email, "c@x.io");
        assert!(caller.session.found);
        let roles: Vec<_> = f
            .keys
            .iter()
            .map(|k| k.as_ref().map(|k| (k.role, k.permissions)))
            .collect();
        assert_eq!(
            roles,
            [
                Some((Some(Role::Member), 5)),
                None,
                Some((Some(Role::Manager), 0)),
                Some((None, 0))
            ]
        );
        // Another user's session is not the person's.
        let f = read_many_inline(&r, (Some(("c", "ss")), &[])).expect("read");
        assert!(!f.caller.expect("caller").session.found);
        // A service asks as no person; an unknown person has no state.
        let f = read_many_inline(&r, (None, &keys[..1])).expect("read");
        assert_eq!((f.caller, f.keys.len()), (None, 1));
        let f = read_many_inline(&r, (Some(("nobody", "cs")), &[])).expect("read");
        assert_eq!(f, ManyFacts::default());
        // The unpinned form reads the same.
        let mut stmt = owner.prepare(&MANY_SQLITE).expect("prepare");
        let json = keys_json(&keys).expect("json");
        let n = stmt
            .query_map(rusqlite::params![json, "c", "cs"], |_| Ok(()))
            .expect("query")
            .count();
        assert_eq!(n, 4);
        // Every table by its covering index; the JSON walked once.
        let plan: Vec<String> = owner
            .prepare(&format!("EXPLAIN QUERY PLAN {}", *MANY_INLINE))
            .and_then(|mut s| {
                s.query_map(rusqlite::params!["[]", "c", "cs"], |r| {
                    r.get::<_, String>(3)
                })?
                .collect()
            })
            .expect("plan");
        let tables: Vec<_> = plan
            .iter()
            .filter(|p| p.starts_with("SEARCH") || p.starts_with("SCAN"))
            .collect();
        assert_eq!(tables.len(), 5, "{plan:?}");
        assert_eq!(
            tables
                .iter()
                .filter(|p| p.contains("VIRTUAL TABLE"))
                .count(),
            1,
            "{plan:?}"
        );
        assert!(
            tables
                .iter()
                .filter(|p| !p.contains("VIRTUAL TABLE"))
                .all(|p| p.contains("COVERING INDEX")),
            "{plan:?}"
        );
        // Without the indexes the pool answers.
        owner
            .execute_batch("DROP INDEX memberships_access_facts_idx")
            .expect("drop");
        assert!(read_many_inline(&DirectReader::new(&path), (None, &keys)).is_none());
    }

    #[tokio::test]
    async fn the_pool_reads_what_the_inline_read_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let _owner = schema(&path, "wal");
        let db = sea_orm::Database::connect(format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        let keys = [("s", "o"), ("nobody", "o"), ("c", "o"), ("s", "elsewhere")];
        for person in [Some(("c", "cs")), Some(("s", "cs")), None] {
            let pooled = read_many(&db, (person, &keys)).await.expect("pooled");
            let inline = read_many_inline(&DirectReader::new(&path), (person, &keys));
            assert_eq!(Some(pooled), inline, "{person:?}");
        }
    }

    #[test]
    fn the_statement_has_one_form_per_backend() {
        let unpinned = MANY_INLINE
            .split(" INDEXED BY ")
            .enumerate()
            .map(|(i, part)| match i {
                0 => part,
                _ => part.split_once(' ').map_or("", |(_, rest)| rest),
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(unpinned, *MANY_SQLITE);
        assert!(MANY_POSTGRES.contains("unnest($1::text[], $2::text[])"));
        assert_eq!(
            pg_text_array(["a", "b\"c", "d\\"].into_iter()),
            r#"{"a","b\"c","d\\"}"#
        );
        assert_eq!(pg_text_array(std::iter::empty()), "{}");
    }

    #[test]
    fn a_missing_file_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sqlite");
        assert!(inline(&DirectReader::new(&path), ["c", "cs", "s", "o"]).is_none());
        assert!(!path.exists());
    }
}
