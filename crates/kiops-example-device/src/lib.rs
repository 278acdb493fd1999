//! An example downstream KIOPS service: `DeviceService`, guarded by
//! `kiops_token::guard::RequirePermissionLayer` so that only callers with
//! the `device` permission in the organization named by
//! `x-kiops-organization` get through. Keys come from the identity service's
//! JWKS (HTTP).
//!
//! The service has an identity of its own at kiops-identity: a service
//! account holding `revocations.watch` and `permissions.check` (key file or
//! client secret, never a person's login). With it ([`Identity`]) it follows
//! `AuthService.WatchRevocations`, so a token revoked a moment ago is
//! refused within a second, and confirms sensitive actions (`RebootDevice`)
//! with `CheckPermission` against current state. Its tokens are exchanged
//! and renewed by `kiops_client` / `kiops_token::remote` themselves.

pub mod pb {
    tonic::include_proto!("kiops.example.device.v1");
}

use kiops_client::{v1, Client, ServiceCredentials};
use kiops_token::guard::{RequirePermissionLayer, ORGANIZATION_HEADER};
use kiops_token::remote::{RemoteKeys, ServiceTokenSource};
use kiops_token::{scope, Authority, Claims, Permission};
use pb::device_service_server::{DeviceService, DeviceServiceServer};
use pb::{ListDevicesRequest, ListDevicesResponse, RebootDeviceRequest, RebootDeviceResponse};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The scopes this service's account must hold.
pub const REQUIRED_SCOPES: [&str; 2] = [scope::REVOCATIONS_WATCH, scope::PERMISSIONS_CHECK];

/// This service's own service account at the identity service.
#[derive(Clone)]
pub struct Identity {
    channel: Channel,
    client: Client,
    tokens: ServiceTokenSource,
}

impl Identity {
    /// Signs in as the service account over `channel`: the credential is
    /// exchanged once now, so a wrong key or secret, or an account without
    /// [`REQUIRED_SCOPES`], stops the service at start rather than later.
    pub async fn connect(
        channel: Channel,
        credentials: ServiceCredentials,
    ) -> anyhow::Result<Self> {
        let account = credentials.service_account_id().to_string();
        let client = Client::service_account_with_channel(channel.clone(), credentials)
            .await
            .map_err(|e| anyhow::anyhow!("signing in as service account {account}: {e}"))?;
        let tokens = client
            .service_tokens()
            .ok_or_else(|| anyhow::anyhow!("not a service-account client"))?;
        let scopes = tokens.scopes().await?;
        for need in REQUIRED_SCOPES {
            if !scopes.iter().any(|s| s == need) {
                anyhow::bail!(
                    "service account {account} lacks the scope {need} (it holds: {})",
                    scopes.join(" ")
                );
            }
        }
        Ok(Self {
            channel,
            client,
            tokens,
        })
    }

    /// The account's token source (shared by its calls and its watcher).
    pub fn service_tokens(&self) -> &ServiceTokenSource {
        &self.tokens
    }

    /// Follows `WatchRevocations` into `authority` as the service account,
    /// reconnecting (with a renewed token when it expired) and resuming
    /// after the last event seen.
    pub fn watch_revocations(&self, authority: Authority) -> tokio::task::JoinHandle<()> {
        kiops_token::remote::watch_revocations(authority, self.channel.clone(), self.tokens.clone())
    }

    /// Whether `user_id` holds `permission` in `organization_id` now, by
    /// `CheckPermission`.
    pub async fn check_permission(
        &self,
        user_id: &str,
        organization_id: &str,
        permission: Permission,
    ) -> Result<bool, Status> {
        let r = self
            .client
            .memberships()
            .check_permission(v1::CheckPermissionRequest {
                user_id: user_id.to_string(),
                organization_id: organization_id.to_string(),
                permission: permission.proto_number(),
            })
            .await?;
        Ok(r.into_inner().allowed)
    }
}

/// The service. Without an [`Identity`] it still answers `ListDevices`
/// (offline checks only) but cannot confirm a reboot.
pub struct Devices {
    identity: Option<Identity>,
}

fn caller<T>(request: &Request<T>) -> Result<(Claims, String), Status> {
    // The layer has verified the token and put the claims here.
    let claims = request
        .extensions()
        .get::<Claims>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified claims"))?;
    let org = request
        .metadata()
        .get(ORGANIZATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((claims, org))
}

#[tonic::async_trait]
impl DeviceService for Devices {
    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        let (claims, org) = caller(&request)?;
        Ok(Response::new(ListDevicesResponse {
            devices: vec![format!("{org}/router-1"), format!("{org}/switch-2")],
            caller_email: claims.email,
            organization_id: org,
        }))
    }

    async fn reboot_device(
        &self,
        request: Request<RebootDeviceRequest>,
    ) -> Result<Response<RebootDeviceResponse>, Status> {
        let (claims, org) = caller(&request)?;
        let identity = self.identity.as_ref().ok_or_else(|| {
            Status::unavailable(
                "reboots are confirmed with the identity service, which is not configured",
            )
        })?;
        // The token said yes when it was minted; ask what is true now.
        let allowed = identity
            .check_permission(&claims.sub, &org, Permission::Device)
            .await
            .map_err(|st| {
                tracing::warn!(code = ?st.code(), message = st.message(), "CheckPermission failed");
                Status::unavailable("cannot confirm the permission with the identity service")
            })?;
        if !allowed {
            return Err(Status::permission_denied("device permission revoked"));
        }
        let device = request.into_inner().device;
        tracing::info!(%device, user = %claims.sub, %org, "reboot");
        Ok(Response::new(RebootDeviceResponse { device }))
    }
}

/// Serves DeviceService on `listener` with a fixed key set and no identity
/// of its own.
pub async fn serve(listener: TcpListener, authority: Authority) -> anyhow::Result<()> {
    serve_with(
        listener,
        RequirePermissionLayer::new(authority, Permission::Device),
        None,
    )
    .await
}

/// Serves DeviceService with keys that follow the identity service (a new
/// `kid` after a rotation triggers a refetch), without an identity of its
/// own.
pub async fn serve_remote(listener: TcpListener, keys: RemoteKeys) -> anyhow::Result<()> {
    serve_with(
        listener,
        RequirePermissionLayer::remote(keys, Permission::Device),
        None,
    )
    .await
}

/// The whole service as `main` runs it: keys that follow the identity
/// service, revocations followed and reboots confirmed as the service
/// account of `identity`.
pub async fn serve_as_service(
    listener: TcpListener,
    keys: RemoteKeys,
    identity: Identity,
) -> anyhow::Result<()> {
    let watcher = identity.watch_revocations(keys.authority().clone());
    let served = serve_with(
        listener,
        RequirePermissionLayer::remote(keys, Permission::Device),
        Some(identity),
    )
    .await;
    watcher.abort();
    served
}

/// Serves DeviceService behind `layer`, with `identity` for online checks.
pub async fn serve_with(
    listener: TcpListener,
    layer: RequirePermissionLayer,
    identity: Option<Identity>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(DeviceServiceServer::new(Devices { identity }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
