//! `OrganizationService` (R18).

use super::{convert, parse};
use crate::app::App;
use crate::domain::error::{reason, Violations};
use crate::domain::page_token;
use crate::domain::{access, validate, Caller, DomainError};
use crate::store::audit::RequestMeta;
use crate::store::organizations::{self, NewOrganization, OrganizationChanges};
use crate::store::{db_err, memberships};
use kiops_proto::v1::organization_service_server::OrganizationService;
use kiops_proto::v1::*;
use serde_json::json;
use tonic::{Request, Response, Status};

pub const MAX_DESCRIPTION_CHARS: usize = 1000;

pub struct OrganizationApi {
    app: App,
}

impl OrganizationApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl App {
    async fn create_organization(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: CreateOrganizationRequest,
    ) -> Result<Organization, DomainError> {
        access::require_platform_admin(caller)?;
        let mut v = Violations::new();
        let name = v.take(validate::name("name", &r.name));
        let code = v.take(validate::org_code("code", &r.code));
        let description = v.take(validate::text(
            "description",
            &r.description,
            MAX_DESCRIPTION_CHARS,
        ));
        v.into_result()?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let org = organizations::create(
            &tx,
            meta,
            caller.actor(),
            NewOrganization {
                name,
                code,
                description,
            },
            now,
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(convert::organization(&org))
    }

    async fn get_organization(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Organization, DomainError> {
        let id = validate::id("organization_id", id)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let conn = self.store.conn();
        let role = memberships::role_of(conn, &id, &caller.user_id).await?;
        access::require_org_visible(caller, role)?;
        let org = organizations::find(conn, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("organization"))?;
        Ok(convert::organization(&org))
    }

    async fn list_organizations(
        &self,
        caller: &Caller,
        r: ListOrganizationsRequest,
    ) -> Result<ListOrganizationsResponse, DomainError> {
        let mut v = Violations::new();
        let size = v.take(validate::page_size("page_size", r.page_size));
        let query = v.take(parse::query("query", &r.query));
        let member_of = (!caller.platform_admin).then_some(caller.user_id.as_str());
        let fp = page_token::fingerprint(&["organizations", member_of.unwrap_or("*"), &query]);
        let key = self.tokens.page_key();
        let after = if r.page_token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fp, &r.page_token).map(Some))
        };
        v.into_result()?;
        let after_code = after
            .as_ref()
            .and_then(|k| k.first())
            .and_then(|c| c.as_str().map(str::to_string));
        let (rows, total) = organizations::list(
            self.store.conn(),
            member_of,
            &query,
            after_code.as_deref(),
            size + 1,
        )
        .await?;
        let more = rows.len() as u64 > size;
        let rows: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => page_token::encode(&key, &fp, vec![json!(last.code)]),
            _ => String::new(),
        };
        Ok(ListOrganizationsResponse {
            organizations: rows.iter().map(convert::organization).collect(),
            next_page_token,
            total_size: total as i64,
        })
    }

    async fn update_organization(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        r: UpdateOrganizationRequest,
    ) -> Result<Organization, DomainError> {
        let o = r.organization.unwrap_or_default();
        let mut v = Violations::new();
        let id = v.take(validate::id(
            "organization.organization_id",
            &o.organization_id,
        ));
        let paths = v.take(parse::mask(
            "update_mask",
            r.update_mask.as_ref(),
            &["name", "description", "code"],
            &["name", "description"],
        ));
        let mut changes = OrganizationChanges::default();
        for p in &paths {
            match p.as_str() {
                "name" => changes.name = Some(v.take(validate::name("organization.name", &o.name))),
                "description" => {
                    changes.description = Some(v.take(validate::text(
                        "organization.description",
                        &o.description,
                        MAX_DESCRIPTION_CHARS,
                    )))
                }
                "code" => {
                    changes.code = Some(v.take(validate::org_code("organization.code", &o.code)))
                }
                _ => {}
            }
        }
        v.into_result()?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let role = memberships::role_of(&tx, &id, &caller.user_id).await?;
        access::require_manager(caller, role)?;
        if changes.code.is_some() && !caller.platform_admin {
            return Err(DomainError::denied(
                reason::PLATFORM_ADMIN_REQUIRED,
                "only a PlatformAdmin can change an organization's code",
            ));
        }
        let before = organizations::lock(&tx, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("organization"))?;
        let after = organizations::update(&tx, meta, caller.actor(), before, changes, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(convert::organization(&after))
    }

    async fn delete_organization(
        &self,
        meta: &RequestMeta,
        caller: &Caller,
        id: &str,
    ) -> Result<(), DomainError> {
        access::require_platform_admin(caller)?;
        let id = validate::id("organization_id", id)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let org = organizations::lock(&tx, &id)
            .await?
            .ok_or_else(|| DomainError::not_found("organization"))?;
        organizations::delete(&tx, meta, caller.actor(), org, now).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let (meta, caller, r) = self.app.start(request).await?;
        let organization = self.app.create_organization(&meta, &caller, r).await?;
        Ok(Response::new(CreateOrganizationResponse {
            organization: Some(organization),
        }))
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let (_, caller, r) = self.app.start(request).await?;
        let organization = self
            .app
            .get_organization(&caller, &r.organization_id)
            .await?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(organization),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let (_, caller, r) = self.app.start(request).await?;
        Ok(Response::new(
            self.app.list_organizations(&caller, r).await?,
        ))
    }

    async fn update_organization(
        &self,
        request: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<UpdateOrganizationResponse>, Status> {
        let (meta, caller, r) = self.app.start(request).await?;
        let organization = self.app.update_organization(&meta, &caller, r).await?;
        Ok(Response::new(UpdateOrganizationResponse {
            organization: Some(organization),
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<DeleteOrganizationRequest>,
    ) -> Result<Response<DeleteOrganizationResponse>, Status> {
        let (meta, caller, r) = self.app.start(request).await?;
        self.app
            .delete_organization(&meta, &caller, &r.organization_id)
            .await?;
        Ok(Response::new(DeleteOrganizationResponse {}))
    }
}
