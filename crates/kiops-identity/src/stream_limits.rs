//! The limits every long-lived stream (WatchRevocations, ExportAuditEvents)
//! is held to for its whole life: it keeps a permit of the server's load
//! limit (`--max-concurrent-requests`, `overload`) until it ends, so open
//! streams count as calls in flight, and one caller holds at most a few
//! streams of a kind at once (`--max-watches-per-caller`,
//! `--max-exports-per-caller`). The re-check of the caller's right is in
//! `api::streams`.
//!
//! Rules: H7 (docs/rules.md).

use crate::domain::error::reason;
use crate::domain::{Caller, DomainError};
use crate::overload::CallPermit;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Revocations,
    AuditExport,
}

/// The shared counters; one per server.
#[derive(Debug)]
pub struct StreamLimits {
    in_flight: Arc<Semaphore>,
    max_watches: usize,
    max_exports: usize,
    open: Mutex<HashMap<(StreamKind, String), usize>>,
}

impl StreamLimits {
    /// `in_flight` is the load limit's semaphore (`overload::Shed`).
    pub fn new(in_flight: Arc<Semaphore>, max_watches: usize, max_exports: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight,
            max_watches: max_watches.max(1),
            max_exports: max_exports.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a load permit and one of the caller's slots for `kind`, or says
    /// why not (RESOURCE_EXHAUSTED: OVERLOADED or TOO_MANY_STREAMS).
    /// The stream keeps the permit its call was admitted with (`call`), so
    /// it counts as exactly one call in flight for its whole life.
    pub fn open(
        self: &Arc<Self>,
        kind: StreamKind,
        caller: &Caller,
        call: Option<&CallPermit>,
    ) -> Result<StreamSlot, DomainError> {
        let permit = match call.and_then(CallPermit::take) {
            Some(p) => p,
            None => self.in_flight.clone().try_acquire_owned().map_err(|_| {
                DomainError::exhausted(
                    reason::OVERLOADED,
                    "the server is at its concurrency limit; retry with backoff",
                )
            })?,
        };
        let max = match kind {
            StreamKind::Revocations => self.max_watches,
            StreamKind::AuditExport => self.max_exports,
        };
        let key = (kind, caller.user_id.clone());
        let mut open = self
            .open
            .lock()
            .map_err(|_| DomainError::internal("stream limits poisoned"))?;
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= max {
            return Err(DomainError::exhausted(
                reason::TOO_MANY_STREAMS,
                format!("at most {max} streams of this kind per caller are open at once"),
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            key,
            _permit: permit,
        })
    }
}

/// Held by a stream's task; gives its slot and permit back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    key: (StreamKind, String),
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.open.lock() {
            if let Some(n) = open.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}
