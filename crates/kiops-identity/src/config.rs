//! Command line, environment and optional config file.
//!
//! Precedence: flag > environment variable > `--config` file > default. The
//! config file holds `KEY=VALUE` lines with the environment variable names, so
//! one table in README documents all three.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kiops-identity",
    version,
    about = "KIOPS identity and membership service (gRPC)",
    long_about = "KIOPS identity and membership service: users, organizations, roles, \
                  permissions, invitations, join requests and audit; issues EdDSA JWTs that \
                  other KIOPS services verify offline.\n\nEvery flag has an environment \
                  variable; `--config FILE` (KIOPS_CONFIG) reads KEY=VALUE lines with the same \
                  variable names. Precedence: flag > environment > file > default."
)]
pub struct Cli {
    /// File of KEY=VALUE lines (environment variable names) read before parsing.
    #[arg(long, env = "KIOPS_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC and HTTP servers (applies migrations first).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Create the first PlatformAdmin; the password is read from standard input.
    BootstrapAdmin(BootstrapArgs),
    /// Signing keys kept in the database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Service accounts, made on the database without a login (R25).
    ServiceAccounts {
        #[command(subcommand)]
        command: ServiceAccountsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create a service account with a server-generated key and write its key
    /// file (mode 0600; an existing file is never overwritten). Prints the
    /// account and credential ids, never the key. Audited as the system.
    Create(ServiceAccountCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServiceAccountCreateArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// 1-64 of a-z, 0-9 and '-', starting with a letter; unique per owner.
    #[arg(long)]
    pub name: String,

    /// Comma-separated: permissions.check, revocations.watch, members.read,
    /// users.read, audit.read.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,

    /// `platform`, or the code of the owning organization.
    #[arg(long)]
    pub owner: String,

    /// Where to write the key file (JSON with the private key).
    #[arg(long)]
    pub key_out: PathBuf,

    #[arg(long, default_value = "")]
    pub description: String,

    /// URI or DNS SAN the account's TLS client certificate must carry.
    #[arg(long, default_value = "")]
    pub certificate_identity: String,

    /// The server's `--issuer`: the audience of the key's assertions.
    #[arg(long, env = "KIOPS_ISSUER", default_value = "kiops-identity")]
    pub issuer: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys with their status.
    List(DbArgs),
    /// Add a new active signing key; the old one stays published until every
    /// token it signed has expired. Running servers pick it up within
    /// --key-refresh seconds.
    Rotate(RotateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Seconds the old key stays published; at least the access-token
    /// lifetime plus clock leeway.
    #[arg(long, default_value_t = 600)]
    pub retire_after: i64,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: sqlite://FILE (embedded default) or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://kiops-identity.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Maximum connections in the database pool.
    #[arg(long, env = "KIOPS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address of the gRPC server.
    #[arg(long, env = "KIOPS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (/healthz, /readyz, /metrics, /.well-known/jwks.json).
    #[arg(long, env = "KIOPS_HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: SocketAddr,

    /// `iss` claim of issued tokens; verifiers must expect the same value.
    #[arg(long, env = "KIOPS_ISSUER", default_value = "kiops-identity")]
    pub issuer: String,

    /// `aud` claim of issued tokens.
    #[arg(long, env = "KIOPS_AUDIENCE", default_value = "kiops")]
    pub audience: String,

    /// Access-token lifetime in seconds.
    #[arg(long, env = "KIOPS_ACCESS_TOKEN_TTL", default_value_t = 300)]
    pub access_token_ttl: u64,

    /// Refresh-token lifetime in seconds (each rotation issues a new one).
    #[arg(long, env = "KIOPS_REFRESH_TOKEN_TTL", default_value_t = 14 * 24 * 3600)]
    pub refresh_token_ttl: u64,

    /// Absolute session lifetime in seconds, however often it is refreshed.
    #[arg(long, env = "KIOPS_SESSION_TTL", default_value_t = 30 * 24 * 3600)]
    pub session_ttl: u64,

    /// PKCS#8 PEM file with the Ed25519 signing key. Without it, keys are
    /// generated and kept in the database.
    #[arg(long, env = "KIOPS_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Older PEM keys to keep publishing in the JWKS after a rotation done
    /// outside the database (repeatable).
    #[arg(long, env = "KIOPS_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub previous_key_file: Vec<PathBuf>,

    /// File with 32 random bytes (64 hex characters or base64) that seals
    /// the single-use tokens of queued emails, so copies of the database
    /// hold no usable link. Same file on every replica. Without it, a key is
    /// derived from --signing-key-file; without either, tokens wait in the
    /// clear until delivered.
    #[arg(long, env = "KIOPS_OUTBOX_KEY_FILE")]
    pub outbox_key_file: Option<PathBuf>,

    /// Seconds between reloads of the signing keys from the database.
    #[arg(long, env = "KIOPS_KEY_REFRESH", default_value_t = 5)]
    pub key_refresh: u64,

    /// Email of a PlatformAdmin to create at start when none exists.
    #[arg(long, env = "KIOPS_BOOTSTRAP_ADMIN_EMAIL")]
    pub bootstrap_admin_email: Option<String>,

    /// Password of that PlatformAdmin (prefer the environment variable to a flag).
    #[arg(long, env = "KIOPS_BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
    pub bootstrap_admin_password: Option<String>,

    /// Where the embedded default writes the generated first PlatformAdmin's
    /// credentials when no bootstrap admin is configured (SQLite only).
    #[arg(
        long,
        env = "KIOPS_INITIAL_ADMIN_FILE",
        default_value = "kiops-initial-admin.txt"
    )]
    pub initial_admin_file: PathBuf,

    /// SMTP server for outgoing email, e.g. smtp://mail:25 or
    /// smtp://user:pass@mail:587?tls=required. Without it emails go to the log.
    #[arg(long, env = "KIOPS_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// `From:` of outgoing email.
    #[arg(
        long,
        env = "KIOPS_MAIL_FROM",
        default_value = "KIOPS <no-reply@kiops.local>"
    )]
    pub mail_from: String,

    /// Base URL of the console that handles links in emails
    /// (/invitations/accept, /reset-password).
    #[arg(
        long,
        env = "KIOPS_PUBLIC_URL",
        default_value = "http://localhost:3000"
    )]
    pub public_url: String,

    /// Password attempts (Login, SignUp, resets, invitation accepts) allowed
    /// per minute from one peer address.
    #[arg(long, env = "KIOPS_LOGIN_RATE_PER_PEER", default_value_t = 120)]
    pub login_rate_per_peer: u32,

    /// Login and reset-request attempts allowed per minute for one email.
    #[arg(long, env = "KIOPS_LOGIN_RATE_PER_EMAIL", default_value_t = 30)]
    pub login_rate_per_email: u32,

    /// Consecutive failed logins that lock an account.
    #[arg(long, env = "KIOPS_LOCKOUT_THRESHOLD", default_value_t = 5)]
    pub lockout_threshold: i32,

    /// How long a lockout lasts, in seconds.
    #[arg(long, env = "KIOPS_LOCKOUT_SECONDS", default_value_t = 900)]
    pub lockout_seconds: i64,

    /// Password hashes computed at once (default: number of CPU cores).
    #[arg(long, env = "KIOPS_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// Password hashes that may wait for a hashing thread. A call that finds
    /// the queue full is refused at once (RESOURCE_EXHAUSTED, reason
    /// OVERLOADED) instead of waiting behind every other peer's; a queued
    /// hash whose caller has gone away (deadline, cancel) is skipped.
    #[arg(long, env = "KIOPS_HASH_QUEUE", default_value_t = crate::auth::password::DEFAULT_QUEUE)]
    pub hash_queue: usize,

    /// Addresses or CIDR ranges of reverse proxies (comma-separated, e.g.
    /// 10.0.0.0/8,127.0.0.1) whose X-Forwarded-For header is believed: for a
    /// call from one of them, the client address (login throttle, audit
    /// peer) is the right-most X-Forwarded-For address that is not itself a
    /// trusted proxy. From any other peer the header is ignored. Default:
    /// none (the TCP peer is the client).
    #[arg(long, env = "KIOPS_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::client_addr::parse_cidr)]
    pub trusted_proxies: Vec<crate::client_addr::Cidr>,

    /// Browser origins allowed to call the gRPC port with gRPC-Web
    /// (comma-separated, scheme://host[:port], e.g.
    /// https://console.example.com). Answers to these origins carry CORS
    /// headers, preflights included; credentials are never allowed (tokens
    /// travel in the authorization header). Default: none, so cross-origin
    /// pages are refused by their browser. gRPC-Web itself is always served,
    /// for same-origin pages and proxies.
    #[arg(long, env = "KIOPS_CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::browser::parse_origin)]
    pub cors_allowed_origins: Vec<http::HeaderValue>,

    /// Threads that serve requests (default: number of CPU cores). Password
    /// hashing has its own threads (--hash-concurrency). Fewer than the
    /// cores leaves CPU to what shares the machine (a sidecar, a database,
    /// a load generator), and keeps the runtime's threads from being
    /// preempted mid-request by each other, which is most of the tail
    /// latency on a small machine (BENCHMARKS.md).
    #[arg(long, env = "KIOPS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Log format.
    #[arg(long, env = "KIOPS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C.
    #[arg(long, env = "KIOPS_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key-file).
    /// The HTTP port (health, metrics, JWKS) stays plain HTTP.
    #[arg(long, env = "KIOPS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "KIOPS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificates: gRPC clients must present a certificate signed
    /// by one of them (mutual TLS for service-to-service calls).
    #[arg(long, env = "KIOPS_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// With --tls-client-ca-file: also accept clients without a certificate
    /// (a certificate that is sent is still verified).
    #[arg(long, env = "KIOPS_TLS_CLIENT_AUTH_OPTIONAL")]
    pub tls_client_auth_optional: bool,

    /// OpenTelemetry collector (OTLP over HTTP/protobuf), e.g.
    /// http://otel-collector:4318. Without it no traces are exported.
    #[arg(long, env = "KIOPS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of exported traces.
    #[arg(
        long,
        env = "KIOPS_OTLP_SERVICE_NAME",
        default_value = "kiops-identity"
    )]
    pub otlp_service_name: String,

    /// gRPC calls handled at once across all connections. Calls beyond it
    /// are refused at once with RESOURCE_EXHAUSTED instead of queueing, so a
    /// burst cannot grow memory or latency without bound.
    #[arg(long, env = "KIOPS_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// WatchRevocations streams one caller may hold open at once (each
    /// replica of a downstream service holds one). Open streams also count
    /// against --max-concurrent-requests.
    #[arg(long, env = "KIOPS_MAX_WATCHES_PER_CALLER", default_value_t = 16)]
    pub max_watches_per_caller: usize,

    /// ExportAuditEvents streams one caller may run at once.
    #[arg(long, env = "KIOPS_MAX_EXPORTS_PER_CALLER", default_value_t = 2)]
    pub max_exports_per_caller: usize,

    /// Seconds a gRPC call may run before it is cancelled (DEADLINE_EXCEEDED);
    /// a shorter client deadline wins.
    #[arg(long, env = "KIOPS_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,

    /// Largest gRPC request message accepted, in bytes (RESOURCE_EXHAUSTED above).
    #[arg(long, env = "KIOPS_MAX_REQUEST_BYTES", default_value_t = crate::api::MAX_MESSAGE_BYTES)]
    pub max_request_bytes: usize,

    /// TESTS ONLY: logs the SQL text of every statement (no values).
    #[arg(long, env = "KIOPS_UNSAFE_TEST_STATEMENT_LOG", hide = true)]
    pub unsafe_test_statement_log: bool,

    /// TESTS ONLY: lets POST /test/clock/advance move the server clock.
    #[arg(long, env = "KIOPS_UNSAFE_TEST_CLOCK", hide = true)]
    pub unsafe_test_clock: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Email of the PlatformAdmin to create.
    #[arg(long)]
    pub email: String,

    /// Display name.
    #[arg(long, default_value = "Platform Admin")]
    pub name: String,
}

/// Reads `--config FILE` / `KIOPS_CONFIG` ahead of clap and exports its
/// `KEY=VALUE` lines as environment variables that are not already set.
pub fn apply_config_file_from_args() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let from_flag = args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--config=") {
            Some(v.to_string())
        } else if a == "--config" {
            args.get(i + 1).cloned()
        } else {
            None
        }
    });
    let Some(path) = from_flag.or_else(|| std::env::var("KIOPS_CONFIG").ok()) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config file {path}: {e}"))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("config file {path}:{}: expected KEY=VALUE", n + 1));
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if std::env::var_os(k).is_none() {
            // Called first thing in main, before any thread exists.
            std::env::set_var(k, v);
        }
    }
    Ok(())
}
