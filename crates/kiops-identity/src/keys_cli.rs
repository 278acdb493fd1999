//! `kiops-identity keys list|rotate`.

use crate::clock::Clock;
use crate::config::KeysCommand;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::DomainError;
use crate::server::open_store;
use crate::store::{keys, Store};
use kiops_token::SigningKey;

fn fmt_ms(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    let clock = Clock::default();
    match cmd {
        KeysCommand::List(db) => {
            let store = open_store(&db.database_url, 2).await?;
            let now = clock.now_ms();
            println!("{:<45} {:<9} {:<21} retire_at", "kid", "status", "created");
            for k in keys::all(store.conn())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                let status = k.status.at(k.retire_at, now).as_str();
                println!(
                    "{:<45} {:<9} {:<21} {}",
                    k.kid,
                    status,
                    fmt_ms(Some(k.created_at)),
                    fmt_ms(k.retire_at)
                );
            }
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            let store = open_store(&args.db.database_url, 2).await?;
            let now = clock.now_ms();
            let key = SigningKey::generate();
            let pem = key.to_pkcs8_pem().map_err(|e| anyhow::anyhow!("{e}"))?;
            let retire_at = now + args.retire_after.max(0) * 1000;
            let previous = rotate(&store, key.kid(), pem, retire_at, now)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "new active key {}; previous {:?} published until {}",
                key.kid(),
                previous,
                fmt_ms(Some(retire_at))
            );
            Ok(())
        }
    }
}

/// Makes `kid` the active key in one transaction, serialized against
/// replicas creating theirs; the previous active keys.
async fn rotate(
    store: &Store,
    kid: &str,
    pem: String,
    retire_at: i64,
    now: i64,
) -> Result<Vec<String>, DomainError> {
    let tx = store.begin_write().await?;
    keys::lock_for_creation(&tx).await?;
    let meta = RequestMeta {
        request_id: "keys-rotate".into(),
        peer: String::new(),
        user_agent: String::new(),
    };
    let previous = keys::rotate(&tx, &meta, Actor::System, kid, pem, retire_at, now).await?;
    tx.commit().await?;
    Ok(previous)
}
