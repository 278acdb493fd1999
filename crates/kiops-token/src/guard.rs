//! The guard downstream KIOPS services mount (feature `tonic`): a tonic
//! interceptor and a tower layer that require one permission category in the
//! organization named by the `x-kiops-organization` metadata, answer
//! UNAUTHENTICATED or PERMISSION_DENIED ("device permission required"), and
//! put the verified [`Claims`] into the request extensions.
//!
//! An RPC meant for other services rather than people requires a scope
//! instead ([`scope_interceptor`], [`RequirePermissionLayer::scope`]): only a
//! service-account token holding it gets through, whatever the organization
//! header says ("scope permissions.check required" otherwise).
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

/// What a guarded request must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Need {
    /// A permission category in the organization of the request.
    Permission(Permission),
    /// A service account's scope.
    Scope(String),
}

impl Need {
    fn check(
        &self,
        authority: &Authority,
        authorization: Option<&str>,
        organization_id: Option<&str>,
    ) -> Result<Claims, Denial> {
        match self {
            Need::Permission(p) => authority.authorize(authorization, organization_id, *p),
            Need::Scope(s) => authority.authorize_scope(authorization, s),
        }
    }
}

fn intercept(
    authority: Authority,
    need: Need,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let md = req.metadata();
        let auth = md.get("authorization").and_then(|v| v.to_str().ok());
        let org = md.get(ORGANIZATION_HEADER).and_then(|v| v.to_str().ok());
        let claims: Claims = need.check(&authority, auth, org).map_err(to_status)?;
        req.extensions_mut().insert(claims);
        Ok(req)
    }
}

/// A tonic interceptor requiring `permission`.
pub fn interceptor(
    authority: Authority,
    permission: Permission,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    intercept(authority, Need::Permission(permission))
}

/// A tonic interceptor requiring a service-account token with `scope`.
pub fn scope_interceptor(
    authority: Authority,
    scope: &str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    intercept(authority, Need::Scope(scope.to_string()))
}

/// A tower layer requiring `permission` on every request of the wrapped
/// service (an HTTP/2 gRPC service or a whole tonic router).
#[derive(Clone)]
pub struct RequirePermissionLayer {
    authority: Authority,
    need: Need,
    #[cfg(feature = "remote")]
    remote: Option<crate::remote::RemoteKeys>,
}

impl RequirePermissionLayer {
    pub fn new(authority: Authority, permission: Permission) -> Self {
        Self {
            authority,
            need: Need::Permission(permission),
            #[cfg(feature = "remote")]
            remote: None,
        }
    }

    /// Requires a service-account token holding `scope` instead of a
    /// permission (no organization header needed).
    pub fn scope(authority: Authority, scope: &str) -> Self {
        Self {
            authority,
            need: Need::Scope(scope.to_string()),
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
            need: Need::Permission(permission),
            remote: Some(keys),
        }
    }

    /// [`RequirePermissionLayer::scope`] with keys that follow the identity
    /// service.
    #[cfg(feature = "remote")]
    pub fn remote_scope(keys: crate::remote::RemoteKeys, scope: &str) -> Self {
        Self {
            authority: keys.authority().clone(),
            need: Need::Scope(scope.to_string()),
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
            need: self.need.clone(),
            #[cfg(feature = "remote")]
            remote: self.remote.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequirePermission<S> {
    inner: S,
    authority: Authority,
    need: Need,
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
        let need = self.need.clone();
        #[cfg(feature = "remote")]
        let remote = self.remote.clone();
        Box::pin(async move {
            #[cfg_attr(not(feature = "remote"), allow(unused_mut))]
            let mut result = need.check(&authority, auth.as_deref(), org.as_deref());
            #[cfg(feature = "remote")]
            if let (Err(Denial::Unauthenticated(m)), Some(r)) = (&result, &remote) {
                if m.contains("key id is unknown") && r.refresh().await {
                    result = need.check(&authority, auth.as_deref(), org.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scope, IssueRequest, Issuer, ServiceIssueRequest, SigningKey};
    use tonic::Code;

    fn request(token: Option<&str>, org: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(o) = org {
            r.metadata_mut()
                .insert(ORGANIZATION_HEADER, o.parse().unwrap());
        }
        r
    }

    #[test]
    fn a_scope_guard_admits_only_services_holding_the_scope() {
        let key = SigningKey::generate();
        let authority = Authority::new(key.public_jwk_set(), "i", "a").unwrap();
        let issuer = Issuer::new(key, "i", "a", 300);
        let service = |scopes: &[&str]| {
            issuer
                .issue_service_at(
                    ServiceIssueRequest {
                        service_account_id: "sa1".into(),
                        name: "device".into(),
                        owner_org: Some("o1".into()),
                        scopes: scopes.iter().map(|s| s.to_string()).collect(),
                        credential_id: "cred1".into(),
                    },
                    jsonwebtoken::get_current_timestamp(),
                )
                .unwrap()
                .token
        };
        let admin = issuer
            .issue(IssueRequest {
                subject: "u1".into(),
                email: "a@x.io".into(),
                name: "A".into(),
                platform_admin: true,
                orgs: Default::default(),
                session_id: None,
                email_verified: true,
                amr: Vec::new(),
            })
            .unwrap()
            .token;
        let mut check = scope_interceptor(authority.clone(), scope::PERMISSIONS_CHECK);
        let ok = check(request(
            Some(&service(&[
                scope::REVOCATIONS_WATCH,
                scope::PERMISSIONS_CHECK,
            ])),
            None,
        ))
        .expect("holds the scope");
        let claims = ok.extensions().get::<Claims>().expect("claims");
        assert!(claims.is_service() && claims.has_scope(scope::PERMISSIONS_CHECK));
        let cases = [
            (
                Some(service(&[scope::REVOCATIONS_WATCH])),
                Code::PermissionDenied,
            ),
            (Some(admin.clone()), Code::PermissionDenied),
            (Some("not.a.jwt".to_string()), Code::Unauthenticated),
            (None, Code::Unauthenticated),
        ];
        for (token, code) in cases {
            let st = check(request(token.as_deref(), Some("o1"))).expect_err("refused");
            assert_eq!(st.code(), code, "{st:?}");
        }
        // A permission guard refuses a service token: scopes are not
        // permission categories.
        let mut device = interceptor(authority, Permission::Device);
        assert!(device(request(Some(&admin), Some("o1"))).is_ok());
        let st = device(request(
            Some(&service(&[scope::PERMISSIONS_CHECK])),
            Some("o1"),
        ))
        .expect_err("a service");
        assert_eq!(st.code(), Code::PermissionDenied);
    }
}
