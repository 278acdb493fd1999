//! The shared state every handler gets: storage, clock, hasher, tokens,
//! settings and metrics. Cheap to clone.

use crate::auth::password::PasswordHasher;
use crate::auth::tokens::TokenService;
use crate::clock::Clock;
use crate::mail::MailSettings;
use crate::metrics::Metrics;
use crate::store::Store;
use std::ops::Deref;
use std::sync::Arc;

/// Behaviour knobs that come from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub refresh_ttl_ms: i64,
    pub session_ttl_ms: i64,
    pub lockout_threshold: i32,
    pub lockout_ms: i64,
}

#[derive(Debug)]
pub struct AppInner {
    pub store: Store,
    pub clock: Clock,
    pub hasher: PasswordHasher,
    pub tokens: TokenService,
    pub settings: Settings,
    pub metrics: Metrics,
    pub mail: MailSettings,
    /// Wakes the outbox sender after a commit that queued an email.
    pub mail_wakeup: Arc<tokio::sync::Notify>,
    pub throttle: crate::auth::throttle::Throttle,
    /// Highest revocation event id seen in the database (by a poller), so
    /// WatchRevocations streams wake up for events written by any replica.
    pub revocation_tip: tokio::sync::watch::Sender<i64>,
    /// Open streams: load permits, per-caller slots.
    pub streams: Arc<crate::stream_limits::StreamLimits>,
}

#[derive(Debug, Clone)]
pub struct App(Arc<AppInner>);

impl App {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl Deref for App {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}
