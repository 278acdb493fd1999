//! Second red-team pass on issue 20 (items 2, 3, 8, 9, 10a, 10c, 10d):
//! ways into an account. A test that fails here is a break; the comment on
//! each says what it attacks.

use crate::support::smtp::SmtpSink;
use crate::support::*;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::*;
use sea_orm::{ConnectionTrait, Database, Statement};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

crate::both_backends!(
    change_password_in_flight_cannot_undo_a_password_reset,
    two_password_changes_from_the_same_old_password_cannot_both_win,
    ipv6_clients_behind_a_trusted_proxy_cannot_rotate_buckets_within_their_64,
    a_non_ascii_forwarded_for_line_cannot_hide_the_client,
    a_physical_copy_after_delivery_holds_no_live_reset_token,
    a_password_confirmed_through_a_foreign_scope_is_audited,
);

async fn start_with_mail(backend: Backend) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--smtp-url".into(),
                sink.url(),
                "--public-url".into(),
                "https://console.kiops.test".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    (s, sink)
}

/// Item 2 surroundings (ChangePassword's `verify_current_password`) and the
/// promise "a password reset revokes every session". An attacker holds the
/// victim's password and a session. The victim notices and resets the
/// password by email; the reset revokes the attacker's session. But a
/// ChangePassword the attacker started just before (verify the current
/// password, then hash the new one: two argon2 runs) writes its new hash
/// unconditionally after the reset committed: the attacker's password
/// replaces the one the victim just chose, the victim is locked out and the
/// attacker logs in. Order-free assertion: when the reset succeeded, the
/// attacker's new password must not open the account (a ChangePassword
/// that committed before the reset is overwritten by it; one that comes
/// after must be refused, its session and its verified hash being dead).
async fn change_password_in_flight_cannot_undo_a_password_reset(backend: Backend) {
    const ATTACKER: &str = "the attacker chose this passphrase 7";
    const VICTIM: &str = "the victim chose this new passphrase 9";
    let (s, sink) = start_with_mail(backend).await;
    let mut broke = Vec::new();
    for round in 0..16u64 {
        let email = format!("victim{round}@example.com");
        s.create_user(&email, "Victim", PASSWORD).await;
        // The attacker's session, made with the stolen password.
        let stolen = s.login(&email, PASSWORD).await.expect("attacker login");
        s.auth()
            .await
            .request_password_reset(RequestPasswordResetRequest {
                email: email.clone(),
            })
            .await
            .expect("reset request");
        let token = sink
            .wait_for(&email, 1)
            .await
            .token("kp")
            .expect("reset token");
        let change = async {
            s.users()
                .await
                .change_password(authed(
                    ChangePasswordRequest {
                        current_password: PASSWORD.into(),
                        new_password: ATTACKER.into(),
                    },
                    &stolen.access_token,
                ))
                .await
        };
        let reset = async {
            // From "together" to "while the attacker's new hash is computed".
            tokio::time::sleep(Duration::from_millis(round * 8)).await;
            s.auth()
                .await
                .reset_password(ResetPasswordRequest {
                    token: token.clone(),
                    new_password: VICTIM.into(),
                })
                .await
        };
        let (changed, reset) = tokio::join!(change, reset);
        reset.expect("the victim's reset");
        let attacker_in = s.login(&email, ATTACKER).await.is_ok();
        let victim_in = s.login(&email, VICTIM).await.is_ok();
        if attacker_in || !victim_in {
            broke.push(format!(
                "round {round}: change_password={:?}, attacker logs in={attacker_in}, \
                 victim logs in={victim_in}",
                changed.map(drop).map_err(|e| e.code())
            ));
        }
    }
    assert!(
        broke.is_empty(),
        "a ChangePassword in flight overwrote a completed password reset:\n{}",
        broke.join("\n")
    );
}

/// Same root cause as above, without a reset: the owner, who learnt that
/// the password leaked, changes it ("other sessions revoked", R14); the
/// attacker, with the same old password, changes it at the same instant.
/// Each call verified the same old hash; only one of them can have been
/// the account's password when it committed, so at most one may succeed.
/// Today both answer OK and the later commit decides who owns the account
/// (the owner's change revoked the attacker's session, yet the attacker's
/// change commits after it).
async fn two_password_changes_from_the_same_old_password_cannot_both_win(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut broke = Vec::new();
    for round in 0..8u64 {
        let email = format!("owner{round}@example.com");
        let (_, owner) = s.user(&email).await;
        let attacker = s.login(&email, PASSWORD).await.expect("login").access_token;
        let change = |token: String, new: &'static str, delay: u64| {
            let s = &s;
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                s.users()
                    .await
                    .change_password(authed(
                        ChangePasswordRequest {
                            current_password: PASSWORD.into(),
                            new_password: new.into(),
                        },
                        &token,
                    ))
                    .await
                    .map(drop)
            }
        };
        let (o, a) = tokio::join!(
            change(owner, "the owner's brand new passphrase", 0),
            change(attacker, "the attacker's brand new passphrase", round * 8),
        );
        if o.is_ok() && a.is_ok() {
            let owner_in = s
                .login(&email, "the owner's brand new passphrase")
                .await
                .is_ok();
            broke.push(format!(
                "round {round}: both changes succeeded; the owner's password works: {owner_in}"
            ));
        }
    }
    assert!(
        broke.is_empty(),
        "two ChangePassword calls verified against the same old password both won:\n{}",
        broke.join("\n")
    );
}

fn proxied_login(
    email: &str,
    rid: &str,
    xff: MetadataValue<tonic::metadata::Ascii>,
) -> Request<LoginRequest> {
    let mut r = Request::new(LoginRequest {
        email: email.into(),
        password: "not the password at all".into(),
        organization_id: None,
    });
    r.metadata_mut()
        .insert("x-request-id", rid.parse().expect("request id"));
    r.metadata_mut().insert("x-forwarded-for", xff);
    r
}

async fn proxied(
    ch: &Channel,
    email: &str,
    rid: &str,
    xff: MetadataValue<tonic::metadata::Ascii>,
) -> Status {
    AuthServiceClient::new(ch.clone())
        .login(proxied_login(email, rid, xff))
        .await
        .expect_err("no password is right here")
}

async fn proxy_server(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--login-rate-per-peer".into(),
                "2".into(),
                "--trusted-proxies".into(),
                "127.0.0.1".into(),
            ],
            ..Default::default()
        },
    )
    .await
}

/// Item 10d / R12 throttle. Behind a trusted proxy the per-peer bucket is
/// keyed by the full forwarded address. Every IPv6 end user holds at least a
/// /64 (2^64 addresses), so one client gets a fresh bucket per call: a
/// password spray (one guess per account over many accounts, which neither
/// the per-email bucket nor the lockout limits) runs unthrottled. The
/// per-peer limit here is 2; one /64 makes 6 attempts on 6 accounts.
async fn ipv6_clients_behind_a_trusted_proxy_cannot_rotate_buckets_within_their_64(
    backend: Backend,
) {
    let s = proxy_server(backend).await;
    let ch = s.channel().await;
    let mut evaluated = 0;
    for i in 1..=6 {
        let xff = format!("2001:db8:1:2::{i:x}").parse().expect("xff");
        let st = proxied(
            &ch,
            &format!("user{i}@example.com"),
            &format!("v6-{i}"),
            xff,
        )
        .await;
        if reason(&st) == "INVALID_CREDENTIALS" {
            evaluated += 1;
        }
    }
    assert!(
        evaluated <= 2,
        "one IPv6 /64 behind the proxy made {evaluated} attempts with a per-peer limit of 2"
    );
}

/// Item 10d / audit peer. A proxy such as nginx
/// (`$proxy_add_x_forwarded_for`) appends the real client to the header the
/// client sent, in one line: `<client's text>, 203.0.113.9`. If the client
/// puts one non-ASCII byte in its part, the server drops the whole line
/// (`to_str` fails) instead of reading the right-most entry the proxy
/// wrote: the call is attributed to the proxy itself, so the audit trail
/// loses the attacker's address (and the attacker draws on the bucket every
/// header-less call through the proxy shares).
async fn a_non_ascii_forwarded_for_line_cannot_hide_the_client(backend: Backend) {
    let s = proxy_server(backend).await;
    let ch = s.channel().await;
    let xff = MetadataValue::try_from(&b"\xff6.6.6.6, 203.0.113.9"[..])
        .expect("obs-text is a valid header value");
    let st = proxied(&ch, "nobody@example.com", "hide-1", xff).await;
    assert_eq!(reason(&st), "INVALID_CREDENTIALS", "{st:?}");
    let db = Database::connect(&s.db.url).await.expect("db");
    let sql = "SELECT peer_address FROM audit_events WHERE request_id = 'hide-1'";
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("audit");
    let peers: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("", "peer_address").expect("peer"))
        .collect();
    db.close().await.expect("close");
    assert!(!peers.is_empty(), "the failed login was audited");
    assert!(
        peers.iter().all(|p| p == "203.0.113.9"),
        "the proxy-appended client address was lost: audit peers {peers:?}"
    );
}

async fn sql(s: &TestServer, q: &str) -> Vec<sea_orm::QueryResult> {
    let db = Database::connect(&s.db.url).await.expect("db");
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), q))
        .await
        .expect(q);
    db.close().await.expect("close");
    rows
}

/// Item 3, as the issue words it: "anyone with a database backup or read
/// replica". A physical copy (pg_basebackup, a disk snapshot, a streaming
/// replica) holds the table's pages, dead row versions included: the UPDATE
/// that records delivery writes a new version without the token but the
/// versions written by `enqueue` and `claim` stay in the page until VACUUM
/// (and in the WAL). The existing test dumps live rows only. Here: the
/// pages of `email_outbox` as the buffer manager has them (pageinspect), or
/// the SQLite file and WAL, after delivery; the token found must not still
/// reset the password.
async fn a_physical_copy_after_delivery_holds_no_live_reset_token(backend: Backend) {
    // With a key outside the database (the fix): the queued token is sealed.
    let key_dir = tempfile::tempdir().expect("dir");
    let key_file = key_dir.path().join("outbox.key");
    std::fs::write(&key_file, hex::encode(rand::random::<[u8; 32]>())).expect("key file");
    let sink = SmtpSink::start().await;
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--smtp-url".into(),
                sink.url(),
                "--public-url".into(),
                "https://console.kiops.test".into(),
                "--outbox-key-file".into(),
                key_file.display().to_string(),
            ],
            ..Default::default()
        },
    )
    .await;
    s.create_user("backup@example.com", "Backup", PASSWORD)
        .await;
    s.auth()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "backup@example.com".into(),
        })
        .await
        .expect("reset request");
    let token = sink
        .wait_for("backup@example.com", 1)
        .await
        .token("kp")
        .expect("reset token");
    // Delivery recorded (the token erased from the live row).
    for _ in 0..100 {
        let n = sql(
            &s,
            "SELECT COUNT(*) AS n FROM email_outbox WHERE sent_at IS NULL",
        )
        .await[0]
            .try_get::<i64>("", "n")
            .expect("n");
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let copy: Vec<u8> = match s.backend {
        Backend::Sqlite => ["kiops.db", "kiops.db-wal", "kiops.db-journal"]
            .iter()
            .filter_map(|f| std::fs::read(s.db.dir.path().join(f)).ok())
            .flatten()
            .collect(),
        Backend::Postgres => {
            sql(&s, "CREATE EXTENSION IF NOT EXISTS pageinspect").await;
            let pages = sql(
                &s,
                "SELECT (pg_relation_size('email_outbox') / 8192)::bigint AS n",
            )
            .await[0]
                .try_get::<i64>("", "n")
                .expect("pages");
            let mut out = Vec::new();
            for p in 0..pages {
                let row = sql(
                    &s,
                    &format!("SELECT get_raw_page('email_outbox', {p}) AS b"),
                )
                .await;
                out.extend(row[0].try_get::<Vec<u8>>("", "b").expect("page"));
            }
            out
        }
    };
    let found = copy.windows(token.len()).any(|w| w == token.as_bytes());
    let usable = found
        && s.auth()
            .await
            .reset_password(ResetPasswordRequest {
                token: token.clone(),
                new_password: "taken over from a backup 123".into(),
            })
            .await
            .is_ok();
    assert!(
        !usable,
        "a delivered reset token is in the database copy and takes the account over"
    );
}

/// Item 2 surroundings and R19 ("every login success, failure and lockout
/// writes one audit event"). A login with the right password scoped to an
/// organization that does not exist answers NOT_FOUND, a wrong one
/// INVALID_CREDENTIALS: the password is confirmed. That path gives its
/// lockout slot back and writes nothing: a credential-stuffing list can be
/// checked against the service with no `auth.login_*` event for the account
/// (neither success nor failure) and no session to notice.
async fn a_password_confirmed_through_a_foreign_scope_is_audited(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (uid, _) = s.user("stuffed@example.com").await;
    let before = sql(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action LIKE 'auth.login%' \
             AND (actor_id = '{uid}' OR target_id = '{uid}')"
        ),
    )
    .await[0]
        .try_get::<i64>("", "n")
        .expect("n");
    let mut answers = Vec::new();
    for password in [PASSWORD, "definitely the wrong password"] {
        let st = s
            .auth()
            .await
            .login(LoginRequest {
                email: "stuffed@example.com".into(),
                password: password.into(),
                organization_id: Some(uuid::Uuid::now_v7().to_string()),
            })
            .await
            .expect_err("no such organization");
        answers.push((st.code(), reason(&st)));
    }
    let after = sql(
        &s,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_events WHERE action LIKE 'auth.login%' \
             AND (actor_id = '{uid}' OR target_id = '{uid}')"
        ),
    )
    .await[0]
        .try_get::<i64>("", "n")
        .expect("n");
    // One event per attempt (the wrong password's is there).
    assert_eq!(
        after - before,
        2,
        "two password checks, answers {answers:?}, audited {}",
        after - before
    );
}
