//! Minting access tokens (used by kiops-identity).

use crate::claims::{Claims, OrgClaims, TokenKind};
use crate::error::KeyError;
use crate::keys::SigningKey;
use crate::ACCESS_TOKEN_TYP;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use jsonwebtoken::{Algorithm, Header};
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
    /// Becomes the `email_verified` claim.
    pub email_verified: bool,
    /// Becomes the `amr` claim (omitted when empty).
    pub amr: Vec<String>,
}

/// What the server knows about a service account when it mints its token.
#[derive(Debug, Clone)]
pub struct ServiceIssueRequest {
    pub service_account_id: String,
    pub name: String,
    /// Owner organization; None for a platform account.
    pub owner_org: Option<String>,
    pub scopes: Vec<String>,
    /// The credential exchanged: becomes `sid`, so removing it revokes the
    /// token like ending a session does.
    pub credential_id: String,
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
/// Tokens are assembled and signed here rather than by
/// `jsonwebtoken::encode`, which rebuilds the Ed25519 key from its PKCS#8
/// bytes on every call: a base-point multiplication that doubled the cost of
/// each Login and Refresh (found in a profile of the refresh benchmark). The
/// header never changes, so its encoded form is kept too. The format is the
/// same compact JWS; tests decode it with `jsonwebtoken`.
#[derive(Clone)]
pub struct Issuer {
    key: SigningKey,
    /// `base64url(header) + "."`, the fixed start of every token.
    header_b64: String,
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
    /// Never: the only fallible step is serializing a fixed header to JSON.
    /// Use [`Issuer::try_new`] to handle it anyway.
    pub fn new(key: SigningKey, iss: &str, aud: &str, ttl_secs: u64) -> Self {
        Self::try_new(key, iss, aud, ttl_secs).expect("a JWT header serializes as JSON")
    }

    pub fn try_new(key: SigningKey, iss: &str, aud: &str, ttl_secs: u64) -> Result<Self, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_string());
        header.kid = Some(key.kid().to_string());
        let header_json =
            serde_json::to_vec(&header).map_err(|e| KeyError::Signing(e.to_string()))?;
        let mut header_b64 = URL_SAFE_NO_PAD.encode(header_json);
        header_b64.push('.');
        Ok(Self {
            key,
            header_b64,
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
            email_verified: req.email_verified,
            kind: TokenKind::User,
            scope: None,
            owner_org: None,
            amr: req.amr,
        };
        self.sign(claims, now, jti)
    }

    /// A service token at a given time: no `orgs`, `pa` false, `kind`
    /// "service", the account's scopes in `scope`.
    pub fn issue_service_at(
        &self,
        req: ServiceIssueRequest,
        now: u64,
    ) -> Result<IssuedToken, KeyError> {
        let jti = uuid::Uuid::now_v7().to_string();
        let claims = Claims {
            iss: self.iss.clone(),
            aud: self.aud.clone(),
            sub: req.service_account_id,
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            jti: jti.clone(),
            email: String::new(),
            name: req.name,
            pa: false,
            orgs: BTreeMap::new(),
            sid: Some(req.credential_id),
            email_verified: false,
            kind: TokenKind::Service,
            scope: Some(req.scopes.join(" ")),
            owner_org: req.owner_org,
            amr: Vec::new(),
        };
        self.sign(claims, now, jti)
    }

    fn sign(&self, claims: Claims, now: u64, jti: String) -> Result<IssuedToken, KeyError> {
        let payload = serde_json::to_vec(&claims).map_err(|e| KeyError::Signing(e.to_string()))?;
        let mut token = self.header_b64.clone();
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.key.dalek().sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(IssuedToken {
            token,
            jti,
            expires_in: self.ttl_secs,
            issued_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-assembled token is a compact JWS that `jsonwebtoken` (what
    /// downstream services may use directly) accepts with the public key.
    #[test]
    fn issued_tokens_verify_with_jsonwebtoken() {
        let key = SigningKey::generate();
        let public = key.dalek().verifying_key().to_bytes();
        let kid = key.kid().to_string();
        let issuer = Issuer::new(key, "https://id.example", "kiops", 300);
        let issued = issuer
            .issue(IssueRequest {
                subject: "u1".into(),
                email: "a@example.com".into(),
                name: "Ä \"quoted\" name".into(),
                platform_admin: false,
                orgs: BTreeMap::new(),
                session_id: Some("s1".into()),
                email_verified: true,
                amr: Vec::new(),
            })
            .expect("issue");
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&["kiops"]);
        v.set_issuer(&["https://id.example"]);
        let decoded = jsonwebtoken::decode::<Claims>(
            &issued.token,
            &jsonwebtoken::DecodingKey::from_ed_der(&public),
            &v,
        )
        .expect("jsonwebtoken accepts the token");
        assert_eq!(decoded.header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(decoded.header.typ.as_deref(), Some(ACCESS_TOKEN_TYP));
        assert_eq!(decoded.claims.name, "Ä \"quoted\" name");
        assert_eq!(decoded.claims.jti, issued.jti);

        let mut tampered = issued.token.clone();
        tampered.insert(tampered.find('.').unwrap_or(0) + 1, 'e');
        assert!(jsonwebtoken::decode::<Claims>(
            &tampered,
            &jsonwebtoken::DecodingKey::from_ed_der(&public),
            &v,
        )
        .is_err());
    }
}
