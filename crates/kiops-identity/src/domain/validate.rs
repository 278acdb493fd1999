//! Input validation. Every function answers a `FieldViolation` naming the
//! field, so a bad request gets INVALID_ARGUMENT with `BadRequest` details and
//! never reaches the database.

use super::error::FieldViolation;

pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_NAME_CHARS: usize = 100;
pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 128;
pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 500;

/// Lower-cases and checks an email address.
///
/// Deliberately strict: ASCII only (no Unicode look-alikes that render like
/// someone else's address), no whitespace or control characters, one `@`, a
/// dotted domain. Addresses are compared lower-case (docs/rules.md, Model).
pub fn email(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let e = raw.trim().to_ascii_lowercase();
    let bad =
        |why: &str| FieldViolation::new(field, format!("must be a valid email address: {why}"));
    if e.is_empty() {
        return Err(bad("empty"));
    }
    if e.len() > MAX_EMAIL_LEN {
        return Err(bad("longer than 254 characters"));
    }
    if !e.is_ascii() {
        return Err(bad("only ASCII characters are accepted"));
    }
    if e.chars()
        .any(|c| c.is_ascii_control() || c.is_ascii_whitespace())
    {
        return Err(bad("contains whitespace or control characters"));
    }
    let Some((local, domain)) = e.split_once('@') else {
        return Err(bad("missing @"));
    };
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad("malformed local part"));
    }
    if local.contains(['"', '(', ')', ',', ':', ';', '<', '>', '[', '\\', ']']) {
        return Err(bad("special characters in local part"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        return Err(bad("malformed domain"));
    }
    Ok(e)
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub fn name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let n = raw.trim();
    if n.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if n.chars().count() > MAX_NAME_CHARS {
        return Err(FieldViolation::new(field, "must be at most 100 characters"));
    }
    if n.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(n.to_string())
}

/// Only the length: the full policy (R13) is in `password_policy`. Used where
/// a password is checked, not set (login), so an oversized input is refused
/// before it reaches the hasher.
pub fn password_input(field: &str, raw: &str) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if raw.chars().count() > MAX_PASSWORD_CHARS {
        return Err(FieldViolation::new(field, "must be at most 128 characters"));
    }
    Ok(())
}

/// A resource id: a UUID in its canonical hyphenated form.
pub fn id(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if raw.len() == 36 => Ok(u.hyphenated().to_string()),
        _ => Err(FieldViolation::new(field, "must be a UUID")),
    }
}

/// An opaque secret token (refresh, invitation, reset): bounded, printable.
pub fn opaque_token(field: &str, raw: &str) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if raw.len() > 512 || !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(FieldViolation::new(field, "is not a valid token"));
    }
    Ok(())
}

/// Organization code `^[a-z0-9][a-z0-9-]{1,31}$`.
pub fn org_code(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let ok = (2..=32).contains(&raw.len())
        && raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(raw.to_string())
    } else {
        Err(FieldViolation::new(
            field,
            "must match ^[a-z0-9][a-z0-9-]{1,31}$",
        ))
    }
}

/// Free text such as a description: at most `max` characters, no control
/// characters other than newline and tab.
pub fn text(field: &str, raw: &str, max: usize) -> Result<String, FieldViolation> {
    if raw.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_string())
}

/// Optional phone number: digits, spaces, `+`, `-`, parentheses; 3 to 32.
pub fn phone(field: &str, raw: &str) -> Result<Option<String>, FieldViolation> {
    let p = raw.trim();
    if p.is_empty() {
        return Ok(None);
    }
    let ok = (3..=32).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')'))
        && p.chars().any(|c| c.is_ascii_digit());
    if ok {
        Ok(Some(p.to_string()))
    } else {
        Err(FieldViolation::new(
            field,
            "must be a phone number (digits, +, -, spaces, parentheses)",
        ))
    }
}

/// Optional avatar URL: https only, at most 2048 characters.
pub fn avatar_url(field: &str, raw: &str) -> Result<Option<String>, FieldViolation> {
    let u = raw.trim();
    if u.is_empty() {
        return Ok(None);
    }
    let rest = u.strip_prefix("https://");
    let ok = u.len() <= 2048
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && u.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(Some(u.to_string()))
    } else {
        Err(FieldViolation::new(
            field,
            "must be an https:// URL of at most 2048 characters",
        ))
    }
}

/// AIP-158 page size: 0 means the default (50); above 500 is refused rather
/// than clamped, so a client never silently gets fewer rows than it asked for.
pub fn page_size(field: &str, raw: i32) -> Result<u64, FieldViolation> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(FieldViolation::new(field, "must not be negative")),
        n if n as u64 > MAX_PAGE_SIZE => Err(FieldViolation::new(field, "must be at most 500")),
        n => Ok(n as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(email("e", "  Kim@Example.COM ").unwrap(), "kim@example.com");
        for bad in [
            "",
            "kim",
            "kim@",
            "@x.io",
            "kim@x",
            "kim@@x.io",
            "k im@x.io",
            "kim@x..io",
            "kim@-x.io",
            "kím@x.io",
            "kim@exаmple.com",
            "kim\u{0}@x.io",
            "a\"b@x.io",
        ] {
            assert!(email("e", bad).is_err(), "{bad:?}");
        }
        assert!(email("e", &format!("{}@x.io", "a".repeat(65))).is_err());
        assert!(email("e", &format!("a@{}.io", "b".repeat(260))).is_err());
    }

    #[test]
    fn names_ids_codes() {
        assert_eq!(name("n", " Kim ").unwrap(), "Kim");
        assert!(name("n", "   ").is_err());
        assert!(name("n", &"x".repeat(101)).is_err());
        assert!(name("n", "a\u{7}b").is_err());
        let u = uuid::Uuid::now_v7().to_string();
        assert_eq!(id("i", &u).unwrap(), u);
        assert!(id("i", "not-a-uuid").is_err());
        assert!(id("i", &u.replace('-', "")).is_err());
        assert!(org_code("c", "acme-1").is_ok());
        for bad in ["a", "-acme", "Acme", "acme_1", &"a".repeat(33)] {
            assert!(org_code("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("p", 0).unwrap(), 50);
        assert_eq!(page_size("p", 500).unwrap(), 500);
        assert!(page_size("p", 501).is_err());
        assert!(page_size("p", -1).is_err());
    }

    #[test]
    fn phones_and_avatars() {
        assert_eq!(phone("p", "").unwrap(), None);
        assert!(phone("p", "+82 10-1234-5678").unwrap().is_some());
        assert!(phone("p", "call me").is_err());
        assert!(avatar_url("a", "https://cdn.example.com/a.png")
            .unwrap()
            .is_some());
        assert!(avatar_url("a", "http://cdn.example.com/a.png").is_err());
        assert!(avatar_url("a", "javascript:alert(1)").is_err());
    }
}
