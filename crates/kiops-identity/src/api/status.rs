//! The one mapping from `DomainError` to `tonic::Status`.
//!
//! Every error carries a `google.rpc.ErrorInfo` with a stable reason and the
//! domain below; INVALID_ARGUMENT adds `BadRequest` field violations and
//! RESOURCE_EXHAUSTED a `RetryInfo`. Internal details are logged here and never
//! sent to the caller.

use crate::domain::error::reason;
use crate::domain::DomainError;
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::domain::error::ERROR_DOMAIN;

/// Longest field-violation description and status message sent back.
/// Descriptions may quote what the caller sent; echoed whole, a long value
/// would bloat the response headers past what clients accept (they then see
/// a protocol error instead of INVALID_ARGUMENT) and reflect attacker text.
const MAX_DESCRIPTION_CHARS: usize = 200;
const MAX_MESSAGE_CHARS: usize = 1000;

/// At most `max` characters, control characters replaced, "…" when cut.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, ERROR_DOMAIN, metadata);
    d
}

impl From<DomainError> for Status {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidArgument(violations) => {
                let specific = violations.iter().find_map(|v| v.reason);
                let mut d = info(specific.unwrap_or(reason::INVALID_ARGUMENT), HashMap::new());
                let mut message = String::from("invalid argument:");
                for v in &violations {
                    let description = clip(&v.description, MAX_DESCRIPTION_CHARS);
                    message.push_str(&format!(" {} {};", v.field, description));
                    d.add_bad_request_violation(v.field.clone(), description);
                }
                message.pop();
                Status::with_error_details(
                    Code::InvalidArgument,
                    clip(&message, MAX_MESSAGE_CHARS),
                    d,
                )
            }
            DomainError::Unauthenticated { reason, message } => Status::with_error_details(
                Code::Unauthenticated,
                message,
                info(reason, HashMap::new()),
            ),
            DomainError::PermissionDenied { reason, message } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info(reason, HashMap::new()),
            ),
            DomainError::SecondFactorRequired { organization_id } => {
                let message = DomainError::SecondFactorRequired {
                    organization_id: organization_id.clone(),
                }
                .to_string();
                let meta = organization_id
                    .map(|o| HashMap::from([("organization_id".to_string(), o)]))
                    .unwrap_or_default();
                Status::with_error_details(
                    Code::PermissionDenied,
                    message,
                    info(reason::SECOND_FACTOR_REQUIRED, meta),
                )
            }
            DomainError::ScopeRequired { scope } => {
                let meta = HashMap::from([("scope".to_string(), scope.unwrap_or("").to_string())]);
                Status::with_error_details(
                    Code::PermissionDenied,
                    DomainError::ScopeRequired { scope }.to_string(),
                    info(reason::SCOPE_REQUIRED, meta),
                )
            }
            DomainError::NotFound { resource } => {
                let meta = HashMap::from([("resource".to_string(), resource.to_string())]);
                Status::with_error_details(
                    Code::NotFound,
                    format!("{resource} not found"),
                    info(reason::NOT_FOUND, meta),
                )
            }
            DomainError::AlreadyExists { reason, message } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                info(reason, HashMap::new()),
            ),
            DomainError::FailedPrecondition {
                reason,
                message,
                metadata,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                info(reason, metadata.into_iter().collect()),
            ),
            DomainError::ResourceExhausted {
                message,
                retry_after_secs,
            } => {
                let mut d = info(reason::RATE_LIMITED, HashMap::new());
                d.set_retry_info(Some(Duration::from_secs(retry_after_secs)));
                Status::with_error_details(Code::ResourceExhausted, message, d)
            }
            DomainError::Exhausted { reason, message } => {
                let mut d = info(reason, HashMap::new());
                d.set_retry_info(Some(Duration::from_secs(1)));
                Status::with_error_details(Code::ResourceExhausted, message, d)
            }
            DomainError::Aborted => Status::with_error_details(
                Code::Aborted,
                "the request conflicted with a concurrent change; retry",
                info(reason::CONFLICT, HashMap::new()),
            ),
            DomainError::Unavailable => Status::with_error_details(
                Code::Unavailable,
                "the service cannot reach its database; retry later",
                info(reason::DATABASE_UNAVAILABLE, HashMap::new()),
            ),
            DomainError::Item { index, error } => {
                // The item's own status (code, reason, details), its message
                // prefixed with the item.
                let inner = Status::from(*error);
                Status::with_details_and_metadata(
                    inner.code(),
                    format!("items[{index}]: {}", inner.message()),
                    tonic::codegen::Bytes::copy_from_slice(inner.details()),
                    inner.metadata().clone(),
                )
            }
            DomainError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::with_error_details(
                    Code::Internal,
                    "internal error",
                    info(reason::INTERNAL, HashMap::new()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::FieldViolation;

    #[test]
    fn echoed_input_is_clipped_and_made_single_line() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("a\nb\u{0}", 10), "a\u{FFFD}b\u{FFFD}");
        let long = format!("unsupported term \"{}\"", "x".repeat(100_000));
        let status = Status::from(DomainError::InvalidArgument(vec![FieldViolation {
            field: "filter".into(),
            description: long,
            reason: None,
        }]));
        assert!(status.message().chars().count() <= MAX_MESSAGE_CHARS + 1);
        let bad = status.get_details_bad_request().expect("bad request");
        assert!(bad.field_violations[0].description.chars().count() <= MAX_DESCRIPTION_CHARS + 1);
    }

    #[test]
    fn an_items_refusal_keeps_its_code_and_reason_and_names_the_item() {
        let status = Status::from(DomainError::not_found("organization").at_item(7));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "items[7]: organization not found");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, reason::NOT_FOUND);
        assert_eq!(
            info.metadata.get("resource").map(String::as_str),
            Some("organization")
        );
        let status = Status::from(
            DomainError::denied(reason::MANAGER_REQUIRED, "Manager role required").at_item(0),
        );
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "items[0]: Manager role required");
        assert_eq!(
            status.get_details_error_info().expect("info").reason,
            reason::MANAGER_REQUIRED
        );
    }
}
