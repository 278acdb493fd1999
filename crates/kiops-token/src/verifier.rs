//! Offline verification of access tokens (used downstream and by the server).

use crate::claims::Claims;
use crate::error::{KeyError, VerifyError};
use crate::keys::JwkSet;
use crate::ACCESS_TOKEN_TYP;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;

/// Default clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Verifies EdDSA access tokens against a fixed set of public keys.
///
/// The algorithm is pinned to EdDSA before any key is looked up, so `alg: none`,
/// HMAC with a public key as secret, or any other algorithm never reaches a
/// signature check. Decoding keys are built once, when the verifier is made.
#[derive(Clone)]
pub struct Verifier {
    /// Public keys decoded once (point decompression is a third of the cost
    /// of a verification if done per call).
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
}

impl Verifier {
    /// Every key of `jwks` must be an Ed25519 key with a `kid`; one bad key
    /// rejects the set, so a typo never silently disables verification.
    pub fn new(jwks: JwkSet, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::with_leeway(jwks, issuer, audience, DEFAULT_LEEWAY_SECS)
    }

    pub fn with_leeway(
        jwks: JwkSet,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<Self, KeyError> {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let raw = jwk.ed25519_public_key()?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_err(|_| KeyError::InvalidJwk("x is not an Ed25519 point".into()))?;
            keys.insert(jwk.kid.clone(), vk);
        }
        Ok(Self {
            keys,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            leeway_secs,
        })
    }

    /// Key ids this verifier accepts.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks header, signature and registered claims against the system
    /// clock, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// Like [`Verifier::verify`] at `now` (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, VerifyError> {
        let claims = self.verify_signature(token)?;
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    /// `exp` and `nbf` at `now`, with the leeway.
    pub fn check_times(&self, claims: &Claims, now: u64) -> Result<(), VerifyError> {
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now.saturating_add(self.leeway_secs) {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }

    /// Header, signature, `iss` and `aud` — everything but the times.
    pub fn verify_signature(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = parse_header(token)?;
        match header.alg.as_deref() {
            Some("EdDSA") => {}
            Some(other) => return Err(VerifyError::AlgorithmNotAllowed(other.to_string())),
            None => return Err(VerifyError::AlgorithmNotAllowed(String::new())),
        }
        match header.typ.as_deref() {
            Some(t)
                if t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(VerifyError::WrongType),
        }
        let kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
        let key = self.keys.get(&kid).ok_or(VerifyError::UnknownKeyId)?;
        let (signed, sig_b64) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
        let sig_bytes = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| VerifyError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(&sig_bytes)
            .map_err(|_| VerifyError::BadSignature)?;
        // RFC 8032 verification (canonical S enforced by ed25519-dalek 2).
        // The keys come from the issuer's own JWKS, so the extra small-order
        // checks of verify_strict buy nothing here and cost ~20%.
        ed25519_dalek::Verifier::verify(key, signed.as_bytes(), &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        let payload = signed
            .split_once('.')
            .map(|(_, p)| p)
            .ok_or(VerifyError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| VerifyError::Malformed)?;
        // Typed claims: exp, nbf, iat are required integers, iss, aud, sub
        // required strings; a missing or malformed one is refused, never
        // taken as absent.
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|e| {
            let m = e.to_string();
            match ["exp", "nbf", "iat", "iss", "aud", "sub"]
                .iter()
                .find(|c| m.contains(&format!("`{c}`")))
            {
                Some(c) if m.starts_with("missing field") => {
                    VerifyError::MissingClaim((*c).to_string())
                }
                _ => VerifyError::Malformed,
            }
        })?;
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }
        Ok(claims)
    }
}

/// Reads the JOSE header ourselves: jsonwebtoken cannot even parse `alg: none`,
/// and we want that case reported as a refused algorithm, not as garbage.
fn parse_header(token: &str) -> Result<RawHeader, VerifyError> {
    if token.len() > 16 * 1024 {
        return Err(VerifyError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IssueRequest, Issuer, SigningKey};
    use std::collections::BTreeMap;

    const ISS: &str = "https://id.test";
    const AUD: &str = "kiops";

    fn req() -> IssueRequest {
        IssueRequest {
            subject: "u1".into(),
            email: "a@b.io".into(),
            name: "A".into(),
            platform_admin: false,
            orgs: BTreeMap::new(),
            session_id: None,
            email_verified: true,
            amr: Vec::new(),
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_a_fresh_token() {
        let k = SigningKey::generate();
        let t = Issuer::new(k.clone(), ISS, AUD, 300).issue(req()).unwrap();
        let v = Verifier::new(k.public_jwk_set(), ISS, AUD).unwrap();
        let c = v.verify(&t.token).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.jti, t.jti);
    }

    #[test]
    fn refuses_forged_and_stale_tokens() {
        let k = SigningKey::generate();
        let other = SigningKey::generate();
        let v = Verifier::new(k.public_jwk_set(), ISS, AUD).unwrap();
        let good = Issuer::new(k.clone(), ISS, AUD, 300)
            .issue(req())
            .unwrap()
            .token;
        let parts: Vec<&str> = good.split('.').collect();

        // alg none
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"at+jwt","kid":k.kid()})),
            parts[1]
        );
        assert!(matches!(
            v.verify(&none),
            Err(VerifyError::AlgorithmNotAllowed(_))
        ));
        // HS256 with the public key as secret
        let hs = format!(
            "{}.{}.{}",
            b64(&serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":k.kid()})),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            v.verify(&hs),
            Err(VerifyError::AlgorithmNotAllowed(_))
        ));
        // wrong typ
        let jwt = format!(
            "{}.{}.{}",
            b64(&serde_json::json!({"alg":"EdDSA","typ":"JWT","kid":k.kid()})),
            parts[1],
            parts[2]
        );
        assert_eq!(v.verify(&jwt), Err(VerifyError::WrongType));
        // missing kid
        let nokid = format!(
            "{}.{}.{}",
            b64(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt"})),
            parts[1],
            parts[2]
        );
        assert_eq!(v.verify(&nokid), Err(VerifyError::MissingKeyId));
        // signed by an unknown key
        let foreign = Issuer::new(other, ISS, AUD, 300)
            .issue(req())
            .unwrap()
            .token;
        assert_eq!(v.verify(&foreign), Err(VerifyError::UnknownKeyId));
        // tampered payload
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["pa"] = serde_json::json!(true);
        let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
        assert_eq!(v.verify(&tampered), Err(VerifyError::BadSignature));
        // wrong issuer and audience
        let wrong_iss = Issuer::new(k.clone(), "https://evil", AUD, 300)
            .issue(req())
            .unwrap()
            .token;
        assert_eq!(v.verify(&wrong_iss), Err(VerifyError::WrongIssuer));
        let wrong_aud = Issuer::new(k.clone(), ISS, "other", 300)
            .issue(req())
            .unwrap()
            .token;
        assert_eq!(v.verify(&wrong_aud), Err(VerifyError::WrongAudience));
        // expired and not yet valid (beyond leeway)
        let issuer = Issuer::new(k.clone(), ISS, AUD, 60);
        let old = issuer.issue_at(req(), now() - 3600).unwrap().token;
        assert_eq!(v.verify(&old), Err(VerifyError::Expired));
        let future = issuer.issue_at(req(), now() + 3600).unwrap().token;
        assert_eq!(v.verify(&future), Err(VerifyError::NotYetValid));
        // garbage
        for g in ["", "a.b", "a.b.c.d", "!!!.x.y", &"x".repeat(20_000)] {
            assert_eq!(v.verify(g), Err(VerifyError::Malformed), "{g:.20}");
        }
    }

    #[test]
    fn missing_exp_is_refused() {
        let k = SigningKey::generate();
        let v = Verifier::new(k.public_jwk_set(), ISS, AUD).unwrap();
        let header = jsonwebtoken::Header {
            typ: Some("at+jwt".into()),
            kid: Some(k.kid().into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA)
        };
        let n = now();
        let body = serde_json::json!({"iss":ISS,"aud":AUD,"sub":"u","iat":n,"nbf":n,
            "jti":"j","email":"e","name":"n","pa":true,"orgs":{}});
        let enc = jsonwebtoken::EncodingKey::from_ed_der(&k.to_pkcs8_der().unwrap());
        let t = jsonwebtoken::encode(&header, &body, &enc).unwrap();
        assert_eq!(v.verify(&t), Err(VerifyError::MissingClaim("exp".into())));
    }

    #[test]
    fn malformed_exp_is_not_taken_as_absent() {
        let k = SigningKey::generate();
        let v = Verifier::new(k.public_jwk_set(), ISS, AUD).unwrap();
        // A token whose exp is a string must not verify even with a valid signature.
        let header = jsonwebtoken::Header {
            typ: Some("at+jwt".into()),
            kid: Some(k.kid().into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA)
        };
        let n = now();
        let body = serde_json::json!({"iss":ISS,"aud":AUD,"sub":"u","exp":"never","iat":n,"nbf":n,
            "jti":"j","email":"e","name":"n","pa":true,"orgs":{}});
        let enc = jsonwebtoken::EncodingKey::from_ed_der(&k.to_pkcs8_der().unwrap());
        let t = jsonwebtoken::encode(&header, &body, &enc).unwrap();
        assert!(v.verify(&t).is_err());
    }
}
