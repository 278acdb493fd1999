//! The whole first schema (docs/rules.md, Model) in one migration.
//!
//! Written as plain DDL that both SQLite and PostgreSQL accept, so the schema
//! reads as one page. The only backend-specific statement is the identity
//! column of `revocation_events`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: &[&str] = &[
    // Accounts. `email` is stored lower-case, so the plain unique index is the
    // case-insensitive uniqueness of docs/rules.md, Model. `name_lower` serves searches.
    // `status` is 'active' or 'inactive'; LOCKED is derived from locked_until.
    r#"CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        name TEXT NOT NULL,
        name_lower TEXT NOT NULL,
        phone TEXT,
        avatar_url TEXT,
        password_hash TEXT NOT NULL,
        status TEXT NOT NULL,
        platform_admin BOOLEAN NOT NULL DEFAULT FALSE,
        failed_login_count INTEGER NOT NULL DEFAULT 0,
        locked_until BIGINT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )"#,
    "CREATE UNIQUE INDEX users_email_key ON users (email)",
    "CREATE INDEX users_name_lower_idx ON users (name_lower, id)",
    "CREATE INDEX users_created_idx ON users (created_at, id)",
    "CREATE INDEX users_platform_admin_idx ON users (platform_admin)",
    r#"CREATE TABLE organizations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        code TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )"#,
    "CREATE UNIQUE INDEX organizations_code_key ON organizations (code)",
    // Granted permissions are a 7-bit set (see kiops_token::Permission::bit).
    r#"CREATE TABLE memberships (
        organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        permissions INTEGER NOT NULL DEFAULT 0,
        joined_at BIGINT NOT NULL,
        PRIMARY KEY (organization_id, user_id)
    )"#,
    "CREATE INDEX memberships_user_idx ON memberships (user_id, organization_id)",
    "CREATE INDEX memberships_org_role_idx ON memberships (organization_id, role, user_id)",
    "CREATE INDEX memberships_org_joined_idx ON memberships (organization_id, joined_at, user_id)",
    r#"CREATE TABLE permission_templates (
        id TEXT PRIMARY KEY,
        organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        permissions INTEGER NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )"#,
    "CREATE UNIQUE INDEX permission_templates_org_name_key ON permission_templates (organization_id, name)",
    // status: pending, accepted, rejected, revoked. EXPIRED is derived from
    // expires_at at read time, so no cron has to run for it to be true.
    r#"CREATE TABLE invitations (
        id TEXT PRIMARY KEY,
        organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        email TEXT NOT NULL,
        role TEXT NOT NULL,
        inviter_id TEXT NOT NULL,
        status TEXT NOT NULL,
        token_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        decided_at BIGINT
    )"#,
    "CREATE UNIQUE INDEX invitations_token_hash_key ON invitations (token_hash)",
    "CREATE INDEX invitations_org_status_idx ON invitations (organization_id, status, created_at)",
    "CREATE INDEX invitations_email_idx ON invitations (email)",
    r#"CREATE TABLE join_requests (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        requested_at BIGINT NOT NULL,
        decided_at BIGINT,
        decided_by TEXT,
        reason TEXT
    )"#,
    // One PENDING request per (user, organization), enforced by the database.
    "CREATE UNIQUE INDEX join_requests_pending_key ON join_requests (user_id, organization_id) WHERE status = 'pending'",
    "CREATE INDEX join_requests_org_status_idx ON join_requests (organization_id, status, requested_at)",
    // A login session; revoking it kills every refresh token of it at once.
    r#"CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT,
        revoke_reason TEXT
    )"#,
    "CREATE INDEX sessions_user_idx ON sessions (user_id)",
    // Only a SHA-256 of each refresh token is stored. used_at is set when the
    // token is rotated; seeing a used token again means it leaked.
    r#"CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    )"#,
    "CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id)",
    r#"CREATE TABLE password_reset_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    )"#,
    "CREATE INDEX password_reset_tokens_user_idx ON password_reset_tokens (user_id)",
    // Signing keys generated by the server (embedded default and `keys rotate`).
    // status: active (signs new tokens), retiring (published until retire_at), retired.
    r#"CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        private_key_pem TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        retire_at BIGINT
    )"#,
    // Append-only. No foreign keys: events outlive the users and organizations
    // they mention.
    r#"CREATE TABLE audit_events (
        id TEXT PRIMARY KEY,
        occurred_at BIGINT NOT NULL,
        actor_type TEXT NOT NULL,
        actor_id TEXT,
        actor_email TEXT,
        organization_id TEXT,
        action TEXT NOT NULL,
        target_type TEXT NOT NULL,
        target_id TEXT NOT NULL,
        details TEXT NOT NULL,
        request_id TEXT NOT NULL,
        peer_address TEXT NOT NULL
    )"#,
    "CREATE INDEX audit_events_time_idx ON audit_events (occurred_at, id)",
    "CREATE INDEX audit_events_org_time_idx ON audit_events (organization_id, occurred_at, id)",
    "CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, occurred_at)",
    "CREATE INDEX audit_events_target_idx ON audit_events (target_id, occurred_at)",
    "CREATE INDEX audit_events_action_idx ON audit_events (action, occurred_at)",
    // Emails are written here in the same transaction as the change that
    // causes them, then delivered by the background sender.
    r#"CREATE TABLE email_outbox (
        id TEXT PRIMARY KEY,
        to_address TEXT NOT NULL,
        subject TEXT NOT NULL,
        body_text TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        sent_at BIGINT,
        last_error TEXT
    )"#,
    "CREATE INDEX email_outbox_due_idx ON email_outbox (sent_at, next_attempt_at)",
];

impl Migration {
    fn revocation_events_ddl(backend: DatabaseBackend) -> &'static str {
        match backend {
            DatabaseBackend::Postgres => {
                r#"CREATE TABLE revocation_events (
                    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    user_id TEXT NOT NULL,
                    organization_id TEXT,
                    revoked_at BIGINT NOT NULL,
                    reason TEXT NOT NULL
                )"#
            }
            _ => {
                r#"CREATE TABLE revocation_events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    user_id TEXT NOT NULL,
                    organization_id TEXT,
                    revoked_at BIGINT NOT NULL,
                    reason TEXT NOT NULL
                )"#
            }
        }
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for sql in TABLES {
            db.execute_unprepared(sql).await?;
        }
        db.execute_unprepared(Self::revocation_events_ddl(manager.get_database_backend()))
            .await?;
        db.execute_unprepared(
            "CREATE INDEX revocation_events_user_idx ON revocation_events (user_id)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            "revocation_events",
            "email_outbox",
            "audit_events",
            "signing_keys",
            "password_reset_tokens",
            "refresh_tokens",
            "sessions",
            "join_requests",
            "invitations",
            "permission_templates",
            "memberships",
            "organizations",
            "users",
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}
