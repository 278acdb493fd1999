//! `kiops-identity serve`: wiring, listeners, the background tasks
//! (revocation poller and numbering, key reloader, outbox sender) and
//! graceful shutdown.

use crate::api::Services;
use crate::app::{App, AppInner, Settings};
use crate::auth::password::PasswordHasher;
use crate::auth::throttle::{Limit, Throttle};
use crate::auth::tokens::{TokenService, TokenSettings};
use crate::bootstrap;
use crate::browser::{self, GrpcWebLayer};
use crate::client_addr::ClientAddrLayer;
use crate::clock::Clock;
use crate::config::ServeArgs;
use crate::grpc_metrics::GrpcMetrics;
use crate::mail::seal::{SealSource, SecretSeal};
use crate::mail::{sender, MailSettings};
use crate::metrics::Metrics;
use crate::middleware::Layered;
use crate::overload::Shed;
use crate::request_id::RequestId;
use crate::store::revocations;
use crate::store::{Store, StoreOptions};
use crate::stream_limits::StreamLimits;
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Health service name that stays SERVING while the process runs, for
/// liveness probes: a database outage makes a replica unready (service ""),
/// not dead, so it is not restarted in vain.
pub const LIVENESS: &str = "liveness";

pub async fn open_store(url: &str, max_connections: u32) -> anyhow::Result<Store> {
    let store = Store::connect(&StoreOptions {
        url: url.to_string(),
        max_connections,
    })
    .await
    .with_context(|| format!("cannot open database {}", redact_url(url)))?;
    store.migrate().await.context("migrations failed")?;
    Ok(store)
}

/// Accepted gRPC connections with Nagle's algorithm off. tonic sets
/// TCP_NODELAY only on listeners it binds itself; with our own listener a
/// response larger than one segment waited for the client's delayed ACK,
/// adding a flat 40 ms to every list page (found by the list-members bench).
fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        Ok(conn)
    })
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Runs the service until SIGTERM/Ctrl-C, then drains it: what starts, in
/// order.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Calls in flight and open streams share one limit (`overload`).
    let in_flight = Arc::new(Semaphore::new(args.max_concurrent_requests.max(1)));
    let app = build_app(&args, in_flight.clone()).await?;
    bootstrap::on_serve(&app, &args).await?;

    let grpc_listener = bind(args.grpc_addr).await?;
    let http_listener = bind(args.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (health, health_service) = health_service().await;

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(shutdown_on_signal(shutdown_tx));
    let mail_task = tokio::spawn(sender::run(outbox_sender(&app)?, shutdown.clone()));
    tokio::spawn(poll_revocations(app.clone(), health, shutdown.clone()));
    let every = Duration::from_secs(args.key_refresh.max(1));
    tokio::spawn(reload_keys(app.clone(), every, shutdown.clone()));

    let grpc = grpc_server(
        &args,
        &app,
        in_flight,
        health_service,
        grpc_listener,
        &shutdown,
    )?;
    let http = axum::serve(
        http_listener,
        crate::http::router(app.clone(), args.unsafe_test_clock),
    )
    .with_graceful_shutdown(wait_true(shutdown.clone()));
    tracing::info!(
        "ready: grpc={grpc_addr} ({}) http={http_addr}",
        scheme(&args)
    );
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move {
        let _ = http.await;
    });

    let grace = Duration::from_secs(args.shutdown_grace);
    drain(grpc_task, [http_task, mail_task], shutdown, grace).await?;
    app.store.clone().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The shared state: database, signing keys, the seal of emailed links,
/// settings and limits.
async fn build_app(args: &ServeArgs, in_flight: Arc<Semaphore>) -> anyhow::Result<App> {
    let mut store = open_store(&args.db.database_url, args.db.db_max_connections).await?;
    if args.unsafe_test_statement_log {
        store.log_statements();
    }
    tracing::info!(database = %redact_url(&args.db.database_url), "database ready");

    let clock = Clock::default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let hasher = PasswordHasher::new(args.hash_concurrency.unwrap_or(cores), args.hash_queue)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let signing_key_pem = match &args.signing_key_file {
        Some(path) => Some(read_pem(path, "signing key file")?),
        None => None,
    };
    let previous_key_pems = args
        .previous_key_file
        .iter()
        .map(|p| read_pem(p, "previous key file"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seal = load_seal(args, &store, signing_key_pem.as_deref(), &previous_key_pems)?;
    let tokens = TokenService::load(
        &store,
        &clock,
        &TokenSettings {
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            access_ttl_secs: args.access_token_ttl,
            signing_key_pem,
            previous_key_pems,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("signing keys: {e}"))?;

    Ok(App::new(AppInner {
        store,
        clock,
        hasher,
        tokens,
        settings: Settings {
            refresh_ttl_ms: (args.refresh_token_ttl as i64) * 1000,
            session_ttl_ms: (args.session_ttl as i64) * 1000,
            lockout_threshold: args.lockout_threshold.max(1),
            lockout_ms: args.lockout_seconds.max(1) * 1000,
        },
        metrics: Metrics::new(),
        mail: MailSettings {
            public_url: args.public_url.clone(),
            from: args.mail_from.clone(),
            smtp_url: args.smtp_url.clone(),
            seal,
        },
        mail_wakeup: Default::default(),
        revocation_tip: watch::channel(0).0,
        streams: StreamLimits::new(
            in_flight,
            args.max_watches_per_caller,
            args.max_exports_per_caller,
        ),
        throttle: Throttle::new(
            Limit {
                per_minute: args.login_rate_per_peer,
            },
            Limit {
                per_minute: args.login_rate_per_email,
            },
        ),
    }))
}

fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The key that seals the single-use tokens of emailed links (`mail::seal`).
fn load_seal(
    args: &ServeArgs,
    store: &Store,
    signing_key_pem: Option<&str>,
    previous_key_pems: &[String],
) -> anyhow::Result<SecretSeal> {
    let (seal, source) = SecretSeal::load(
        args.outbox_key_file.as_deref(),
        signing_key_pem,
        previous_key_pems,
    )?;
    match source {
        SealSource::KeyFile => tracing::info!("emailed links sealed with the outbox key file"),
        SealSource::SigningKeyFile => {
            tracing::info!("emailed links sealed with a key derived from the signing key file")
        }
        // Keys kept in the database would protect nothing against a copy of
        // it. SQLite overwrites erased tokens (secure_delete, WAL truncated).
        SealSource::None if store.backend() == sea_orm::DatabaseBackend::Postgres => {
            tracing::warn!(
                "emailed links can be recovered from physical copies of the database until \
                 delivered and vacuumed; set --outbox-key-file or --signing-key-file"
            )
        }
        SealSource::None => {}
    }
    Ok(seal)
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// gRPC health, every service SERVING; the returned reporter lets the
/// revocation poller follow the database (`poll_revocations`).
async fn health_service() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in [
        "kiops.identity.v1.AuthService",
        "kiops.identity.v1.UserService",
        "kiops.identity.v1.OrganizationService",
        "kiops.identity.v1.MembershipService",
        "kiops.identity.v1.InvitationService",
        "kiops.identity.v1.ApprovalService",
        "kiops.identity.v1.AuditService",
        "kiops.identity.v1.ServiceAccountService",
        "kiops.identity.v1.PlatformService",
        LIVENESS,
        "",
    ] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    (reporter, service)
}

/// The shutdown signal: turns `shutdown` true on SIGTERM or Ctrl-C.
async fn shutdown_on_signal(shutdown: watch::Sender<bool>) {
    wait_for_signal().await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    let _ = shutdown.send(true);
}

/// The outbox sender's share of the state (`mail::sender::run`).
fn outbox_sender(app: &App) -> anyhow::Result<sender::Sender> {
    let transport = sender::Transport::from_settings(&app.mail)?;
    if app.mail.smtp_url.is_none() {
        tracing::warn!(
            "no SMTP configured (--smtp-url): emails, links included, are written to this log"
        );
    }
    Ok(sender::Sender {
        store: app.store.clone(),
        clock: app.clock.clone(),
        settings: app.mail.clone(),
        transport,
        wakeup: app.mail_wakeup.clone(),
        metrics: app.metrics.clone(),
    })
}

/// The revocation poller. Revocations may be written by any replica: every
/// 100 ms it numbers what has committed (`number_revocations`) and reads the
/// newest number into `App::revocation_tip`, which wakes the WatchRevocations
/// streams. The same read tells whether the database answers, which the
/// overall gRPC health status ("", what readiness probes ask) follows.
async fn poll_revocations(app: App, health: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut db_up = true;
    let mut numbering = None;
    loop {
        number_revocations(&app, &mut numbering).await;
        let up = read_revocation_tip(&app).await;
        if up != db_up {
            db_up = up;
            let status = if up {
                tracing::info!("database reachable again: serving");
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable: health NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
        if !pause(Duration::from_millis(100), &mut stop).await {
            return;
        }
    }
}

/// Revocation numbering (`store::revocations::sequence`), waited for up to
/// 2 s. It runs in a task of its own, one at a time: it is a write
/// transaction, and a timeout dropping it half-way would hand its connection
/// back with the transaction (and the sequencer's lock) still open. Health
/// does not wait for it; `read_revocation_tip` alone decides.
async fn number_revocations(app: &App, numbering: &mut Option<JoinHandle<()>>) {
    if numbering.as_ref().is_none_or(|t| t.is_finished()) {
        let app = app.clone();
        *numbering = Some(tokio::spawn(async move {
            if let Err(e) = revocations::sequence(&app.store, &app.clock).await {
                tracing::debug!(error = %e, "numbering revocation events failed");
            }
        }));
    }
    if let Some(t) = numbering.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
}

/// Reads the newest revocation number into `App::revocation_tip`; false when
/// the database did not answer within 2 s.
async fn read_revocation_tip(app: &App) -> bool {
    let polled = tokio::time::timeout(
        Duration::from_secs(2),
        revocations::latest_seq(app.store.conn()),
    )
    .await;
    let Ok(Ok(id)) = polled else {
        return false;
    };
    app.revocation_tip.send_if_modified(|v| {
        let changed = *v != id;
        *v = id;
        changed
    });
    true
}

/// The key reloader: reads the signing keys again every `every`, so keys
/// added or retired by `kiops-identity keys` or another replica are used.
async fn reload_keys(app: App, every: Duration, mut stop: watch::Receiver<bool>) {
    while pause(every, &mut stop).await {
        if let Err(e) = app.tokens.reload(&app.store, &app.clock).await {
            tracing::warn!(error = %e, "reloading signing keys failed");
        }
    }
}

/// Sleeps for `d`; false when shutdown was requested meanwhile.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|v| *v) => false,
    }
}

/// The gRPC server: middleware (CORS, gRPC-Web, request id, client address,
/// metrics, load shedding), health, reflection and the eight services, on `listener`
/// until `shutdown`.
fn grpc_server(
    args: &ServeArgs,
    app: &App,
    in_flight: Arc<Semaphore>,
    health: HealthServer<impl Health>,
    listener: TcpListener,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kiops_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("reflection service")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("reflection service")?;
    let services = Services::new(app, args.max_request_bytes);

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(args)? {
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    Ok(builder
        // HTTP/1.1 for gRPC-Web from browsers; native gRPC stays HTTP/2.
        .accept_http1(true)
        .timeout(Duration::from_secs(args.request_timeout.max(1)))
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(
            tower::ServiceBuilder::new()
                // Preflights are answered before anything else runs.
                .option_layer(browser::cors_layer(&args.cors_allowed_origins))
                .layer(GrpcWebLayer::new())
                // Inside gRPC-Web and CORS, so a timeout answer reaches browsers.
                .layer(Layered::new(crate::deadline::Deadline::new(
                    Duration::from_secs(args.request_timeout.max(1)),
                )))
                .layer(Layered::new(RequestId))
                .layer(ClientAddrLayer::new(args.trusted_proxies.clone()))
                .layer(Layered::new(GrpcMetrics::new(app.metrics.clone())))
                .layer(Layered::new(Shed::new(in_flight, app.metrics.clone())))
                .layer(crate::request_body::RequestBodyLayer),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.auth)
        .add_service(services.users)
        .add_service(services.organizations)
        .add_service(services.memberships)
        .add_service(services.invitations)
        .add_service(services.approvals)
        .add_service(services.audit)
        .add_service(services.service_accounts)
        .add_service(services.platform)
        .serve_with_incoming_shutdown(nodelay(listener), wait_true(shutdown.clone())))
}

/// How gRPC is served, for the "ready" line.
fn scheme(args: &ServeArgs) -> &'static str {
    match (&args.tls_cert_file, &args.tls_client_ca_file) {
        (Some(_), Some(_)) => "tls+client-certificates",
        (Some(_), None) => "tls",
        (None, _) => "plaintext",
    }
}

/// Waits for the shutdown signal (or a gRPC server that stops without one,
/// a failure), then gives the in-flight calls and `tasks` `grace` to finish.
async fn drain(
    mut grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: impl IntoIterator<Item = JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut rx = shutdown.clone();
    let grpc_finished = tokio::select! {
        r = &mut grpc_task => {
            r.context("gRPC server task")?.context("gRPC server")?;
            // A signal stops the gRPC server too, and it may finish before
            // this select sees the signal: only a stop without one is a failure.
            if !*shutdown.borrow() {
                anyhow::bail!("gRPC server stopped unexpectedly");
            }
            true
        }
        _ = rx.wait_for(|v| *v) => false,
    };
    // Both servers stopped accepting; in-flight calls get `grace` to finish.
    let drained = tokio::time::timeout(grace, async {
        if !grpc_finished {
            let _ = grpc_task.await;
        }
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
    Ok(())
}

/// gRPC over TLS when a certificate is configured; with a client CA, the
/// clients' certificates are verified too (mutual TLS).
fn tls_config(args: &ServeArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "TLS certificate")?,
        read(key, "TLS key")?,
    ));
    if let Some(ca) = &args.tls_client_ca_file {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca, "TLS client CA")?))
            .client_auth_optional(args.tls_client_auth_optional);
    }
    Ok(Some(cfg))
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
