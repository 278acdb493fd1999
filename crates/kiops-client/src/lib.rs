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
//! TLS: build the [`tonic::transport::Channel`] yourself (with
//! `Endpoint::tls_config`) and use [`Client::login_with_channel`].

mod session;

pub use kiops_proto::v1;
pub use session::{AuthChannel, Credentials};

use kiops_proto::v1::approval_service_client::ApprovalServiceClient;
use kiops_proto::v1::audit_service_client::AuditServiceClient;
use kiops_proto::v1::auth_service_client::AuthServiceClient;
use kiops_proto::v1::invitation_service_client::InvitationServiceClient;
use kiops_proto::v1::membership_service_client::MembershipServiceClient;
use kiops_proto::v1::organization_service_client::OrganizationServiceClient;
use kiops_proto::v1::user_service_client::UserServiceClient;
use session::Session;
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

impl Client {
    /// Connects to `url` (e.g. `http://identity:50051`) and logs in.
    pub async fn login(url: &str, email: &str, password: &str) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Endpoint(e.to_string()))?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await?;
        Self::login_with_channel(channel, Credentials::password(email, password)).await
    }

    /// Logs in over a channel you configured (TLS, timeouts, load balancing).
    pub async fn login_with_channel(
        channel: Channel,
        credentials: Credentials,
    ) -> Result<Self, Error> {
        let session = Session::login(channel.clone(), credentials).await?;
        Ok(Self {
            channel: AuthChannel::new(channel, Arc::new(session)),
        })
    }

    /// The channel every typed client uses; for generated clients of other
    /// services that should carry the same token.
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    /// The current access token, refreshed first if it is about to expire;
    /// for calling other KIOPS services with the same identity.
    pub async fn access_token(&self) -> Result<String, tonic::Status> {
        self.channel.session().access_token().await
    }

    /// Ends the session on the server (its refresh token stops working).
    pub async fn logout(&self) -> Result<(), tonic::Status> {
        let refresh_token = self.channel.session().refresh_token().await;
        self.auth()
            .logout(v1::LogoutRequest { refresh_token })
            .await?;
        // Its access token is refused from now on: sign in again next time.
        self.channel.session().renew_now().await;
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
}
