//! The one error type of the service. `api::status` maps it to `tonic::Status`
//! with `google.rpc.ErrorInfo` / `BadRequest` details; nothing else builds a
//! Status.

use std::collections::BTreeMap;
use thiserror::Error;

/// One invalid request field, reported as a `BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
    /// A more specific `ErrorInfo.reason` than INVALID_ARGUMENT, if any
    /// (e.g. WEAK_PASSWORD).
    pub reason: Option<&'static str>,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
            reason: None,
        }
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// `ErrorInfo.domain` of every error the service sends.
pub const ERROR_DOMAIN: &str = "identity.kiops.io";

/// Stable `ErrorInfo.reason` values that clients may match on.
pub mod reason {
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    pub const INVALID_CREDENTIALS: &str = "INVALID_CREDENTIALS";
    pub const MISSING_TOKEN: &str = "MISSING_TOKEN";
    pub const INVALID_TOKEN: &str = "INVALID_TOKEN";
    pub const INVALID_REFRESH_TOKEN: &str = "INVALID_REFRESH_TOKEN";
    pub const REFRESH_TOKEN_REUSED: &str = "REFRESH_TOKEN_REUSED";
    pub const ACCOUNT_DISABLED: &str = "ACCOUNT_DISABLED";
    pub const SESSION_REVOKED: &str = "SESSION_REVOKED";
    pub const TOO_MANY_STREAMS: &str = "TOO_MANY_STREAMS";
    /// A stream whose client read nothing for 30 s was ended.
    pub const STREAM_STALLED: &str = "STREAM_STALLED";
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    pub const PLATFORM_ADMIN_REQUIRED: &str = "PLATFORM_ADMIN_REQUIRED";
    pub const MANAGER_REQUIRED: &str = "MANAGER_REQUIRED";
    pub const SELF_ROLE_CHANGE: &str = "SELF_ROLE_CHANGE";
    pub const SELF_PERMISSION_CHANGE: &str = "SELF_PERMISSION_CHANGE";
    pub const PROMOTION_REQUIRES_PLATFORM_ADMIN: &str = "PROMOTION_REQUIRES_PLATFORM_ADMIN";
    pub const LAST_MANAGER: &str = "LAST_MANAGER";
    pub const LAST_PLATFORM_ADMIN: &str = "LAST_PLATFORM_ADMIN";
    pub const INVITATION_EMAIL_MISMATCH: &str = "INVITATION_EMAIL_MISMATCH";
    pub const WEAK_PASSWORD: &str = "WEAK_PASSWORD";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    pub const EMAIL_TAKEN: &str = "EMAIL_TAKEN";
    pub const ORGANIZATION_CODE_TAKEN: &str = "ORGANIZATION_CODE_TAKEN";
    pub const ALREADY_MEMBER: &str = "ALREADY_MEMBER";
    pub const NOT_PENDING: &str = "NOT_PENDING";
    pub const JOIN_REQUEST_PENDING: &str = "JOIN_REQUEST_PENDING";
    pub const INVITATION_PENDING: &str = "INVITATION_PENDING";
    pub const INVITATION_EXPIRED: &str = "INVITATION_EXPIRED";
    pub const LOGIN_REQUIRED: &str = "LOGIN_REQUIRED";
    pub const AUDIT_PERMISSION_REQUIRED: &str = "AUDIT_PERMISSION_REQUIRED";
    pub const SELF_ACCOUNT_ACTION: &str = "SELF_ACCOUNT_ACTION";
    pub const INVALID_CURRENT_PASSWORD: &str = "INVALID_CURRENT_PASSWORD";
    pub const INVALID_RESET_TOKEN: &str = "INVALID_RESET_TOKEN";
    /// VerifyEmail with a used, expired, replaced or unknown token.
    pub const INVALID_VERIFICATION_TOKEN: &str = "INVALID_VERIFICATION_TOKEN";
    /// Approving the join request of someone whose address is unproven.
    pub const EMAIL_NOT_VERIFIED: &str = "EMAIL_NOT_VERIFIED";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The server is at a capacity limit (calls in flight, hashing queue).
    pub const OVERLOADED: &str = "OVERLOADED";
    pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";
    pub const CONFLICT: &str = "CONFLICT";
    pub const INTERNAL: &str = "INTERNAL";
    /// A service account called an RPC its scopes do not reach (metadata
    /// `scope`: the scope that would, empty when none does).
    pub const SCOPE_REQUIRED: &str = "SCOPE_REQUIRED";
    /// A service-account assertion that is malformed, expired, too
    /// long-lived or for another audience.
    pub const INVALID_ASSERTION: &str = "INVALID_ASSERTION";
    /// A service-account assertion whose `jti` was already exchanged.
    pub const ASSERTION_REPLAYED: &str = "ASSERTION_REPLAYED";
    /// The service account is bound to a client certificate the connection
    /// did not present.
    pub const CERTIFICATE_REQUIRED: &str = "CERTIFICATE_REQUIRED";
    pub const SERVICE_ACCOUNT_NAME_TAKEN: &str = "SERVICE_ACCOUNT_NAME_TAKEN";
    pub const TOO_MANY_CREDENTIALS: &str = "TOO_MANY_CREDENTIALS";
    /// A read across organizations by a service account that one
    /// organization owns.
    pub const PLATFORM_ACCOUNT_REQUIRED: &str = "PLATFORM_ACCOUNT_REQUIRED";
    // --- TOTP second factor (R30) ---
    /// A wrong, replayed or used second-factor code (VerifySecondFactor),
    /// or any code while the account is locked or deactivated.
    pub const SECOND_FACTOR_INVALID: &str = "SECOND_FACTOR_INVALID";
    /// An unknown, expired or used second-factor challenge.
    pub const SECOND_FACTOR_CHALLENGE_INVALID: &str = "SECOND_FACTOR_CHALLENGE_INVALID";
    pub const TOTP_ALREADY_ENABLED: &str = "TOTP_ALREADY_ENABLED";
    pub const TOTP_NOT_ENABLED: &str = "TOTP_NOT_ENABLED";
    /// A wrong or replayed code for the caller's own TOTP.
    pub const TOTP_CODE_INVALID: &str = "TOTP_CODE_INVALID";
    // --- end TOTP ---
    /// R31: a policy requires a second factor the calling session lacks
    /// (metadata `organization_id` when an organization's policy does).
    pub const SECOND_FACTOR_REQUIRED: &str = "SECOND_FACTOR_REQUIRED";

    /// Every reason above, in order: the proto enum `ErrorReason` lists the
    /// same (as `ERROR_REASON_<reason>`; a unit test keeps the two equal).
    pub const ALL: &[&str] = &[
        INVALID_ARGUMENT,
        INVALID_CREDENTIALS,
        MISSING_TOKEN,
        INVALID_TOKEN,
        INVALID_REFRESH_TOKEN,
        REFRESH_TOKEN_REUSED,
        ACCOUNT_DISABLED,
        SESSION_REVOKED,
        TOO_MANY_STREAMS,
        STREAM_STALLED,
        PERMISSION_DENIED,
        PLATFORM_ADMIN_REQUIRED,
        MANAGER_REQUIRED,
        SELF_ROLE_CHANGE,
        SELF_PERMISSION_CHANGE,
        PROMOTION_REQUIRES_PLATFORM_ADMIN,
        LAST_MANAGER,
        LAST_PLATFORM_ADMIN,
        INVITATION_EMAIL_MISMATCH,
        WEAK_PASSWORD,
        NOT_FOUND,
        ALREADY_EXISTS,
        EMAIL_TAKEN,
        ORGANIZATION_CODE_TAKEN,
        ALREADY_MEMBER,
        NOT_PENDING,
        JOIN_REQUEST_PENDING,
        INVITATION_PENDING,
        INVITATION_EXPIRED,
        LOGIN_REQUIRED,
        AUDIT_PERMISSION_REQUIRED,
        SELF_ACCOUNT_ACTION,
        INVALID_CURRENT_PASSWORD,
        INVALID_RESET_TOKEN,
        INVALID_VERIFICATION_TOKEN,
        EMAIL_NOT_VERIFIED,
        RATE_LIMITED,
        OVERLOADED,
        DATABASE_UNAVAILABLE,
        CONFLICT,
        INTERNAL,
        SCOPE_REQUIRED,
        INVALID_ASSERTION,
        ASSERTION_REPLAYED,
        CERTIFICATE_REQUIRED,
        SERVICE_ACCOUNT_NAME_TAKEN,
        TOO_MANY_CREDENTIALS,
        PLATFORM_ACCOUNT_REQUIRED,
        // TOTP (R30)
        SECOND_FACTOR_INVALID,
        SECOND_FACTOR_CHALLENGE_INVALID,
        TOTP_ALREADY_ENABLED,
        TOTP_NOT_ENABLED,
        TOTP_CODE_INVALID,
        SECOND_FACTOR_REQUIRED,
    ];
}

/// The domain error. Messages are safe to show to the caller: they never
/// contain secrets, and for authentication failures they never say whether an
/// account exists.
#[derive(Debug, Clone, Error)]
pub enum DomainError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    /// R31: a second factor is required of the calling session (by the
    /// organization's policy, or by the platform's when None).
    #[error("{}", second_factor_message(.organization_id.as_deref()))]
    SecondFactorRequired { organization_id: Option<String> },
    /// R25: a service account lacks the scope an RPC needs (None: no scope
    /// reaches it; only people may call it).
    #[error("{}", scope_message(*.scope))]
    ScopeRequired { scope: Option<&'static str> },
    #[error("{resource} not found")]
    NotFound { resource: &'static str },
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
        metadata: BTreeMap<String, String>,
    },
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after_secs: u64,
    },
    /// A capacity limit (not a rate): retry later or elsewhere.
    #[error("{message}")]
    Exhausted {
        reason: &'static str,
        message: String,
    },
    /// A write lost a race it may win when retried (serialization failure).
    #[error("the request conflicted with a concurrent change; retry")]
    Aborted,
    #[error("the database is unavailable")]
    Unavailable,
    /// A bug or an unexpected failure. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
    /// The refusal of one item of a batch that fails as a whole (AIP-231,
    /// CheckPermissions): the item's own error, its message naming the item.
    #[error("items[{index}]: {error}")]
    Item {
        index: usize,
        error: Box<DomainError>,
    },
}

fn second_factor_message(org: Option<&str>) -> String {
    match org {
        Some(_) => {
            "this organization requires a second factor; enroll one and sign in with it".into()
        }
        None => "PlatformAdmins must use a second factor; enroll one and sign in with it".into(),
    }
}

fn scope_message(scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("this service account lacks the scope {s}"),
        None => "service accounts cannot call this RPC".to_string(),
    }
}

/// A single bad field.
impl From<FieldViolation> for DomainError {
    fn from(v: FieldViolation) -> Self {
        DomainError::InvalidArgument(vec![v])
    }
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn denied(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::PermissionDenied {
            reason,
            message: message.into(),
        }
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Unauthenticated {
            reason,
            message: message.into(),
        }
    }

    /// The one answer for every failed password login (R12).
    pub fn invalid_credentials() -> Self {
        Self::unauthenticated(reason::INVALID_CREDENTIALS, "invalid email or password")
    }

    pub fn not_found(resource: &'static str) -> Self {
        DomainError::NotFound { resource }
    }

    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::FailedPrecondition {
            reason,
            message: message.into(),
            metadata: BTreeMap::new(),
        }
    }

    pub fn exists(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::AlreadyExists {
            reason,
            message: message.into(),
        }
    }

    pub fn exhausted(reason: &'static str, message: impl Into<String>) -> Self {
        DomainError::Exhausted {
            reason,
            message: message.into(),
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        DomainError::Internal(detail.into())
    }

    /// This error as the refusal of item `index` of a batch.
    pub fn at_item(self, index: usize) -> Self {
        DomainError::Item {
            index,
            error: Box::new(self),
        }
    }
}

/// Collects field violations so a request reports all its bad fields at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, result: Result<(), FieldViolation>) {
        if let Err(v) = result {
            self.0.push(v);
        }
    }

    /// The value, or a default after recording the violation; the request is
    /// refused by `into_result` before the default is ever used.
    pub fn take<T: Default>(&mut self, result: Result<T, FieldViolation>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => {
                self.0.push(e);
                T::default()
            }
        }
    }

    pub fn push(&mut self, v: FieldViolation) {
        self.0.push(v);
    }

    pub fn into_result(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::InvalidArgument(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reason;
    use kiops_proto::v1::ErrorReason;

    /// The proto's `ErrorReason` (what SDK users read) and `reason` (what
    /// the server sends) cannot drift apart.
    #[test]
    fn the_proto_error_reason_enum_lists_exactly_the_reasons() {
        for r in reason::ALL {
            let name = format!("ERROR_REASON_{r}");
            let value = ErrorReason::from_str_name(&name)
                .unwrap_or_else(|| panic!("{name} is missing from ErrorReason in types.proto"));
            assert_eq!(value.as_str_name(), name);
        }
        // Every value but UNSPECIFIED (numbers are small; 10 000 is plenty).
        let values: Vec<ErrorReason> = (1..10_000)
            .filter_map(|n| ErrorReason::try_from(n).ok())
            .collect();
        for value in &values {
            let r = value
                .as_str_name()
                .strip_prefix("ERROR_REASON_")
                .expect("ERROR_REASON_ prefix");
            assert!(
                reason::ALL.contains(&r),
                "ErrorReason {} is not in domain::error::reason::ALL",
                value.as_str_name()
            );
        }
        assert_eq!(values.len(), reason::ALL.len());
        let mut sorted = reason::ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), reason::ALL.len(), "a reason is listed twice");
    }
}
