//! Keys and revocations from the identity service (feature `remote`).
//!
//! A [`RemoteKeys`] fetches the JWKS over HTTP (`/.well-known/jwks.json`) or
//! with `AuthService.GetJwks`, installs it in an [`Authority`], and fetches
//! again when a token names a `kid` it does not know (a rotation), at most
//! once per `min_refresh` so garbage `kid`s cannot turn into a request flood.
//! [`watch_revocations`] follows `AuthService.WatchRevocations` and resumes
//! after the last event seen, with a token from a [`TokenSource`]: a
//! closure, or a service account's [`ServiceTokenSource`] (key file or
//! client secret, exchanged with `AuthService.IssueServiceAccountToken` and
//! renewed before expiry).

use crate::authority::{Authority, Revocation};
use crate::keys::JwkSet;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::{GetJwksRequest, WatchRevocationsRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::Channel;

mod service;
pub use service::{CredentialsError, ServiceCredentials, ServiceTokenSource};

/// Where the key set comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `http://host:port/.well-known/jwks.json` (plain HTTP inside a cluster;
    /// use `Grpc` over a TLS channel otherwise).
    Http(String),
    Grpc(Channel),
}

/// Errors fetching keys.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

impl KeySource {
    pub async fn fetch(&self) -> Result<JwkSet, FetchError> {
        match self {
            KeySource::Http(url) => fetch_http(url).await,
            KeySource::Grpc(ch) => {
                let r = AuthServiceClient::new(ch.clone())
                    .get_jwks(GetJwksRequest {})
                    .await?
                    .into_inner();
                Ok(serde_json::from_str(&r.jwks_json)?)
            }
        }
    }
}

async fn fetch_http(url: &str) -> Result<JwkSet, FetchError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// JWKS URLs are fetched directly; use KeySource::Grpc over TLS")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let limit = Duration::from_secs(5);
    let mut s = tokio::time::timeout(limit, tokio::net::TcpStream::connect(host)).await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(limit, (&mut s).take(1 << 20).read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "JWKS fetch failed: {}",
            head.lines().next().unwrap_or_default()
        )
        .into());
    }
    Ok(serde_json::from_str(body)?)
}

/// An [`Authority`] whose keys follow a [`KeySource`].
#[derive(Clone, Debug)]
pub struct RemoteKeys {
    authority: Authority,
    source: KeySource,
    min_refresh: Duration,
    last: Arc<Mutex<Instant>>,
}

impl RemoteKeys {
    /// Fetches the key set once and builds the authority.
    pub async fn connect(
        source: KeySource,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, FetchError> {
        let set = source.fetch().await?;
        let authority = Authority::new(set, issuer, audience)?;
        Ok(Self {
            authority,
            source,
            min_refresh: Duration::from_secs(10),
            last: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// Smallest interval between two fetches triggered by unknown `kid`s.
    pub fn min_refresh(mut self, d: Duration) -> Self {
        self.min_refresh = d;
        self
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Fetches again unless the last fetch was less than `min_refresh` ago.
    /// Returns whether a new set was installed.
    pub async fn refresh(&self) -> bool {
        let mut last = self.last.lock().await;
        if last.elapsed() < self.min_refresh {
            return false;
        }
        *last = Instant::now();
        match self.source.fetch().await {
            Ok(set) => self.authority.set_jwks(set).is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed");
                false
            }
        }
    }

    /// Refreshes every `every` in the background (rotations also arrive via
    /// unknown `kid`s; this catches retirements).
    pub fn spawn_periodic_refresh(&self, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(set) = me.source.fetch().await {
                    let _ = me.authority.set_jwks(set);
                }
            }
        });
    }
}

/// Where [`watch_revocations`] takes the bearer token of each connection.
///
/// A closure `Fn() -> impl Future<Output = Result<String, FetchError>>` is
/// one (asked again for every connection); so is a [`ServiceTokenSource`],
/// which caches its token and exchanges again before it expires.
pub trait TokenSource: Send + Sync + 'static {
    /// A current access token.
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + '_>>;

    /// The server refused `token` (UNAUTHENTICATED: expired, revoked): a
    /// caching source should not hand it out again.
    fn refused(&self, _token: &str) {}
}

impl<F, Fut> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, FetchError>> + Send + 'static,
{
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + '_>> {
        Box::pin(self())
    }
}

impl TokenSource for ServiceTokenSource {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<String, FetchError>> + Send + '_>> {
        Box::pin(async move { Ok(self.access_token().await?) })
    }

    fn refused(&self, token: &str) {
        ServiceTokenSource::refused(self, token)
    }
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Follows `AuthService.WatchRevocations` on `channel`, feeding `authority`.
/// Reconnects with backoff (200 ms … 10 s, back to 200 ms once a stream
/// opened) and resumes after the last event seen. `token` gives the access
/// token of each connection: a service account holding `revocations.watch`
/// ([`ServiceTokenSource`]) or a closure (a PlatformAdmin's token, say). A
/// token refused as UNAUTHENTICATED (it expired, or was revoked) is reported
/// to the source, which renews it for the next connection.
///
/// Service-account revocations need nothing special: their events name the
/// account as `user_id` and the credential as `session_id`, which are the
/// `sub` and `sid` of its tokens.
pub fn watch_revocations<S: TokenSource>(
    authority: Authority,
    channel: Channel,
    token: S,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            let mut bearer = String::new();
            let attempt: Result<(), FetchError> = async {
                bearer = token.token().await?;
                let mut req = tonic::Request::new(WatchRevocationsRequest {
                    after_event_id: last.clone(),
                });
                let mut value: tonic::metadata::AsciiMetadataValue =
                    format!("Bearer {bearer}").parse()?;
                value.set_sensitive(true);
                req.metadata_mut().insert("authorization", value);
                let mut stream = AuthServiceClient::new(channel.clone())
                    .watch_revocations(req)
                    .await?
                    .into_inner();
                backoff = WATCH_BACKOFF_MIN;
                while let Some(msg) = stream.message().await? {
                    if let Some(e) = msg.event {
                        tracing::debug!(
                            event_id = %e.event_id,
                            user_id = %e.user_id,
                            reason = %e.reason,
                            "revocation"
                        );
                        let t = e.revoke_time.unwrap_or_default();
                        authority.revoke(Revocation {
                            user_id: e.user_id,
                            organization_id: e.organization_id,
                            session_id: e.session_id,
                            revoked_at_ms: t.seconds * 1000 + (t.nanos / 1_000_000) as i64,
                        });
                        last = e.event_id;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = attempt {
                if e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::Unauthenticated)
                    && !bearer.is_empty()
                {
                    token.refused(&bearer);
                }
                tracing::warn!(error = %e, "revocation stream interrupted; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
        }
    })
}
