//! Memberships, members and permission templates (R1–R6, R10, R16, R17,
//! R22), the rules that decide when a change to them revokes issued tokens
//! (R16), and who the caller of a token is from current state (R11, R21).

use super::model::{effective_permissions, Role, SessionState, StoredStatus};
use super::{second_factor, Caller, DomainError};
use crate::domain::error::reason;
use kiops_token::Permission;

/// A user's membership in one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub organization_id: String,
    pub user_id: String,
    pub role: Role,
    /// Granted categories (`Permission` bits); a Manager has all anyway.
    pub permissions: u8,
    pub joined_at_ms: i64,
}

impl Membership {
    /// Effective permissions for a user with this membership (SPEC 1).
    pub fn effective(&self, platform_admin: bool) -> Vec<Permission> {
        effective_permissions(platform_admin, Some(self.role), self.permissions)
    }
}

/// A member as the "Organization Users" tab shows them: the membership
/// joined with the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub platform_admin: bool,
    pub status: StoredStatus,
    pub locked_until_ms: Option<i64>,
    pub role: Role,
    pub permissions: u8,
    pub joined_at_ms: i64,
}

/// A named bundle of categories of one organization. Applying one sets a
/// member's granted permissions; it is not a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub permissions: u8,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// R16: a Manager made a Member loses permissions its tokens still carry.
pub fn demotion_revokes(before: Role, after: Role) -> bool {
    before == Role::Manager && after == Role::Member
}

/// R16: taking away any granted category revokes; adding never does.
pub fn narrowing_revokes(before_bits: u8, after_bits: u8) -> bool {
    before_bits & !after_bits != 0
}

/// R6, R19: a direct grant that changes nothing is not a change (no event); a
/// template application is recorded even when the member already had
/// exactly its categories, so the trail shows the template was applied.
pub fn grant_is_a_change(before_bits: u8, after_bits: u8, from_template: bool) -> bool {
    from_template || before_bits != after_bits
}

/// The caller's account and the session its token names, as stored now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerState {
    pub email: String,
    pub status: StoredStatus,
    pub platform_admin: bool,
    pub session: SessionState,
    /// R31: the session's `amr` holds a second factor.
    pub second_factor: bool,
    /// R31: the platform requires a second factor of PlatformAdmins.
    pub platform_second_factor_required: bool,
}

/// R11, R21: the caller whose verified token names `user_id` and `session_id`, from
/// current state (`None`: the account does not exist). A deleted account's token is invalid, a deactivated one
/// is refused, a token of an ended session is refused, and the PlatformAdmin
/// flag is the current one, not the one in the token.
pub fn caller_from_state(
    user_id: String,
    session_id: Option<String>,
    state: Option<CallerState>,
    now_ms: i64,
) -> Result<Caller, DomainError> {
    let state = state.ok_or_else(invalid_token)?;
    if state.status == StoredStatus::Inactive {
        return Err(DomainError::unauthenticated(
            reason::ACCOUNT_DISABLED,
            "this account is deactivated",
        ));
    }
    if !state.session.is_live(now_ms) {
        return Err(DomainError::unauthenticated(
            reason::SESSION_REVOKED,
            "the session of this access token has ended; sign in again",
        ));
    }
    let platform_admin = second_factor::platform_admin_counts(
        state.platform_admin,
        state.platform_second_factor_required,
        state.second_factor,
    );
    Ok(Caller {
        user_id,
        email: state.email,
        platform_admin,
        platform_admin_gated: state.platform_admin && !platform_admin,
        second_factor: state.second_factor,
        session_id,
        service: None,
    })
}

/// A token that does not authenticate anyone.
pub fn invalid_token() -> DomainError {
    DomainError::unauthenticated(reason::INVALID_TOKEN, "invalid or expired access token")
}

/// The subject of a CheckPermission, as stored now: its account and its
/// membership in the organization asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectState {
    pub status: StoredStatus,
    pub platform_admin: bool,
    pub role: Option<Role>,
    pub permissions: u8,
}

/// R16: whether the subject holds `perm` now. A missing or deactivated
/// account holds nothing.
pub fn subject_holds(subject: Option<&SubjectState>, perm: Permission) -> bool {
    let Some(s) = subject else {
        return false;
    };
    if s.status == StoredStatus::Inactive {
        return false;
    }
    effective_permissions(s.platform_admin, s.role, s.permissions).contains(&perm)
}

/// A CheckPermission answer: `denial_reason` says why `allowed` is false
/// when a policy, not the permission, decided (R31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionAnswer {
    pub allowed: bool,
    pub denial_reason: Option<&'static str>,
}

/// R31's facts about one subject in one organization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubjectGate {
    pub org_required: bool,
    pub platform_required: bool,
    pub second_factor: bool,
}

/// R16 + R31: whether the subject holds `perm` now, their PlatformAdmin
/// flag and membership counting only as the policies let them.
pub fn subject_answer(
    subject: Option<&SubjectState>,
    perm: Permission,
    gate: SubjectGate,
) -> PermissionAnswer {
    let without_policy = subject_holds(subject, perm);
    let gated = subject.map(|s| {
        let platform_admin = second_factor::platform_admin_counts(
            s.platform_admin,
            gate.platform_required,
            gate.second_factor,
        );
        let counts = platform_admin
            || second_factor::membership_counts(gate.org_required, gate.second_factor);
        SubjectState {
            platform_admin,
            role: s.role.filter(|_| counts),
            permissions: if counts { s.permissions } else { 0 },
            ..s.clone()
        }
    });
    let allowed = subject_holds(gated.as_ref(), perm);
    PermissionAnswer {
        allowed,
        denial_reason: second_factor::denial_reason(without_policy, allowed),
    }
}

/// Everything CheckPermission reads, in one read: the caller's state and
/// role in the organization, and the subject's state. `None` overall when
/// the caller's account does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFacts {
    pub caller: CallerState,
    pub caller_role: Option<Role>,
    pub subject: Option<SubjectState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_demotion_revokes() {
        assert!(demotion_revokes(Role::Manager, Role::Member));
        assert!(!demotion_revokes(Role::Member, Role::Manager));
        assert!(!demotion_revokes(Role::Manager, Role::Manager));
        assert!(!demotion_revokes(Role::Member, Role::Member));
    }

    #[test]
    fn only_a_narrowing_revokes() {
        assert!(narrowing_revokes(0b11, 0b01));
        assert!(narrowing_revokes(0b01, 0b10));
        assert!(!narrowing_revokes(0b01, 0b11));
        assert!(!narrowing_revokes(0, 0));
    }

    #[test]
    fn a_template_application_is_always_recorded() {
        assert!(!grant_is_a_change(3, 3, false));
        assert!(grant_is_a_change(3, 1, false));
        assert!(grant_is_a_change(3, 3, true));
    }

    fn caller(state: Option<CallerState>) -> Result<Caller, DomainError> {
        caller_from_state("u".into(), Some("s".into()), state, 1)
    }

    fn state(status: StoredStatus, live: bool) -> CallerState {
        CallerState {
            email: "u@x.io".into(),
            status,
            platform_admin: true,
            session: SessionState {
                found: live,
                revoked_at_ms: None,
                expires_at_ms: Some(100),
            },
            second_factor: false,
            platform_second_factor_required: false,
        }
    }

    fn code(e: DomainError) -> String {
        format!("{e:?}")
    }

    #[test]
    fn caller_comes_from_current_state() {
        let c = caller(Some(state(StoredStatus::Active, true))).expect("caller");
        assert_eq!((c.user_id.as_str(), c.platform_admin), ("u", true));
        assert_eq!(c.session_id.as_deref(), Some("s"));
        let missing = caller(None).expect_err("no account");
        assert!(code(missing).contains(reason::INVALID_TOKEN));
        let off = caller(Some(state(StoredStatus::Inactive, true))).expect_err("deactivated");
        assert!(code(off).contains(reason::ACCOUNT_DISABLED));
        let ended = caller(Some(state(StoredStatus::Active, false))).expect_err("session ended");
        assert!(code(ended).contains(reason::SESSION_REVOKED));
    }

    #[test]
    fn a_policy_takes_what_the_subject_would_hold_and_says_so() {
        let member = SubjectState {
            status: StoredStatus::Active,
            platform_admin: false,
            role: Some(Role::Member),
            permissions: Permission::Device.bit(),
        };
        let gate = SubjectGate {
            org_required: true,
            platform_required: false,
            second_factor: false,
        };
        let a = subject_answer(Some(&member), Permission::Device, gate);
        assert_eq!(
            (a.allowed, a.denial_reason),
            (false, Some(reason::SECOND_FACTOR_REQUIRED))
        );
        let a = subject_answer(Some(&member), Permission::Audit, gate);
        assert_eq!((a.allowed, a.denial_reason), (false, None));
        let with = SubjectGate {
            second_factor: true,
            ..gate
        };
        assert!(subject_answer(Some(&member), Permission::Device, with).allowed);
        let pa = SubjectState {
            platform_admin: true,
            role: None,
            ..member.clone()
        };
        assert!(subject_answer(Some(&pa), Permission::Device, gate).allowed);
        let pa_gate = SubjectGate {
            platform_required: true,
            ..SubjectGate::default()
        };
        let a = subject_answer(Some(&pa), Permission::Device, pa_gate);
        assert_eq!(
            (a.allowed, a.denial_reason),
            (false, Some(reason::SECOND_FACTOR_REQUIRED))
        );
        let pa_member = SubjectState {
            platform_admin: true,
            ..member
        };
        assert!(subject_answer(Some(&pa_member), Permission::Device, pa_gate).allowed);
        assert!(!subject_answer(Some(&pa_member), Permission::Audit, pa_gate).allowed);
    }

    #[test]
    fn a_subject_holds_what_it_has_now() {
        let member = SubjectState {
            status: StoredStatus::Active,
            platform_admin: false,
            role: Some(Role::Member),
            permissions: Permission::Device.bit(),
        };
        assert!(subject_holds(Some(&member), Permission::Device));
        assert!(!subject_holds(Some(&member), Permission::Audit));
        let off = SubjectState {
            status: StoredStatus::Inactive,
            ..member.clone()
        };
        assert!(!subject_holds(Some(&off), Permission::Device));
        assert!(!subject_holds(None, Permission::Device));
        let outsider = SubjectState {
            role: None,
            ..member
        };
        assert!(!subject_holds(Some(&outsider), Permission::Device));
    }
}
