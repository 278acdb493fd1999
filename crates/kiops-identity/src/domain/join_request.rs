//! Join requests (R7, R8): a user asks to join an organization, a Manager of
//! it approves (the requester becomes a Member) or rejects. A request is
//! decided once, from PENDING; only a requester whose address is proven is
//! approved (H8).

use super::error::{reason, DomainError};

const DAY_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRequestStatus {
    Pending,
    Approved,
    Rejected,
}

impl JoinRequestStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRequestStatus::Pending => "pending",
            JoinRequestStatus::Approved => "approved",
            JoinRequestStatus::Rejected => "rejected",
        }
    }

    /// From the stored name; only the three stored names occur.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "pending" => JoinRequestStatus::Pending,
            "approved" => JoinRequestStatus::Approved,
            _ => JoinRequestStatus::Rejected,
        }
    }

    /// Where a decision takes a pending request.
    pub fn decided(approve: bool) -> Self {
        if approve {
            JoinRequestStatus::Approved
        } else {
            JoinRequestStatus::Rejected
        }
    }

    /// The audit action of the decision that led here.
    pub fn decision_action(self) -> &'static str {
        match self {
            JoinRequestStatus::Approved => "join_request.approved",
            _ => "join_request.rejected",
        }
    }
}

/// A join request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub id: String,
    pub user_id: String,
    pub organization_id: String,
    pub status: JoinRequestStatus,
    pub requested_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

/// A request as Managers see it (R8): with the requester's email and name,
/// and whether that address is proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequestView {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub organization_id: String,
    pub status: JoinRequestStatus,
    pub requested_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub email_verified: bool,
}

/// How far back a listing looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Last7Days,
    Last30Days,
    All,
}

impl Period {
    /// The earliest request time shown at `now_ms`.
    pub fn since(self, now_ms: i64) -> Option<i64> {
        match self {
            Period::Last7Days => Some(now_ms - 7 * DAY_MS),
            Period::Last30Days => Some(now_ms - 30 * DAY_MS),
            Period::All => None,
        }
    }
}

/// A pending request is approved only for a requester whose address is
/// proven (`requester_verified`, None when the account is gone). The flag
/// only goes from false to true, so reading it in the deciding transaction
/// is enough.
pub fn check_decision(
    approve: bool,
    current: JoinRequestStatus,
    requester_verified: Option<bool>,
) -> Result<(), DomainError> {
    if approve && current == JoinRequestStatus::Pending && requester_verified == Some(false) {
        return Err(DomainError::precondition(
            reason::EMAIL_NOT_VERIFIED,
            "the requester has not verified their email address yet",
        ));
    }
    Ok(())
}

/// The refusal when the request was decided before this decision.
pub fn not_pending() -> DomainError {
    DomainError::precondition(reason::NOT_PENDING, "the join request is not pending")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        for s in [
            JoinRequestStatus::Pending,
            JoinRequestStatus::Approved,
            JoinRequestStatus::Rejected,
        ] {
            assert_eq!(JoinRequestStatus::from_stored(s.as_str()), s);
        }
        assert_eq!(
            JoinRequestStatus::decided(true).decision_action(),
            "join_request.approved"
        );
        assert_eq!(
            JoinRequestStatus::decided(false).decision_action(),
            "join_request.rejected"
        );
    }

    #[test]
    fn only_a_proven_address_is_approved() {
        let p = JoinRequestStatus::Pending;
        assert!(matches!(
            check_decision(true, p, Some(false)),
            Err(DomainError::FailedPrecondition { reason, .. }) if reason == reason::EMAIL_NOT_VERIFIED
        ));
        assert!(check_decision(true, p, Some(true)).is_ok());
        assert!(check_decision(false, p, Some(false)).is_ok());
        // Decided already: the decision fails as not pending instead.
        assert!(check_decision(true, JoinRequestStatus::Approved, Some(false)).is_ok());
        assert!(check_decision(true, p, None).is_ok());
    }

    #[test]
    fn periods() {
        assert_eq!(Period::All.since(100), None);
        assert_eq!(Period::Last7Days.since(7 * DAY_MS), Some(0));
        assert_eq!(Period::Last30Days.since(30 * DAY_MS + 1), Some(1));
    }
}
