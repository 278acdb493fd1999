//! Plain domain types shared by the layers.
//!
//! Rules: H1 (docs/rules.md).

pub use crate::domain::user::{StoredStatus, UserStatus};
pub use kiops_token::{Permission, Role};

/// An authenticated caller, as loaded from current state (not from token
/// claims), so a deactivation or demotion takes effect on the very next call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject: a user id, or a service account's id.
    pub user_id: String,
    /// Empty for a service account.
    pub email: String,
    /// Always false for a service account.
    pub platform_admin: bool,
    /// R31: the flag is set but does not count now (the platform requires a
    /// second factor this session lacks).
    pub platform_admin_gated: bool,
    /// R31: the token's session was opened or upgraded with a second factor.
    pub second_factor: bool,
    /// Session of the access token, when the token names one; for a
    /// service account, the credential its token was exchanged for.
    pub session_id: Option<String>,
    /// Set when a service account calls (R25): its owner and scopes.
    pub service: Option<crate::domain::service_account::ServiceCaller>,
}

impl Caller {
    /// "me" (me@x.io), a PlatformAdmin or not, for unit tests.
    #[cfg(test)]
    pub fn for_test(platform_admin: bool) -> Self {
        Caller {
            user_id: "me".into(),
            email: "me@x.io".into(),
            platform_admin,
            platform_admin_gated: false,
            second_factor: false,
            session_id: None,
            service: None,
        }
    }

    /// The caller as the actor of the audit events it causes.
    pub fn actor(&self) -> crate::domain::audit::Actor {
        match &self.service {
            Some(s) => crate::domain::audit::Actor::Service {
                id: self.user_id.clone(),
                name: s.name.clone(),
            },
            None => crate::domain::audit::Actor::User {
                id: self.user_id.clone(),
                email: self.email.clone(),
            },
        }
    }
}

/// The login session an access token names, as stored now. A token is only
/// as good as its session: logout, a password change or reset, refresh-token
/// reuse and an administrator all end sessions, and the access tokens
/// already issued to them must stop working at once, here as downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionState {
    /// Whether the session exists and belongs to the token's subject.
    pub found: bool,
    pub revoked_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
}

impl SessionState {
    pub const MISSING: SessionState = SessionState {
        found: false,
        revoked_at_ms: None,
        expires_at_ms: None,
    };

    /// Live: found, never revoked, and not past its absolute lifetime.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.found && self.revoked_at_ms.is_none() && self.expires_at_ms.is_some_and(|t| t > now_ms)
    }
}

/// Effective permissions in an organization (docs/rules.md, Model): everything for a
/// PlatformAdmin or a Manager, the granted set for a Member, nothing without a
/// membership.
pub fn effective_permissions(
    platform_admin: bool,
    role: Option<Role>,
    granted_bits: u8,
) -> Vec<Permission> {
    match (platform_admin, role) {
        (true, _) | (_, Some(Role::Manager)) => Permission::ALL.to_vec(),
        (false, Some(Role::Member)) => Permission::from_bits(granted_bits),
        (false, None) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_found_unrevoked_unexpired_session_is_live() {
        let live = SessionState {
            found: true,
            revoked_at_ms: None,
            expires_at_ms: Some(100),
        };
        assert!(live.is_live(99));
        assert!(!live.is_live(100));
        assert!(!SessionState {
            revoked_at_ms: Some(50),
            ..live
        }
        .is_live(10));
        assert!(!SessionState::MISSING.is_live(0));
    }

    #[test]
    fn effective_permissions_follow_spec() {
        let device = Permission::Device.bit();
        assert_eq!(effective_permissions(true, None, 0).len(), 7);
        assert_eq!(
            effective_permissions(false, Some(Role::Manager), 0).len(),
            7
        );
        assert_eq!(
            effective_permissions(false, Some(Role::Member), device),
            vec![Permission::Device]
        );
        assert!(effective_permissions(false, None, 0x7f).is_empty());
    }
}
