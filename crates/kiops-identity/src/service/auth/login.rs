//! Login (R11, R12: the lockout and the equal work of every failure) and
//! Logout (R15, R16).

use super::{mint_in, REFRESH_TOKEN_PREFIX};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::RequestMeta;
use crate::domain::error::Violations;
use crate::domain::session::{LoginOutcome, TokenPair};
use crate::domain::{validate, Caller, DomainError};
use crate::service::credentials;
use crate::store::logins::{self, actor_of};
use crate::store::sessions::{self, NewSession, AMR_PASSWORD};
use crate::store::users::{self, User};
use crate::store::{memberships, totp};
use kiops_proto::v1::{LoginRequest, LogoutRequest};

/// Prefix of second-factor challenges (R30).
pub const CHALLENGE_PREFIX: &str = "kc";
/// How long a second-factor challenge works.
pub const CHALLENGE_TTL_MS: i64 = 5 * 60_000;

pub async fn login(
    app: App,
    meta: RequestMeta,
    r: LoginRequest,
) -> Result<LoginOutcome, DomainError> {
    let mut v = Violations::new();
    let email = validate::email("email", &r.email);
    v.check(email.as_ref().map(|_| ()).map_err(Clone::clone));
    v.check(validate::password_input("password", &r.password));
    let org = match r.organization_id.as_deref() {
        Some(o) => match validate::id("organization_id", o) {
            Ok(id) => Some(id),
            Err(e) => {
                v.push(e);
                None
            }
        },
        None => None,
    };
    v.into_result()?;
    let email = email?;

    app.throttle.check(&meta.peer, Some(&email))?;
    let now = app.clock.now_ms();
    let Some(user) = credentials::check_password(&app, &meta, &email, r.password, now).await?
    else {
        return Err(DomainError::invalid_credentials());
    };

    match open_session(&app, &meta, &user, org.as_deref(), now).await {
        Ok(Some(outcome)) => {
            let result = match outcome {
                LoginOutcome::Tokens(_) => "success",
                LoginOutcome::SecondFactor { .. } => "second_factor",
            };
            app.metrics.logins.with_label_values(&[result]).inc();
            Ok(outcome)
        }
        Ok(None) => {
            credentials::record_failed_login(
                &app,
                &meta,
                &email,
                users::Failure::RefusedAfterCheck,
                now,
            )
            .await?;
            Err(DomainError::invalid_credentials())
        }
        Err(e) => {
            // The right password, refused for another reason (e.g. a
            // scope to a foreign organization): give the slot back, and
            // leave a trace, since the answer confirms the password. If
            // this fails too the slot stays held (fail closed).
            let why = match e {
                DomainError::NotFound { .. } => "organization_not_found",
                _ => "error",
            };
            let refused = async {
                let tx = app.store.begin_write().await?;
                logins::refuse(&tx, &meta, &user, org.as_deref(), why, now).await?;
                tx.commit().await
            };
            if let Err(release) = refused.await {
                tracing::warn!(error = %release, "login slot not released");
            }
            Err(e)
        }
    }
}

/// The session of a login whose password was right, in one transaction
/// that starts with the conditional `finish_login`: None (nothing
/// written) when the account was locked or deactivated meanwhile. An
/// account with TOTP gets a challenge instead (R30); only this path, which
/// the right password alone reaches, reads whether it has one.
async fn open_session(
    app: &App,
    meta: &RequestMeta,
    user: &User,
    org: Option<&str>,
    now: i64,
) -> Result<Option<LoginOutcome>, DomainError> {
    let refresh = random_token(REFRESH_TOKEN_PREFIX);
    let tx = app.store.begin_write().await?;
    if totp::find(&tx, &user.id)
        .await?
        .is_some_and(|c| c.confirmed)
    {
        return challenge(meta, tx, user, org, now).await;
    }
    // First statement, so the row stays locked until the session commits:
    // a parallel wrong password that locked the account first wins.
    if !users::finish_login(&tx, &user.id, &user.password_hash, now).await? {
        return Ok(None);
    }
    let session = sessions::create(
        &tx,
        meta,
        actor_of(user),
        NewSession {
            user_id: &user.id,
            refresh_hash: hash_token(&refresh),
            now,
            session_ttl_ms: app.settings.session_ttl_ms,
            refresh_ttl_ms: app.settings.refresh_ttl_ms,
            organization_id: org,
            amr: AMR_PASSWORD,
        },
    )
    .await?;
    // Mint before commit: a failure here (e.g. scoped to a foreign
    // organization) must not leave a session behind.
    let (access_token, expires_in) =
        mint_in(app, &tx, user, org, &session.id, AMR_PASSWORD).await?;
    tx.commit().await?;
    Ok(Some(LoginOutcome::Tokens(TokenPair {
        access_token,
        refresh_token: refresh,
        expires_in,
    })))
}

/// The right password of an account with TOTP: its slot back without
/// clearing the failure count (`users::pass_password`), and a challenge.
async fn challenge(
    meta: &RequestMeta,
    tx: crate::store::WriteTx,
    user: &User,
    org: Option<&str>,
    now: i64,
) -> Result<Option<LoginOutcome>, DomainError> {
    if !users::pass_password(&tx, &user.id, &user.password_hash, now).await? {
        return Ok(None);
    }
    if let Some(o) = org {
        // As Login without a second factor answers it (R4).
        let role = memberships::role_of(&tx, o, &user.id).await?;
        if !user.platform_admin && role.is_none() {
            return Err(DomainError::not_found("organization"));
        }
    }
    let token = random_token(CHALLENGE_PREFIX);
    let expires_at = now + CHALLENGE_TTL_MS;
    totp::create_challenge(
        &tx,
        meta,
        actor_of(user),
        &hash_token(&token),
        &totp::Challenge {
            user_id: user.id.clone(),
            password_digest: hash_token(&user.password_hash),
            organization_id: org.map(str::to_string),
        },
        now,
        expires_at,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(LoginOutcome::SecondFactor {
        challenge: token,
        expires_at,
    }))
}

/// Ends the caller's session of `refresh_token`. Someone else's session
/// answers exactly like an unknown one.
pub async fn logout(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: LogoutRequest,
) -> Result<(), DomainError> {
    validate::opaque_token("refresh_token", &r.refresh_token)?;
    let tx = app.store.begin_write().await?;
    let session = sessions::find_by_refresh(&tx, &hash_token(&r.refresh_token)).await?;
    let Some(session) = session.filter(|s| s.user_id == caller.user_id) else {
        return Err(DomainError::not_found("session"));
    };
    // Ended by a racing call since it was read: as if already ended.
    if !sessions::logout(&tx, &meta, caller.actor(), &session, &app.clock).await? {
        return Err(DomainError::not_found("session"));
    }
    tx.commit().await
}
