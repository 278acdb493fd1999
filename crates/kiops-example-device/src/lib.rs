//! An example downstream KIOPS service: `DeviceService.ListDevices`, guarded
//! by `kiops_token::guard::RequirePermissionLayer` so that only callers with
//! the `device` permission in the organization named by
//! `x-kiops-organization` get through. Keys come from the identity service's
//! JWKS (HTTP) and revocations from `AuthService.WatchRevocations`.

pub mod pb {
    tonic::include_proto!("kiops.example.device.v1");
}

use kiops_token::guard::{RequirePermissionLayer, ORGANIZATION_HEADER};
use kiops_token::remote::RemoteKeys;
use kiops_token::{Authority, Claims, Permission};
use pb::device_service_server::{DeviceService, DeviceServiceServer};
use pb::{ListDevicesRequest, ListDevicesResponse};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

pub struct Devices;

#[tonic::async_trait]
impl DeviceService for Devices {
    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
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
        Ok(Response::new(ListDevicesResponse {
            devices: vec![format!("{org}/router-1"), format!("{org}/switch-2")],
            caller_email: claims.email,
            organization_id: org,
        }))
    }
}

/// Serves DeviceService on `listener` with a fixed key set.
pub async fn serve(listener: TcpListener, authority: Authority) -> anyhow::Result<()> {
    serve_with(
        listener,
        RequirePermissionLayer::new(authority, Permission::Device),
    )
    .await
}

/// Serves DeviceService with keys that follow the identity service (a new
/// `kid` after a rotation triggers a refetch).
pub async fn serve_remote(listener: TcpListener, keys: RemoteKeys) -> anyhow::Result<()> {
    serve_with(
        listener,
        RequirePermissionLayer::remote(keys, Permission::Device),
    )
    .await
}

async fn serve_with(listener: TcpListener, layer: RequirePermissionLayer) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(DeviceServiceServer::new(Devices))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
