//! Subcommand dispatch and logging setup.

use crate::app::{App, AppInner, Settings};
use crate::auth::password::PasswordHasher;
use crate::auth::tokens::TokenService;
use crate::clock::Clock;
use crate::config::{Cli, Command, LogFormat};
use crate::metrics::Metrics;
use crate::server::{open_store, redact_url};
use clap::Parser;

fn init_tracing(format: LogFormat) {
    // Only the first subscriber installs; the subcommands run once per process.
    let _ = crate::telemetry::init(format, None);
}

/// The command line, parsed before the runtime starts: how many threads it
/// gets is one of its settings (`serve --worker-threads`).
pub fn parse() -> Cli {
    Cli::parse()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let otlp = args
                .otlp_endpoint
                .as_deref()
                .map(|e| (e, args.otlp_service_name.as_str()));
            let telemetry = crate::telemetry::init(args.log_format, otlp)?;
            let served = crate::server::serve(*args).await;
            telemetry.shutdown();
            served
        }
        Command::Migrate(db) => {
            init_tracing(LogFormat::Text);
            open_store(&db.database_url, 2).await?;
            tracing::info!(database = %redact_url(&db.database_url), "migrations applied");
            Ok(())
        }
        Command::Keys { command } => {
            init_tracing(LogFormat::Text);
            crate::keys_cli::run(command).await
        }
        Command::ServiceAccounts { command } => {
            init_tracing(LogFormat::Text);
            crate::service_accounts_cli::run(command).await
        }
        Command::BootstrapAdmin(args) => {
            init_tracing(LogFormat::Text);
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            let store = open_store(&args.db.database_url, 2).await?;
            let clock = Clock::default();
            let tokens = TokenService::load(
                &store,
                &clock,
                &crate::auth::tokens::TokenSettings {
                    issuer: String::new(),
                    audience: String::new(),
                    access_ttl_secs: 300,
                    signing_key_pem: None,
                    previous_key_pems: vec![],
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let app = App::new(AppInner {
                store,
                clock,
                hasher: PasswordHasher::new(1, crate::auth::password::DEFAULT_QUEUE)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                tokens,
                settings: Settings {
                    refresh_ttl_ms: 0,
                    session_ttl_ms: 0,
                    lockout_threshold: 5,
                    lockout_ms: 0,
                },
                metrics: Metrics::new(),
                mail: crate::mail::MailSettings {
                    public_url: String::new(),
                    from: String::new(),
                    smtp_url: None,
                    seal: crate::mail::seal::SecretSeal::none(),
                },
                mail_wakeup: Default::default(),
                revocation_tip: tokio::sync::watch::channel(0).0,
                streams: crate::stream_limits::StreamLimits::new(
                    std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
                    1,
                    1,
                ),
                throttle: crate::auth::throttle::Throttle::new(
                    crate::auth::throttle::Limit { per_minute: 60 },
                    crate::auth::throttle::Limit { per_minute: 60 },
                ),
            });
            if crate::bootstrap::create_first_admin(&app, &args.email, &args.name, &password)
                .await?
            {
                tracing::info!(email = %args.email, "created the first PlatformAdmin");
                Ok(())
            } else {
                anyhow::bail!("a PlatformAdmin already exists; nothing was changed")
            }
        }
    }
}
