//! `ServiceAccountService` over gRPC: decode, call
//! `service::service_accounts`, encode. Service accounts themselves are
//! refused by `context::start` (no scope opens these RPCs).

use super::context;
use super::convert::timestamp;
use crate::app::App;
use crate::domain::service_account::{AccountStatus, Credential, CredentialKind, ServiceAccount};
use crate::service::{service_accounts as sa, to_completion};
use kiops_proto::v1::service_account_service_server::ServiceAccountService;
use kiops_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct ServiceAccountApi {
    app: App,
}

impl ServiceAccountApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

fn account(a: &ServiceAccount) -> kiops_proto::v1::ServiceAccount {
    kiops_proto::v1::ServiceAccount {
        service_account_id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        organization_id: a.owner.org_id().unwrap_or_default().to_string(),
        scopes: a.scopes.iter().map(|s| s.as_str().to_string()).collect(),
        status: match a.status {
            AccountStatus::Active => ServiceAccountStatus::Active,
            AccountStatus::Disabled => ServiceAccountStatus::Disabled,
        } as i32,
        created_by: a.created_by.clone().unwrap_or_default(),
        create_time: Some(timestamp(a.created_at_ms)),
        update_time: Some(timestamp(a.updated_at_ms)),
        certificate_identity: a.certificate_identity.clone().unwrap_or_default(),
    }
}

fn credential(c: &Credential) -> ServiceAccountCredential {
    ServiceAccountCredential {
        credential_id: c.id.clone(),
        service_account_id: c.service_account_id.clone(),
        r#type: match c.kind {
            CredentialKind::Key => CredentialType::Key,
            CredentialKind::Secret => CredentialType::Secret,
        } as i32,
        fingerprint: c.fingerprint.clone(),
        create_time: Some(timestamp(c.created_at_ms)),
        last_use_time: c.last_used_at_ms.map(timestamp),
    }
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccountApi {
    async fn create_service_account(
        &self,
        request: Request<CreateServiceAccountRequest>,
    ) -> Result<Response<CreateServiceAccountResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let a = to_completion(sa::create(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(CreateServiceAccountResponse {
            service_account: Some(account(&a)),
        }))
    }

    async fn get_service_account(
        &self,
        request: Request<GetServiceAccountRequest>,
    ) -> Result<Response<GetServiceAccountResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let a = sa::get(&self.app, &caller, &r.service_account_id).await?;
        Ok(Response::new(GetServiceAccountResponse {
            service_account: Some(account(&a)),
        }))
    }

    async fn list_service_accounts(
        &self,
        request: Request<ListServiceAccountsRequest>,
    ) -> Result<Response<ListServiceAccountsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let page = sa::list(&self.app, &caller, r).await?;
        Ok(Response::new(ListServiceAccountsResponse {
            service_accounts: page.items.iter().map(account).collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size as i64,
        }))
    }

    async fn update_service_account(
        &self,
        request: Request<UpdateServiceAccountRequest>,
    ) -> Result<Response<UpdateServiceAccountResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let a = to_completion(sa::update(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(UpdateServiceAccountResponse {
            service_account: Some(account(&a)),
        }))
    }

    async fn disable_service_account(
        &self,
        request: Request<DisableServiceAccountRequest>,
    ) -> Result<Response<DisableServiceAccountResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let a = to_completion(sa::set_status(
            self.app.clone(),
            meta,
            caller,
            r.service_account_id,
            AccountStatus::Disabled,
        ))
        .await?;
        Ok(Response::new(DisableServiceAccountResponse {
            service_account: Some(account(&a)),
        }))
    }

    async fn enable_service_account(
        &self,
        request: Request<EnableServiceAccountRequest>,
    ) -> Result<Response<EnableServiceAccountResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let a = to_completion(sa::set_status(
            self.app.clone(),
            meta,
            caller,
            r.service_account_id,
            AccountStatus::Active,
        ))
        .await?;
        Ok(Response::new(EnableServiceAccountResponse {
            service_account: Some(account(&a)),
        }))
    }

    async fn delete_service_account(
        &self,
        request: Request<DeleteServiceAccountRequest>,
    ) -> Result<Response<DeleteServiceAccountResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(sa::delete(
            self.app.clone(),
            meta,
            caller,
            r.service_account_id,
        ))
        .await?;
        Ok(Response::new(DeleteServiceAccountResponse {}))
    }

    async fn add_service_account_key(
        &self,
        request: Request<AddServiceAccountKeyRequest>,
    ) -> Result<Response<AddServiceAccountKeyResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let added = to_completion(sa::add_key(self.app.clone(), meta, caller, r)).await?;
        Ok(Response::new(AddServiceAccountKeyResponse {
            credential: Some(credential(&added.credential)),
            private_key_pem: added.private_key_pem.unwrap_or_default(),
            key_file_json: added.key_file_json.unwrap_or_default(),
        }))
    }

    async fn add_service_account_secret(
        &self,
        request: Request<AddServiceAccountSecretRequest>,
    ) -> Result<Response<AddServiceAccountSecretResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        let added = to_completion(sa::add_secret(
            self.app.clone(),
            meta,
            caller,
            r.service_account_id,
        ))
        .await?;
        Ok(Response::new(AddServiceAccountSecretResponse {
            credential: Some(credential(&added.credential)),
            secret: added.secret,
        }))
    }

    async fn list_service_account_credentials(
        &self,
        request: Request<ListServiceAccountCredentialsRequest>,
    ) -> Result<Response<ListServiceAccountCredentialsResponse>, Status> {
        let (_, caller, r) = context::start(&self.app, request).await?;
        let list = sa::list_credentials(&self.app, &caller, &r.service_account_id).await?;
        Ok(Response::new(ListServiceAccountCredentialsResponse {
            credentials: list.iter().map(credential).collect(),
        }))
    }

    async fn remove_service_account_credential(
        &self,
        request: Request<RemoveServiceAccountCredentialRequest>,
    ) -> Result<Response<RemoveServiceAccountCredentialResponse>, Status> {
        let (meta, caller, r) = context::start(&self.app, request).await?;
        to_completion(sa::remove_credential(
            self.app.clone(),
            meta,
            caller,
            r.service_account_id,
            r.credential_id,
        ))
        .await?;
        Ok(Response::new(RemoveServiceAccountCredentialResponse {}))
    }
}
