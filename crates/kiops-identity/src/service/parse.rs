//! Decoding proto enums, lists and masks into domain values, with a
//! `FieldViolation` naming the field when they are not acceptable.

use crate::domain::model::Role;
use crate::domain::FieldViolation;
use crate::store::memberships::{MemberOrder, StatusFilter};
use kiops_token::Permission;

pub fn role(field: &str, n: i32) -> Result<Role, FieldViolation> {
    Role::from_proto_number(n)
        .ok_or_else(|| FieldViolation::new(field, "must be ROLE_MEMBER or ROLE_MANAGER"))
}

/// ROLE_UNSPECIFIED means "any" in filters.
pub fn role_filter(field: &str, n: i32) -> Result<Option<Role>, FieldViolation> {
    if n == 0 {
        Ok(None)
    } else {
        role(field, n).map(Some)
    }
}

pub fn permission(field: &str, n: i32) -> Result<Permission, FieldViolation> {
    Permission::from_proto_number(n).ok_or_else(|| {
        FieldViolation::new(field, "must be one of the seven PERMISSION_* categories")
    })
}

/// A set of categories; duplicates are harmless, UNSPECIFIED or unknown
/// values are refused.
pub fn permission_bits(field: &str, list: &[i32]) -> Result<u8, FieldViolation> {
    let mut bits = 0u8;
    for n in list {
        bits |= permission(field, *n)?.bit();
    }
    Ok(bits)
}

pub fn status_filter(field: &str, n: i32) -> Result<Option<StatusFilter>, FieldViolation> {
    match n {
        0 => Ok(None),
        1 => Ok(Some(StatusFilter::Active)),
        2 => Ok(Some(StatusFilter::Inactive)),
        3 => Ok(Some(StatusFilter::Locked)),
        _ => Err(FieldViolation::new(field, "unknown status")),
    }
}

/// `"email"`, `"role"` or `"join_time"`, optionally followed by ` desc` or
/// ` asc`; empty means `email`.
pub fn member_order(field: &str, s: &str) -> Result<(MemberOrder, bool), FieldViolation> {
    order_by(
        field,
        s,
        &[
            ("email", MemberOrder::Email),
            ("role", MemberOrder::Role),
            ("join_time", MemberOrder::JoinTime),
        ],
    )
}

/// An `order_by` of one of `keys` (the first when `s` is empty), optionally
/// followed by ` desc` or ` asc`.
pub fn order_by<O: Copy>(
    field: &str,
    s: &str,
    keys: &[(&str, O); 3],
) -> Result<(O, bool), FieldViolation> {
    let bad = || {
        let [(a, _), (b, _), (c, _)] = keys;
        FieldViolation::new(
            field,
            format!("must be \"{a}\", \"{b}\" or \"{c}\", optionally followed by \" desc\""),
        )
    };
    let mut words = s.split_whitespace();
    let order = match words.next() {
        None => return Ok((keys[0].1, false)),
        Some(w) => match keys.iter().find(|(k, _)| *k == w) {
            Some((_, o)) => *o,
            None => return Err(bad()),
        },
    };
    let desc = match words.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(bad()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    Ok((order, desc))
}

/// Search text: at most 100 characters, compared lower-case.
pub fn query(field: &str, s: &str) -> Result<String, FieldViolation> {
    let q = s.trim();
    if q.chars().count() > 100 {
        return Err(FieldViolation::new(field, "must be at most 100 characters"));
    }
    if q.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(q.to_lowercase())
}

/// Field-mask paths, checked against the allowed ones; empty → `default`.
pub fn mask<'a>(
    field: &str,
    mask: Option<&'a prost_types::FieldMask>,
    allowed: &[&str],
    default: &[&'a str],
) -> Result<Vec<String>, FieldViolation> {
    let paths: Vec<String> = match mask {
        Some(m) if !m.paths.is_empty() => m.paths.clone(),
        _ => default.iter().map(|s| s.to_string()).collect(),
    };
    for p in &paths {
        if !allowed.contains(&p.as_str()) {
            return Err(FieldViolation::new(
                field,
                format!("unknown path {p:?}; allowed: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        assert_eq!(member_order("o", "").unwrap(), (MemberOrder::Email, false));
        assert_eq!(
            member_order("o", "x").unwrap_err().description,
            "must be \"email\", \"role\" or \"join_time\", optionally followed by \" desc\""
        );
        assert_eq!(
            member_order("o", "join_time desc").unwrap(),
            (MemberOrder::JoinTime, true)
        );
        assert_eq!(
            member_order("o", "role asc").unwrap(),
            (MemberOrder::Role, false)
        );
        for bad in ["name", "email up", "email desc x"] {
            assert!(member_order("o", bad).is_err());
        }
    }

    #[test]
    fn permissions() {
        assert_eq!(
            permission_bits("p", &[4, 4, 7]).unwrap(),
            Permission::Device.bit() | Permission::Audit.bit()
        );
        assert!(permission_bits("p", &[0]).is_err());
        assert!(permission_bits("p", &[8]).is_err());
        assert_eq!(permission_bits("p", &[]).unwrap(), 0);
    }
}
