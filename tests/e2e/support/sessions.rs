//! Steps the session tests share (R29): a login from a named client, the
//! session of a token, and what an ended session's token gets.

use super::*;
use kiops_proto::v1::*;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

/// Logs `email` in (password `PASSWORD`) over a channel whose calls say
/// `user-agent: <agent> …`.
pub async fn login_as(s: &TestServer, agent: &str, email: &str) -> LoginResponse {
    let ch = Endpoint::from_shared(s.grpc_url())
        .expect("url")
        .user_agent(agent)
        .expect("user agent")
        .connect()
        .await
        .expect("connect");
    kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            organization_id: None,
        })
        .await
        .expect("login")
        .into_inner()
}

/// The session (`sid` claim) of an access token.
pub fn sid(token: &str) -> String {
    token_claims(token)["sid"]
        .as_str()
        .expect("sid")
        .to_string()
}

pub async fn get_me(s: &TestServer, token: &str) -> Result<(), Status> {
    s.users()
        .await
        .get_me(authed(GetMeRequest {}, token))
        .await
        .map(|_| ())
}

pub fn assert_revoked(r: Result<(), Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    assert_eq!(reason(&e), "SESSION_REVOKED", "{what}: {e:?}");
}

pub async fn watch(s: &TestServer, admin: &str) -> tonic::Streaming<WatchRevocationsResponse> {
    s.auth()
        .await
        .watch_revocations(authed(WatchRevocationsRequest::default(), admin))
        .await
        .expect("watch")
        .into_inner()
}

/// Every revocation event until `want` of them are read (or 10 s pass).
pub async fn events(
    stream: &mut tonic::Streaming<WatchRevocationsResponse>,
    want: usize,
) -> Vec<RevocationEvent> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while out.len() < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(m))) => out.extend(m.event),
            _ => break,
        }
    }
    out
}

/// An offline verifier fed `evs`, as `kiops_token::remote` feeds one.
pub fn verifier_with(evs: &[RevocationEvent]) -> kiops_token::Authority {
    let jwks = kiops_token::SigningKey::generate().public_jwk_set();
    let a = kiops_token::Authority::new(jwks, "x", "y").expect("authority");
    for e in evs {
        let t = e.revoke_time.unwrap_or_default();
        a.revoke(kiops_token::Revocation {
            user_id: e.user_id.clone(),
            organization_id: e.organization_id.clone(),
            session_id: e.session_id.clone(),
            revoked_at_ms: t.seconds * 1000 + (t.nanos / 1_000_000) as i64,
        });
    }
    a
}

/// Whether an offline verifier `a` refuses `token` when it is shown for
/// `organization_id` (None: for no organization).
pub fn offline_revoked_in(
    a: &kiops_token::Authority,
    token: &str,
    organization_id: Option<&str>,
) -> bool {
    let claims: kiops_token::Claims =
        serde_json::from_value(token_claims(token)).expect("claims parse");
    a.is_revoked(&claims, organization_id)
}

pub fn offline_revoked(a: &kiops_token::Authority, token: &str) -> bool {
    offline_revoked_in(a, token, None)
}

/// A lock held from outside the server, so that a write queues behind it:
/// SQLite's write lock, or on PostgreSQL the rows `pg_lock_sql` (one `$1`
/// bind: `id`) locks.
pub enum Held {
    Sqlite(sea_orm::sqlx::SqliteConnection),
    Postgres(sea_orm::sqlx::PgConnection),
}

pub async fn hold_rows(s: &TestServer, pg_lock_sql: &'static str, id: &str) -> Held {
    use sea_orm::sqlx::{self, Connection};
    match s.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&s.db.url)
                .await
                .expect("sqlite");
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .expect("write lock");
            Held::Sqlite(c)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&s.db.url).await.expect("pg");
            sqlx::query("BEGIN").execute(&mut c).await.expect("begin");
            sqlx::query(pg_lock_sql)
                .bind(id)
                .execute(&mut c)
                .await
                .expect("row lock");
            Held::Postgres(c)
        }
    }
}

/// The write lock (SQLite) or the session's row (PostgreSQL), so that a
/// RevokeSession and a Refresh queue behind it.
pub async fn hold(s: &TestServer, session_id: &str) -> Held {
    hold_rows(
        s,
        "SELECT id FROM sessions WHERE id = $1 FOR UPDATE",
        session_id,
    )
    .await
}

pub async fn release(h: Held) {
    use sea_orm::sqlx;
    match h {
        Held::Sqlite(mut c) => sqlx::query("COMMIT").execute(&mut c).await.map(|_| ()),
        Held::Postgres(mut c) => sqlx::query("COMMIT").execute(&mut c).await.map(|_| ()),
    }
    .expect("release");
}
