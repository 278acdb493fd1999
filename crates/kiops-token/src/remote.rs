//! Keys and revocations from the identity service (feature `remote`).
//!
//! A [`RemoteKeys`] fetches the JWKS over HTTP (`/.well-known/jwks.json`) or
//! with `AuthService.GetJwks`, installs it in an [`Authority`], and fetches
//! again when a token names a `kid` it does not know (a rotation), at most
//! once per `min_refresh` so garbage `kid`s cannot turn into a request flood.
//! [`watch_revocations`] follows `AuthService.WatchRevocations` and resumes
//! after the last event seen.

use crate::authority::{Authority, Revocation};
use crate::keys::JwkSet;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::{GetJwksRequest, WatchRevocationsRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tonic::transport::Channel;

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

/// Follows `AuthService.WatchRevocations` on `channel`, feeding `authority`.
/// Reconnects with backoff (200 ms … 10 s) and resumes after the last event
/// seen. `token` returns a current access token (PlatformAdmin or service
/// account) for each connection.
pub fn watch_revocations<F, Fut>(authority: Authority, channel: Channel, token: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, FetchError>> + Send,
{
    tokio::spawn(async move {
        let mut last = String::new();
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt: Result<(), FetchError> = async {
                let bearer = token().await?;
                let mut req = tonic::Request::new(WatchRevocationsRequest {
                    after_event_id: last.clone(),
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {bearer}").parse()?);
                let mut stream = AuthServiceClient::new(channel.clone())
                    .watch_revocations(req)
                    .await?
                    .into_inner();
                while let Some(msg) = stream.message().await? {
                    if let Some(e) = msg.event {
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
                tracing::warn!(error = %e, "revocation stream interrupted; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}
