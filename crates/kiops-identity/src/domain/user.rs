//! Accounts: the stored status and the one the API shows (R11, R12), and
//! the account as the layers above the store see it.

/// Account status as stored. LOCKED is not stored: it is derived from
/// `locked_until` (R12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredStatus {
    Active,
    Inactive,
}

impl StoredStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredStatus::Active => "active",
            StoredStatus::Inactive => "inactive",
        }
    }

    /// The status a stored text names; None for any other text.
    pub fn from_stored(s: &str) -> Option<Self> {
        match s {
            "active" => Some(StoredStatus::Active),
            "inactive" => Some(StoredStatus::Inactive),
            _ => None,
        }
    }

    /// Lossy: anything but `"inactive"` reads as Active. Only for rows read
    /// outside `store::users` (callers, members) that still carry the text;
    /// `store::users` refuses unknown text with `from_stored`.
    pub fn parse(s: &str) -> Self {
        if s == "inactive" {
            StoredStatus::Inactive
        } else {
            StoredStatus::Active
        }
    }
}

/// Status as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Inactive,
    Locked,
}

impl UserStatus {
    /// INACTIVE wins over LOCKED: a deactivated account stays deactivated
    /// whatever its lockout window says.
    pub fn derive(stored: StoredStatus, locked_until_ms: Option<i64>, now_ms: i64) -> Self {
        match stored {
            StoredStatus::Inactive => UserStatus::Inactive,
            StoredStatus::Active if locked_until_ms.is_some_and(|t| t > now_ms) => {
                UserStatus::Locked
            }
            StoredStatus::Active => UserStatus::Active,
        }
    }

    pub fn proto_number(self) -> i32 {
        match self {
            UserStatus::Active => 1,
            UserStatus::Inactive => 2,
            UserStatus::Locked => 3,
        }
    }
}

/// An account as stored. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Lower-case.
    pub email: String,
    pub name: String,
    /// The name's sort and search key.
    pub name_lower: String,
    pub phone: Option<String>,
    pub avatar_url: Option<String>,
    pub password_hash: String,
    pub status: StoredStatus,
    pub platform_admin: bool,
    pub failed_login_count: i32,
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The owner proved the address (sign-up link, invitation), or a
    /// PlatformAdmin made the account.
    pub email_verified: bool,
}

impl User {
    /// The status the API shows at `now_ms`.
    pub fn status_at(&self, now_ms: i64) -> UserStatus {
        UserStatus::derive(self.status, self.locked_until, now_ms)
    }
}

/// A validated account to create; `email` already lower-case.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub platform_admin: bool,
    /// False only for self-service sign-up: the address is unproven until
    /// its verification link is used (R23).
    pub email_verified: bool,
}

/// Profile fields to change (R14; None: keep; Some(None): clear).
#[derive(Debug, Default)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub phone: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_derivation() {
        assert_eq!(
            UserStatus::derive(StoredStatus::Active, None, 10),
            UserStatus::Active
        );
        assert_eq!(
            UserStatus::derive(StoredStatus::Active, Some(11), 10),
            UserStatus::Locked
        );
        assert_eq!(
            UserStatus::derive(StoredStatus::Active, Some(10), 10),
            UserStatus::Active
        );
        assert_eq!(
            UserStatus::derive(StoredStatus::Inactive, Some(11), 10),
            UserStatus::Inactive
        );
    }

    #[test]
    fn only_known_stored_text_is_a_status() {
        for s in [StoredStatus::Active, StoredStatus::Inactive] {
            assert_eq!(StoredStatus::from_stored(s.as_str()), Some(s));
        }
        assert_eq!(StoredStatus::from_stored("Active"), None);
        assert_eq!(StoredStatus::from_stored(""), None);
    }
}
