//! What an audit event says (R19): who did what to which target, from where.
//! The store writes it in the transaction of the change it describes. Who
//! reads the trail: every event for a PlatformAdmin, one organization's for
//! a holder of its `audit` permission.

use super::error::{reason, DomainError};
use super::model::{effective_permissions, Caller, Permission, Role};
use serde_json::Value;

/// Where a request came from, stored on every event it causes.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub peer: String,
    /// The client's `user-agent`, printable ASCII, at most 256 characters
    /// (kept on the sessions a login opens, not on audit events).
    pub user_agent: String,
}

/// Who did it.
#[derive(Debug, Clone)]
pub enum Actor {
    User {
        id: String,
        email: String,
    },
    /// A service account (R25): `actor_type` "service", its id as actor.
    Service {
        id: String,
        name: String,
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

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: String,
    pub occurred_at_ms: i64,
    /// `user`, `service`, `anonymous` or `system`.
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub organization_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    /// JSON text.
    pub details: String,
    pub request_id: String,
    pub peer_address: String,
}

/// R19, the part that needs no membership: a PlatformAdmin reads everything
/// (`Ok(None)`); anyone else names one organization, whose membership then
/// decides (`require_audit_permission`).
pub fn reader_scope<'a>(
    caller: &Caller,
    organization: Option<&'a str>,
) -> Result<Option<&'a str>, DomainError> {
    if caller.platform_admin {
        return Ok(None);
    }
    match organization {
        Some(org) => Ok(Some(org)),
        None if caller.platform_admin_gated => Err(super::second_factor::platform_refusal()),
        None => Err(DomainError::denied(
            reason::PLATFORM_ADMIN_REQUIRED,
            "only a PlatformAdmin reads every organization's events; set organization_id",
        )),
    }
}

/// R19 inside an organization: its `audit` permission (Managers hold it);
/// NOT_FOUND outside one's organizations (R4).
pub fn require_audit_permission(
    caller: &Caller,
    role: Option<Role>,
    granted_bits: u8,
) -> Result<(), DomainError> {
    super::access::require_org_visible(caller, role)?;
    if effective_permissions(caller.platform_admin, role, granted_bits).contains(&Permission::Audit)
    {
        Ok(())
    } else {
        Err(DomainError::denied(
            reason::AUDIT_PERMISSION_REQUIRED,
            "audit permission required",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(pa: bool) -> Caller {
        Caller::for_test(pa)
    }

    #[test]
    fn r19_readers() {
        assert_eq!(reader_scope(&caller(true), None).ok(), Some(None));
        assert_eq!(
            reader_scope(&caller(false), Some("o")).ok(),
            Some(Some("o"))
        );
        assert!(reader_scope(&caller(false), None).is_err());
        let c = caller(false);
        assert!(require_audit_permission(&c, Some(Role::Manager), 0).is_ok());
        assert!(require_audit_permission(&c, Some(Role::Member), Permission::Audit.bit()).is_ok());
        assert!(matches!(
            require_audit_permission(&c, Some(Role::Member), 0),
            Err(DomainError::PermissionDenied { reason, .. }) if reason == reason::AUDIT_PERMISSION_REQUIRED
        ));
        assert!(matches!(
            require_audit_permission(&c, None, 0x7f),
            Err(DomainError::NotFound { .. })
        ));
    }
}
