//! Service-account steps the e2e tests share: made by the PlatformAdmin
//! through the API, exchanged through `IssueServiceAccountToken`.

use super::{authed, TestServer};
use kiops_proto::v1::issue_service_account_token_request::Credential;
use kiops_proto::v1::service_account_service_client::ServiceAccountServiceClient;
use kiops_proto::v1::*;
use kiops_token::service_account::KeyFile;

/// (credential id, secret)
pub async fn add_secret(s: &TestServer, admin: &str, account: &str) -> (String, String) {
    let r = ServiceAccountServiceClient::new(s.channel().await)
        .add_service_account_secret(authed(
            AddServiceAccountSecretRequest {
                service_account_id: account.into(),
            },
            admin,
        ))
        .await
        .expect("add secret")
        .into_inner();
    (r.credential.expect("credential").credential_id, r.secret)
}

pub async fn add_generated_key(s: &TestServer, admin: &str, account: &str) -> KeyFile {
    let r = ServiceAccountServiceClient::new(s.channel().await)
        .add_service_account_key(authed(
            AddServiceAccountKeyRequest {
                service_account_id: account.into(),
                public_key_pem: String::new(),
            },
            admin,
        ))
        .await
        .expect("add key")
        .into_inner();
    KeyFile::from_json(&r.key_file_json).expect("key file")
}

pub fn by_secret(account: &str, secret: &str) -> IssueServiceAccountTokenRequest {
    IssueServiceAccountTokenRequest {
        credential: Some(Credential::ClientSecret(ClientSecret {
            service_account_id: account.into(),
            secret: secret.into(),
        })),
    }
}

pub fn by_assertion(assertion: &str) -> IssueServiceAccountTokenRequest {
    IssueServiceAccountTokenRequest {
        credential: Some(Credential::Assertion(assertion.into())),
    }
}
