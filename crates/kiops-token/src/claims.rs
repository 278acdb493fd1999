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
}

impl Claims {
    /// Whether the token grants `permission` in `organization_id`.
    ///
    /// A PlatformAdmin is allowed everywhere; otherwise the organization must be
    /// in the token and list the category.
    pub fn allows(&self, organization_id: &str, permission: Permission) -> bool {
        if self.pa {
            return true;
        }
        self.orgs
            .get(organization_id)
            .is_some_and(|o| o.role == Role::Manager || o.perms.contains(&permission))
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
}
