use clap::Parser;
use std::time::Duration;

/// Example downstream service guarded by kiops-token.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: String,
    /// JWKS of the identity service.
    #[arg(long, default_value = "http://127.0.0.1:9090/.well-known/jwks.json")]
    jwks_url: String,
    #[arg(long, default_value = "kiops-identity")]
    issuer: String,
    #[arg(long, default_value = "kiops")]
    audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let keys = kiops_token::remote::RemoteKeys::connect(
        kiops_token::remote::KeySource::Http(args.jwks_url.clone()),
        &args.issuer,
        &args.audience,
    )
    .await
    .map_err(|e| anyhow::anyhow!("fetching the JWKS: {e}"))?;
    keys.spawn_periodic_refresh(Duration::from_secs(300));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!("ready: grpc={}", listener.local_addr()?);
    kiops_example_device::serve_remote(listener, keys).await
}
