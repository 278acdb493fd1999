//! What an audit event says (R19): who did what to which target, from where.
//! The store writes it in the transaction of the change it describes.

use serde_json::Value;

/// Where a request came from, stored on every event it causes.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub peer: String,
}

/// Who did it.
#[derive(Debug, Clone)]
pub enum Actor {
    User {
        id: String,
        email: String,
    },
    /// Unauthenticated (a failed login, a signup).
    Anonymous,
    /// The server itself (bootstrap, key generation).
    System,
}

/// One event, before it gets its id and time.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: Actor,
    pub organization_id: Option<String>,
    /// Stable dotted name, e.g. `membership.role_changed`.
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    /// `{"before":…,"after":…}` or other context. Never secrets.
    pub details: Value,
}

impl AuditEntry {
    pub fn new(
        actor: Actor,
        action: &'static str,
        target_type: &'static str,
        target_id: impl Into<String>,
    ) -> Self {
        Self {
            actor,
            organization_id: None,
            action,
            target_type,
            target_id: target_id.into(),
            details: Value::Object(Default::default()),
        }
    }

    pub fn org(mut self, organization_id: impl Into<String>) -> Self {
        self.organization_id = Some(organization_id.into());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}
