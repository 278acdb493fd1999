//! Sessions, the tokens a login hands out, the revocation events that end
//! access (R15, R16), and the signing keys that sign access tokens.

/// A login session (R15): its refresh tokens rotate within `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub expires_at: i64,
}

/// A session as its owner, or a PlatformAdmin, sees it (issue 24).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    /// The login, or the last refresh of its tokens.
    pub last_used_at: i64,
    pub expires_at: i64,
    /// The client's `user-agent` at login.
    pub user_agent: String,
    /// The client's address at login (behind trusted proxies, the one they
    /// name).
    pub peer_address: String,
    /// How it was authenticated: `pwd`, then `otp` with a second factor.
    pub amr: Vec<String>,
}

/// At most this many sessions in a listing; RevokeOtherSessions ends the
/// rest too.
pub const MAX_LISTED_SESSIONS: u64 = 200;

/// Access and refresh token pair as every login-like RPC answers it.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// What a right password answers (R30): the tokens, or for an account
/// with a second factor a challenge for VerifySecondFactor.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    Tokens(TokenPair),
    SecondFactor {
        /// The opaque challenge, shown once (stored as a digest).
        challenge: String,
        expires_at: i64,
    },
}

/// One committed revocation event (R16), in the order watchers see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEvent {
    /// Commit order; `None` until the sequencer numbers it.
    pub seq: Option<i64>,
    /// Empty: every user (of the organization).
    pub user_id: String,
    pub organization_id: Option<String>,
    pub session_id: Option<String>,
    pub revoked_at: i64,
    pub reason: String,
}

/// Where a signing key is in its life: it signs while active, is still
/// published while retiring (until `retire_at`), and then is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Retiring,
    Retired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Retiring => "retiring",
            KeyStatus::Retired => "retired",
        }
    }

    /// Unknown stored values read as retired: never signed with nor published.
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => KeyStatus::Active,
            "retiring" => KeyStatus::Retiring,
            _ => KeyStatus::Retired,
        }
    }

    /// The status a listing shows at `now`: a retiring key past its
    /// `retire_at` is retired.
    pub fn at(self, retire_at: Option<i64>, now: i64) -> Self {
        match retire_at {
            Some(t) if self != KeyStatus::Active && t <= now => KeyStatus::Retired,
            _ => self,
        }
    }

    /// Published in the JWKS at `now`.
    pub fn published(self, retire_at: Option<i64>, now: i64) -> bool {
        self == KeyStatus::Active
            || (self != KeyStatus::Retired && retire_at.is_none_or(|t| t > now))
    }
}

/// A stored signing key. The PEM is a secret: no Debug.
#[derive(Clone)]
pub struct StoredKey {
    pub kid: String,
    pub private_key_pem: String,
    pub status: KeyStatus,
    pub created_at: i64,
    pub retire_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::KeyStatus;

    #[test]
    fn a_retiring_key_is_published_until_it_retires() {
        let k = KeyStatus::Retiring;
        assert!(k.published(Some(10), 9));
        assert!(!k.published(Some(10), 10));
        assert!(k.published(None, 10));
        assert_eq!(k.at(Some(10), 10), KeyStatus::Retired);
        assert_eq!(k.at(Some(10), 9), KeyStatus::Retiring);
        assert!(KeyStatus::Active.published(Some(1), 10));
        assert_eq!(KeyStatus::Active.at(Some(1), 10), KeyStatus::Active);
        assert!(!KeyStatus::Retired.published(None, 0));
        assert_eq!(KeyStatus::parse("retiring").as_str(), "retiring");
    }
}

/// Whether a session's `amr` (space-separated, as stored; or its claim's
/// values joined) includes a second factor ("otp"). R30.
pub fn has_second_factor(amr: &str) -> bool {
    amr.split_whitespace().any(|m| m == "otp")
}

/// The `amr` claim of a session's tokens, from its stored value.
pub fn amr_claim(amr: &str) -> Vec<String> {
    amr.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod amr_tests {
    use super::*;

    #[test]
    fn second_factor_is_otp_in_amr() {
        assert!(has_second_factor("pwd otp"));
        assert!(!has_second_factor("pwd"));
        assert!(!has_second_factor("pwdotp"));
        assert_eq!(amr_claim("pwd  otp"), vec!["pwd", "otp"]);
    }
}
