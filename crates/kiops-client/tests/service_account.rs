//! The service-account mode against a tiny in-process server: the token is
//! exchanged once, shared by concurrent calls, and exchanged again after the
//! server refused it. (The real server is exercised by tests/e2e.)

use kiops_client::{v1, Client, Error, ServiceCredentials};
use kiops_proto::v1::auth_service_server::{AuthService, AuthServiceServer};
use kiops_proto::v1::issue_service_account_token_request::Credential;
use kiops_proto::v1::membership_service_server::{MembershipService, MembershipServiceServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

#[derive(Default)]
struct State {
    exchanges: AtomicUsize,
    /// Tokens the membership service refuses (as if revoked).
    refused: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Mock(Arc<State>);

#[tonic::async_trait]
impl AuthService for Mock {
    async fn issue_service_account_token(
        &self,
        request: Request<v1::IssueServiceAccountTokenRequest>,
    ) -> Result<Response<v1::IssueServiceAccountTokenResponse>, Status> {
        match request.into_inner().credential {
            Some(Credential::ClientSecret(s)) if s.secret == "kiops_sa_right" => {
                let n = self.0.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Response::new(v1::IssueServiceAccountTokenResponse {
                    access_token: format!("{}.t{n}", s.service_account_id),
                    expires_in: 300,
                    token_type: "Bearer".into(),
                    scopes: vec!["permissions.check".into()],
                }))
            }
            _ => Err(Status::unauthenticated("invalid credentials")),
        }
    }
}

#[tonic::async_trait]
impl MembershipService for Mock {
    async fn check_permission(
        &self,
        request: Request<v1::CheckPermissionRequest>,
    ) -> Result<Response<v1::CheckPermissionResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        if bearer.is_empty() || self.0.refused.lock().unwrap().contains(&bearer) {
            return Err(Status::unauthenticated("token was revoked"));
        }
        Ok(Response::new(v1::CheckPermissionResponse {
            allowed: true,
            ..Default::default()
        }))
    }
}

async fn serve(state: Arc<State>) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(Mock(state.clone())))
            .add_service(MembershipServiceServer::new(Mock(state)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn check() -> v1::CheckPermissionRequest {
    v1::CheckPermissionRequest {
        user_id: "u1".into(),
        organization_id: "o1".into(),
        permission: v1::Permission::Device as i32,
    }
}

#[tokio::test]
async fn a_service_account_client_renews_its_token_itself() {
    let state = Arc::new(State::default());
    let channel = serve(state.clone()).await;
    let client = Client::service_account_with_channel(
        channel.clone(),
        ServiceCredentials::secret("sa1", "kiops_sa_right"),
    )
    .await
    .expect("exchanged at start");
    assert_eq!(state.exchanges.load(Ordering::SeqCst), 1);
    let first = client.access_token().await.unwrap();
    assert_eq!(first, "sa1.t1");
    // Twenty concurrent calls share the cached token.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.memberships().check_permission(check()).await })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().expect("allowed").into_inner().allowed);
    }
    assert_eq!(state.exchanges.load(Ordering::SeqCst), 1);

    // The server refuses the token: that call fails, the next exchanges
    // again (once, though twenty calls saw the refusal) and succeeds.
    state.refused.lock().unwrap().push(first.clone());
    let refused: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.memberships().check_permission(check()).await })
        })
        .collect();
    for c in refused {
        assert_eq!(c.await.unwrap().unwrap_err().code(), Code::Unauthenticated);
    }
    client
        .memberships()
        .check_permission(check())
        .await
        .expect("a fresh token");
    assert_eq!(client.access_token().await.unwrap(), "sa1.t2");
    assert_eq!(state.exchanges.load(Ordering::SeqCst), 2);
    assert!(client.service_tokens().is_some());

    // logout drops the cached token: the next call exchanges again.
    client.logout().await.expect("logout");
    client
        .memberships()
        .check_permission(check())
        .await
        .unwrap();
    assert_eq!(state.exchanges.load(Ordering::SeqCst), 3);

    // A wrong secret fails at sign-in, and says nothing of the secret.
    let wrong = Client::service_account_with_channel(
        channel,
        ServiceCredentials::secret("sa1", "kiops_sa_wrong"),
    )
    .await;
    match wrong {
        Err(Error::Login(st)) => {
            assert_eq!(st.code(), Code::Unauthenticated);
            assert!(!format!("{st:?}").contains("kiops_sa_wrong"));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a wrong secret signed in"),
    }
}
