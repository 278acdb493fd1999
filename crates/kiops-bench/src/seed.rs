//! Seeds a realistic data set straight through the storage layer (bulk
//! INSERTs on the migrated schema): users, organizations, one big
//! organization, a few memberships per user, permissions spread across the
//! categories. Every seeded user has the same password (one argon2 hash with
//! the production parameters), so seeding takes seconds, not hours.

use anyhow::Context;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kiops_identity::auth::password::{OWASP_ITERATIONS, OWASP_MEMORY_KIB, OWASP_PARALLELISM};
use rand::{Rng, SeedableRng};
use sea_orm::ConnectionTrait;

pub const PASSWORD: &str = "bench password for every seeded user";
pub const ADMIN_EMAIL: &str = "admin@bench.kiops";

#[derive(Debug, Clone)]
pub struct SeedConfig {
    pub users: usize,
    pub orgs: usize,
    pub big_org_members: usize,
    /// Memberships per user outside the big organization.
    pub memberships_per_user: usize,
}

/// What the scenarios need to know about the seeded data.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub big_org: String,
    /// Members of the big organization (user ids).
    pub big_org_members: Vec<String>,
    pub user_count: usize,
}

pub fn user_email(i: usize) -> String {
    format!("user{i}@bench.kiops")
}

fn hash() -> anyhow::Result<String> {
    let params = Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

async fn insert_rows(
    db: &sea_orm::DatabaseConnection,
    head: &str,
    rows: &[String],
) -> anyhow::Result<()> {
    for chunk in rows.chunks(1000) {
        let sql = format!("{head} VALUES {}", chunk.join(","));
        db.execute_unprepared(&sql).await.context("bulk insert")?;
    }
    Ok(())
}

pub async fn seed(url: &str, cfg: &SeedConfig) -> anyhow::Result<Seeded> {
    let store = kiops_identity::server::open_store(url, 4).await?;
    let db = store.conn();
    let pw = hash()?;
    let now = 1_790_000_000_000i64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);

    let mut users = Vec::with_capacity(cfg.users + 1);
    let mut user_ids = Vec::with_capacity(cfg.users);
    users.push(format!(
        "('{}', '{ADMIN_EMAIL}', 'Bench Admin', 'bench admin', NULL, NULL, '{pw}', 'active', TRUE, 0, NULL, {now}, {now})",
        uuid::Uuid::now_v7()
    ));
    for i in 0..cfg.users {
        let id = uuid::Uuid::now_v7().to_string();
        users.push(format!(
            "('{id}', '{}', 'Bench User {i}', 'bench user {i}', NULL, NULL, '{pw}', 'active', FALSE, 0, NULL, {}, {})",
            user_email(i),
            now + i as i64,
            now + i as i64
        ));
        user_ids.push(id);
    }
    insert_rows(
        db,
        "INSERT INTO users (id, email, name, name_lower, phone, avatar_url, password_hash, status, platform_admin, failed_login_count, locked_until, created_at, updated_at)",
        &users,
    )
    .await?;

    let org_ids: Vec<String> = (0..cfg.orgs)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let orgs: Vec<String> = org_ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("('{id}', 'Org {i}', 'org-{i}', '', {now}, {now})"))
        .collect();
    insert_rows(
        db,
        "INSERT INTO organizations (id, name, code, description, created_at, updated_at)",
        &orgs,
    )
    .await?;

    let big_org = org_ids
        .first()
        .cloned()
        .context("at least one organization")?;
    let mut memberships = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let big = cfg.big_org_members.min(cfg.users);
    let mut big_members = Vec::with_capacity(big);
    for (i, uid) in user_ids.iter().enumerate() {
        let mut mine = Vec::new();
        if i < big {
            mine.push(big_org.clone());
            big_members.push(uid.clone());
        }
        for _ in 0..cfg.memberships_per_user {
            if org_ids.len() > 1 {
                mine.push(org_ids[rng.gen_range(1..org_ids.len())].clone());
            }
        }
        for org in mine {
            if !seen.insert((org.clone(), i)) {
                continue;
            }
            // Roughly one Manager in fifty; grants spread over the 7 bits.
            let role = if rng.gen_range(0..50) == 0 {
                "manager"
            } else {
                "member"
            };
            let perms: u8 = rng.gen_range(0..128);
            memberships.push(format!(
                "('{org}', '{uid}', '{role}', {perms}, {}, '{}', 'bench user {i}')",
                now + i as i64,
                user_email(i)
            ));
        }
    }
    insert_rows(
        db,
        "INSERT INTO memberships (organization_id, user_id, role, permissions, joined_at, email, name_lower)",
        &memberships,
    )
    .await?;
    // A bulk load leaves PostgreSQL without statistics and visibility map
    // until autovacuum gets to the tables (so the first round would measure
    // the planner's guesses, and no index-only scans); a live database has
    // had autovacuum run.
    if url.starts_with("postgres") {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared("VACUUM ANALYZE").await?;
    }
    store.close().await;
    Ok(Seeded {
        big_org,
        big_org_members: big_members,
        user_count: cfg.users,
    })
}
