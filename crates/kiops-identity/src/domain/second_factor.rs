//! R31: a required second factor. A policy (an organization's for its
//! members, the platform's for PlatformAdmins) is satisfied by the session,
//! not by the account: a session opened or upgraded with a second factor
//! carries `otp` in its `amr`. Without it, the membership of an organization
//! that requires one does not count (not in the token's `orgs`, refused on
//! this service, not held in CheckPermission), and the PlatformAdmin flag
//! does not count while the platform requires one.

use super::error::{reason, DomainError};
use super::model::{Caller, Role};

/// The `amr` method a second factor adds to a session.
pub const AMR_OTP: &str = "otp";

/// Revocation reason of the events a policy turned on writes.
pub const REVOCATION_REASON: &str = "second_factor_required";

/// Whether a session's `amr` (space separated methods) holds a second factor.
pub fn amr_has_second_factor(amr: &str) -> bool {
    amr.split(' ').any(|m| m == AMR_OTP)
}

/// The PlatformAdmin flag as it counts now: not while the platform requires
/// a second factor that the session lacks.
pub fn platform_admin_counts(flag: bool, platform_required: bool, second_factor: bool) -> bool {
    flag && (!platform_required || second_factor)
}

/// Whether a membership in an organization counts for a session.
pub fn membership_counts(org_required: bool, second_factor: bool) -> bool {
    !org_required || second_factor
}

/// The refusal for an organization that requires a second factor.
pub fn org_refusal(organization_id: &str) -> DomainError {
    DomainError::SecondFactorRequired {
        organization_id: Some(organization_id.to_string()),
    }
}

/// The refusal for a PlatformAdmin whose session lacks the platform's
/// required second factor.
pub fn platform_refusal() -> DomainError {
    DomainError::SecondFactorRequired {
        organization_id: None,
    }
}

/// The caller's role in `org` as it may be used to authorise: a member of an
/// organization that requires a second factor, calling from a session
/// without one, is refused (`SECOND_FACTOR_REQUIRED`, naming the
/// organization) rather than treated as an outsider, so a console can say
/// what to do. A PlatformAdmin's authority comes from the platform flag,
/// which the platform's policy governs (`Caller::platform_admin`).
pub fn caller_role(
    caller: &Caller,
    org: &str,
    role: Option<Role>,
    org_required: bool,
) -> Result<Option<Role>, DomainError> {
    if role.is_some()
        && !caller.platform_admin
        && caller.service.is_none()
        && !membership_counts(org_required, caller.second_factor)
    {
        return Err(org_refusal(org));
    }
    Ok(role)
}

/// The reason a CheckPermission answer is `allowed: false` because of a
/// second-factor policy: `holds_without_policy` is what the subject would
/// hold if no policy applied, `holds` what it holds under them.
pub fn denial_reason(holds_without_policy: bool, holds: bool) -> Option<&'static str> {
    (holds_without_policy && !holds).then_some(reason::SECOND_FACTOR_REQUIRED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_otp_method_is_a_second_factor() {
        assert!(amr_has_second_factor("pwd otp"));
        assert!(amr_has_second_factor("otp"));
        assert!(!amr_has_second_factor("pwd"));
        assert!(!amr_has_second_factor("pwd otpx"));
        assert!(!amr_has_second_factor(""));
    }

    #[test]
    fn the_platform_policy_gates_the_flag_only() {
        assert!(platform_admin_counts(true, false, false));
        assert!(!platform_admin_counts(true, true, false));
        assert!(platform_admin_counts(true, true, true));
        assert!(!platform_admin_counts(false, false, true));
    }

    #[test]
    fn a_member_without_the_factor_is_refused_naming_the_org() {
        let mut c = Caller::for_test(false);
        assert_eq!(
            caller_role(&c, "o", Some(Role::Member), false).ok(),
            Some(Some(Role::Member))
        );
        let e = caller_role(&c, "o", Some(Role::Manager), true).unwrap_err();
        assert!(
            matches!(e, DomainError::SecondFactorRequired { organization_id: Some(ref o) } if o == "o")
        );
        assert_eq!(caller_role(&c, "o", None, true).ok(), Some(None));
        c.second_factor = true;
        assert_eq!(
            caller_role(&c, "o", Some(Role::Member), true).ok(),
            Some(Some(Role::Member))
        );
        let pa = Caller::for_test(true);
        assert!(caller_role(&pa, "o", Some(Role::Member), true).is_ok());
    }

    #[test]
    fn a_reason_only_when_the_policy_changed_the_answer() {
        assert_eq!(
            denial_reason(true, false),
            Some(reason::SECOND_FACTOR_REQUIRED)
        );
        assert_eq!(denial_reason(false, false), None);
        assert_eq!(denial_reason(true, true), None);
    }
}
