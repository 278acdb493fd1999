//! Who may do what (R1–R5, R11). Each function takes the caller and the
//! facts the store loaded, and answers Ok or the exact refusal of docs/rules.md.

use super::error::{reason, DomainError};
use super::model::{Caller, Role};
use super::second_factor;

type Result<T = ()> = std::result::Result<T, DomainError>;

/// R11: account actions and platform-wide lists.
pub fn require_platform_admin(caller: &Caller) -> Result {
    if caller.platform_admin {
        Ok(())
    } else if caller.platform_admin_gated {
        Err(second_factor::platform_refusal())
    } else {
        Err(DomainError::denied(
            reason::PLATFORM_ADMIN_REQUIRED,
            "PlatformAdmin required",
        ))
    }
}

/// R4: an organization the caller does not belong to does not exist for them.
pub fn require_org_visible(caller: &Caller, caller_role: Option<Role>) -> Result {
    if caller.platform_admin || caller_role.is_some() {
        Ok(())
    } else if caller.platform_admin_gated {
        Err(second_factor::platform_refusal())
    } else {
        Err(DomainError::not_found("organization"))
    }
}

/// R1 + R4: user management inside an organization needs its Manager role
/// (or PlatformAdmin). Outsiders get NOT_FOUND, Members PERMISSION_DENIED.
pub fn require_manager(caller: &Caller, caller_role: Option<Role>) -> Result {
    require_org_visible(caller, caller_role)?;
    if caller.platform_admin || caller_role == Some(Role::Manager) {
        Ok(())
    } else if caller.platform_admin_gated {
        Err(second_factor::platform_refusal())
    } else {
        Err(DomainError::denied(
            reason::MANAGER_REQUIRED,
            "Manager role in this organization required",
        ))
    }
}

/// R2 + R3 for ChangeRole and AddMember-as-Manager.
pub fn check_role_change(
    caller: &Caller,
    caller_role: Option<Role>,
    target_user_id: &str,
    new_role: Role,
) -> Result {
    require_manager(caller, caller_role)?;
    if caller.user_id == target_user_id {
        return Err(DomainError::denied(
            reason::SELF_ROLE_CHANGE,
            "you cannot change your own role",
        ));
    }
    require_may_grant(caller, new_role)
}

/// R3: only a PlatformAdmin makes someone a Manager (by promotion or invitation).
pub fn require_may_grant(caller: &Caller, role: Role) -> Result {
    if role == Role::Manager && !caller.platform_admin {
        return Err(DomainError::denied(
            reason::PROMOTION_REQUIRES_PLATFORM_ADMIN,
            "only a PlatformAdmin can make someone a Manager",
        ));
    }
    Ok(())
}

/// R2 + R3 for SetPlatformAdmin.
pub fn check_set_platform_admin(caller: &Caller, target_user_id: &str) -> Result {
    if caller.platform_admin_gated {
        return Err(second_factor::platform_refusal());
    }
    if !caller.platform_admin {
        return Err(DomainError::denied(
            reason::PROMOTION_REQUIRES_PLATFORM_ADMIN,
            "only a PlatformAdmin can grant or revoke PlatformAdmin",
        ));
    }
    if caller.user_id == target_user_id {
        return Err(DomainError::denied(
            reason::SELF_ROLE_CHANGE,
            "you cannot change your own PlatformAdmin flag",
        ));
    }
    Ok(())
}

/// R1 + R2 + H4 for SetPermissions and ApplyPermissionTemplate: nobody changes
/// their own permissions, PlatformAdmins included (they hold every category
/// anyway; the rule has no exception so no grant survives a later demotion).
pub fn check_permission_change(
    caller: &Caller,
    caller_role: Option<Role>,
    target_user_id: &str,
) -> Result {
    require_manager(caller, caller_role)?;
    if caller.user_id == target_user_id {
        return Err(DomainError::denied(
            reason::SELF_PERMISSION_CHANGE,
            "you cannot change your own permissions",
        ));
    }
    Ok(())
}

/// H5: the platform keeps an active PlatformAdmin: `active_admins` are the ids
/// of the active PlatformAdmins, read under lock in the transaction that
/// would unflag, deactivate or delete `target_user_id`.
pub fn check_keeps_a_platform_admin(active_admins: &[String], target_user_id: &str) -> Result {
    if active_admins.len() <= 1 && active_admins.iter().any(|a| a == target_user_id) {
        return Err(DomainError::precondition(
            reason::LAST_PLATFORM_ADMIN,
            "the platform would lose its last active PlatformAdmin",
        ));
    }
    Ok(())
}

/// H5: the caller is still an active PlatformAdmin under that same lock: one
/// unflagged or deactivated while the request was in flight acts no more.
pub fn require_still_platform_admin(caller: &Caller, active_admins: &[String]) -> Result {
    if active_admins.contains(&caller.user_id) {
        Ok(())
    } else {
        Err(DomainError::denied(
            reason::PLATFORM_ADMIN_REQUIRED,
            "PlatformAdmin required",
        ))
    }
}

/// R5: `managers` is the number of active Managers of the organization,
/// counted inside the same locked transaction as the change; `target_active`
/// says whether the member being changed is one of them.
pub fn check_keeps_a_manager(
    before: Role,
    after: Option<Role>,
    target_active: bool,
    managers: u64,
) -> Result {
    if target_active && before == Role::Manager && after != Some(Role::Manager) && managers <= 1 {
        return Err(DomainError::precondition(
            reason::LAST_MANAGER,
            "the organization would lose its last Manager",
        ));
    }
    Ok(())
}

/// CheckPermission may be asked about oneself, by a Manager of the
/// organization, or by a PlatformAdmin.
pub fn check_may_query_permission(
    caller: &Caller,
    caller_role: Option<Role>,
    target_user_id: &str,
) -> Result {
    if caller.user_id == target_user_id {
        return Ok(());
    }
    require_manager(caller, caller_role)
}

/// Account actions on oneself go through the self-service RPCs (DeleteMe),
/// never through the PlatformAdmin ones.
pub fn require_not_self(caller: &Caller, target_user_id: &str) -> Result {
    if caller.user_id == target_user_id {
        return Err(DomainError::denied(
            reason::SELF_ACCOUNT_ACTION,
            "this action cannot target your own account",
        ));
    }
    Ok(())
}

/// R5 for account-wide changes: refuses with the organizations it would leave
/// without a Manager.
pub fn check_not_sole_manager(sole_of: &[String]) -> Result {
    if sole_of.is_empty() {
        return Ok(());
    }
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("organizations".to_string(), sole_of.join(","));
    Err(DomainError::FailedPrecondition {
        reason: reason::LAST_MANAGER,
        message: format!(
            "you are the last Manager of: {}; promote another Manager first",
            sole_of.join(", ")
        ),
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(pa: bool) -> Caller {
        Caller::for_test(pa)
    }

    fn reason_of(r: Result) -> &'static str {
        match r {
            Err(DomainError::PermissionDenied { reason, .. }) => reason,
            Err(DomainError::FailedPrecondition { reason, .. }) => reason,
            Err(DomainError::NotFound { .. }) => "NOT_FOUND",
            Err(_) => "OTHER",
            Ok(()) => "OK",
        }
    }

    #[test]
    fn r1_r4_members_and_outsiders() {
        let c = caller(false);
        assert_eq!(reason_of(require_manager(&c, None)), "NOT_FOUND");
        assert_eq!(
            reason_of(require_manager(&c, Some(Role::Member))),
            reason::MANAGER_REQUIRED
        );
        assert_eq!(reason_of(require_manager(&c, Some(Role::Manager))), "OK");
        assert_eq!(reason_of(require_manager(&caller(true), None)), "OK");
    }

    #[test]
    fn r2_r3_role_changes() {
        let m = caller(false);
        assert_eq!(
            reason_of(check_role_change(
                &m,
                Some(Role::Manager),
                "me",
                Role::Member
            )),
            reason::SELF_ROLE_CHANGE
        );
        assert_eq!(
            reason_of(check_role_change(
                &m,
                Some(Role::Manager),
                "x",
                Role::Manager
            )),
            reason::PROMOTION_REQUIRES_PLATFORM_ADMIN
        );
        assert_eq!(
            reason_of(check_role_change(
                &m,
                Some(Role::Manager),
                "x",
                Role::Member
            )),
            "OK"
        );
        let pa = caller(true);
        assert_eq!(
            reason_of(check_role_change(&pa, None, "x", Role::Manager)),
            "OK"
        );
        assert_eq!(
            reason_of(check_role_change(&pa, None, "me", Role::Manager)),
            reason::SELF_ROLE_CHANGE
        );
        assert_eq!(
            reason_of(check_set_platform_admin(&pa, "me")),
            reason::SELF_ROLE_CHANGE
        );
        assert_eq!(
            reason_of(check_set_platform_admin(&m, "x")),
            reason::PROMOTION_REQUIRES_PLATFORM_ADMIN
        );
    }

    #[test]
    fn nobody_changes_their_own_permissions() {
        let m = caller(false);
        assert_eq!(
            reason_of(check_permission_change(&m, Some(Role::Manager), "me")),
            reason::SELF_PERMISSION_CHANGE
        );
        assert_eq!(
            reason_of(check_permission_change(&caller(true), None, "me")),
            reason::SELF_PERMISSION_CHANGE
        );
        assert_eq!(
            reason_of(check_permission_change(&m, Some(Role::Member), "me")),
            reason::MANAGER_REQUIRED
        );
        assert_eq!(
            reason_of(check_permission_change(&m, Some(Role::Manager), "x")),
            "OK"
        );
    }

    #[test]
    fn the_last_platform_admin_stays() {
        let one = vec!["a".to_string()];
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            reason_of(check_keeps_a_platform_admin(&one, "a")),
            reason::LAST_PLATFORM_ADMIN
        );
        assert_eq!(reason_of(check_keeps_a_platform_admin(&two, "a")), "OK");
        // Not an active PlatformAdmin: removing them loses none.
        assert_eq!(reason_of(check_keeps_a_platform_admin(&one, "b")), "OK");
        assert_eq!(
            reason_of(require_still_platform_admin(&caller(true), &one)),
            reason::PLATFORM_ADMIN_REQUIRED
        );
    }

    #[test]
    fn r5_last_manager() {
        assert_eq!(
            reason_of(check_keeps_a_manager(
                Role::Manager,
                Some(Role::Member),
                true,
                1
            )),
            reason::LAST_MANAGER
        );
        assert_eq!(
            reason_of(check_keeps_a_manager(Role::Manager, None, true, 1)),
            reason::LAST_MANAGER
        );
        assert_eq!(
            reason_of(check_keeps_a_manager(Role::Manager, None, true, 2)),
            "OK"
        );
        assert_eq!(
            reason_of(check_keeps_a_manager(Role::Member, None, true, 0)),
            "OK"
        );
        // A deactivated Manager is not counted and may go.
        assert_eq!(
            reason_of(check_keeps_a_manager(Role::Manager, None, false, 1)),
            "OK"
        );
    }
}
