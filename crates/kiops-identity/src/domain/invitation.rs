//! Invitations (R9): the status lifecycle and who may accept.
//!
//! An invitation is born PENDING and leaves it once, by one decision:
//! accepted or declined with its current token before it expires, or revoked
//! by a Manager (expired or not). EXPIRED is never stored: it is a pending
//! invitation read after `expires_at`. A resend renews a pending or expired
//! invitation with a new token and window.

use super::error::{reason, DomainError};
use super::model::Role;

/// Status as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Expired,
    Rejected,
    Revoked,
}

impl InvitationStatus {
    /// The stored name (also the name in audit details and messages).
    pub fn as_str(self) -> &'static str {
        match self {
            InvitationStatus::Pending => "pending",
            InvitationStatus::Accepted => "accepted",
            InvitationStatus::Expired => "expired",
            InvitationStatus::Rejected => "rejected",
            InvitationStatus::Revoked => "revoked",
        }
    }

    /// From the stored name. Only the four stored statuses occur; anything
    /// else reads as revoked (unusable).
    pub fn from_stored(s: &str) -> Self {
        match s {
            "pending" => InvitationStatus::Pending,
            "accepted" => InvitationStatus::Accepted,
            "rejected" => InvitationStatus::Rejected,
            _ => InvitationStatus::Revoked,
        }
    }
}

/// An invitation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: String,
    pub organization_id: String,
    pub email: String,
    pub role: Role,
    pub inviter_id: String,
    /// As stored; `status_at` derives EXPIRED.
    pub status: InvitationStatus,
    pub token_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    /// The invitee's display name: the account's name on accept when the
    /// acceptor gives none.
    pub name: Option<String>,
    /// Granted permissions the membership starts with (a Member's only:
    /// a Manager holds all categories anyway).
    pub permissions: u8,
    /// The template `permissions` were copied from at creation, if any.
    pub template_id: Option<String>,
    /// Where its newest email stands; None where it was not read.
    pub delivery: Option<Delivery>,
}

/// R32: where an invitation's newest email stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet and no attempt failed (an attempt may be under way).
    Queued,
    /// The SMTP server accepted it.
    Sent,
    /// The last attempt failed; retried at `next_attempt_at` if set.
    Failed,
}

/// The delivery record of one outbox message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub state: DeliveryState,
    pub attempts: i32,
    /// SMTP error text of the last failed attempt (no secret: the server's
    /// answer or the connection error).
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    /// When another attempt is scheduled; None when sent or given up.
    pub next_attempt_at: Option<i64>,
    pub sent_at: Option<i64>,
}

impl Delivery {
    /// A message just queued, as the transaction that queued it sees it.
    pub fn queued() -> Self {
        Delivery {
            state: DeliveryState::Queued,
            attempts: 0,
            last_error: None,
            last_attempt_at: None,
            next_attempt_at: None,
            sent_at: None,
        }
    }

    /// From the stored columns; `next_attempt_at` is None for a message
    /// given up for good.
    pub fn derive(
        attempts: i32,
        sent_at: Option<i64>,
        last_error: Option<String>,
        last_attempt_at: Option<i64>,
        next_attempt_at: Option<i64>,
    ) -> Self {
        let state = match (sent_at, &last_error) {
            (Some(_), _) => DeliveryState::Sent,
            (None, Some(_)) => DeliveryState::Failed,
            (None, None) => DeliveryState::Queued,
        };
        Delivery {
            next_attempt_at: if state == DeliveryState::Failed {
                next_attempt_at
            } else {
                None
            },
            last_error: if state == DeliveryState::Sent {
                None
            } else {
                last_error
            },
            state,
            attempts,
            last_attempt_at,
            sent_at,
        }
    }
}

impl Invitation {
    /// The status shown at `now_ms`.
    pub fn status_at(&self, now_ms: i64) -> InvitationStatus {
        match self.status {
            InvitationStatus::Pending if self.expires_at_ms <= now_ms => InvitationStatus::Expired,
            s => s,
        }
    }

    /// The invitation as shown at `now_ms` (EXPIRED made explicit).
    pub fn seen_at(mut self, now_ms: i64) -> Self {
        self.status = self.status_at(now_ms);
        self
    }

    /// Accept and decline need a pending, unexpired invitation.
    pub fn require_usable(&self, now_ms: i64) -> Result<(), DomainError> {
        match self.status_at(now_ms) {
            InvitationStatus::Pending => Ok(()),
            s => Err(unusable(s)),
        }
    }

    /// A resend renews a pending or an expired invitation, never a decided one.
    pub fn require_renewable(&self, now_ms: i64) -> Result<(), DomainError> {
        match self.status_at(now_ms) {
            InvitationStatus::Pending | InvitationStatus::Expired => Ok(()),
            s => Err(unusable(s)),
        }
    }
}

/// Why an invitation in status `s` cannot be used now.
pub fn unusable(s: InvitationStatus) -> DomainError {
    match s {
        InvitationStatus::Expired => {
            DomainError::precondition(reason::INVITATION_EXPIRED, "the invitation has expired")
        }
        s => {
            let mut e = DomainError::precondition(
                reason::NOT_PENDING,
                format!("the invitation is {}", s.as_str()),
            );
            if let DomainError::FailedPrecondition { metadata, .. } = &mut e {
                metadata.insert("status".into(), s.as_str().to_uppercase());
            }
            e
        }
    }
}

/// The decisions that end a pending invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Decline,
    Revoke,
}

impl Decision {
    pub fn to(self) -> InvitationStatus {
        match self {
            Decision::Accept => InvitationStatus::Accepted,
            Decision::Decline => InvitationStatus::Rejected,
            Decision::Revoke => InvitationStatus::Revoked,
        }
    }

    /// Accept and decline present the token: it must be the current one and
    /// the invitation unexpired. A Manager revokes by id, expired or not.
    pub fn by_token(self) -> bool {
        !matches!(self, Decision::Revoke)
    }

    /// The audit action it records.
    pub fn action(self) -> &'static str {
        match self {
            Decision::Accept => "invitation.accepted",
            Decision::Decline => "invitation.declined",
            Decision::Revoke => "invitation.revoked",
        }
    }
}

/// Who accepts an invitation (R9), from the account that holds the invited
/// email (if any) and the authenticated caller (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// The logged-in owner of the invited email.
    AccountOwner,
    /// No account holds the email: an anonymous caller creates it.
    NewAccount,
    /// An account holds the email but nobody is logged in: log in as it.
    LoginRequired,
}

pub fn who_accepts(
    invited_account: Option<&str>,
    caller: Option<&str>,
) -> Result<Acceptance, DomainError> {
    match (invited_account, caller) {
        (Some(owner), Some(c)) if owner == c => Ok(Acceptance::AccountOwner),
        (_, Some(_)) => Err(DomainError::denied(
            reason::INVITATION_EMAIL_MISMATCH,
            "this invitation is for another email address",
        )),
        (Some(_), None) => Ok(Acceptance::LoginRequired),
        (None, None) => Ok(Acceptance::NewAccount),
    }
}

/// R3/H4 for invitations that carry permissions: they are what
/// SetPermissions would grant the invitee, and nobody grants permissions to
/// their own account, PlatformAdmins included. Checked when inviting
/// (`invitee`: the account that holds the invited email) and again when
/// accepting (the accepting account), should an address ever change hands.
pub fn check_grants(inviter: &str, invitee: &str, grants: bool) -> Result<(), DomainError> {
    if grants && inviter == invitee {
        return Err(DomainError::denied(
            reason::SELF_PERMISSION_CHANGE,
            "you cannot invite yourself with permissions",
        ));
    }
    Ok(())
}

/// The refusal of `Acceptance::LoginRequired`.
pub fn login_required() -> DomainError {
    DomainError::unauthenticated(
        reason::LOGIN_REQUIRED,
        "an account with the invited email exists: log in as it to accept",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(status: InvitationStatus, expires_at_ms: i64) -> Invitation {
        Invitation {
            id: "i".into(),
            organization_id: "o".into(),
            email: "a@x.io".into(),
            role: Role::Member,
            inviter_id: "m".into(),
            status,
            token_hash: "h".into(),
            created_at_ms: 0,
            expires_at_ms,
            decided_at_ms: None,
            name: None,
            permissions: 0,
            template_id: None,
            delivery: None,
        }
    }

    #[test]
    fn nobody_invites_themselves_with_permissions() {
        assert!(matches!(
            check_grants("me", "me", true),
            Err(DomainError::PermissionDenied {
                reason: reason::SELF_PERMISSION_CHANGE,
                ..
            })
        ));
        assert!(check_grants("me", "me", false).is_ok());
        assert!(check_grants("me", "you", true).is_ok());
    }

    #[test]
    fn r32_delivery_states() {
        let q = Delivery::derive(1, None, None, Some(5), Some(9));
        assert_eq!((q.state, q.next_attempt_at), (DeliveryState::Queued, None));
        let f = Delivery::derive(1, None, Some("451".into()), Some(5), Some(9));
        assert_eq!(
            (f.state, f.next_attempt_at),
            (DeliveryState::Failed, Some(9))
        );
        let gone = Delivery::derive(1, None, Some("550".into()), Some(5), None);
        assert_eq!(
            (gone.state, gone.next_attempt_at),
            (DeliveryState::Failed, None)
        );
        let s = Delivery::derive(2, Some(7), Some("451".into()), Some(6), Some(9));
        assert_eq!(
            (s.state, s.next_attempt_at, s.last_error),
            (DeliveryState::Sent, None, None)
        );
    }

    fn reason_of(r: Result<(), DomainError>) -> &'static str {
        match r {
            Ok(()) => "OK",
            Err(DomainError::FailedPrecondition { reason, .. }) => reason,
            Err(_) => "OTHER",
        }
    }

    #[test]
    fn expiry_is_derived_from_pending() {
        let p = inv(InvitationStatus::Pending, 10);
        assert_eq!(p.status_at(9), InvitationStatus::Pending);
        assert_eq!(p.status_at(10), InvitationStatus::Expired);
        assert_eq!(
            inv(InvitationStatus::Accepted, 10).status_at(11),
            InvitationStatus::Accepted
        );
        assert_eq!(p.seen_at(10).status, InvitationStatus::Expired);
    }

    #[test]
    fn stored_names_round_trip() {
        for s in [
            InvitationStatus::Pending,
            InvitationStatus::Accepted,
            InvitationStatus::Rejected,
            InvitationStatus::Revoked,
        ] {
            assert_eq!(InvitationStatus::from_stored(s.as_str()), s);
        }
    }

    #[test]
    fn only_pending_is_usable_and_decided_is_not_renewable() {
        let p = inv(InvitationStatus::Pending, 10);
        assert_eq!(reason_of(p.require_usable(5)), "OK");
        assert_eq!(reason_of(p.require_usable(10)), reason::INVITATION_EXPIRED);
        assert_eq!(reason_of(p.require_renewable(10)), "OK");
        let r = inv(InvitationStatus::Revoked, 10);
        assert_eq!(reason_of(r.require_renewable(5)), reason::NOT_PENDING);
        match unusable(InvitationStatus::Accepted) {
            DomainError::FailedPrecondition { metadata, .. } => {
                assert_eq!(metadata.get("status").map(String::as_str), Some("ACCEPTED"))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(Decision::Decline.to(), InvitationStatus::Rejected);
        assert!(Decision::Accept.by_token());
        assert!(!Decision::Revoke.by_token());
        assert_eq!(Decision::Revoke.action(), "invitation.revoked");
    }

    #[test]
    fn who_may_accept() {
        assert_eq!(
            who_accepts(Some("u"), Some("u")).ok(),
            Some(Acceptance::AccountOwner)
        );
        assert!(matches!(
            who_accepts(Some("u"), Some("v")),
            Err(DomainError::PermissionDenied { reason, .. }) if reason == reason::INVITATION_EMAIL_MISMATCH
        ));
        assert!(who_accepts(None, Some("v")).is_err());
        assert_eq!(
            who_accepts(Some("u"), None).ok(),
            Some(Acceptance::LoginRequired)
        );
        assert_eq!(who_accepts(None, None).ok(), Some(Acceptance::NewAccount));
    }
}
