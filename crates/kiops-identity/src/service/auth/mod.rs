//! `AuthService` use cases: login and logout (R11, R12, R15), refresh
//! rotation and reuse detection (R15), sign-up (R7), email verification,
//! password reset (R14), the revocation feed (R16) and the JWKS.
//!
//! Login, SignUp and ResetPassword hash a password, and their handlers run
//! them in the request's own future rather than detached: an abandoned
//! request's hash is not run, and an abandoned login keeps its attempt's
//! slot (fail closed, R11). Refresh detaches only its classifying
//! transaction (`store::rotation`).

mod exchange;
mod login;
mod password_reset;
mod refresh;
mod revocations;
mod second_factor;
mod signup;
mod verification;

pub use exchange::{issue_service_account_token, PeerIdentities, ServiceToken, SECRET_PREFIX};
pub use login::{login, logout};
pub use password_reset::{request_password_reset, reset_password};
pub use refresh::refresh;
pub use revocations::{revocation_start, revocations_after};
pub use second_factor::verify_second_factor;
pub use signup::{sign_up, SignedUp};
pub use verification::{resend_verification_email, verify_email};

use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::model::StoredStatus;
use crate::domain::second_factor as second_factor_rule;
use crate::domain::{validate, DomainError};
use crate::store::memberships::TokenOrgs;
use crate::store::users::User;
use crate::store::{memberships, users, WriteTx};
use kiops_token::{IssueRequest, JwkSet};
use std::future::Future;

/// Refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "kr";
/// Email-verification tokens.
pub const VERIFICATION_TOKEN_PREFIX: &str = "kv";

/// The published signing keys.
pub fn jwks(app: &App) -> JwkSet {
    app.tokens.jwks()
}

/// Mints an access token for `user`, holding all their organizations or
/// only `only_org`, reading the memberships through `tx`, the caller's
/// open transaction: taking a second pooled connection while holding one
/// deadlocked PostgreSQL once as many refreshes as pool slots ran at once.
async fn mint_in(
    app: &App,
    tx: &WriteTx,
    user: &User,
    only_org: Option<&str>,
    session_id: &str,
    amr: &str,
) -> Result<(String, i64), DomainError> {
    let orgs =
        memberships::token_orgs(tx, &user.id, user.platform_admin, session_id, only_org).await?;
    mint(app, user, orgs, only_org, session_id, amr)
}

/// Mints from memberships already read. A scoped token for an organization
/// the user is not in is NOT_FOUND (R4), unless they are PlatformAdmin; for
/// one that requires a second factor the session lacks,
/// SECOND_FACTOR_REQUIRED (R31).
fn mint(
    app: &App,
    user: &User,
    t: TokenOrgs,
    only_org: Option<&str>,
    session_id: &str,
    amr: &str,
) -> Result<(String, i64), DomainError> {
    if let Some(org) = only_org {
        if !t.platform_admin && !t.orgs.contains_key(org) {
            if t.gated.iter().any(|g| g == org) {
                return Err(second_factor_rule::org_refusal(org));
            }
            return Err(DomainError::not_found("organization"));
        }
    }
    let (platform_admin, orgs) = (t.platform_admin, t.orgs);
    let issued = app.tokens.mint(
        IssueRequest {
            subject: user.id.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            platform_admin,
            orgs,
            session_id: Some(session_id.to_string()),
            email_verified: user.email_verified,
            // The session's methods (R30), as stored.
            amr: crate::domain::session::amr_claim(amr),
        },
        app.clock.now_secs(),
    )?;
    Ok((issued.token, issued.expires_in as i64))
}

/// Runs `work` after the answer has gone (no enumeration by timing): its
/// failure is only logged, as `what`.
fn after_answer<F>(what: &'static str, work: F)
where
    F: Future<Output = Result<(), DomainError>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = work.await {
            tracing::warn!(error = %e, "{what}");
        }
    });
}

/// Answers a request about the account of `email` at once, in the same time
/// whether it exists or not (no enumeration): throttled per peer and per
/// email; `work` runs after the answer, only for an account that exists and
/// is not Inactive, its failure logged as `what`.
fn for_account_after_answer<F, W>(
    app: &App,
    meta: &RequestMeta,
    email: &str,
    what: &'static str,
    work: F,
) -> Result<(), DomainError>
where
    F: FnOnce(App, RequestMeta, User) -> W + Send + 'static,
    W: Future<Output = Result<(), DomainError>> + Send,
{
    let email = validate::email("email", email)?;
    app.throttle.check(&meta.peer, Some(&email))?;
    let (app, meta) = (app.clone(), meta.clone());
    after_answer(what, async move {
        let Some(user) = users::find_by_email(app.store.conn(), &email).await? else {
            return Ok(());
        };
        if user.status == StoredStatus::Inactive {
            return Ok(());
        }
        work(app, meta, user).await
    });
    Ok(())
}
