//! VerifySecondFactor (R30): the second step of a Login for an account
//! with TOTP. The challenge is single use, the code is checked on the
//! account's lockout counters like a password (`service::totp::check`),
//! and the session is opened with `amr` "pwd otp".

use super::{mint_in, REFRESH_TOKEN_PREFIX};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::audit::{AuditEntry, RequestMeta};
use crate::domain::error::{reason, Violations};
use crate::domain::session::TokenPair;
use crate::domain::{validate, DomainError};
use crate::service::totp::{self as factor, second_factor_invalid};
use crate::store::logins::actor_of;
use crate::store::sessions::{self, NewSession, AMR_PASSWORD_OTP};
use crate::store::{audit, totp, users};
use kiops_proto::v1::VerifySecondFactorRequest;
use serde_json::json;

fn challenge_invalid() -> DomainError {
    DomainError::unauthenticated(
        reason::SECOND_FACTOR_CHALLENGE_INVALID,
        "unknown, expired or used second-factor challenge; log in again",
    )
}

pub async fn verify_second_factor(
    app: App,
    meta: RequestMeta,
    r: VerifySecondFactorRequest,
) -> Result<TokenPair, DomainError> {
    let mut v = Violations::new();
    v.check(validate::opaque_token("challenge", &r.challenge));
    let proof = factor::parse_proof(&r.code, &r.recovery_code, true);
    if let Err(DomainError::InvalidArgument(violations)) = &proof {
        for f in violations {
            v.push(f.clone());
        }
    }
    v.into_result()?;
    let proof = proof?;

    app.throttle.check(&meta.peer, None)?;
    let now = app.clock.now_ms();
    let challenge_hash = hash_token(&r.challenge);
    let Some(challenge) = totp::find_challenge(app.store.conn(), &challenge_hash, now).await?
    else {
        return Err(challenge_invalid());
    };
    let (user, accepted) = match factor::check(
        &app,
        &meta,
        &challenge.user_id,
        &proof,
        now,
        second_factor_invalid,
    )
    .await
    {
        Err(DomainError::FailedPrecondition { .. }) => return Err(challenge_invalid()),
        other => other?,
    };
    let org = challenge.organization_id.as_deref();
    let refresh = random_token(REFRESH_TOKEN_PREFIX);
    let tx = app.store.begin_write().await?;
    // First statement, as in Login: a parallel wrong code that locked the
    // account first wins.
    if !users::finish_login(&tx, &user.id, &user.password_hash, now).await? {
        drop(tx);
        factor::fail(
            &app,
            &meta,
            &user,
            &proof,
            users::Failure::RefusedAfterCheck,
            "locked",
            now,
        )
        .await?;
        return Err(second_factor_invalid());
    }
    // A password changed since the Login, or a racing call that used the
    // challenge first: the challenge is gone, the code not counted.
    if challenge.password_digest != factor::password_digest(&user)
        || !totp::use_challenge(&tx, &challenge_hash, now).await?
    {
        drop(tx);
        factor::release(&app, &user.id).await?;
        return Err(challenge_invalid());
    }
    if !factor::consume(&tx, &meta, &user, &accepted, now).await? {
        drop(tx);
        factor::fail(
            &app,
            &meta,
            &user,
            &proof,
            users::Failure::WrongPassword,
            "replayed",
            now,
        )
        .await?;
        return Err(second_factor_invalid());
    }
    let opened = async {
        let session = sessions::create(
            &tx,
            &meta,
            actor_of(&user),
            NewSession {
                user_id: &user.id,
                refresh_hash: hash_token(&refresh),
                now,
                session_ttl_ms: app.settings.session_ttl_ms,
                refresh_ttl_ms: app.settings.refresh_ttl_ms,
                organization_id: org,
                amr: AMR_PASSWORD_OTP,
            },
        )
        .await?;
        audit::record(
            &tx,
            &meta,
            AuditEntry::new(
                actor_of(&user),
                "auth.second_factor_verified",
                "session",
                &session.id,
            )
            .details(json!({"method": proof.method()})),
            now,
        )
        .await?;
        mint_in(&app, &tx, &user, org, &session.id, AMR_PASSWORD_OTP).await
    }
    .await;
    match opened {
        Ok((access_token, expires_in)) => {
            tx.commit().await?;
            app.metrics.logins.with_label_values(&["success"]).inc();
            Ok(TokenPair {
                access_token,
                refresh_token: refresh,
                expires_in,
            })
        }
        Err(e) => {
            // E.g. the organization of a scoped Login left meanwhile: the
            // slot back, nothing used.
            drop(tx);
            factor::release(&app, &user.id).await?;
            Err(e)
        }
    }
}
