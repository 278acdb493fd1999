//! Password policy (R13): 12 to 128 characters, not the email, not a common
//! password.

use super::error::{reason, FieldViolation};
use super::validate::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use std::collections::HashSet;
use std::sync::OnceLock;

/// The shipped list of common passwords, one per line, lower-case.
const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Which rule a password broke; the description names it for the caller.
pub fn check(field: &str, password: &str, email: &str) -> Result<(), FieldViolation> {
    check_rules(field, password, email).map_err(|v| v.with_reason(reason::WEAK_PASSWORD))
}

fn check_rules(field: &str, password: &str, email: &str) -> Result<(), FieldViolation> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(FieldViolation::new(
            field,
            "too short: at least 12 characters (rule: min_length)",
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(FieldViolation::new(
            field,
            "too long: at most 128 characters (rule: max_length)",
        ));
    }
    let lower = password.to_lowercase();
    if !email.is_empty() && (lower == email.to_lowercase() || lower == local_part(email)) {
        return Err(FieldViolation::new(
            field,
            "must not be the email address (rule: not_email)",
        ));
    }
    if common_passwords().contains(lower.as_str()) {
        return Err(FieldViolation::new(
            field,
            "is a commonly used password (rule: common_password)",
        ));
    }
    Ok(())
}

fn local_part(email: &str) -> String {
    email.split('@').next().unwrap_or_default().to_lowercase()
}

/// Number of entries in the shipped list (for startup logs and tests).
pub fn common_password_count() -> usize {
    common_passwords().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(check("p", "short", "a@b.io").is_err());
        assert!(check("p", &"x".repeat(129), "a@b.io").is_err());
        assert!(check("p", "kimberly@example.com", "kimberly@example.com").is_err());
        assert!(check("p", "Kimberly@Example.com", "kimberly@example.com").is_err());
        assert!(check("p", "correct horse battery staple", "a@b.io").is_ok());
        assert!(check("p", "1qaz2wsx3edc", "a@b.io").is_err());
        assert!(common_password_count() >= 10_000);
    }
}
