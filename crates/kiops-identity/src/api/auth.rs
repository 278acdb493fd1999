//! `AuthService`: login, refresh, logout, JWKS.

use super::context::{self, request_meta};
use super::streams::{GuardedSender, StreamGuard, StreamKind, StreamRight};
use crate::app::App;
use crate::auth::secrets::{hash_token, random_token};
use crate::domain::error::{reason, Violations};
use crate::domain::model::StoredStatus;
use crate::domain::{validate, DomainError};
use crate::overload::CallPermit;
use crate::store::audit::{self, Actor, AuditEntry, RequestMeta};
use crate::store::sessions::{self, NewSession, Rotation};
use crate::store::users::{self, User};
use crate::store::{email_verifications, memberships};
use kiops_proto::v1::auth_service_server::AuthService;
use kiops_proto::v1::*;
use kiops_token::IssueRequest;
use serde_json::json;
use tonic::{Request, Response, Status};

pub const REFRESH_TOKEN_PREFIX: &str = "kr";

pub struct AuthApi {
    app: App,
}

impl AuthApi {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

/// Access and refresh token pair as every login-like RPC answers it.
struct TokenPair {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
}

impl App {
    /// Mints an access token for `user`, holding all their organizations or
    /// only `only_org`. A scoped request for an organization the user does not
    /// belong to is NOT_FOUND (R4), unless they are PlatformAdmin.
    ///
    /// Reads through `conn`, the caller's open transaction: taking a second
    /// pooled connection while holding one deadlocked PostgreSQL once as many
    /// refreshes as pool slots ran at once (found by the refresh bench).
    pub async fn mint_access_token<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        user: &User,
        only_org: Option<&str>,
        session_id: &str,
    ) -> Result<(String, i64), DomainError> {
        let orgs = memberships::token_orgs(conn, &user.id, user.platform_admin, only_org).await?;
        self.mint_with_orgs(user, orgs, only_org, session_id)
    }

    /// Mints from memberships already read; a scoped token for an
    /// organization the user is not in is NOT_FOUND (R4).
    fn mint_with_orgs(
        &self,
        user: &User,
        orgs: std::collections::BTreeMap<String, kiops_token::OrgClaims>,
        only_org: Option<&str>,
        session_id: &str,
    ) -> Result<(String, i64), DomainError> {
        if let Some(org) = only_org {
            if !user.platform_admin && !orgs.contains_key(org) {
                return Err(DomainError::not_found("organization"));
            }
        }
        let issued = self.tokens.mint(
            IssueRequest {
                subject: user.id.clone(),
                email: user.email.clone(),
                name: user.name.clone(),
                platform_admin: user.platform_admin,
                orgs,
                session_id: Some(session_id.to_string()),
                email_verified: user.email_verified,
            },
            self.clock.now_secs(),
        )?;
        Ok((issued.token, issued.expires_in as i64))
    }

    async fn login(&self, meta: &RequestMeta, req: LoginRequest) -> Result<TokenPair, DomainError> {
        let mut v = Violations::new();
        let email = validate::email("email", &req.email);
        v.check(email.as_ref().map(|_| ()).map_err(Clone::clone));
        v.check(validate::password_input("password", &req.password));
        let org = match req.organization_id.as_deref() {
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
        let email = email.map_err(|e| DomainError::InvalidArgument(vec![e]))?;

        self.throttle.check(&meta.peer, Some(&email))?;
        let now = self.clock.now_ms();
        let Some(user) =
            crate::service::credentials::check_password(self, meta, &email, req.password, now)
                .await?
        else {
            return Err(DomainError::invalid_credentials());
        };

        match self.open_session(meta, &user, org.as_deref(), now).await {
            Ok(Some(pair)) => {
                self.metrics.logins.with_label_values(&["success"]).inc();
                Ok(pair)
            }
            Ok(None) => {
                crate::service::credentials::record_failed_login(
                    self,
                    meta,
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
                if let Err(release) = self
                    .refuse_checked_login(meta, &user, org.as_deref(), why, now)
                    .await
                {
                    tracing::warn!(error = %release, "login slot not released");
                }
                Err(e)
            }
        }
    }

    /// A right password refused for another reason: the slot back and an
    /// `auth.login_refused` event, together.
    async fn refuse_checked_login(
        &self,
        meta: &RequestMeta,
        user: &User,
        org: Option<&str>,
        why: &str,
        now: i64,
    ) -> Result<(), DomainError> {
        let tx = self.store.begin_write().await?;
        users::release_attempt(&tx, &user.id).await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(
                Actor::User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                },
                "auth.login_refused",
                "user",
                &user.id,
            )
            .details(json!({"email": user.email, "organization_id": org, "reason": why})),
            now,
        )
        .await?;
        tx.commit().await
    }

    /// The session of a login whose password was right, in one transaction
    /// that starts with the conditional `finish_login`: None (nothing
    /// written) when the account was locked or deactivated meanwhile.
    async fn open_session(
        &self,
        meta: &RequestMeta,
        user: &User,
        org: Option<&str>,
        now: i64,
    ) -> Result<Option<TokenPair>, DomainError> {
        let refresh = random_token(REFRESH_TOKEN_PREFIX);
        let tx = self.store.begin_write().await?;
        // First statement, so the row stays locked until the session commits:
        // a parallel wrong password that locked the account first wins.
        if !users::finish_login(&tx, &user.id, &user.password_hash, now).await? {
            return Ok(None);
        }
        let session = sessions::create(
            &tx,
            NewSession {
                user_id: &user.id,
                refresh_hash: hash_token(&refresh),
                now,
                session_ttl_ms: self.settings.session_ttl_ms,
                refresh_ttl_ms: self.settings.refresh_ttl_ms,
            },
        )
        .await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(
                Actor::User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                },
                "auth.login_succeeded",
                "session",
                &session.id,
            )
            .details(json!({"organization_id": org})),
            now,
        )
        .await?;
        // Mint before commit: a failure here (e.g. scoped to a foreign
        // organization) must not leave a session behind.
        let (access_token, expires_in) =
            self.mint_access_token(&tx, user, org, &session.id).await?;
        tx.commit().await?;
        Ok(Some(TokenPair {
            access_token,
            refresh_token: refresh,
            expires_in,
        }))
    }

    async fn refresh(
        &self,
        meta: &RequestMeta,
        req: RefreshRequest,
    ) -> Result<TokenPair, DomainError> {
        let mut v = Violations::new();
        v.check(validate::opaque_token("refresh_token", &req.refresh_token));
        let org = match req.organization_id.as_deref() {
            Some(o) => validate::id("organization_id", o)
                .map(Some)
                .unwrap_or_else(|e| {
                    v.push(e);
                    None
                }),
            None => None,
        };
        v.into_result()?;

        let now = self.clock.now_ms();
        let presented = hash_token(&req.refresh_token);
        let new_refresh = random_token(REFRESH_TOKEN_PREFIX);
        if let Some(pair) = self
            .refresh_fast(&presented, &new_refresh, org.as_deref(), now)
            .await?
        {
            return Ok(pair);
        }
        // The classifying path is a write transaction: run it in a task of
        // its own, so a caller's deadline cannot drop it half-way and hand
        // its connection back to the pool with the transaction still open.
        let app = self.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            app.refresh_classified(&meta, presented, new_refresh, org, now)
                .await
        })
        .await
        .map_err(|e| DomainError::internal(format!("refresh task: {e}")))?
    }

    /// `refresh` for a token the fast path did not take: unknown, used
    /// (reuse detection), expired, or raced.
    async fn refresh_classified(
        &self,
        meta: &RequestMeta,
        presented: String,
        new_refresh: String,
        org: Option<String>,
        now: i64,
    ) -> Result<TokenPair, DomainError> {
        let tx = self.store.begin_write().await?;
        let rotation = sessions::rotate(
            &tx,
            &presented,
            hash_token(&new_refresh),
            now,
            self.settings.refresh_ttl_ms,
        )
        .await?;
        let session = match rotation {
            Rotation::Invalid => {
                return Err(DomainError::unauthenticated(
                    reason::INVALID_REFRESH_TOKEN,
                    "invalid or expired refresh token",
                ))
            }
            Rotation::Reused { session } => {
                crate::store::revocations::record(
                    &tx,
                    crate::store::revocations::Scope {
                        user_id: &session.user_id,
                        organization_id: None,
                        session_id: Some(&session.id),
                    },
                    "session_revoked",
                    now,
                )
                .await?;
                let user = users::find_by_id(&tx, &session.user_id).await?;
                audit::record(
                    &tx,
                    meta,
                    AuditEntry::new(
                        user.map(|u| Actor::User {
                            id: u.id,
                            email: u.email,
                        })
                        .unwrap_or(Actor::Anonymous),
                        "session.revoked",
                        "session",
                        &session.id,
                    )
                    .details(json!({"reason": "refresh_token_reused"})),
                    now,
                )
                .await?;
                tx.commit().await?;
                return Err(DomainError::unauthenticated(
                    reason::REFRESH_TOKEN_REUSED,
                    "refresh token was already used; the session has been revoked",
                ));
            }
            Rotation::Rotated { session } => session,
        };
        let user = users::find_by_id(&tx, &session.user_id)
            .await?
            .filter(|u| u.status != StoredStatus::Inactive);
        let Some(user) = user else {
            return Err(DomainError::unauthenticated(
                reason::INVALID_REFRESH_TOKEN,
                "invalid or expired refresh token",
            ));
        };
        let (access_token, expires_in) = self
            .mint_access_token(&tx, &user, org.as_deref(), &session.id)
            .await?;
        tx.commit().await?;
        Ok(TokenPair {
            access_token,
            refresh_token: new_refresh,
            expires_in,
        })
    }

    /// The common case of `refresh` (a current token of a live session) with
    /// the reads and the signing done before the write, so the write is one
    /// batch. `None` sends the caller down the classifying path: unknown,
    /// used (reuse detection), expired, or raced by a concurrent use.
    async fn refresh_fast(
        &self,
        presented: &str,
        new_refresh: &str,
        org: Option<&str>,
        now: i64,
    ) -> Result<Option<TokenPair>, DomainError> {
        let Some(mut candidate) = self.store.refresh_candidate(presented, org, now).await? else {
            return Ok(None);
        };
        let user = User::try_from(candidate.user.clone())?;
        if user.status == StoredStatus::Inactive {
            return Err(DomainError::unauthenticated(
                reason::INVALID_REFRESH_TOKEN,
                "invalid or expired refresh token",
            ));
        }
        // Minted before the token is used: an organization the user is not
        // in refuses the call without consuming the refresh token.
        let (access_token, expires_in) = self.mint_with_orgs(
            &user,
            std::mem::take(&mut candidate.orgs),
            org,
            &candidate.session_id,
        )?;
        let claimed = sessions::claim_candidate(
            &self.store,
            presented,
            &candidate,
            hash_token(new_refresh),
            now,
            self.settings.refresh_ttl_ms,
        )
        .await?;
        Ok(claimed.then(|| TokenPair {
            access_token,
            refresh_token: new_refresh.to_string(),
            expires_in,
        }))
    }

    async fn logout(
        &self,
        meta: &RequestMeta,
        caller: &crate::domain::Caller,
        req: LogoutRequest,
    ) -> Result<(), DomainError> {
        validate::opaque_token("refresh_token", &req.refresh_token)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let session = sessions::find_by_refresh(&tx, &hash_token(&req.refresh_token)).await?;
        // Someone else's session answers exactly like an unknown one.
        let Some(session) = session.filter(|s| s.user_id == caller.user_id) else {
            return Err(DomainError::not_found("session"));
        };
        sessions::revoke(&tx, &session.id, "logout", now).await?;
        crate::store::revocations::record(
            &tx,
            crate::store::revocations::Scope {
                user_id: &session.user_id,
                organization_id: None,
                session_id: Some(&session.id),
            },
            "logout",
            now,
        )
        .await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(caller.actor(), "auth.logout", "session", &session.id),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A WatchRevocations stream's task: sends every event after `last` in
/// commit order, then waits for the tip to move (any replica's writes), until
/// the client goes or the caller loses the right.
async fn follow_revocations(
    app: App,
    mut out: GuardedSender<WatchRevocationsResponse>,
    mut last: i64,
) {
    let mut tip = app.revocation_tip.subscribe();
    loop {
        let rows = match crate::store::revocations::after(app.store.conn(), last, 500).await {
            Ok(rows) => rows,
            Err(e) => return out.fail(e).await,
        };
        if rows.is_empty() {
            if out
                .idle(std::time::Duration::from_secs(1), tip.changed())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        for row in rows {
            last = row.seq.unwrap_or(last);
            let event = RevocationEvent {
                event_id: last.to_string(),
                user_id: row.user_id,
                organization_id: row.organization_id.unwrap_or_default(),
                revoke_time: Some(super::convert::timestamp(row.revoked_at)),
                reason: row.reason,
                session_id: row.session_id.unwrap_or_default(),
            };
            if out
                .send(WatchRevocationsResponse { event: Some(event) })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn pair_to_login(p: TokenPair) -> LoginResponse {
    LoginResponse {
        access_token: p.access_token,
        refresh_token: p.refresh_token,
        expires_in: p.expires_in,
        token_type: "Bearer".into(),
    }
}

pub const RESET_TOKEN_PREFIX: &str = "kp";
/// Email-verification tokens.
pub const VERIFICATION_TOKEN_PREFIX: &str = "kv";

impl App {
    /// Always OK, in the same time whether the email exists or not: the
    /// lookup and the write happen in a background task after the answer.
    async fn request_password_reset(
        &self,
        meta: &RequestMeta,
        email: &str,
    ) -> Result<(), DomainError> {
        let email =
            validate::email("email", email).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        self.throttle.check(&meta.peer, Some(&email))?;
        let app = self.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            let result = async {
                let Some(user) = users::find_by_email(app.store.conn(), &email).await? else {
                    return Ok(());
                };
                if user.status == StoredStatus::Inactive {
                    return Ok(());
                }
                let now = app.clock.now_ms();
                let tx = app.store.begin_write().await?;
                crate::service::credentials::queue_password_reset(
                    &app,
                    &tx,
                    &meta,
                    Actor::Anonymous,
                    &user,
                    false,
                    now,
                )
                .await?;
                tx.commit().await?;
                app.mail_wakeup.notify_one();
                Ok::<(), DomainError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "password reset request failed");
            }
        });
        Ok(())
    }

    /// Sets a new password with a reset token: unlocks the account and
    /// revokes every session.
    async fn reset_password(
        &self,
        meta: &RequestMeta,
        r: ResetPasswordRequest,
    ) -> Result<(), DomainError> {
        validate::opaque_token("token", &r.token)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        validate::password_input("new_password", &r.new_password)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        self.throttle.check(&meta.peer, None)?;
        let invalid = || {
            DomainError::precondition(
                reason::INVALID_RESET_TOKEN,
                "the reset link is invalid, used or expired",
            )
        };
        let hash = hash_token(&r.token);
        let now = self.clock.now_ms();
        // Check the policy against the account's email before hashing.
        let owner = crate::store::password_resets::owner(self.store.conn(), &hash, now)
            .await?
            .ok_or_else(invalid)?;
        let user = users::find_by_id(self.store.conn(), &owner)
            .await?
            .ok_or_else(invalid)?;
        crate::domain::password_policy::check("new_password", &r.new_password, &user.email)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        let new_hash = self.hasher.hash(r.new_password).await?;
        let tx = self.store.begin_write().await?;
        let Some(user_id) = crate::store::password_resets::consume(&tx, &hash, now).await? else {
            return Err(invalid());
        };
        users::set_password(&tx, &user_id, new_hash, now).await?;
        let revoked =
            sessions::revoke_all_for_user(&tx, &user_id, None, "password_reset", now).await?;
        crate::store::revocations::record(
            &tx,
            crate::store::revocations::Scope {
                user_id: &user_id,
                organization_id: None,
                session_id: None,
            },
            "password_changed",
            now,
        )
        .await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(
                Actor::User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                },
                "user.password_reset",
                "user",
                &user_id,
            )
            .details(json!({"sessions_revoked": revoked, "unlocked": true})),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new verification token for `user` (killing the older ones) and its
    /// email, inside the caller's transaction.
    async fn queue_verification_email<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        meta: &RequestMeta,
        actor: Actor,
        user: &User,
        resend: bool,
        now: i64,
    ) -> Result<(), DomainError> {
        let token = random_token(VERIFICATION_TOKEN_PREFIX);
        email_verifications::replace(conn, &user.id, hash_token(&token), now).await?;
        crate::store::outbox::enqueue(
            conn,
            crate::mail::messages::email_verification(
                &self.mail,
                &user.email,
                &token,
                now + email_verifications::TTL_MS,
            ),
            now,
        )
        .await?;
        audit::record(
            conn,
            meta,
            AuditEntry::new(
                actor,
                if resend {
                    "user.verification_email_resent"
                } else {
                    "user.verification_email_sent"
                },
                "user",
                &user.id,
            ),
            now,
        )
        .await
    }

    /// VerifyEmail: uses the token and marks the address proven. The user
    /// row is locked first (as `resend_verification_email` does), then the
    /// token is used by a conditional UPDATE: a resend that committed first
    /// has killed it.
    async fn verify_email(&self, meta: &RequestMeta, token: &str) -> Result<(), DomainError> {
        validate::opaque_token("token", token)
            .map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        self.throttle.check(&meta.peer, None)?;
        let invalid = || {
            DomainError::precondition(
                reason::INVALID_VERIFICATION_TOKEN,
                "the verification link is invalid, used, replaced or expired",
            )
        };
        let hash = hash_token(token);
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let owner = email_verifications::owner(&tx, &hash, now)
            .await?
            .ok_or_else(invalid)?;
        let user = users::lock(&tx, &owner).await?.ok_or_else(invalid)?;
        if !email_verifications::consume(&tx, &hash, &user.id, now).await? {
            return Err(invalid());
        }
        users::mark_email_verified(&tx, &user.id, now).await?;
        audit::record(
            &tx,
            meta,
            AuditEntry::new(
                Actor::User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                },
                "user.email_verified",
                "user",
                &user.id,
            )
            .details(json!({"by": "verification_link"})),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Always OK, in the same time whether the email exists or not (no
    /// enumeration): throttled per peer and per email, and the lookup and
    /// the write happen in a background task after the answer, as for
    /// RequestPasswordReset.
    async fn resend_verification_email(
        &self,
        meta: &RequestMeta,
        email: &str,
    ) -> Result<(), DomainError> {
        let email =
            validate::email("email", email).map_err(|e| DomainError::InvalidArgument(vec![e]))?;
        self.throttle.check(&meta.peer, Some(&email))?;
        let app = self.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            let result = async {
                let Some(found) = users::find_by_email(app.store.conn(), &email).await? else {
                    return Ok(());
                };
                if found.email_verified || found.status == StoredStatus::Inactive {
                    return Ok(());
                }
                let now = app.clock.now_ms();
                let tx = app.store.begin_write().await?;
                // Decided under the row lock VerifyEmail also takes: a
                // verification that committed first makes this a no-op.
                let Some(user) = users::lock(&tx, &found.id)
                    .await?
                    .filter(|u| !u.email_verified)
                else {
                    return Ok(());
                };
                let actor = Actor::User {
                    id: user.id.clone(),
                    email: user.email.clone(),
                };
                app.queue_verification_email(&tx, &meta, actor, &user, true, now)
                    .await?;
                tx.commit().await?;
                app.mail_wakeup.notify_one();
                Ok::<(), DomainError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "verification email resend failed");
            }
        });
        Ok(())
    }

    /// SignUp (R7): the account, and with an organization a PENDING join
    /// request, in one transaction. An unknown organization is refused before
    /// anything is created.
    async fn sign_up(
        &self,
        meta: &RequestMeta,
        r: SignUpRequest,
    ) -> Result<SignUpResponse, DomainError> {
        let mut v = Violations::new();
        let email = v.take(validate::email("email", &r.email));
        let name = v.take(validate::name("name", &r.name));
        v.check(crate::domain::password_policy::check(
            "password",
            &r.password,
            &email,
        ));
        let org = match r.organization_id.as_deref() {
            Some(o) if !o.is_empty() => Some(v.take(validate::id("organization_id", o))),
            _ => None,
        };
        v.into_result()?;
        self.throttle.check(&meta.peer, None)?;
        if let Some(o) = &org {
            if crate::store::organizations::find(self.store.conn(), o)
                .await?
                .is_none()
            {
                return Err(DomainError::not_found("organization"));
            }
        }
        let password_hash = self.hasher.hash(r.password).await?;
        let now = self.clock.now_ms();
        let tx = self.store.begin_write().await?;
        let user = users::create(
            &tx,
            meta,
            Actor::Anonymous,
            users::NewUser {
                email,
                name,
                password_hash,
                platform_admin: false,
                // Unproven until the emailed link is used (issue 20 item 8).
                email_verified: false,
            },
            now,
        )
        .await?;
        let actor = Actor::User {
            id: user.id.clone(),
            email: user.email.clone(),
        };
        self.queue_verification_email(&tx, meta, actor.clone(), &user, false, now)
            .await?;
        let jr = match &org {
            Some(o) => {
                Some(crate::store::join_requests::create(&tx, meta, actor, &user.id, o, now).await?)
            }
            None => None,
        };
        let join_request = match jr {
            Some(j) => crate::store::join_requests::row(&tx, &j.id)
                .await?
                .map(|row| super::convert::join_request(&row)),
            None => None,
        };
        tx.commit().await?;
        self.mail_wakeup.notify_one();
        Ok(SignUpResponse {
            user: Some(super::convert::user(&user, now)),
            join_request,
        })
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<RequestPasswordResetResponse>, Status> {
        let meta = request_meta(&request);
        self.app
            .request_password_reset(&meta, &request.into_inner().email)
            .await?;
        Ok(Response::new(RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let meta = request_meta(&request);
        self.app.reset_password(&meta, request.into_inner()).await?;
        Ok(Response::new(ResetPasswordResponse {}))
    }

    async fn sign_up(
        &self,
        request: Request<SignUpRequest>,
    ) -> Result<Response<SignUpResponse>, Status> {
        let meta = request_meta(&request);
        Ok(Response::new(
            self.app.sign_up(&meta, request.into_inner()).await?,
        ))
    }

    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        let meta = request_meta(&request);
        self.app
            .verify_email(&meta, &request.into_inner().token)
            .await?;
        Ok(Response::new(VerifyEmailResponse {}))
    }

    async fn resend_verification_email(
        &self,
        request: Request<ResendVerificationEmailRequest>,
    ) -> Result<Response<ResendVerificationEmailResponse>, Status> {
        let meta = request_meta(&request);
        self.app
            .resend_verification_email(&meta, &request.into_inner().email)
            .await?;
        Ok(Response::new(ResendVerificationEmailResponse {}))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let meta = request_meta(&request);
        let pair = self.app.login(&meta, request.into_inner()).await?;
        Ok(Response::new(pair_to_login(pair)))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let meta = request_meta(&request);
        let p = self.app.refresh(&meta, request.into_inner()).await?;
        Ok(Response::new(RefreshResponse {
            access_token: p.access_token,
            refresh_token: p.refresh_token,
            expires_in: p.expires_in,
            token_type: "Bearer".into(),
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let meta = request_meta(&request);
        let caller = context::authenticate(&self.app, &request).await?;
        self.app
            .logout(&meta, &caller, request.into_inner())
            .await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchRevocationsResponse>>, Status> {
        let claims = context::verify_bearer(&self.app, &request)?;
        let call = request.extensions().get::<CallPermit>().cloned();
        let caller = context::caller_of(&self.app, claims.clone()).await?;
        let right = StreamRight::PlatformAdmin;
        super::streams::authorize(&self.app, &caller, &right).await?;
        let r = request.into_inner();
        let start = if r.after_event_id.is_empty() {
            crate::store::revocations::latest_seq(self.app.store.conn()).await?
        } else {
            r.after_event_id
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    DomainError::invalid("after_event_id", "must be an event id from this stream")
                })?
        };
        let slot = self
            .app
            .streams
            .open(StreamKind::Revocations, &caller, call.as_ref())?;
        let guard = StreamGuard::new(self.app.clone(), claims, right, slot);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchRevocationsResponse, Status>>(64);
        tokio::spawn(follow_revocations(
            self.app.clone(),
            GuardedSender::new(tx, guard),
            start,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        let jwks = self.app.tokens.jwks();
        let keys = jwks
            .keys
            .iter()
            .filter_map(|k| serde_json::to_string(k).ok())
            .collect();
        Ok(Response::new(GetJwksResponse {
            keys,
            jwks_json: jwks.to_json(),
        }))
    }
}
