//! `kiops-identity service-accounts create`: a service account and its key
//! file, made on the database so a deployment can give a downstream service
//! its identity without a human login (R25).

use crate::clock::Clock;
use crate::config::{ServiceAccountCreateArgs, ServiceAccountsCommand};
use crate::domain::audit::RequestMeta;
use crate::server::open_store;
use crate::service::service_accounts::create_with_key;
use anyhow::Context;
use kiops_proto::v1::CreateServiceAccountRequest;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

pub async fn run(cmd: ServiceAccountsCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceAccountsCommand::Create(args) => create(args).await,
    }
}

async fn create(args: ServiceAccountCreateArgs) -> anyhow::Result<()> {
    // Claimed first, owner-only and never over an existing file: a key
    // must not land in a file others can read, nor replace one in use.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.key_out)
        .with_context(|| format!("cannot create key file {}", args.key_out.display()))?;
    let made = async {
        let store = open_store(&args.db.database_url, 2).await?;
        let meta = RequestMeta {
            request_id: "service-accounts-create".into(),
            peer: String::new(),
            user_agent: String::new(),
        };
        let request = CreateServiceAccountRequest {
            organization_id: String::new(),
            name: args.name.clone(),
            description: args.description.clone(),
            scopes: args.scopes.clone(),
            certificate_identity: args.certificate_identity.clone(),
        };
        let now = Clock::default().now_ms();
        let made = create_with_key(&store, &meta, &args.owner, request, &args.issuer, now)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"));
        store.close().await;
        made
    }
    .await;
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&args.key_out);
            return Err(e);
        }
    };
    file.write_all(made.key_file_json.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| {
            format!(
                "service account {} was created but its key file {} could not be written; \
                 delete the account and run again",
                made.account.id,
                args.key_out.display()
            )
        })?;
    println!(
        "service account {} ({}) credential {} key file {}",
        made.account.id,
        made.account.name,
        made.credential.id,
        args.key_out.display()
    );
    Ok(())
}
