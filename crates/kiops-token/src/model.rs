//! The vocabulary shared by every KIOPS service: roles and permission categories.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the seven permission categories. Numbers match the proto enum
/// `kiops.identity.v1.Permission`, names are the strings used in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Infra,
    Service,
    Backup,
    Device,
    Database,
    Vpn,
    Audit,
}

impl Permission {
    /// Every category, in proto order.
    pub const ALL: [Permission; 7] = [
        Permission::Infra,
        Permission::Service,
        Permission::Backup,
        Permission::Device,
        Permission::Database,
        Permission::Vpn,
        Permission::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Infra => "infra",
            Permission::Service => "service",
            Permission::Backup => "backup",
            Permission::Device => "device",
            Permission::Database => "database",
            Permission::Vpn => "vpn",
            Permission::Audit => "audit",
        }
    }

    /// The proto enum number (1..=7).
    pub fn proto_number(self) -> i32 {
        match self {
            Permission::Infra => 1,
            Permission::Service => 2,
            Permission::Backup => 3,
            Permission::Device => 4,
            Permission::Database => 5,
            Permission::Vpn => 6,
            Permission::Audit => 7,
        }
    }

    /// From the proto enum number; `None` for UNSPECIFIED or unknown values.
    pub fn from_proto_number(n: i32) -> Option<Self> {
        Permission::ALL.into_iter().find(|p| p.proto_number() == n)
    }

    /// Bit of this category in a compact 7-bit set (for storage and caches).
    pub fn bit(self) -> u8 {
        1 << (self.proto_number() - 1)
    }

    /// Decodes a 7-bit set; unknown bits are ignored.
    pub fn from_bits(bits: u8) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| bits & p.bit() != 0)
            .collect()
    }

    /// Encodes a set of categories into 7 bits.
    pub fn to_bits(perms: &[Permission]) -> u8 {
        perms.iter().fold(0, |acc, p| acc | p.bit())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no role or permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct ParseError {
    pub kind: &'static str,
    pub value: String,
}

impl FromStr for Permission {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParseError {
                kind: "permission",
                value: s.to_string(),
            })
    }
}

/// Role of a user inside one organization. PlatformAdmin is a separate,
/// platform-wide flag (`pa` in the claims), not a membership role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Manager => "manager",
        }
    }

    /// The proto enum number of `kiops.identity.v1.Role`.
    pub fn proto_number(self) -> i32 {
        match self {
            Role::Member => 1,
            Role::Manager => 2,
        }
    }

    pub fn from_proto_number(n: i32) -> Option<Self> {
        match n {
            1 => Some(Role::Member),
            2 => Some(Role::Manager),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "manager" => Ok(Role::Manager),
            _ => Err(ParseError {
                kind: "role",
                value: s.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_numbers_names_and_bits_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_proto_number(p.proto_number()), Some(p));
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
            assert_eq!(Permission::from_bits(p.bit()), vec![p]);
        }
        assert_eq!(Permission::from_proto_number(0), None);
        assert_eq!(Permission::from_proto_number(8), None);
        assert_eq!(Permission::from_bits(0x7f), Permission::ALL.to_vec());
        assert!("Device".parse::<Permission>().is_err());
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Member, Role::Manager] {
            assert_eq!(Role::from_proto_number(r.proto_number()), Some(r));
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert_eq!(Role::from_proto_number(0), None);
        assert!("admin".parse::<Role>().is_err());
    }
}
