//! What a downstream service trusts: the issuer's public keys (replaceable,
//! for rotation) and the revocations it has heard of (R16).

use crate::claims::Claims;
use crate::error::{KeyError, VerifyError};
use crate::keys::JwkSet;
use crate::model::Permission;
use crate::verifier::Verifier;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// One revocation: tokens of `user_id` (every user when empty) for
/// `organization_id` (every organization when empty) or of `session_id`,
/// issued before `revoked_at_ms`, must be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub user_id: String,
    pub organization_id: String,
    pub session_id: String,
    pub revoked_at_ms: i64,
}

#[derive(Debug, Default)]
struct Revocations {
    /// (user, org) → latest revocation time; "" is the wildcard.
    by_user_org: HashMap<(String, String), i64>,
    by_session: HashMap<String, i64>,
}

/// Shared, cheaply clonable verifier state for one issuer.
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    verifier: RwLock<Arc<Verifier>>,
    revocations: Mutex<Revocations>,
    /// Tokens whose signature already verified, by their exact text. A
    /// service sees the same token on every call of its 5-minute life; the
    /// signature check (~50 µs) then runs once. Times and revocations are
    /// still checked on every call.
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

/// Most verified tokens remembered; the cache is emptied when full.
const VERIFIED_CACHE: usize = 8192;

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused, with the message to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No, bad, expired or revoked token: UNAUTHENTICATED.
    Unauthenticated(String),
    /// Valid token without the permission: PERMISSION_DENIED.
    PermissionDenied(String),
    /// The request does not name an organization: INVALID_ARGUMENT.
    MissingOrganization(String),
}

impl Authority {
    pub fn new(jwks: JwkSet, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let verifier = Verifier::new(jwks, issuer, audience)?;
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: issuer.to_string(),
                audience: audience.to_string(),
                verifier: RwLock::new(Arc::new(verifier)),
                revocations: Mutex::new(Revocations::default()),
                verified: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Replaces the key set (after a rotation); a bad set is refused and the
    /// old one kept.
    pub fn set_jwks(&self, jwks: JwkSet) -> Result<(), KeyError> {
        let v = Arc::new(Verifier::new(
            jwks,
            &self.inner.issuer,
            &self.inner.audience,
        )?);
        match self.inner.verifier.write() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
        // A key may have been withdrawn: forget what it vouched for.
        match self.inner.verified.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
        Ok(())
    }

    fn verifier(&self) -> Arc<Verifier> {
        match self.inner.verifier.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Records a revocation event.
    pub fn revoke(&self, r: Revocation) {
        let mut g = match self.inner.revocations.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !r.session_id.is_empty() {
            let t = g.by_session.entry(r.session_id).or_insert(i64::MIN);
            *t = (*t).max(r.revoked_at_ms);
        } else {
            let t = g
                .by_user_org
                .entry((r.user_id, r.organization_id))
                .or_insert(i64::MIN);
            *t = (*t).max(r.revoked_at_ms);
        }
    }

    /// Forgets revocations older than `horizon_ms`: every token issued before
    /// them has expired by then.
    pub fn prune_revocations(&self, horizon_ms: i64) {
        let mut g = match self.inner.revocations.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.by_user_org.retain(|_, t| *t >= horizon_ms);
        g.by_session.retain(|_, t| *t >= horizon_ms);
    }

    /// Whether a revocation heard after the token was issued covers it, for
    /// the request's organization (if any). `iat` has 1-second resolution:
    /// a token minted in the same second as a revocation counts as older
    /// (refused) — the safe direction; a client just refreshes again.
    pub fn is_revoked(&self, claims: &Claims, organization_id: Option<&str>) -> bool {
        let issued_ms = (claims.iat as i64) * 1000;
        let g = match self.inner.revocations.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let after = |t: Option<&i64>| t.is_some_and(|t| issued_ms < *t);
        if let Some(sid) = &claims.sid {
            if after(g.by_session.get(sid)) {
                return true;
            }
        }
        let key = |u: &str, o: &str| (u.to_string(), o.to_string());
        if after(g.by_user_org.get(&key(&claims.sub, ""))) {
            return true;
        }
        if let Some(org) = organization_id {
            if after(g.by_user_org.get(&key(&claims.sub, org)))
                || after(g.by_user_org.get(&key("", org)))
            {
                return true;
            }
        }
        // A service token reaches no further than its owner organization,
        // so a revocation there (the account named, or the whole
        // organization: it was deleted) covers it wherever it is shown.
        if let Some(owner) = claims.owner_org.as_deref().filter(|_| claims.is_service()) {
            if after(g.by_user_org.get(&key(&claims.sub, owner)))
                || after(g.by_user_org.get(&key("", owner)))
            {
                return true;
            }
        }
        false
    }

    /// Verifies the token (EdDSA only, `kid`, `typ`, `iss`, `aud`, `exp`,
    /// `nbf`) and checks revocations.
    pub fn verify(
        &self,
        token: &str,
        organization_id: Option<&str>,
    ) -> Result<Claims, VerifyError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify_at(token, organization_id, now)
    }

    /// Like [`Authority::verify`] at `now` (seconds since the epoch).
    pub fn verify_at(
        &self,
        token: &str,
        organization_id: Option<&str>,
        now: u64,
    ) -> Result<Claims, VerifyError> {
        let verifier = self.verifier();
        let cached = {
            let g = match self.inner.verified.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.get(token).cloned()
        };
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = verifier.verify_signature(token)?;
                let mut g = match self.inner.verified.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if g.len() >= VERIFIED_CACHE {
                    g.clear();
                }
                g.insert(token.into(), c.clone());
                c
            }
        };
        verifier.check_times(&claims, now)?;
        if self.is_revoked(&claims, organization_id) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    /// The whole check a guarded RPC needs: a bearer token from the
    /// `authorization` value, and `permission` in `organization_id`.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        organization_id: Option<&str>,
        permission: Permission,
    ) -> Result<Claims, Denial> {
        let token = bearer(authorization)?;
        let org = organization_id.filter(|o| !o.is_empty()).ok_or_else(|| {
            Denial::MissingOrganization("x-kiops-organization is required".into())
        })?;
        let claims = self
            .verify(token, Some(org))
            .map_err(|e| Denial::Unauthenticated(format!("invalid access token: {e}")))?;
        if claims.allows(org, permission) {
            Ok(claims)
        } else {
            Err(Denial::PermissionDenied(format!(
                "{permission} permission required"
            )))
        }
    }

    /// The whole check of an RPC meant for service accounts: a bearer
    /// token from the `authorization` value, of a service account holding
    /// `scope` (see [`crate::scope`]). A person's token, however powerful,
    /// holds no scope: PERMISSION_DENIED.
    pub fn authorize_scope(
        &self,
        authorization: Option<&str>,
        scope: &str,
    ) -> Result<Claims, Denial> {
        let token = bearer(authorization)?;
        let claims = self
            .verify(token, None)
            .map_err(|e| Denial::Unauthenticated(format!("invalid access token: {e}")))?;
        if claims.has_scope(scope) {
            Ok(claims)
        } else {
            Err(Denial::PermissionDenied(format!("scope {scope} required")))
        }
    }
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer(authorization: Option<&str>) -> Result<&str, Denial> {
    authorization
        .and_then(|v| {
            let (scheme, t) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(t.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Denial::Unauthenticated("missing authorization: Bearer <access token>".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IssueRequest, Issuer, OrgClaims, Role, SigningKey};
    use std::collections::BTreeMap;

    fn setup() -> (Authority, Issuer) {
        let key = SigningKey::generate();
        let a = Authority::new(key.public_jwk_set(), "i", "a").unwrap();
        (a, Issuer::new(key, "i", "a", 300))
    }

    fn token(issuer: &Issuer, at: u64, perms: Vec<Permission>, sid: Option<&str>) -> String {
        let mut orgs = BTreeMap::new();
        orgs.insert(
            "o1".to_string(),
            OrgClaims {
                role: Role::Member,
                perms,
            },
        );
        issuer
            .issue_at(
                IssueRequest {
                    subject: "u1".into(),
                    email: "e@x.io".into(),
                    name: "n".into(),
                    platform_admin: false,
                    orgs,
                    session_id: sid.map(str::to_string),
                    email_verified: true,
                    amr: Vec::new(),
                },
                at,
            )
            .unwrap()
            .token
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn authorize_checks_permission_and_org() {
        let (a, i) = setup();
        let t = format!(
            "Bearer {}",
            token(&i, now(), vec![Permission::Device], None)
        );
        assert!(a
            .authorize(Some(&t), Some("o1"), Permission::Device)
            .is_ok());
        assert_eq!(
            a.authorize(Some(&t), Some("o1"), Permission::Vpn),
            Err(Denial::PermissionDenied("vpn permission required".into()))
        );
        assert!(matches!(
            a.authorize(Some(&t), None, Permission::Device),
            Err(Denial::MissingOrganization(_))
        ));
        assert!(matches!(
            a.authorize(None, Some("o1"), Permission::Device),
            Err(Denial::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(Some("Basic x"), Some("o1"), Permission::Device),
            Err(Denial::Unauthenticated(_))
        ));
    }

    #[test]
    fn revocations_cover_older_tokens_only() {
        let (a, i) = setup();
        let n = now();
        let old = token(&i, n - 10, vec![Permission::Device], Some("s1"));
        let later = token(&i, n + 5, vec![Permission::Device], Some("s1"));
        let rev = |u: &str, o: &str, s: &str| Revocation {
            user_id: u.into(),
            organization_id: o.into(),
            session_id: s.into(),
            revoked_at_ms: (n as i64) * 1000,
        };
        a.revoke(rev("u1", "o2", ""));
        assert!(
            a.verify(&old, Some("o1")).is_ok(),
            "another org's revocation"
        );
        a.revoke(rev("u1", "o1", ""));
        assert_eq!(a.verify(&old, Some("o1")), Err(VerifyError::Revoked));
        assert!(a.verify(&old, Some("o2")).is_err());
        assert!(
            a.verify(&later, Some("o1")).is_ok(),
            "minted after the revocation"
        );
        let (b, j) = setup();
        let t = token(&j, n - 10, vec![], Some("s9"));
        b.revoke(rev("", "", "s9"));
        assert_eq!(b.verify(&t, None), Err(VerifyError::Revoked));
        b.prune_revocations(i64::MAX);
        assert!(b.verify(&t, None).is_ok(), "pruned");
    }

    fn service_token(issuer: &Issuer, at: u64, credential: &str, owner: Option<&str>) -> String {
        issuer
            .issue_service_at(
                crate::ServiceIssueRequest {
                    service_account_id: "sa1".into(),
                    name: "device".into(),
                    owner_org: owner.map(str::to_string),
                    scopes: vec![
                        crate::scope::REVOCATIONS_WATCH.into(),
                        crate::scope::PERMISSIONS_CHECK.into(),
                    ],
                    credential_id: credential.into(),
                },
                at,
            )
            .unwrap()
            .token
    }

    /// The events the server sends for service accounts: `user_id` is the
    /// account, `session_id` the credential (credential_removed), nothing
    /// else for service_account_disabled, service_account_deleted and
    /// scopes_changed.
    #[test]
    fn service_account_revocations_cover_its_tokens() {
        let n = now();
        let at = |secs_ago: u64| n - secs_ago;
        let rev = |u: &str, o: &str, s: &str| Revocation {
            user_id: u.into(),
            organization_id: o.into(),
            session_id: s.into(),
            revoked_at_ms: (n as i64) * 1000,
        };
        // credential_removed: that credential's tokens only.
        let (a, i) = setup();
        let c1 = service_token(&i, at(10), "cred1", None);
        let c2 = service_token(&i, at(10), "cred2", None);
        a.revoke(rev("sa1", "", "cred1"));
        assert_eq!(a.verify(&c1, None), Err(VerifyError::Revoked));
        assert_eq!(a.verify(&c1, Some("o1")), Err(VerifyError::Revoked));
        assert!(a.verify(&c2, None).is_ok(), "the other credential");
        assert!(
            a.verify(&service_token(&i, n + 1, "cred1", None), None)
                .is_ok(),
            "exchanged after the removal (cannot happen, but time decides)"
        );
        // service_account_disabled, _deleted, scopes_changed: every token of
        // the account, whichever credential and organization.
        for reason in ["disabled", "deleted", "scopes_changed"] {
            let (a, i) = setup();
            let t1 = service_token(&i, at(10), "cred1", Some("o1"));
            let t2 = service_token(&i, at(10), "cred2", None);
            a.revoke(rev("sa1", "", ""));
            for t in [&t1, &t2] {
                assert_eq!(a.verify(t, None), Err(VerifyError::Revoked), "{reason}");
                assert_eq!(
                    a.verify(t, Some("o2")),
                    Err(VerifyError::Revoked),
                    "{reason}"
                );
            }
            let later = service_token(&i, n + 1, "cred1", Some("o1"));
            assert!(a.verify(&later, None).is_ok(), "{reason}: newer token");
        }
        // Another account's or a person's revocation is not this account's.
        let (a, i) = setup();
        let t = service_token(&i, at(10), "cred1", Some("o1"));
        a.revoke(rev("sa2", "", ""));
        a.revoke(rev("u1", "o1", ""));
        a.revoke(rev("", "", "cred9"));
        assert!(a.verify(&t, None).is_ok());
        assert!(a.verify(&t, Some("o1")).is_ok());
        // An event naming the owner organization (the account in it, or the
        // organization deleted) covers the token wherever it is shown.
        a.revoke(rev("", "o1", ""));
        assert_eq!(a.verify(&t, None), Err(VerifyError::Revoked));
        let (b, j) = setup();
        let t = service_token(&j, at(10), "cred1", Some("o1"));
        let platform = service_token(&j, at(10), "cred2", None);
        b.revoke(rev("sa1", "o1", ""));
        assert_eq!(b.verify(&t, Some("o2")), Err(VerifyError::Revoked));
        assert!(b.verify(&platform, None).is_ok(), "a platform account");
        assert_eq!(
            b.verify(&platform, Some("o1")),
            Err(VerifyError::Revoked),
            "in the organization named"
        );
    }

    #[test]
    fn authorize_scope_admits_service_tokens_with_the_scope() {
        let (a, i) = setup();
        let t = format!("Bearer {}", service_token(&i, now(), "cred1", None));
        let claims = a
            .authorize_scope(Some(&t), crate::scope::REVOCATIONS_WATCH)
            .expect("has the scope");
        assert!(claims.is_service());
        assert_eq!(claims.sid.as_deref(), Some("cred1"));
        assert_eq!(
            a.authorize_scope(Some(&t), crate::scope::AUDIT_READ),
            Err(Denial::PermissionDenied("scope audit.read required".into()))
        );
        // A person holds no scope; a service holds no permission category.
        let user = format!(
            "Bearer {}",
            token(&i, now(), vec![Permission::Device], None)
        );
        assert!(matches!(
            a.authorize_scope(Some(&user), crate::scope::REVOCATIONS_WATCH),
            Err(Denial::PermissionDenied(_))
        ));
        assert_eq!(
            a.authorize(Some(&t), Some("o1"), Permission::Device),
            Err(Denial::PermissionDenied(
                "device permission required".into()
            ))
        );
        assert!(matches!(
            a.authorize_scope(None, crate::scope::REVOCATIONS_WATCH),
            Err(Denial::Unauthenticated(_))
        ));
        a.revoke(Revocation {
            user_id: "sa1".into(),
            organization_id: String::new(),
            session_id: "cred1".into(),
            revoked_at_ms: (now() as i64 + 1) * 1000,
        });
        assert!(matches!(
            a.authorize_scope(Some(&t), crate::scope::REVOCATIONS_WATCH),
            Err(Denial::Unauthenticated(_))
        ));
    }
}
