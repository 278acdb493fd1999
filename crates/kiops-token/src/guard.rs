//! The guard downstream KIOPS services mount (feature `tonic`): a tonic
//! interceptor and a tower layer that require one permission category in the
//! organization named by the `x-kiops-organization` metadata, answer
//! UNAUTHENTICATED or PERMISSION_DENIED ("device permission required"), and
//! put the verified [`Claims`] into the request extensions.
//!
//! ```
//! use kiops_token::{Authority, Permission, SigningKey};
//! use kiops_token::guard::{interceptor, RequirePermissionLayer};
//!
//! let key = SigningKey::generate(); // in a real service: the issuer's JWKS
//! let authority = Authority::new(key.public_jwk_set(), "kiops-identity", "kiops").unwrap();
//! // With tonic's generated server: DeviceServiceServer::with_interceptor(svc, interceptor(..))
//! let _check = interceptor(authority.clone(), Permission::Device);
//! // Or for a whole router: Server::builder().layer(RequirePermissionLayer::new(..))
//! let _layer = RequirePermissionLayer::new(authority, Permission::Device);
//! ```

use crate::authority::{Authority, Denial};
use crate::claims::Claims;
use crate::model::Permission;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::{Request, Status};
use tower::{Layer, Service};

/// Metadata key naming the organization a request acts in.
pub const ORGANIZATION_HEADER: &str = "x-kiops-organization";

fn to_status(d: Denial) -> Status {
    match d {
        Denial::Unauthenticated(m) => Status::unauthenticated(m),
        Denial::PermissionDenied(m) => Status::permission_denied(m),
        Denial::MissingOrganization(m) => Status::invalid_argument(m),
    }
}

/// A tonic interceptor requiring `permission`.
pub fn interceptor(
    authority: Authority,
    permission: Permission,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let md = req.metadata();
        let auth = md.get("authorization").and_then(|v| v.to_str().ok());
        let org = md.get(ORGANIZATION_HEADER).and_then(|v| v.to_str().ok());
        let claims: Claims = authority
            .authorize(auth, org, permission)
            .map_err(to_status)?;
        req.extensions_mut().insert(claims);
        Ok(req)
    }
}

/// A tower layer requiring `permission` on every request of the wrapped
/// service (an HTTP/2 gRPC service or a whole tonic router).
#[derive(Clone)]
pub struct RequirePermissionLayer {
    authority: Authority,
    permission: Permission,
    #[cfg(feature = "remote")]
    remote: Option<crate::remote::RemoteKeys>,
}

impl RequirePermissionLayer {
    pub fn new(authority: Authority, permission: Permission) -> Self {
        Self {
            authority,
            permission,
            #[cfg(feature = "remote")]
            remote: None,
        }
    }

    /// Keys that follow the identity service: a token with an unknown `kid`
    /// triggers one (rate-limited) refetch and a second check.
    #[cfg(feature = "remote")]
    pub fn remote(keys: crate::remote::RemoteKeys, permission: Permission) -> Self {
        Self {
            authority: keys.authority().clone(),
            permission,
            remote: Some(keys),
        }
    }
}

impl<S> Layer<S> for RequirePermissionLayer {
    type Service = RequirePermission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePermission {
            inner,
            authority: self.authority.clone(),
            permission: self.permission,
            #[cfg(feature = "remote")]
            remote: self.remote.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequirePermission<S> {
    inner: S,
    authority: Authority,
    permission: Permission,
    #[cfg(feature = "remote")]
    remote: Option<crate::remote::RemoteKeys>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequirePermission<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let h = req.headers();
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let org = h
            .get(ORGANIZATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The standard tower dance: take the service that was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authority = self.authority.clone();
        let permission = self.permission;
        #[cfg(feature = "remote")]
        let remote = self.remote.clone();
        Box::pin(async move {
            #[cfg_attr(not(feature = "remote"), allow(unused_mut))]
            let mut result = authority.authorize(auth.as_deref(), org.as_deref(), permission);
            #[cfg(feature = "remote")]
            if let (Err(Denial::Unauthenticated(m)), Some(r)) = (&result, &remote) {
                if m.contains("key id is unknown") && r.refresh().await {
                    result = authority.authorize(auth.as_deref(), org.as_deref(), permission);
                }
            }
            match result {
                Ok(claims) => {
                    req.extensions_mut().insert(claims);
                    inner.call(req).await
                }
                Err(d) => Ok(to_status(d).into_http::<ResBody>()),
            }
        })
    }
}
