//! `PlatformService` use cases: the platform's second-factor policy (R31)
//! and the test email.

use super::parse;
use crate::app::App;
use crate::domain::audit::RequestMeta;
use crate::domain::error::Violations;
use crate::domain::{access, validate, Caller, DomainError};
use crate::mail::test_email::{self, TestOutcome};
use crate::store::{audit, second_factor, users};
use kiops_proto::v1::{SendTestEmailRequest, UpdatePlatformPolicyRequest};

const POLICY_PATH: &str = "platform_admin_second_factor_required";

pub async fn get_policy(app: &App, caller: &Caller) -> Result<bool, DomainError> {
    access::require_platform_admin(caller)?;
    second_factor::platform_required(app.store.conn()).await
}

/// The policy after the change. Serialized on the policy row; the caller
/// must still be an active PlatformAdmin under the same transaction (H5).
pub async fn update_policy(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: UpdatePlatformPolicyRequest,
) -> Result<bool, DomainError> {
    access::require_platform_admin(&caller)?;
    let mut v = Violations::new();
    let paths = v.take(parse::mask(
        "update_mask",
        r.update_mask.as_ref(),
        &[POLICY_PATH],
        &[POLICY_PATH],
    ));
    v.into_result()?;
    let wanted = r
        .policy
        .unwrap_or_default()
        .platform_admin_second_factor_required;
    let tx = app.store.begin_write().await?;
    let admins = users::lock_active_platform_admins(&tx).await?;
    access::require_still_platform_admin(&caller, &admins)?;
    let before = second_factor::lock_platform(&tx).await?;
    let after = if paths.iter().any(|p| p == POLICY_PATH) {
        wanted
    } else {
        before
    };
    // After the locks: the revocations are dated after any token a racing
    // login minted under the old policy.
    let now = app.clock.now_ms();
    second_factor::set_platform(&tx, &meta, caller.actor(), before, after, now).await?;
    tx.commit().await?;
    Ok(after)
}

/// Sends the test message and records its outcome; a refusal by the SMTP
/// server is an answer, not an error.
pub async fn send_test_email(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: SendTestEmailRequest,
) -> Result<TestOutcome, DomainError> {
    access::require_platform_admin(&caller)?;
    let to = validate::email("to", &r.to)?;
    app.throttle
        .check_key(&format!("test-email\u{0}{}", caller.user_id))?;
    let outcome = test_email::send(&app.mail, &to).await;
    let tx = app.store.begin_write().await?;
    audit::record_test_email(
        &tx,
        &meta,
        caller.actor(),
        &to,
        outcome.delivered,
        outcome.smtp_code,
        app.clock.now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(outcome)
}
