//! The token pair of a signed-in session, or the token of a service
//! account, and the channel that attaches it.

use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::{LoginRequest, RefreshRequest};
use kiops_token::remote::ServiceTokenSource;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::RwLock;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How to sign in.
#[derive(Clone)]
pub struct Credentials {
    email: String,
    password: String,
    organization_id: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, even in a debug dump.
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .field("organization_id", &self.organization_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn password(email: &str, password: &str) -> Self {
        Self {
            email: email.to_string(),
            password: password.to_string(),
            organization_id: None,
        }
    }

    /// Tokens that carry only this organization (least privilege for a
    /// service acting in one organization).
    pub fn for_organization(mut self, organization_id: &str) -> Self {
        self.organization_id = Some(organization_id.to_string());
        self
    }
}

struct Tokens {
    access: String,
    /// `Bearer <access>`, built once per token rather than per call (each
    /// call then clones a reference count), and marked sensitive so HPACK
    /// sends it as never-indexed and no proxy keeps it in a table.
    authorization: http::HeaderValue,
    refresh: String,
    /// When to refresh: ahead of expiry, so a call never leaves with a
    /// token that expires in flight.
    renew_at: Instant,
}

impl Tokens {
    fn new(access: String, refresh: String, expires_in: i64) -> Result<Self, Status> {
        let mut authorization = http::HeaderValue::try_from(format!("Bearer {access}"))
            .map_err(|_| Status::internal("access token is not a header value"))?;
        authorization.set_sensitive(true);
        Ok(Self {
            access,
            authorization,
            refresh,
            renew_at: Instant::now() + renew_after(expires_in),
        })
    }
}

/// Refresh when 80% of the lifetime has passed, and never later than a
/// minute before expiry.
fn renew_after(expires_in_secs: i64) -> Duration {
    let life = Duration::from_secs(expires_in_secs.max(1) as u64);
    let margin = (life / 5).min(Duration::from_secs(60));
    life - margin
}

pub(crate) struct Session {
    auth: AuthServiceClient<Channel>,
    credentials: Credentials,
    tokens: RwLock<Tokens>,
}

impl Session {
    pub(crate) async fn login(channel: Channel, credentials: Credentials) -> Result<Self, Status> {
        let mut auth = AuthServiceClient::new(channel);
        let tokens = Self::password_login(&mut auth, &credentials).await?;
        Ok(Self {
            auth,
            credentials,
            tokens: RwLock::new(tokens),
        })
    }

    async fn password_login(
        auth: &mut AuthServiceClient<Channel>,
        c: &Credentials,
    ) -> Result<Tokens, Status> {
        let r = auth
            .login(LoginRequest {
                email: c.email.clone(),
                password: c.password.clone(),
                organization_id: c.organization_id.clone(),
            })
            .await?
            .into_inner();
        if r.second_factor.is_some() {
            // No tokens without a code (R30); a password alone cannot
            // keep such a session signed in.
            return Err(Status::failed_precondition(
                "the account has a second factor: the client signs in with a password only",
            ));
        }
        Tokens::new(r.access_token, r.refresh_token, r.expires_in)
    }

    /// The access token to send now.
    pub(crate) async fn access_token(&self) -> Result<String, Status> {
        self.current(|t| t.access.clone()).await
    }

    /// The `authorization` header to send now.
    pub(crate) async fn authorization(&self) -> Result<http::HeaderValue, Status> {
        self.current(|t| t.authorization.clone()).await
    }

    /// `pick` of the tokens to send now. Readers share the lock; one caller
    /// refreshes while the others wait for its result.
    async fn current<T>(&self, pick: impl Fn(&Tokens) -> T) -> Result<T, Status> {
        {
            let t = self.tokens.read().await;
            if Instant::now() < t.renew_at {
                return Ok(pick(&t));
            }
        }
        let mut t = self.tokens.write().await;
        if Instant::now() < t.renew_at {
            return Ok(pick(&t));
        }
        let mut auth = self.auth.clone();
        let refreshed = auth
            .refresh(RefreshRequest {
                refresh_token: t.refresh.clone(),
                organization_id: self.credentials.organization_id.clone(),
            })
            .await;
        *t = match refreshed {
            Ok(r) => {
                let r = r.into_inner();
                Tokens::new(r.access_token, r.refresh_token, r.expires_in)?
            }
            // The session ended (logout elsewhere, password change, absolute
            // lifetime): sign in again with the same credentials.
            Err(s) if s.code() == Code::Unauthenticated => {
                Self::password_login(&mut auth, &self.credentials).await?
            }
            Err(s) => return Err(s),
        };
        Ok(pick(&t))
    }

    /// Makes the next call renew first: the server said the session ended
    /// (`SESSION_REVOKED` and other UNAUTHENTICATED answers), so the token
    /// must not be sent again until a refresh or a new sign-in replaced it.
    pub(crate) async fn renew_now(&self) {
        self.tokens.write().await.renew_at = Instant::now();
    }

    pub(crate) async fn refresh_token(&self) -> String {
        self.tokens.read().await.refresh.clone()
    }
}

/// Where the access token comes from: a person's session (refresh token,
/// password sign-in again when it ended) or a service account's credential
/// (exchanged again before expiry; there is no refresh token).
pub(crate) enum Identity {
    User(Box<Session>),
    Service(ServiceTokenSource),
}

impl Identity {
    pub(crate) async fn access_token(&self) -> Result<String, Status> {
        match self {
            Identity::User(s) => s.access_token().await,
            Identity::Service(s) => s.access_token().await,
        }
    }

    async fn authorization(&self) -> Result<http::HeaderValue, Status> {
        match self {
            Identity::User(s) => s.authorization().await,
            Identity::Service(s) => s.authorization().await,
        }
    }

    /// The server refused `sent` (UNAUTHENTICATED): the next call renews.
    async fn refused(&self, sent: &http::HeaderValue) {
        match self {
            Identity::User(s) => s.renew_now().await,
            Identity::Service(s) => {
                if let Some(t) = sent.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
                    s.refused(t);
                }
            }
        }
    }
}

/// A [`Channel`] that sets `authorization: Bearer <access token>` on every
/// call, refreshing the token first when it is due. Generated tonic clients
/// accept it wherever they accept a `Channel`.
#[derive(Clone)]
pub struct AuthChannel {
    inner: Channel,
    identity: Arc<Identity>,
}

impl AuthChannel {
    pub(crate) fn new(inner: Channel, identity: Arc<Identity>) -> Self {
        Self { inner, identity }
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for AuthChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // The channel that was polled ready serves this call; the clone left
        // behind gets polled for the next one (tower's usual hand-off).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let identity = self.identity.clone();
        Box::pin(async move {
            // A Status returned as the error reaches the caller unchanged.
            let value = identity
                .authorization()
                .await
                .map_err(|s| Box::new(s) as BoxError)?;
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
            let response = tower::Service::call(&mut inner, req)
                .await
                .map_err(Into::<BoxError>::into)?;
            // A refusal comes as a trailers-only response: its status is in
            // the headers. Only that one call fails; the next renews.
            if response.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"16") {
                identity.refused(&value).await;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_before_expiry() {
        assert_eq!(renew_after(300), Duration::from_secs(240));
        assert_eq!(renew_after(3600), Duration::from_secs(3540));
        assert_eq!(renew_after(5), Duration::from_secs(4));
        assert!(renew_after(0) <= Duration::from_secs(1));
    }

    #[test]
    fn authorization_is_built_once_and_sensitive() {
        let t = Tokens::new("a.b.c".into(), "r".into(), 300).expect("a header value");
        assert_eq!(t.authorization, "Bearer a.b.c");
        assert!(t.authorization.is_sensitive());
        // A token that cannot travel in a header fails at sign-in, not at
        // every later call.
        assert!(Tokens::new("a\nb".into(), "r".into(), 300).is_err());
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials::password("a@b.c", "hunter2-hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
