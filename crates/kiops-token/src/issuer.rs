//! Minting access tokens (used by kiops-identity).

use crate::claims::{Claims, OrgClaims};
use crate::error::KeyError;
use crate::keys::SigningKey;
use crate::ACCESS_TOKEN_TYP;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the server knows about the subject when it mints a token.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub subject: String,
    pub email: String,
    pub name: String,
    pub platform_admin: bool,
    pub orgs: BTreeMap<String, OrgClaims>,
    pub session_id: Option<String>,
}

/// A signed token and the facts a caller needs about it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub jti: String,
    pub expires_in: u64,
    pub issued_at: u64,
}

/// Signs access tokens with one Ed25519 key.
///
/// The `EncodingKey` is built once here, not per token.
#[derive(Clone)]
pub struct Issuer {
    key: SigningKey,
    encoding: EncodingKey,
    header: Header,
    iss: String,
    aud: String,
    ttl_secs: u64,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("kid", &self.key.kid())
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl Issuer {
    /// # Panics
    /// Never for a key made by [`SigningKey`]; PKCS#8 encoding of a valid key
    /// cannot fail. Use [`Issuer::try_new`] to handle it anyway.
    pub fn new(key: SigningKey, iss: &str, aud: &str, ttl_secs: u64) -> Self {
        Self::try_new(key, iss, aud, ttl_secs).expect("valid Ed25519 key encodes as PKCS#8")
    }

    pub fn try_new(key: SigningKey, iss: &str, aud: &str, ttl_secs: u64) -> Result<Self, KeyError> {
        let encoding = EncodingKey::from_ed_der(&key.to_pkcs8_der()?);
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_string());
        header.kid = Some(key.kid().to_string());
        Ok(Self {
            key,
            encoding,
            header,
            iss: iss.to_string(),
            aud: aud.to_string(),
            ttl_secs,
        })
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(&self, req: IssueRequest) -> Result<IssuedToken, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.issue_at(req, now)
    }

    /// Like [`Issuer::issue`] at a given time (seconds since the epoch).
    pub fn issue_at(&self, req: IssueRequest, now: u64) -> Result<IssuedToken, KeyError> {
        let jti = uuid::Uuid::now_v7().to_string();
        let claims = Claims {
            iss: self.iss.clone(),
            aud: self.aud.clone(),
            sub: req.subject,
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            jti: jti.clone(),
            email: req.email,
            name: req.name,
            pa: req.platform_admin,
            orgs: req.orgs,
            sid: req.session_id,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|e| KeyError::Signing(e.to_string()))?;
        Ok(IssuedToken {
            token,
            jti,
            expires_in: self.ttl_secs,
            issued_at: now,
        })
    }
}
