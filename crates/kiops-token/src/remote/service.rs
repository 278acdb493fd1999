//! Access tokens of a service account (R25): its credential (a key file or
//! a client secret) exchanged with `AuthService.IssueServiceAccountToken`,
//! the token cached and exchanged again before it expires.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use kiops_token::remote::{ServiceCredentials, ServiceTokenSource};
//! let channel = tonic::transport::Channel::from_static("http://identity:50051").connect().await?;
//! let credentials = ServiceCredentials::key_file("/var/run/secrets/kiops/key.json")?;
//! let tokens = ServiceTokenSource::new(channel, credentials);
//! let bearer = tokens.access_token().await?; // exchanged once, then cached
//! # let _ = bearer; Ok(()) }
//! ```

use crate::error::KeyError;
use crate::service_account::KeyFile;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::issue_service_account_token_request::Credential;
use kiops_proto::v1::{ClientSecret, IssueServiceAccountTokenRequest};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

/// Lifetime of the assertions a key signs: one exchange, so short; long
/// enough for a clock a little behind the server's.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// What a service account proves itself with. `Debug` never shows the
/// private key or the secret.
#[derive(Clone)]
pub struct ServiceCredentials {
    credential: Secret,
}

#[derive(Clone)]
enum Secret {
    Key(KeyFile),
    ClientSecret {
        service_account_id: String,
        secret: String,
    },
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.credential {
            Secret::Key(k) => format!("key {}", k.credential_id),
            Secret::ClientSecret { .. } => "client secret".to_string(),
        };
        f.debug_struct("ServiceCredentials")
            .field("service_account_id", &self.service_account_id())
            .field("credential", &kind)
            .finish()
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading the key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl ServiceCredentials {
    /// Reads a key file (as written by `AddServiceAccountKey` or
    /// `kiops-identity service-accounts create --key-out`).
    pub fn key_file(path: impl AsRef<Path>) -> Result<Self, CredentialsError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::key_json(&json)?)
    }

    /// A key file's JSON (e.g. from an environment variable or a secret
    /// store).
    pub fn key_json(json: &str) -> Result<Self, KeyError> {
        Self::key(KeyFile::from_json(json)?)
    }

    /// A parsed key file. The private key is checked here, so a bad file
    /// fails at start-up rather than at the first exchange.
    pub fn key(file: KeyFile) -> Result<Self, KeyError> {
        if file.service_account_id.is_empty() || file.credential_id.is_empty() {
            return Err(KeyError::InvalidPrivateKey(
                "key file: service_account_id and credential_id are required".into(),
            ));
        }
        file.assertion(0, 1)?;
        Ok(Self {
            credential: Secret::Key(file),
        })
    }

    /// A client secret (`kiops_sa_…`) of the account `service_account_id`.
    pub fn secret(service_account_id: &str, secret: &str) -> Self {
        Self {
            credential: Secret::ClientSecret {
                service_account_id: service_account_id.to_string(),
                secret: secret.to_string(),
            },
        }
    }

    pub fn service_account_id(&self) -> &str {
        match &self.credential {
            Secret::Key(k) => &k.service_account_id,
            Secret::ClientSecret {
                service_account_id, ..
            } => service_account_id,
        }
    }

    /// The exchange request at `now` (seconds since the epoch): a fresh
    /// assertion (new `jti`) each time, or the secret.
    pub fn exchange_request(&self, now: u64) -> Result<IssueServiceAccountTokenRequest, KeyError> {
        let credential = match &self.credential {
            Secret::Key(k) => Credential::Assertion(k.assertion(now, ASSERTION_LIFETIME_SECS)?),
            Secret::ClientSecret {
                service_account_id,
                secret,
            } => Credential::ClientSecret(ClientSecret {
                service_account_id: service_account_id.clone(),
                secret: secret.clone(),
            }),
        };
        Ok(IssueServiceAccountTokenRequest {
            credential: Some(credential),
        })
    }
}

/// Exchange again once 80% of the lifetime has passed, and never later than
/// a minute before expiry, so no call leaves with a token about to expire.
fn renew_after(expires_in_secs: i64) -> Duration {
    let life = Duration::from_secs(expires_in_secs.max(1) as u64);
    let margin = (life / 5).min(Duration::from_secs(60));
    life - margin
}

#[derive(Clone)]
struct Current {
    access: Arc<str>,
    /// `Bearer <access>`, built once and marked sensitive (HPACK never
    /// indexes it).
    authorization: http::HeaderValue,
    scopes: Arc<[String]>,
    renew_at: Instant,
}

struct Inner {
    auth: AuthServiceClient<Channel>,
    credentials: ServiceCredentials,
    current: Mutex<Option<Current>>,
    /// One exchange at a time; the others wait for its token.
    renewing: tokio::sync::Mutex<()>,
}

/// Tokens of one service account, exchanged on first use and again before
/// they expire, or after the server refused one ([`ServiceTokenSource::refused`]).
/// Cheap to clone; clones share the token.
#[derive(Clone)]
pub struct ServiceTokenSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServiceTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenSource")
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

impl ServiceTokenSource {
    /// Exchanges with the identity service on `channel` (no call is made
    /// yet; the first token is asked for on first use).
    pub fn new(channel: Channel, credentials: ServiceCredentials) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: AuthServiceClient::new(channel),
                credentials,
                current: Mutex::new(None),
                renewing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn credentials(&self) -> &ServiceCredentials {
        &self.inner.credentials
    }

    /// The access token to send now.
    pub async fn access_token(&self) -> Result<String, Status> {
        Ok(self.current().await?.access.to_string())
    }

    /// The `authorization` header value to send now (`Bearer …`, sensitive).
    pub async fn authorization(&self) -> Result<http::HeaderValue, Status> {
        Ok(self.current().await?.authorization)
    }

    /// The scopes of the token to send now, as the server granted them.
    pub async fn scopes(&self) -> Result<Vec<String>, Status> {
        Ok(self.current().await?.scopes.to_vec())
    }

    /// The server refused `token` (UNAUTHENTICATED): the next call exchanges
    /// again, once, unless another call already replaced the token.
    pub fn refused(&self, token: &str) {
        let mut g = self.lock();
        if g.as_ref().is_some_and(|c| &*c.access == token) {
            *g = None;
        }
    }

    /// Forgets the cached token: the next call exchanges again.
    pub fn renew_now(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        match self.inner.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn fresh(&self) -> Option<Current> {
        self.lock()
            .as_ref()
            .filter(|c| Instant::now() < c.renew_at)
            .cloned()
    }

    async fn current(&self) -> Result<Current, Status> {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one = self.inner.renewing.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let request = self
            .inner
            .credentials
            .exchange_request(now)
            .map_err(|e| Status::internal(format!("signing the assertion: {e}")))?;
        let r = self
            .inner
            .auth
            .clone()
            .issue_service_account_token(request)
            .await?
            .into_inner();
        let mut authorization =
            http::HeaderValue::try_from(format!("Bearer {}", r.access_token))
                .map_err(|_| Status::internal("access token is not a header value"))?;
        authorization.set_sensitive(true);
        let c = Current {
            access: r.access_token.into(),
            authorization,
            scopes: r.scopes.into(),
            renew_at: Instant::now() + renew_after(r.expires_in),
        };
        *self.lock() = Some(c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{watch_revocations, FetchError};
    use crate::service_account::{generate_key, AssertionClaims};
    use crate::{Authority, Issuer, ServiceIssueRequest, SigningKey, VerifyError};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use kiops_proto::v1::auth_service_server::{AuthService, AuthServiceServer};
    use kiops_proto::v1::{
        IssueServiceAccountTokenResponse, RevocationEvent, WatchRevocationsRequest,
        WatchRevocationsResponse,
    };
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_stream::StreamExt;
    use tonic::{Code, Request, Response};

    /// A tiny AuthService that exchanges like the real one: every assertion
    /// `jti` once, the one secret `s3cret`.
    #[derive(Default)]
    struct Mock {
        exchanges: AtomicUsize,
        jtis: Mutex<HashSet<String>>,
        expires_in: i64,
        /// Bearer tokens of the WatchRevocations calls, in order.
        watched: Mutex<Vec<String>>,
    }

    struct MockService(Arc<Mock>);

    #[tonic::async_trait]
    impl AuthService for MockService {
        /// Refuses the first token exchanged (as if it had expired); for
        /// any other, one `credential_removed` event of the token's account.
        async fn watch_revocations(
            &self,
            request: Request<WatchRevocationsRequest>,
        ) -> Result<Response<tonic::codegen::BoxStream<WatchRevocationsResponse>>, Status> {
            let bearer = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_string();
            self.0.watched.lock().unwrap().push(bearer.clone());
            if bearer.is_empty() || bearer.ends_with(".token.1") {
                return Err(Status::unauthenticated("token has expired"));
            }
            let mut event = RevocationEvent {
                event_id: "1".into(),
                user_id: bearer.split('.').next().unwrap_or_default().into(),
                session_id: "cred1".into(),
                reason: "credential_removed".into(),
                revoke_time: Some(Default::default()),
                ..Default::default()
            };
            if let Some(t) = event.revoke_time.as_mut() {
                t.seconds = jsonwebtoken::get_current_timestamp() as i64;
            }
            let events = tokio_stream::iter([Ok(WatchRevocationsResponse { event: Some(event) })])
                .chain(tokio_stream::pending());
            Ok(Response::new(Box::pin(events)))
        }

        async fn issue_service_account_token(
            &self,
            request: Request<IssueServiceAccountTokenRequest>,
        ) -> Result<Response<IssueServiceAccountTokenResponse>, Status> {
            let m = &self.0;
            let n = m.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
            // Slow enough that concurrent callers overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sub = match request.into_inner().credential {
                Some(Credential::Assertion(a)) => {
                    let payload = a.split('.').nth(1).unwrap_or_default();
                    let claims: AssertionClaims = URL_SAFE_NO_PAD
                        .decode(payload)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .ok_or_else(|| Status::unauthenticated("INVALID_ASSERTION"))?;
                    if !m.jtis.lock().unwrap().insert(claims.jti) {
                        return Err(Status::unauthenticated("ASSERTION_REPLAYED"));
                    }
                    claims.sub
                }
                Some(Credential::ClientSecret(s)) if s.secret == "s3cret" => s.service_account_id,
                _ => return Err(Status::unauthenticated("INVALID_CREDENTIALS")),
            };
            Ok(Response::new(IssueServiceAccountTokenResponse {
                access_token: format!("{sub}.token.{n}"),
                expires_in: m.expires_in,
                token_type: "Bearer".into(),
                scopes: vec!["revocations.watch".into()],
            }))
        }
    }

    async fn serve(mock: Arc<Mock>) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthServiceServer::new(MockService(mock)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn key_credentials() -> ServiceCredentials {
        let (private, _) = generate_key().unwrap();
        ServiceCredentials::key(KeyFile::new("sa1", "cred1", "kiops-identity", &private)).unwrap()
    }

    #[test]
    fn renews_before_expiry() {
        assert_eq!(renew_after(300), Duration::from_secs(240));
        assert_eq!(renew_after(3600), Duration::from_secs(3540));
        assert!(renew_after(0) <= Duration::from_secs(1));
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let (private, _) = generate_key().unwrap();
        let file = KeyFile::new("sa1", "cred1", "iss", &private);
        let key = ServiceCredentials::key_json(&file.to_json().unwrap()).unwrap();
        let secret = ServiceCredentials::secret("sa2", "kiops_sa_hunter2");
        for (c, id) in [(&key, "sa1"), (&secret, "sa2")] {
            let shown = format!("{c:?}");
            assert!(shown.contains(id), "{shown}");
            assert!(
                !shown.contains("PRIVATE") && !shown.contains("hunter2"),
                "{shown}"
            );
            assert_eq!(c.service_account_id(), id);
        }
    }

    #[test]
    fn bad_key_files_fail_early() {
        let bad = KeyFile::new("sa1", "cred1", "iss", "-----BEGIN PRIVATE KEY-----\nx\n");
        assert!(ServiceCredentials::key(bad).is_err());
        let (private, _) = generate_key().unwrap();
        assert!(ServiceCredentials::key(KeyFile::new("", "cred1", "iss", &private)).is_err());
        let missing = ServiceCredentials::key_file("/nonexistent/kiops-key.json").unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/kiops-key.json"));
    }

    #[test]
    fn every_request_carries_a_fresh_assertion() {
        let c = key_credentials();
        let a = c.exchange_request(1_000).unwrap();
        let b = c.exchange_request(1_000).unwrap();
        assert_ne!(a, b, "a new jti each time");
        let Some(Credential::Assertion(a)) = a.credential else {
            panic!("assertion")
        };
        let payload = a.split('.').nth(1).unwrap();
        let claims: AssertionClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!((claims.iss.as_str(), claims.sub.as_str()), ("sa1", "sa1"));
        assert_eq!(claims.aud, "kiops-identity");
        assert_eq!(claims.exp, 1_000 + ASSERTION_LIFETIME_SECS);
        let s = ServiceCredentials::secret("sa2", "s3cret").exchange_request(0);
        assert!(matches!(
            s.unwrap().credential,
            Some(Credential::ClientSecret(ClientSecret { ref secret, .. })) if secret == "s3cret"
        ));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_exchange_and_the_cache() {
        let mock = Arc::new(Mock {
            expires_in: 300,
            ..Default::default()
        });
        let source = ServiceTokenSource::new(serve(mock.clone()).await, key_credentials());
        let calls = (0..20).map(|_| {
            let s = source.clone();
            tokio::spawn(async move { s.access_token().await })
        });
        let mut tokens = HashSet::new();
        for c in calls {
            tokens.insert(c.await.unwrap().unwrap());
        }
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_eq!(mock.exchanges.load(Ordering::SeqCst), 1);
        let auth = source.authorization().await.unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(
            auth,
            format!("Bearer {}", tokens.iter().next().unwrap()).as_str()
        );
        assert_eq!(source.scopes().await.unwrap(), vec!["revocations.watch"]);
        assert_eq!(mock.exchanges.load(Ordering::SeqCst), 1, "cached");
    }

    #[tokio::test]
    async fn a_token_is_exchanged_again_before_it_expires() {
        // A 1-second token is renewed after 0.8 s, each time with a new
        // assertion (the mock, like the server, refuses a replayed jti).
        let mock = Arc::new(Mock {
            expires_in: 1,
            ..Default::default()
        });
        let source = ServiceTokenSource::new(serve(mock.clone()).await, key_credentials());
        let first = source.access_token().await.unwrap();
        assert_eq!(source.access_token().await.unwrap(), first);
        tokio::time::sleep(Duration::from_millis(900)).await;
        let second = source.access_token().await.unwrap();
        assert_ne!(second, first);
        assert_eq!(mock.exchanges.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_token_is_exchanged_again_once() {
        let mock = Arc::new(Mock {
            expires_in: 300,
            ..Default::default()
        });
        let source = ServiceTokenSource::new(
            serve(mock.clone()).await,
            ServiceCredentials::secret("sa2", "s3cret"),
        );
        let first = source.access_token().await.unwrap();
        assert!(first.starts_with("sa2."));
        // Twenty calls saw the same token refused: one new exchange.
        for _ in 0..20 {
            source.refused(&first);
        }
        let second = source.access_token().await.unwrap();
        assert_ne!(second, first);
        // A late refusal of the old token does not throw the new one away.
        source.refused(&first);
        assert_eq!(source.access_token().await.unwrap(), second);
        assert_eq!(mock.exchanges.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_exchange_is_the_callers_error() {
        let mock = Arc::new(Mock::default());
        let source = ServiceTokenSource::new(
            serve(mock).await,
            ServiceCredentials::secret("sa2", "wrong"),
        );
        let st = source.access_token().await.unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated);
        assert_eq!(st.message(), "INVALID_CREDENTIALS");
    }

    /// A service token of `account` for credential `cred1`, issued 10 s ago.
    fn issued(issuer: &Issuer, account: &str) -> String {
        issuer
            .issue_service_at(
                ServiceIssueRequest {
                    service_account_id: account.into(),
                    name: "device".into(),
                    owner_org: None,
                    scopes: vec!["revocations.watch".into()],
                    credential_id: "cred1".into(),
                },
                jsonwebtoken::get_current_timestamp() - 10,
            )
            .unwrap()
            .token
    }

    async fn until_revoked(authority: &Authority, token: &str) {
        for _ in 0..100 {
            if authority.verify(token, None) == Err(VerifyError::Revoked) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the revocation never arrived");
    }

    #[tokio::test]
    async fn watch_revocations_runs_on_service_credentials_and_renews_a_refused_token() {
        let mock = Arc::new(Mock {
            expires_in: 300,
            ..Default::default()
        });
        let channel = serve(mock.clone()).await;
        let key = SigningKey::generate();
        let issuer = Issuer::new(key.clone(), "i", "a", 300);
        let authority = Authority::new(key.public_jwk_set(), "i", "a").unwrap();
        let token = issued(&issuer, "sa1");
        assert!(authority.verify(&token, None).is_ok());

        let source = ServiceTokenSource::new(channel.clone(), key_credentials());
        let watcher = watch_revocations(authority.clone(), channel.clone(), source.clone());
        until_revoked(&authority, &token).await;
        watcher.abort();
        // The first token was refused: exchanged again, once, and the
        // stream opened with the new one.
        let watched = mock.watched.lock().unwrap().clone();
        assert_eq!(watched, vec!["sa1.token.1", "sa1.token.2"]);
        assert_eq!(mock.exchanges.load(Ordering::SeqCst), 2);
        assert_eq!(source.access_token().await.unwrap(), "sa1.token.2");

        // The closure form still works (asked again for every connection).
        let other = issued(&issuer, "sa9");
        let watcher = watch_revocations(authority.clone(), channel, || async {
            Ok::<_, FetchError>("sa9.static".to_string())
        });
        until_revoked(&authority, &other).await;
        watcher.abort();
    }
}
