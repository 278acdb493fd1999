//! Rust client for kiops-identity.
//!
//! [`Client::login`] signs in once; every typed client it hands out
//! ([`Client::users`], [`Client::memberships`], …) sends the current access
//! token, and the token is refreshed (the refresh token rotates) shortly
//! before it expires, so a long-running service never sees an expired-token
//! error. Concurrent calls share one refresh.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kiops_client::{Client, v1};
//! let client = Client::login("http://127.0.0.1:50051", "ops@example.com", "a long password").await?;
//! let me = client.users().get_me(v1::GetMeRequest {}).await?.into_inner();
//! println!("{:?}", me.user.map(|u| u.email));
//! # Ok(()) }
//! ```
//!
//! A service (a downstream KIOPS service, a job) signs in as a service
//! account instead, with a key file or a client secret: every call carries a
//! service token, exchanged again (`AuthService.IssueServiceAccountToken`)
//! before it expires or after the server refused it. Such a client may call
//! only what the account's scopes allow (`CheckPermission` with
//! `permissions.check`, …).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kiops_client::{Client, ServiceCredentials, v1};
//! let key = ServiceCredentials::key_file("/var/run/secrets/kiops/key.json")?;
//! let client = Client::service_account("http://127.0.0.1:50051", key).await?;
//! let check = v1::CheckPermissionRequest {
//!     user_id: "…".into(), organization_id: "…".into(),
//!     permission: v1::Permission::Device as i32,
//! };
//! let allowed = client.memberships().check_permission(check).await?.into_inner().allowed;
//! # let _ = allowed; Ok(()) }
//! ```
//!
//! TLS: build the [`tonic::transport::Channel`] yourself (with
//! `Endpoint::tls_config`) and use [`Client::login_with_channel`] or
//! [`Client::service_account_with_channel`].

mod session;

pub use kiops_proto::v1;
pub use kiops_token::remote::{CredentialsError, ServiceCredentials};
pub use session::{AuthChannel, Credentials};

use kiops_proto::v1::approval_service_client::ApprovalServiceClient;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::invitation_service_client::InvitationServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::organization_service_client::OrganizationServiceClient;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::user_service_client::UserServiceClient;
use kiops_token::remote::ServiceTokenSource;
use session::{Identity, Session};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Errors of connecting and signing in. Calls made through the typed
/// clients return `tonic::Status` as usual.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("sign-in refused: {0}")]
    Login(#[from] tonic::Status),
}

/// A signed-in connection to kiops-identity. Cheap to clone; clones share
/// the session.
#[derive(Clone)]
pub struct Client {
    channel: AuthChannel,
}

async fn connect(url: &str) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Endpoint(e.to_string()))?
        .connect_timeout(Duration::from_secs(10));
    Ok(endpoint.connect().await?)
}

impl Client {
    /// Connects to `url` (e.g. `http://identity:50051`) and logs in.
    pub async fn login(url: &str, email: &str, password: &str) -> Result<Self, Error> {
        let channel = connect(url).await?;
        Self::login_with_channel(channel, Credentials::password(email, password)).await
    }

    /// Logs in over a channel you configured (TLS, timeouts, load balancing).
    pub async fn login_with_channel(
        channel: Channel,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        let session = Session::login(channel.clone(), credentials).await?;
        Ok(Self {
            channel: AuthChannel::new(channel, Arc::new(Identity::User(Box::new(session)))),
        })
    }

    /// Connects to `url` and signs in as a service account: the credential
    /// is exchanged once now (so a wrong key or secret fails here) and again
    /// whenever the token is due.
    pub async fn service_account(
        url: &str,
        credentials: ServiceCredentials,
    ) -> Result<Self, Error> {
        let channel = connect(url).await?;
        Self::service_account_with_channel(channel, credentials).await
    }

    /// [`Client::service_account`] over a channel you configured (TLS, a
    /// client certificate when the account is bound to one).
    pub async fn service_account_with_channel(
        channel: Channel,
        credentials: ServiceCredentials,
    ) -> Result<Self, Error> {
        let tokens = ServiceTokenSource::new(channel.clone(), credentials);
        tokens.access_token().await?;
        Ok(Self {
            channel: AuthChannel::new(channel, Arc::new(Identity::Service(tokens))),
        })
    }

    /// The service account's token source when signed in as one: share it
    /// with `kiops_token::remote::watch_revocations` so both use one token.
    pub fn service_tokens(&self) -> Option<ServiceTokenSource> {
        match self.channel.identity() {
            Identity::Service(s) => Some(s.clone()),
            Identity::User(_) => None,
        }
    }

    /// The channel every typed client uses; for generated clients of other
    /// services that should carry the same token.
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    /// The current access token, refreshed first if it is about to expire;
    /// for calling other KIOPS services with the same identity.
    pub async fn access_token(&self) -> Result<String, tonic::Status> {
        self.channel.identity().access_token().await
    }

    /// Ends the session on the server (its refresh token stops working).
    /// A service account has no session: its cached token is dropped (it
    /// expires by itself; removing the credential revokes it).
    pub async fn logout(&self) -> Result<(), tonic::Status> {
        let session = match self.channel.identity() {
            Identity::User(s) => s,
            Identity::Service(s) => {
                s.renew_now();
                return Ok(());
            }
        };
        let refresh_token = session.refresh_token().await;
        self.auth()
            .logout(v1::LogoutRequest { refresh_token })
            .await?;
        // Its access token is refused from now on: sign in again next time.
        session.renew_now().await;
        Ok(())
    }

    pub fn auth(&self) -> AuthServiceClient<AuthChannel> {
        AuthServiceClient::new(self.channel())
    }
    pub fn users(&self) -> UserServiceClient<AuthChannel> {
        UserServiceClient::new(self.channel())
    }
    pub fn organizations(&self) -> OrganizationServiceClient<AuthChannel> {
        OrganizationServiceClient::new(self.channel())
    }
    pub fn memberships(&self) -> MembershipServiceClient<AuthChannel> {
        MembershipServiceClient::new(self.channel())
    }
    pub fn invitations(&self) -> InvitationServiceClient<AuthChannel> {
        InvitationServiceClient::new(self.channel())
    }
    pub fn approvals(&self) -> ApprovalServiceClient<AuthChannel> {
        ApprovalServiceClient::new(self.channel())
    }
    pub fn audit(&self) -> AuditServiceClient<AuthChannel> {
        AuditServiceClient::new(self.channel())
    }
    pub fn service_accounts(&self) -> ServiceAccountServiceClient<AuthChannel> {
        ServiceAccountServiceClient::new(self.channel())
    }
}
