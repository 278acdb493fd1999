//! The revocation feed's reads (R16), for `WatchRevocations`.

use crate::app::App;
use crate::domain::session::RevocationEvent;
use crate::domain::DomainError;
use crate::store::revocations;

/// Events are sent in pages of this many.
const PAGE: u64 = 500;

/// Where a watch starts: after the event the client names, or after the
/// newest one for a client that names none.
pub async fn revocation_start(app: &App, after_event_id: &str) -> Result<i64, DomainError> {
    if after_event_id.is_empty() {
        return revocations::latest_seq(app.store.conn()).await;
    }
    after_event_id
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            DomainError::invalid("after_event_id", "must be an event id from this stream")
        })
}

/// The next committed events after `last`, in commit order.
pub async fn revocations_after(app: &App, last: i64) -> Result<Vec<RevocationEvent>, DomainError> {
    revocations::after(app.store.conn(), last, PAGE).await
}
