//! Steps the session tests share (R29): a login from a named client, the
//! session of a token, and what an ended session's token gets.

use super::*;
use kiops_proto::v1::*;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

/// Logs `email` in (password `PASSWORD`) over a channel whose calls say
/// `user-agent: <agent> …`.
pub async fn login_as(s: &TestServer, agent: &str, email: &str) -> LoginResponse {
    let ch = Endpoint::from_shared(s.grpc_url())
        .expect("url")
        .user_agent(agent)
        .expect("user agent")
        .connect()
        .await
        .expect("connect");
    kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            organization_id: None,
        })
        .await
        .expect("login")
        .into_inner()
}

/// The session (`sid` claim) of an access token.
pub fn sid(token: &str) -> String {
    token_claims(token)["sid"]
        .as_str()
        .expect("sid")
        .to_string()
}

pub async fn get_me(s: &TestServer, token: &str) -> Result<(), Status> {
    s.users()
        .await
        .get_me(authed(GetMeRequest {}, token))
        .await
        .map(|_| ())
}

pub fn assert_revoked(r: Result<(), Status>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
    assert_eq!(reason(&e), "SESSION_REVOKED", "{what}: {e:?}");
}
