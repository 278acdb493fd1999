//! Refresh (R15): rotates the presented refresh token (`rotation::rotate`)
//! and mints a new access token; a reused token revokes its session.

use super::{mint, REFRESH_TOKEN_PREFIX};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::RequestMeta;
use crate::domain::error::{reason, Violations};
use crate::domain::model::StoredStatus;
use crate::domain::session::TokenPair;
use crate::domain::{validate, DomainError};
use crate::store::rotation::{self, Presented, Refreshed};
use kiops_proto::v1::RefreshRequest;

fn invalid() -> DomainError {
    DomainError::unauthenticated(
        reason::INVALID_REFRESH_TOKEN,
        "invalid or expired refresh token",
    )
}

/// Read-mostly: the rotation runs its classifying transaction to
/// completion by itself, and its fast path is one conditional write that a
/// dropped request cannot cut.
pub async fn refresh(
    app: &App,
    meta: &RequestMeta,
    r: RefreshRequest,
) -> Result<TokenPair, DomainError> {
    let mut v = Violations::new();
    v.check(validate::opaque_token("refresh_token", &r.refresh_token));
    let org = match r.organization_id.as_deref() {
        Some(o) => validate::id("organization_id", o)
            .map(Some)
            .unwrap_or_else(|e| {
                v.push(e);
                None
            }),
        None => None,
    };
    v.into_result()?;

    let new_refresh = random_token(REFRESH_TOKEN_PREFIX);
    let presented = Presented {
        hash: hash_token(&r.refresh_token),
        new_hash: hash_token(&new_refresh),
        only_org: org.clone(),
        now: app.clock.now_ms(),
        refresh_ttl_ms: app.settings.refresh_ttl_ms,
    };
    let issuer = app.clone();
    // Minted before the token is used: an organization the user is not
    // in refuses the call without consuming the refresh token.
    let issue = move |user: &crate::store::users::User, orgs, session_id: &str, amr: &str| {
        if user.status == StoredStatus::Inactive {
            return Err(invalid());
        }
        mint(&issuer, user, orgs, org.as_deref(), session_id, amr)
    };
    match rotation::rotate(&app.store, meta, presented, issue).await? {
        Refreshed::Issued((access_token, expires_in)) => Ok(TokenPair {
            access_token,
            refresh_token: new_refresh,
            expires_in,
        }),
        Refreshed::Invalid => Err(invalid()),
        Refreshed::Reused => Err(DomainError::unauthenticated(
            reason::REFRESH_TOKEN_REUSED,
            "refresh token was already used; the session has been revoked",
        )),
    }
}
