//! The TOTP second factor of the caller's own account (R30): enrollment,
//! confirmation, disabling, new recovery codes; a PlatformAdmin's reset of
//! someone's factor; and the code check VerifySecondFactor shares.
//!
//! A code is checked like a password (R11, R12): a slot is reserved on the
//! account's lockout counters first (`users::reserve_factor_attempt`), so
//! parallel wrong codes cannot exceed the threshold, a wrong code counts
//! as a wrong password, and a locked account is refused even the right
//! code. The code (time step or recovery code) is then used by a
//! conditional UPDATE in the transaction that acts on it: of racing uses
//! of one code, one wins.

use super::sessions::end_all_of;
use super::users::admin_target;
use crate::app::App;
use crate::auth::secrets::hash_token;
use crate::auth::totp as otp;
use crate::domain::audit::RequestMeta;
use crate::domain::error::reason;
use crate::domain::{Caller, DomainError, FieldViolation};
use crate::mail::seal::SecretSeal;
use crate::store::logins::{self, actor_of, Lockout};
use crate::store::users::{self, User};
use crate::store::{sessions, totp, WriteTx};
use kiops_proto::v1::StartTotpEnrollmentRequest;

/// How a second factor is proven.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A 6-digit TOTP code.
    Code(String),
    /// A recovery code, normalized.
    Recovery(String),
}

impl Proof {
    pub fn method(&self) -> &'static str {
        match self {
            Proof::Code(_) => "totp",
            Proof::Recovery(_) => "recovery_code",
        }
    }
}

/// A code that matched, still to be used (`consume`).
#[derive(Debug, Clone)]
pub enum Accepted {
    Step(i64),
    Recovery(String),
}

/// Exactly one of `code` and `recovery_code` (the latter only when
/// `recovery` allows it), well formed.
pub fn parse_proof(code: &str, recovery_code: &str, recovery: bool) -> Result<Proof, DomainError> {
    match (code.is_empty(), recovery_code.is_empty() || !recovery) {
        (false, true) if otp::is_code(code) => Ok(Proof::Code(code.to_string())),
        (false, true) => Err(FieldViolation::new("code", "must be 6 digits").into()),
        (true, false) => otp::normalize_recovery_code(recovery_code)
            .map(Proof::Recovery)
            .ok_or_else(|| {
                FieldViolation::new(
                    "recovery_code",
                    "not a recovery code (20 base32 characters)",
                )
                .into()
            }),
        _ if recovery => {
            Err(FieldViolation::new("code", "set exactly one of code and recovery_code").into())
        }
        _ => Err(FieldViolation::new("code", "required").into()),
    }
}

fn code_only(code: &str) -> Result<String, DomainError> {
    match parse_proof(code, "", false)? {
        Proof::Code(c) => Ok(c),
        Proof::Recovery(_) => Err(FieldViolation::new("code", "required").into()),
    }
}

pub fn second_factor_invalid() -> DomainError {
    DomainError::unauthenticated(reason::SECOND_FACTOR_INVALID, "invalid second-factor code")
}

fn code_invalid() -> DomainError {
    FieldViolation::new("code", "wrong or already used code")
        .with_reason(reason::TOTP_CODE_INVALID)
        .into()
}

fn not_enabled() -> DomainError {
    DomainError::precondition(reason::TOTP_NOT_ENABLED, "TOTP is not enabled")
}

fn already_enabled() -> DomainError {
    DomainError::precondition(
        reason::TOTP_ALREADY_ENABLED,
        "TOTP is already enabled; disable it first",
    )
}

fn lockout(app: &App) -> Lockout {
    Lockout {
        threshold: app.settings.lockout_threshold,
        lock_ms: app.settings.lockout_ms,
    }
}

/// Records a failed code in its own transaction (`logins::fail_second_factor`).
pub async fn fail(
    app: &App,
    meta: &RequestMeta,
    user: &User,
    proof: &Proof,
    failure: users::Failure,
    why: &str,
    now: i64,
) -> Result<(), DomainError> {
    let tx = app.store.begin_write().await?;
    let locked = logins::fail_second_factor(
        &tx,
        meta,
        user,
        failure,
        proof.method(),
        why,
        lockout(app),
        now,
    )
    .await?;
    tx.commit().await?;
    let result = if locked {
        "locked"
    } else {
        "second_factor_failure"
    };
    app.metrics.logins.with_label_values(&[result]).inc();
    Ok(())
}

/// Gives back a reserved slot without counting anything.
pub async fn release(app: &App, user_id: &str) -> Result<(), DomainError> {
    let tx = app.store.begin_write().await?;
    users::release_attempt(&tx, user_id).await?;
    tx.commit().await
}

/// Reserves an attempt on `user_id`'s lockout counters and checks `proof`
/// against its confirmed TOTP: the account (as reserved) and what matched.
/// A refusal (locked, inactive) or a wrong code is recorded and answered
/// with `wrong()`; the caller must then `consume` the match in the
/// transaction that acts on it, after `users::finish_login`.
pub async fn check(
    app: &App,
    meta: &RequestMeta,
    user_id: &str,
    proof: &Proof,
    now: i64,
    wrong: fn() -> DomainError,
) -> Result<(User, Accepted), DomainError> {
    let reserved = users::reserve_factor_attempt(
        app.store.writer(),
        user_id,
        app.settings.lockout_threshold,
        now,
        now - app.settings.lockout_ms,
    )
    .await?;
    let Some(user) = reserved else {
        if let Some(user) = users::find_by_id(app.store.conn(), user_id).await? {
            let why = match user.status {
                crate::domain::model::StoredStatus::Inactive => "inactive",
                _ => "locked",
            };
            fail(app, meta, &user, proof, users::Failure::Refused, why, now).await?;
        }
        return Err(wrong());
    };
    let credential = totp::find(app.store.conn(), user_id)
        .await?
        .filter(|c| c.confirmed);
    let Some(credential) = credential else {
        release(app, user_id).await?;
        return Err(not_enabled());
    };
    let accepted = match proof {
        Proof::Code(code) => {
            let secret = open_secret(app, user_id, &credential.sealed_secret)?;
            otp::matching_step(&secret, code, now).map(Accepted::Step)
        }
        Proof::Recovery(code) => Some(Accepted::Recovery(otp::recovery_code_hash(code))),
    };
    match accepted {
        Some(a) => Ok((user, a)),
        None => {
            fail(
                app,
                meta,
                &user,
                proof,
                users::Failure::WrongPassword,
                "wrong",
                now,
            )
            .await?;
            Err(wrong())
        }
    }
}

/// Uses the matched code in `tx`: false when it was used already (a
/// replayed step, a used or unknown recovery code).
pub async fn consume(
    tx: &WriteTx,
    meta: &RequestMeta,
    user: &User,
    accepted: &Accepted,
    now: i64,
) -> Result<bool, DomainError> {
    match accepted {
        Accepted::Step(step) => totp::accept_step(tx, &user.id, *step).await,
        Accepted::Recovery(hash) => {
            totp::use_recovery_code(tx, meta, actor_of(user), &user.id, hash, now).await
        }
    }
}

/// Sealing key used only when the server has no key file. It keeps
/// secrets out of casual dumps; only a key kept outside the database
/// protects them against a copy of it (SECURITY.md).
const FALLBACK_SEAL_INFO: &[u8] = b"kiops-identity totp fallback seal v1";

/// The seal for TOTP secrets: the server's key (outbox or signing key
/// file) when it has one, else a fixed fallback; opening tries both, so
/// configuring a key later keeps older secrets readable.
fn seal_of(server: &SecretSeal) -> SecretSeal {
    let mut fallback = [0u8; 32];
    // Cannot fail for a 32-byte output.
    let _ =
        hkdf::Hkdf::<sha2::Sha256>::new(None, b"kiops").expand(FALLBACK_SEAL_INFO, &mut fallback);
    server.with_extra_key(fallback)
}

fn open_secret(app: &App, user_id: &str, sealed: &str) -> Result<String, DomainError> {
    seal_of(&app.mail.seal)
        .open(sealed, &otp::seal_context(user_id))
        .map_err(|e| DomainError::internal(format!("TOTP secret of {user_id}: {e}")))
}

/// A new enrollment: the secret and its otpauth:// URI.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub secret: String,
    pub otpauth_uri: String,
}

/// StartTotpEnrollment.
pub async fn start_enrollment(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    r: StartTotpEnrollmentRequest,
) -> Result<Enrollment, DomainError> {
    // Re-authentication: a stolen token alone must not enroll the thief's
    // authenticator and lock the owner out.
    let user = super::users::get_me(&app, &caller).await?;
    super::users::verify_current_password(&app, &meta, &user, &r.current_password).await?;
    let secret = otp::new_secret();
    let sealed = seal_of(&app.mail.seal).seal(&secret, &otp::seal_context(&caller.user_id));
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    if !totp::start(&tx, &meta, caller.actor(), &caller.user_id, &sealed, now).await? {
        return Err(already_enabled());
    }
    tx.commit().await?;
    Ok(Enrollment {
        otpauth_uri: otp::otpauth_uri(&caller.email, &secret),
        secret,
    })
}

fn new_recovery_codes() -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..otp::RECOVERY_CODES)
        .map(|_| otp::new_recovery_code())
        .collect();
    let hashes = codes
        .iter()
        .filter_map(|c| otp::normalize_recovery_code(c))
        .map(|n| otp::recovery_code_hash(&n))
        .collect();
    (codes, hashes)
}

/// ConfirmTotpEnrollment: the recovery codes, shown once.
pub async fn confirm_enrollment(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    code: String,
) -> Result<Vec<String>, DomainError> {
    let code = code_only(&code)?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    let credential = totp::find(&tx, &caller.user_id)
        .await?
        .ok_or_else(not_enabled)?;
    if credential.confirmed {
        return Err(already_enabled());
    }
    let secret = open_secret(&app, &caller.user_id, &credential.sealed_secret)?;
    let step = otp::matching_step(&secret, &code, now).ok_or_else(code_invalid)?;
    if !totp::confirm(
        &tx,
        &meta,
        caller.actor(),
        &caller.user_id,
        &credential.sealed_secret,
        step,
        now,
    )
    .await?
    {
        // Enabled by a racing confirmation, or restarted with a secret
        // this code does not prove.
        let enabled = totp::find(&tx, &caller.user_id)
            .await?
            .is_some_and(|c| c.confirmed);
        return Err(if enabled {
            already_enabled()
        } else {
            code_invalid()
        });
    }
    let (codes, hashes) = new_recovery_codes();
    totp::replace_recovery_codes(&tx, &caller.user_id, &hashes, now).await?;
    if let Some(sid) = &caller.session_id {
        sessions::upgrade_amr(&tx, &caller.user_id, sid).await?;
    }
    tx.commit().await?;
    Ok(codes)
}

/// Checks the caller's own code (counted like a login attempt) and runs
/// `act` in the transaction that uses it.
async fn with_own_code<T, F>(
    app: &App,
    meta: &RequestMeta,
    caller: &Caller,
    proof: Proof,
    act: F,
) -> Result<T, DomainError>
where
    F: for<'a> FnOnce(
        &'a WriteTx,
        &'a User,
        i64,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, DomainError>> + Send + 'a>,
    >,
{
    let now = app.clock.now_ms();
    let (user, accepted) = check(app, meta, &caller.user_id, &proof, now, code_invalid).await?;
    let tx = match app.store.begin_write().await {
        Ok(tx) => tx,
        Err(e) => {
            release(app, &user.id).await?;
            return Err(e);
        }
    };
    // A database error gives the slot back like every other way out.
    macro_rules! or_release {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    drop(tx);
                    release(app, &user.id).await?;
                    return Err(e);
                }
            }
        };
    }
    if !or_release!(users::finish_login(&tx, &user.id, &user.password_hash, now).await) {
        drop(tx);
        fail(
            app,
            meta,
            &user,
            &proof,
            users::Failure::RefusedAfterCheck,
            "locked",
            now,
        )
        .await?;
        return Err(code_invalid());
    }
    if !or_release!(consume(&tx, meta, &user, &accepted, now).await) {
        drop(tx);
        fail(
            app,
            meta,
            &user,
            &proof,
            users::Failure::WrongPassword,
            "replayed",
            now,
        )
        .await?;
        return Err(code_invalid());
    }
    match act(&tx, &user, now).await {
        Ok(v) => match tx.commit().await {
            Ok(()) => Ok(v),
            Err(e) => {
                release(app, &user.id).await?;
                Err(e)
            }
        },
        Err(e) => {
            drop(tx);
            release(app, &user.id).await?;
            Err(e)
        }
    }
}

/// DisableTotp.
pub async fn disable(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    code: String,
    recovery_code: String,
) -> Result<(), DomainError> {
    let proof = parse_proof(&code, &recovery_code, true)?;
    let actor = caller.actor();
    let m = meta.clone();
    with_own_code(&app, &meta, &caller, proof, move |tx, user, now| {
        Box::pin(async move {
            totp::remove(tx, &m, actor, &user.id, "user.totp_disabled", now).await?;
            Ok(())
        })
    })
    .await
}

/// RegenerateRecoveryCodes.
pub async fn regenerate_recovery_codes(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    code: String,
) -> Result<Vec<String>, DomainError> {
    let proof = Proof::Code(code_only(&code)?);
    let actor = caller.actor();
    let m = meta.clone();
    with_own_code(&app, &meta, &caller, proof, move |tx, user, now| {
        Box::pin(async move {
            let (codes, hashes) = new_recovery_codes();
            totp::replace_recovery_codes(tx, &user.id, &hashes, now).await?;
            totp::record_regenerated(tx, &m, actor, &user.id, now).await?;
            Ok(codes)
        })
    })
    .await
}

/// ResetUserSecondFactor: a PlatformAdmin removes another account's factor
/// and ends its sessions, in one transaction. Returns how many ended.
pub async fn reset_for_user(
    app: App,
    meta: RequestMeta,
    caller: Caller,
    user_id: String,
) -> Result<u64, DomainError> {
    // Not one's own: that would be a way around one's second factor.
    let target = admin_target(&app, &caller, &user_id, true).await?;
    let now = app.clock.now_ms();
    let tx = app.store.begin_write().await?;
    if !totp::remove(
        &tx,
        &meta,
        caller.actor(),
        &target.id,
        "user.second_factor_reset",
        now,
    )
    .await?
    {
        return Err(not_enabled());
    }
    let ended = end_all_of(&tx, &app, &meta, &caller, &target.id, None).await?;
    tx.commit().await?;
    Ok(ended)
}

/// The digest a challenge keeps of the password hash its login verified.
pub fn password_digest(user: &User) -> String {
    hash_token(&user.password_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_to_their_account_and_survive_a_new_key() {
        let s = otp::new_secret();
        let seal = seal_of(&SecretSeal::none());
        let sealed = seal.seal(&s, &otp::seal_context("u1"));
        assert!(!sealed.contains(&s));
        assert_eq!(
            seal.open(&sealed, &otp::seal_context("u1")).as_deref(),
            Ok(s.as_str())
        );
        assert!(seal.open(&sealed, &otp::seal_context("u2")).is_err());
        // A key configured later still opens the older secret.
        let keyed = seal_of(&SecretSeal::with_keys(vec![[3; 32]]));
        assert_eq!(
            keyed.open(&sealed, &otp::seal_context("u1")).as_deref(),
            Ok(s.as_str())
        );
        // With a key, the key seals (not the fallback).
        assert!(SecretSeal::with_keys(vec![[3; 32]])
            .open(&keyed.seal(&s, "c"), "c")
            .is_ok());
    }

    #[test]
    fn proofs_are_exactly_one_well_formed_field() {
        assert!(matches!(
            parse_proof("123456", "", true),
            Ok(Proof::Code(_))
        ));
        let rec = otp::new_recovery_code();
        assert!(matches!(
            parse_proof("", &rec, true),
            Ok(Proof::Recovery(_))
        ));
        for (c, r) in [
            ("", ""),
            ("123456", rec.as_str()),
            ("12345", ""),
            ("abcdef", ""),
            ("", "x"),
        ] {
            assert!(
                matches!(
                    parse_proof(c, r, true),
                    Err(DomainError::InvalidArgument(_))
                ),
                "{c:?} {r:?}"
            );
        }
        assert!(parse_proof("", &rec, false).is_err(), "a code only");
    }
}
