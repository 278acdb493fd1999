//! The revocation feed's reads (R16), for `WatchRevocations`.

use crate::app::App;
use crate::domain::service_account::{service_sees_revocation, Owner};
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

/// The next committed events after `last`, in commit order, and the number
/// of the last one read. A service account of an organization (`owner`)
/// is sent only what `service_sees_revocation` gives it (R25); the number
/// read lets its stream move past the events it is not sent.
pub async fn revocations_after(
    app: &App,
    last: i64,
    owner: Option<&Owner>,
) -> Result<(Vec<RevocationEvent>, i64), DomainError> {
    let mut events = revocations::after(app.store.conn(), last, PAGE).await?;
    let read_to = events.iter().filter_map(|e| e.seq).max().unwrap_or(last);
    if let Some(owner) = owner {
        events.retain(|e| service_sees_revocation(owner, e.organization_id.as_deref()));
    }
    Ok((events, read_to.max(last)))
}
