//! What keeps a long-lived stream (WatchRevocations, ExportAuditEvents)
//! honest for its whole life, not only at its start:
//!
//! - it holds its load permit and per-caller slot (`crate::stream_limits`)
//!   until it ends;
//! - at least every `RECHECK` it asks again whether its caller still has the
//!   right to it (account active, session live, token unexpired,
//!   PlatformAdmin or audit permission as now stored; for a service
//!   account: the account active, the token's credential not removed, the
//!   scope still held), and ends with that refusal the moment the answer is
//!   no.
//!
//! Rules: H7 (docs/rules.md).

use crate::app::App;
use crate::domain::error::reason;
use crate::domain::service_account::{require_scope, Scope};
use crate::domain::{Caller, DomainError};
use std::time::Duration;

pub use crate::stream_limits::{StreamKind, StreamLimits, StreamSlot};

/// How often an open stream re-checks its caller's right.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The right a stream was opened with, asked again while it runs.
#[derive(Debug, Clone)]
pub enum StreamRight {
    /// WatchRevocations: a PlatformAdmin, or a service account holding
    /// revocations.watch.
    Revocations,
    /// `AuditService` visibility of `organization` (all when `None`); a
    /// service account also needs audit.read.
    Audit { organization: Option<String> },
}

impl StreamRight {
    /// The scope a service account's stream needs, asked again on every
    /// re-check: narrowing an account's scopes ends its streams (R25).
    fn scope(&self) -> Scope {
        match self {
            StreamRight::Revocations => Scope::RevocationsWatch,
            StreamRight::Audit { .. } => Scope::AuditRead,
        }
    }
}

/// A stream's caller as it was authenticated, and when it was last checked.
pub struct StreamGuard {
    app: App,
    claims: kiops_token::Claims,
    right: StreamRight,
    checked: tokio::time::Instant,
    _slot: StreamSlot,
}

impl StreamGuard {
    pub fn new(
        app: App,
        claims: kiops_token::Claims,
        right: StreamRight,
        slot: StreamSlot,
    ) -> Self {
        Self {
            app,
            claims,
            right,
            checked: tokio::time::Instant::now(),
            _slot: slot,
        }
    }

    /// `Ok` while the caller still has the right; checks the database at
    /// most once per `RECHECK`.
    pub async fn still_allowed(&mut self) -> Result<(), DomainError> {
        if self.checked.elapsed() < RECHECK {
            return Ok(());
        }
        self.checked = tokio::time::Instant::now();
        if self.app.clock.now_secs() >= self.claims.exp {
            return Err(DomainError::unauthenticated(
                reason::INVALID_TOKEN,
                "the access token of this stream has expired; reconnect with a fresh one",
            ));
        }
        let caller = super::context::caller_of(&self.app, self.claims.clone()).await?;
        authorize(&self.app, &caller, &self.right).await
    }
}

/// The check every stream makes when it opens and again while it runs. A
/// service account's caller comes from `caller_of` like a person's: a
/// disabled or deleted account, or a removed credential, is refused there.
pub async fn authorize(app: &App, caller: &Caller, right: &StreamRight) -> Result<(), DomainError> {
    require_scope(caller, Some(right.scope()))?;
    match right {
        StreamRight::Revocations if caller.service.is_some() => Ok(()),
        StreamRight::Revocations => crate::domain::access::require_platform_admin(caller),
        StreamRight::Audit { organization } => {
            crate::service::audit::authorize(app, caller, organization.as_deref()).await
        }
    }
}

/// Why a stream's task stops sending.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// The caller lost the right; the refusal was sent (or the client is
    /// not reading and will find it when it does).
    Refused,
}

/// The sending half of a stream, with its guard.
pub struct GuardedSender<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    guard: Option<StreamGuard>,
}

impl<T: Send + 'static> GuardedSender<T> {
    pub fn new(
        tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
        guard: StreamGuard,
    ) -> Self {
        Self {
            tx,
            guard: Some(guard),
        }
    }

    /// Sends `msg` once the client has room for it, re-checking the caller's
    /// right while it waits: a client that stops reading cannot keep a
    /// stream (and its slot) alive past the loss of the right.
    ///
    /// A client that takes nothing for `STALL` loses the stream: it would
    /// otherwise hold a permit of the load limit for as long as its right
    /// and token last.
    pub async fn send(&mut self, msg: T) -> Result<(), Ended> {
        let stalled_at = tokio::time::Instant::now() + STALL;
        loop {
            self.check().await?;
            match tokio::time::timeout(RECHECK, self.tx.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(Ok(msg));
                    return Ok(());
                }
                Ok(Err(_)) => return Err(Ended::Gone),
                Err(_) if tokio::time::Instant::now() >= stalled_at => {
                    self.guard = None;
                    let e = DomainError::exhausted(
                        reason::STREAM_STALLED,
                        "the client read nothing for 30 s; the stream was ended",
                    );
                    let _ = tokio::time::timeout(FINAL_SEND, self.tx.send(Err(e.into()))).await;
                    return Err(Ended::Refused);
                }
                Err(_) => continue,
            }
        }
    }

    /// Waits up to `wait` for `wake`, re-checking the right meanwhile;
    /// `Err` when the stream must end.
    pub async fn idle<F: std::future::Future>(
        &mut self,
        wait: Duration,
        wake: F,
    ) -> Result<(), Ended> {
        self.check().await?;
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(wait.min(RECHECK)) => {}
            _ = self.tx.closed() => return Err(Ended::Gone),
        }
        self.check().await
    }

    /// Ends the stream with `e` (a failure of the stream itself).
    pub async fn fail(mut self, e: DomainError) {
        self.guard = None;
        let _ = tokio::time::timeout(FINAL_SEND, self.tx.send(Err(e.into()))).await;
    }

    async fn check(&mut self) -> Result<(), Ended> {
        let Some(guard) = self.guard.as_mut() else {
            return Err(Ended::Refused);
        };
        match guard.still_allowed().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The slot and permit go back now, not when the client reads.
                self.guard = None;
                let _ = tokio::time::timeout(FINAL_SEND, self.tx.send(Err(e.into()))).await;
                Err(Ended::Refused)
            }
        }
    }
}

/// How long a refusal waits for a client that is not reading.
const FINAL_SEND: Duration = Duration::from_secs(30);

/// How long a stream waits for a client that takes nothing.
const STALL: Duration = Duration::from_secs(30);
