//! The use cases: one function per operation, one module per gRPC service.
//!
//! A use case takes the decoded request and the authenticated caller,
//! authorises with the rules of [`crate::domain`], runs one store
//! transaction that applies the change together with its audit event and its
//! revocations, and returns domain types. The tonic handlers in
//! [`crate::api`] only decode, call one of these and encode.
//!
//! A use case that writes takes its arguments by value, and its handler runs
//! it with [`to_completion`]: a client that cancels or times out must not cut
//! a transaction off half-way (the connection would go back to the pool
//! inside an open transaction).

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod credentials;
pub mod invitations;
pub mod memberships;
pub mod organizations;
pub mod parse;
pub mod platform;
pub mod service_accounts;
pub mod sessions;
pub mod templates;
pub mod totp;
pub mod users;

use crate::app::App;
use crate::domain::error::Violations;
use crate::domain::page_token::{self, PageKey};
use crate::domain::DomainError;
use serde_json::Value;
use std::future::Future;
use tracing::Instrument;

/// Runs a writing use case in a task of its own, inside the request's span,
/// so it finishes even if the request future is dropped.
pub async fn to_completion<T, F>(use_case: F) -> Result<T, DomainError>
where
    F: Future<Output = Result<T, DomainError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(use_case.in_current_span())
        .await
        .map_err(|e| DomainError::internal(format!("use case task ended: {e}")))?
}

/// One page of a listing and the token of the next one (empty on the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub total_size: u64,
}

impl<T> Page<T> {
    /// A page from `rows` read with one more than `size` (the extra row
    /// only tells that a next page exists); `token` makes the next page's
    /// token from the page's last item.
    pub fn from_probe(
        mut rows: Vec<T>,
        size: u64,
        total_size: u64,
        token: impl FnOnce(&T) -> String,
    ) -> Self {
        let more = rows.len() as u64 > size;
        rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => token(last),
            _ => String::new(),
        };
        Page {
            items: rows,
            next_page_token,
            total_size,
        }
    }

    /// The same page with every item mapped by `f`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_page_token: self.next_page_token,
            total_size: self.total_size,
        }
    }
}

/// Where a listing request continues: the sort key of the last row of the
/// previous page, from a token signed for the listing's parameters.
pub struct Cursor {
    key: PageKey,
    fingerprint: String,
    /// The sort key the page starts after; `None` on the first page.
    pub after: Option<Vec<Value>>,
}

impl Cursor {
    /// Decodes `token` (empty: the first page) for the parameters of
    /// `fingerprint`; a bad token is a violation on `page_token`.
    pub fn decode(app: &App, v: &mut Violations, fingerprint: String, token: &str) -> Self {
        let key = app.tokens.page_key();
        let after = if token.is_empty() {
            None
        } else {
            v.take(page_token::decode(&key, &fingerprint, token).map(Some))
        };
        Cursor {
            key,
            fingerprint,
            after,
        }
    }

    /// A sort key of a time in milliseconds and an id.
    pub fn after_ms_and_id(&self) -> Option<(i64, String)> {
        let k = self.after.as_ref()?;
        Some((k.first()?.as_i64()?, k.get(1)?.as_str()?.to_string()))
    }

    /// A sort key of one string (a code or a name).
    pub fn after_str(&self) -> Option<&str> {
        self.after.as_ref()?.first()?.as_str()
    }

    /// The page of `rows` read with one more than `size`, its next token
    /// carrying the sort key `sort_key` gives for its last item.
    pub fn page<T>(
        &self,
        rows: Vec<T>,
        size: u64,
        total_size: u64,
        sort_key: impl FnOnce(&T) -> Vec<Value>,
    ) -> Page<T> {
        Page::from_probe(rows, size, total_size, |last| {
            page_token::encode(&self.key, &self.fingerprint, sort_key(last))
        })
    }
}
