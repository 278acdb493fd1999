//! IssueServiceAccountToken (R25): a service account exchanges a signed
//! assertion or a client secret for a short-lived access token. One write
//! transaction locks the account, then its credentials, checks, records
//! the use (and the `jti`), mints, and commits: see `store::service_tokens`
//! for why the token is minted under those locks.

use crate::app::App;
use crate::auth::secrets::hash_token;
use crate::domain::assertion::{self, Assertion};
use crate::domain::audit::RequestMeta;
use crate::domain::error::reason;
use crate::domain::service_account::{AccountStatus, CredentialKind, Scope};
use crate::domain::{validate, DomainError};
use crate::store::service_tokens::{self, ExchangeAccount, ExchangeCredential};
use crate::store::WriteTx;
use kiops_proto::v1::issue_service_account_token_request::Credential;
use kiops_proto::v1::IssueServiceAccountTokenRequest;
use kiops_token::ServiceIssueRequest;
use subtle::ConstantTimeEq;

/// Prefix of client secrets (`kiops_sa_` + 43 base64url characters).
pub const SECRET_PREFIX: &str = "kiops_sa_";
const MAX_SECRET_CHARS: usize = 128;

/// A minted service token.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    pub access_token: String,
    pub expires_in: i64,
    pub scopes: Vec<Scope>,
}

/// The subject alternative names (URI and DNS) of the client certificate
/// the connection presented, if any.
pub type PeerIdentities = Vec<String>;

/// Every refusal that must not say whether the account or the credential
/// exists.
fn invalid_credentials() -> DomainError {
    DomainError::unauthenticated(
        reason::INVALID_CREDENTIALS,
        "invalid service account credentials",
    )
}

pub async fn issue_service_account_token(
    app: App,
    meta: RequestMeta,
    peer: PeerIdentities,
    r: IssueServiceAccountTokenRequest,
) -> Result<ServiceToken, DomainError> {
    match r.credential {
        Some(Credential::Assertion(token)) => by_assertion(&app, &meta, &peer, &token).await,
        Some(Credential::ClientSecret(s)) => {
            let id = validate::id("client_secret.service_account_id", &s.service_account_id)?;
            if s.secret.is_empty() || s.secret.len() > MAX_SECRET_CHARS {
                return Err(DomainError::invalid(
                    "client_secret.secret",
                    "a client secret (kiops_sa_…) is required",
                ));
            }
            by_secret(&app, &meta, &peer, &id, &s.secret).await
        }
        None => Err(DomainError::invalid(
            "credential",
            "one of assertion or client_secret is required",
        )),
    }
}

async fn by_assertion(
    app: &App,
    meta: &RequestMeta,
    peer: &PeerIdentities,
    token: &str,
) -> Result<ServiceToken, DomainError> {
    let now = app.clock.now_ms();
    let a = assertion::parse(token, app.tokens.issuer(), (now / 1000) as u64)?;
    app.throttle
        .check(&meta.peer, Some(&format!("sa:{}", a.account_id)))?;
    let tx = app.store.begin_write().await?;
    let Some(account) = service_tokens::lock_account(&tx, &a.account_id).await? else {
        return Err(invalid_credentials());
    };
    let keys = service_tokens::credentials(&tx, &account.id, CredentialKind::Key).await?;
    let Some(key) = keys
        .into_iter()
        .find(|k| k.id == a.credential_id && signed(&a, k))
    else {
        refuse(app, tx, meta, &account, "wrong key", false, now).await?;
        return Err(invalid_credentials());
    };
    let tx = usable(app, tx, meta, &account, peer, now).await?;
    if !service_tokens::use_jti(&tx, &account.id, &a.jti, a.exp as i64 * 1000, now).await? {
        return Err(DomainError::unauthenticated(
            reason::ASSERTION_REPLAYED,
            "this assertion (its jti) was already exchanged",
        ));
    }
    finish(app, tx, meta, &account, &key, now).await
}

fn signed(a: &Assertion, k: &ExchangeCredential) -> bool {
    k.public_key.is_some_and(|pk| assertion::signed_by(a, &pk))
}

async fn by_secret(
    app: &App,
    meta: &RequestMeta,
    peer: &PeerIdentities,
    account_id: &str,
    secret: &str,
) -> Result<ServiceToken, DomainError> {
    app.throttle
        .check(&meta.peer, Some(&format!("sa:{account_id}")))?;
    let now = app.clock.now_ms();
    let presented = hash_token(secret);
    let tx = app.store.begin_write().await?;
    let Some(account) = service_tokens::lock_account(&tx, account_id).await? else {
        return Err(invalid_credentials());
    };
    // A locked account is refused before its secrets are compared, and the
    // answer is the same as for a wrong secret (R12's rule for passwords).
    if account.locked_until_ms.is_some_and(|t| t > now) {
        return Err(invalid_credentials());
    }
    let secrets = service_tokens::credentials(&tx, &account.id, CredentialKind::Secret).await?;
    let matching = secrets.into_iter().find(|c| {
        c.secret_hash
            .as_deref()
            .is_some_and(|h| bool::from(h.as_bytes().ct_eq(presented.as_bytes())))
    });
    let Some(secret) = matching else {
        refuse(app, tx, meta, &account, "wrong secret", true, now).await?;
        return Err(invalid_credentials());
    };
    let tx = usable(app, tx, meta, &account, peer, now).await?;
    finish(app, tx, meta, &account, &secret, now).await
}

/// The account may exchange now: active, and over the connection its
/// certificate binding asks for.
async fn usable(
    app: &App,
    tx: WriteTx,
    meta: &RequestMeta,
    account: &ExchangeAccount,
    peer: &PeerIdentities,
    now: i64,
) -> Result<WriteTx, DomainError> {
    if account.status != AccountStatus::Active {
        refuse(app, tx, meta, account, "disabled", false, now).await?;
        return Err(invalid_credentials());
    }
    if let Some(identity) = &account.certificate_identity {
        if !peer.iter().any(|p| p == identity) {
            refuse(app, tx, meta, account, "certificate required", false, now).await?;
            return Err(DomainError::unauthenticated(
                reason::CERTIFICATE_REQUIRED,
                "this service account must present its client certificate",
            ));
        }
    }
    Ok(tx)
}

/// Records a refused exchange of an existing account (and, for a wrong
/// secret, the failure toward the lockout) and commits it.
async fn refuse(
    app: &App,
    tx: WriteTx,
    meta: &RequestMeta,
    account: &ExchangeAccount,
    why: &'static str,
    counts: bool,
    now: i64,
) -> Result<(), DomainError> {
    let counts = counts.then_some((app.settings.lockout_threshold, app.settings.lockout_ms));
    service_tokens::record_refusal(&tx, meta, account, why, counts, now).await?;
    tx.commit().await
}

async fn finish(
    app: &App,
    tx: WriteTx,
    meta: &RequestMeta,
    account: &ExchangeAccount,
    credential: &ExchangeCredential,
    now: i64,
) -> Result<ServiceToken, DomainError> {
    service_tokens::record_exchange(&tx, meta, account, credential, now).await?;
    let issued = app.tokens.mint_service(
        ServiceIssueRequest {
            service_account_id: account.id.clone(),
            name: account.name.clone(),
            owner_org: account.owner.org_id().map(str::to_string),
            scopes: account
                .scopes
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            credential_id: credential.id.clone(),
        },
        (now / 1000) as u64,
    )?;
    tx.commit().await?;
    app.metrics.logins.with_label_values(&["service"]).inc();
    Ok(ServiceToken {
        access_token: issued.token,
        expires_in: issued.expires_in as i64,
        scopes: account.scopes.clone(),
    })
}
