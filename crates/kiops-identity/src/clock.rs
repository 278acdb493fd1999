//! The service's notion of "now", in milliseconds since the Unix epoch.
//!
//! Expiry (invitations, resets, lockouts) is always computed from this clock,
//! never by a background job, and tests can move it forward: with
//! `--unsafe-test-clock` the HTTP port accepts `POST /test/clock/advance?ms=N`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn now_secs(&self) -> u64 {
        (self.now_ms() / 1000).max(0) as u64
    }

    /// Moves the clock forward (tests only; see module docs).
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
