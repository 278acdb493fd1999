//! The claims of an access token (R15 of docs/rules.md).

use crate::model::{Permission, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Role and effective permissions in one organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgClaims {
    pub role: Role,
    /// Effective permissions: all seven for Managers, the granted set for Members.
    pub perms: Vec<Permission>,
}

/// Whom a token was issued to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A person (absent `kind` in tokens minted before service accounts).
    #[default]
    User,
    /// A service account: `sub` is its id, `scope` what it may do, `orgs`
    /// empty and `pa` false.
    Service,
}

/// Scopes a service account can hold (R25 of docs/rules.md). Each is
/// limited to the account's owner organization, or to every organization
/// for a platform account.
pub mod scope {
    /// CheckPermission and CheckPermissions.
    pub const PERMISSIONS_CHECK: &str = "permissions.check";
    /// WatchRevocations (platform accounts).
    pub const REVOCATIONS_WATCH: &str = "revocations.watch";
    /// ListMembers and GetMember.
    pub const MEMBERS_READ: &str = "members.read";
    /// GetUser and ListUsers (platform accounts).
    pub const USERS_READ: &str = "users.read";
    /// ListAuditEvents and ExportAuditEvents.
    pub const AUDIT_READ: &str = "audit.read";
    /// Every scope, in the order documentation lists them.
    pub const ALL: [&str; 5] = [
        PERMISSIONS_CHECK,
        REVOCATIONS_WATCH,
        MEMBERS_READ,
        USERS_READ,
        AUDIT_READ,
    ];
}

/// Verified claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub email: String,
    pub name: String,
    /// PlatformAdmin flag.
    pub pa: bool,
    /// Organization id → role and effective permissions.
    #[serde(default)]
    pub orgs: BTreeMap<String, OrgClaims>,
    /// Login session the token was minted for (lets the issuer tell "this
    /// session" from "other sessions"); absent in tokens of other issuers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The owner proved `email` (verification link, invitation) or an
    /// administrator created the account. False in tokens minted before the
    /// claim existed, so they still verify.
    #[serde(default)]
    pub email_verified: bool,
    /// User or service token.
    #[serde(default)]
    pub kind: TokenKind,
    /// Space-separated scopes of a service token (as RFC 8693's `scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Owner organization of a service token; absent for a platform
    /// account and for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_org: Option<String>,
    /// How the session was authenticated (RFC 8176 values): `["pwd"]`, or
    /// `["pwd", "otp"]` after a second factor. Empty in tokens minted
    /// before the claim existed and in service tokens, so they still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
}

impl Claims {
    /// Whether the token grants `permission` in `organization_id`.
    ///
    /// A PlatformAdmin is allowed everywhere; otherwise the organization must be
    /// in the token and list the category.
    pub fn allows(&self, organization_id: &str, permission: Permission) -> bool {
        if self.is_service() {
            // Scopes say what a service may ask this server, not what it
            // may do downstream: it holds no permission category.
            return false;
        }
        if self.pa {
            return true;
        }
        self.orgs
            .get(organization_id)
            .is_some_and(|o| o.role == Role::Manager || o.perms.contains(&permission))
    }

    /// Whether a service account holds the token.
    pub fn is_service(&self) -> bool {
        self.kind == TokenKind::Service
    }

    /// The scopes of a service token (none for a user token).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
    }

    /// Whether a service token carries `scope` (see [`scope`]).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.is_service() && self.scopes().any(|s| s == scope)
    }

    /// The caller's role in `organization_id`, if the token carries it.
    pub fn role_in(&self, organization_id: &str) -> Option<Role> {
        self.orgs.get(organization_id).map(|o| o.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pa: bool, orgs: &[(&str, Role, &[Permission])]) -> Claims {
        Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "u".into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            email: "e@x.io".into(),
            name: "n".into(),
            pa,
            orgs: orgs
                .iter()
                .map(|(id, role, perms)| {
                    (
                        id.to_string(),
                        OrgClaims {
                            role: *role,
                            perms: perms.to_vec(),
                        },
                    )
                })
                .collect(),
            sid: None,
            email_verified: false,
            kind: TokenKind::User,
            scope: None,
            owner_org: None,
            amr: Vec::new(),
        }
    }

    #[test]
    fn member_needs_the_category_in_that_organization() {
        let c = claims(false, &[("a", Role::Member, &[Permission::Device])]);
        assert!(c.allows("a", Permission::Device));
        assert!(!c.allows("a", Permission::Vpn));
        assert!(!c.allows("b", Permission::Device));
    }

    #[test]
    fn manager_and_platform_admin_have_everything() {
        let m = claims(false, &[("a", Role::Manager, &[])]);
        assert!(m.allows("a", Permission::Audit));
        assert!(!m.allows("b", Permission::Audit));
        let pa = claims(true, &[]);
        assert!(pa.allows("anything", Permission::Infra));
    }

    #[test]
    fn a_service_token_holds_scopes_not_permissions() {
        let mut c = claims(true, &[("a", Role::Manager, &[])]);
        c.kind = TokenKind::Service;
        c.scope = Some("permissions.check  audit.read".into());
        assert!(!c.allows("a", Permission::Audit));
        assert!(c.has_scope(scope::AUDIT_READ));
        assert!(!c.has_scope("audit"));
        assert!(!c.has_scope(scope::USERS_READ));
        let user = claims(false, &[]);
        assert!(!user.has_scope(scope::AUDIT_READ));
    }

    #[test]
    fn tokens_without_kind_are_user_tokens() {
        let json = r#"{"iss":"i","aud":"a","sub":"u","exp":0,"iat":0,"nbf":0,
            "jti":"j","email":"e","name":"n","pa":false}"#;
        let c: Claims = serde_json::from_str(json).expect("old token");
        assert_eq!(c.kind, TokenKind::User);
        let s: Claims = serde_json::from_str(&json.replace(
            r#""pa":false"#,
            r#""pa":false,"kind":"service","scope":"users.read""#,
        ))
        .expect("service token");
        assert!(s.is_service() && s.has_scope(scope::USERS_READ));
    }
}
