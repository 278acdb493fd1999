use clap::Parser;
use kiops_client::ServiceCredentials;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Example downstream service guarded by kiops-token. It runs as a service
/// account holding `revocations.watch` and `permissions.check`: give its key
/// file, or its id and client secret (the secret from the environment, so
/// it shows in no process list).
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
    /// gRPC endpoint of the identity service (https:// for TLS).
    #[arg(
        long,
        env = "KIOPS_IDENTITY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    identity_url: String,
    /// CA certificate (PEM) that signed the identity service's TLS
    /// certificate.
    #[arg(long, env = "KIOPS_IDENTITY_CA_FILE")]
    identity_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS, when the service
    /// account is bound to a certificate identity.
    #[arg(long, env = "KIOPS_IDENTITY_CERT_FILE", requires = "identity_key_file")]
    identity_cert_file: Option<PathBuf>,
    #[arg(long, env = "KIOPS_IDENTITY_KEY_FILE", requires = "identity_cert_file")]
    identity_key_file: Option<PathBuf>,
    /// The service account's key file (written by `kiops-identity
    /// service-accounts create --key-out` or `AddServiceAccountKey`).
    #[arg(
        long,
        env = "KIOPS_SERVICE_ACCOUNT_KEY_FILE",
        conflicts_with_all = ["service_account_id", "service_account_secret"],
        required_unless_present = "service_account_id"
    )]
    service_account_key_file: Option<PathBuf>,
    /// The service account's id, with a client secret instead of a key.
    #[arg(
        long,
        env = "KIOPS_SERVICE_ACCOUNT_ID",
        requires = "service_account_secret"
    )]
    service_account_id: Option<String>,
    /// The client secret (`kiops_sa_…`); prefer the environment variable.
    #[arg(long, env = "KIOPS_SERVICE_ACCOUNT_SECRET", hide_env_values = true)]
    service_account_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let credentials = match (&args.service_account_key_file, &args.service_account_id) {
        (Some(path), _) => ServiceCredentials::key_file(path)?,
        (None, Some(id)) => ServiceCredentials::secret(
            id,
            args.service_account_secret.as_deref().unwrap_or_default(),
        ),
        (None, None) => anyhow::bail!("a service-account key file or id and secret is required"),
    };
    let mut endpoint =
        Endpoint::from_shared(args.identity_url.clone())?.connect_timeout(Duration::from_secs(10));
    if args.identity_url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &args.identity_ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.identity_cert_file, &args.identity_key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let identity = kiops_example_device::Identity::connect(channel, credentials).await?;
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
    kiops_example_device::serve_as_service(listener, keys, identity).await
}
