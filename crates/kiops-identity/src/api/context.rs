//! Per-request context: request id, peer address, and the authenticated caller.

use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::reason;
use crate::domain::membership::{caller_from_state, invalid_token};
use crate::domain::service_account::{require_scope, service_caller_from_state, Scope};
use crate::domain::{Caller, DomainError};
use crate::store::callers;
use tonic::Request;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Takes the caller's `x-request-id` if it is sane (≤ 128 printable ASCII),
/// otherwise makes one.
pub fn request_meta<T>(req: &Request<T>) -> RequestMeta {
    let request_id = req
        .metadata()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // Behind a trusted proxy, the client it names (`client_addr`).
    let peer = match req.extensions().get::<crate::client_addr::ClientAddr>() {
        Some(c) => c.0.clone(),
        None => req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
    };
    let user_agent = req
        .metadata()
        .get("user-agent")
        .map(|v| printable(v.as_bytes(), 256))
        .unwrap_or_default();
    RequestMeta {
        request_id,
        peer,
        user_agent,
    }
}

/// Header bytes as printable ASCII (others become `?`), at most `max` long.
fn printable(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// The bearer token of the request, if any.
fn bearer<T>(req: &Request<T>) -> Result<&str, DomainError> {
    let Some(value) = req.metadata().get("authorization") else {
        return Err(DomainError::unauthenticated(
            reason::MISSING_TOKEN,
            "missing authorization: Bearer <access token>",
        ));
    };
    let text = value.to_str().map_err(|_| invalid_token())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(invalid_token)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid_token());
    }
    Ok(token.trim())
}

/// What every authenticated handler starts with: request metadata, the
/// authenticated caller, and the message. Service accounts are refused
/// (R25: an RPC is closed to them unless it names the scope that opens it,
/// with `start_scoped`).
pub async fn start<T>(app: &App, req: Request<T>) -> Result<(RequestMeta, Caller, T), DomainError> {
    start_scoped(app, req, None).await
}

/// `start` for an RPC that a service account holding `scope` may call;
/// people are authorised by the use case as before.
pub async fn start_scoped<T>(
    app: &App,
    req: Request<T>,
    scope: Option<Scope>,
) -> Result<(RequestMeta, Caller, T), DomainError> {
    let meta = request_meta(&req);
    let caller = authenticate(app, &req).await?;
    require_scope(&caller, scope)?;
    Ok((meta, caller, req.into_inner()))
}

/// Like `authenticate`, but a request without `authorization` is anonymous
/// (None); a present but bad token is still refused.
pub async fn authenticate_optional<T>(
    app: &App,
    req: &Request<T>,
) -> Result<Option<Caller>, DomainError> {
    if req.metadata().get("authorization").is_none() {
        return Ok(None);
    }
    let caller = authenticate(app, req).await?;
    require_scope(&caller, None)?;
    Ok(Some(caller))
}

/// Verifies the bearer token with the same verifier downstream services
/// use, then loads the user from current state: a deactivated or deleted
/// account is refused at once, and the PlatformAdmin flag is the current
/// one, not the one in the token.
pub async fn authenticate<T>(app: &App, req: &Request<T>) -> Result<Caller, DomainError> {
    let claims = verify_bearer(app, req)?;
    caller_of(app, claims).await
}

/// The second half of `authenticate`: the caller of verified `claims`
/// from current state (account and session, one read; the rule is
/// `caller_from_state`, the same CheckPermission applies to its own read).
pub async fn caller_of(app: &App, claims: kiops_token::Claims) -> Result<Caller, DomainError> {
    if claims.is_service() {
        let state = callers::service_caller_state(
            app.store.conn(),
            &claims.sub,
            claims.sid.as_deref().unwrap_or_default(),
        )
        .await?;
        let token_scopes = Scope::split(claims.scope.as_deref().unwrap_or_default());
        return service_caller_from_state(
            claims.sub,
            claims.sid,
            (&token_scopes, claims.iat),
            state,
        );
    }
    let state = callers::caller_state(
        app.store.conn(),
        &claims.sub,
        claims.sid.as_deref().unwrap_or_default(),
    )
    .await?;
    caller_from_state(claims.sub, claims.sid, state, app.clock.now_ms())
}

/// The first half of `authenticate` (no database): the token's claims.
/// CheckPermission, which reads the caller's state together with other
/// rows in one query, goes on from here itself.
pub fn verify_bearer<T>(app: &App, req: &Request<T>) -> Result<kiops_token::Claims, DomainError> {
    let token = bearer(req)?;
    app.tokens.verify(token, app.clock.now_secs()).map_err(|e| {
        tracing::debug!(error = %e, "access token refused");
        invalid_token()
    })
}

/// The URI and DNS subject alternative names of the client certificate the
/// TLS connection presented (verified by the TLS layer against
/// --tls-client-ca-file); empty without one. Only the leaf is read.
pub fn peer_identities<T>(req: &Request<T>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Some(certs) = req.peer_certs() else {
        return Vec::new();
    };
    let Some(leaf) = certs.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}
