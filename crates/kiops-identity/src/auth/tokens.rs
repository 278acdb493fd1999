//! Access-token minting and verification.
//!
//! The server verifies incoming bearer tokens with `kiops_token::Verifier`,
//! the very code downstream services use, so both agree on what is valid.

use crate::clock::Clock;
use crate::domain::audit::{Actor, RequestMeta};
use crate::domain::page_token::PageKey;
use crate::domain::session::KeyStatus;
use crate::domain::DomainError;
use crate::store::{keys, Store};
use kiops_token::{
    Authority, Claims, IssueRequest, IssuedToken, Issuer, JwkSet, SigningKey, VerifyError,
};
use std::sync::{Arc, RwLock};

/// Token settings from the configuration.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    /// PKCS#8 PEM private key managed outside the database, if any.
    pub signing_key_pem: Option<String>,
    /// Older PEM keys still published in the JWKS (their tokens keep
    /// verifying until they expire); only with `signing_key_pem`.
    pub previous_key_pems: Vec<String>,
}

struct Keyring {
    page_key: PageKey,
    issuer: Issuer,
    /// Downstream's verifier with its verified-token cache: a client
    /// presents the same token on every call of its 5-minute life, and the
    /// Ed25519 check (~50 µs) then runs once per key set. Times are checked
    /// on every call; revocation is current state read from the database.
    verifier: Authority,
    jwks: JwkSet,
}

pub struct TokenService {
    keyring: RwLock<Arc<Keyring>>,
    settings: TokenSettings,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").finish_non_exhaustive()
    }
}

impl TokenService {
    /// Loads the signing key: from the PEM given in the settings, or from the
    /// database, generating and storing one on first start.
    pub async fn load(
        store: &Store,
        clock: &Clock,
        settings: &TokenSettings,
    ) -> Result<Self, DomainError> {
        let keyring = build_keyring(store, clock, settings).await?;
        tracing::info!(
            kid = keyring.issuer.kid(),
            published = keyring.jwks.keys.len(),
            "signing keys loaded"
        );
        Ok(Self {
            keyring: RwLock::new(Arc::new(keyring)),
            settings: settings.clone(),
        })
    }

    /// Re-reads the keys, so a `keys rotate` run against the shared database
    /// reaches every replica without a restart. Returns whether the active
    /// key changed.
    pub async fn reload(&self, store: &Store, clock: &Clock) -> Result<bool, DomainError> {
        if self.settings.signing_key_pem.is_some() {
            return Ok(false);
        }
        let fresh = build_keyring(store, clock, &self.settings).await?;
        let changed =
            fresh.issuer.kid() != self.current().issuer.kid() || fresh.jwks != self.current().jwks;
        if changed {
            tracing::info!(
                kid = fresh.issuer.kid(),
                published = fresh.jwks.keys.len(),
                "signing keys reloaded"
            );
            match self.keyring.write() {
                Ok(mut g) => *g = Arc::new(fresh),
                Err(p) => *p.into_inner() = Arc::new(fresh),
            }
        }
        Ok(changed)
    }

    fn current(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn mint(&self, req: IssueRequest, now_secs: u64) -> Result<IssuedToken, DomainError> {
        self.current()
            .issuer
            .issue_at(req, now_secs)
            .map_err(|e| DomainError::internal(format!("signing: {e}")))
    }

    /// A service account's token (R25).
    pub fn mint_service(
        &self,
        req: kiops_token::ServiceIssueRequest,
        now_secs: u64,
    ) -> Result<IssuedToken, DomainError> {
        self.current()
            .issuer
            .issue_service_at(req, now_secs)
            .map_err(|e| DomainError::internal(format!("signing: {e}")))
    }

    /// The `iss` of our tokens: the `aud` service-account assertions name.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Verifies at the service clock's time (injectable in tests).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, VerifyError> {
        self.current().verifier.verify_at(token, None, now_secs)
    }

    /// Key for page tokens; the same on every replica sharing the signing key.
    pub fn page_key(&self) -> PageKey {
        self.current().page_key.clone()
    }

    pub fn jwks(&self) -> JwkSet {
        self.current().jwks.clone()
    }

    pub fn access_ttl_secs(&self) -> u64 {
        self.current().issuer.ttl_secs()
    }
}

async fn build_keyring(
    store: &Store,
    clock: &Clock,
    settings: &TokenSettings,
) -> Result<Keyring, DomainError> {
    let (active, published) = match &settings.signing_key_pem {
        Some(pem) => {
            let key = SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| DomainError::internal(format!("signing key file: {e}")))?;
            let mut all = vec![key.clone()];
            for p in &settings.previous_key_pems {
                all.push(
                    SigningKey::from_pkcs8_pem(p)
                        .map_err(|e| DomainError::internal(format!("previous key file: {e}")))?,
                );
            }
            (key, all)
        }
        None => load_or_create_db_keys(store, clock).await?,
    };
    let jwks = JwkSet {
        keys: published.iter().map(SigningKey::public_jwk).collect(),
    };
    let verifier = Authority::new(jwks.clone(), &settings.issuer, &settings.audience)
        .map_err(|e| DomainError::internal(format!("verifier: {e}")))?;
    // The oldest published key: a rotation does not invalidate page tokens
    // until the old key retires, and every replica derives the same key.
    let page_source = published.last().unwrap_or(&active);
    let page_key = PageKey::derive(
        page_source
            .to_pkcs8_pem()
            .map_err(|e| DomainError::internal(e.to_string()))?
            .as_bytes(),
    );
    let issuer = Issuer::try_new(
        active,
        &settings.issuer,
        &settings.audience,
        settings.access_ttl_secs,
    )
    .map_err(|e| DomainError::internal(format!("issuer: {e}")))?;
    Ok(Keyring {
        page_key,
        issuer,
        verifier,
        jwks,
    })
}

async fn load_or_create_db_keys(
    store: &Store,
    clock: &Clock,
) -> Result<(SigningKey, Vec<SigningKey>), DomainError> {
    let now = clock.now_ms();
    let tx = store.begin_write().await?;
    keys::lock_for_creation(&tx).await?;
    let mut stored = keys::published(&tx, now).await?;
    if !stored.iter().any(|k| k.status == KeyStatus::Active) {
        let key = SigningKey::generate();
        let pem = key
            .to_pkcs8_pem()
            .map_err(|e| DomainError::internal(e.to_string()))?;
        let meta = RequestMeta {
            request_id: "startup".into(),
            peer: String::new(),
            user_agent: String::new(),
        };
        keys::generate(&tx, &meta, Actor::System, key.kid(), pem, now).await?;
        stored = keys::published(&tx, now).await?;
    }
    tx.commit().await?;
    let mut active = None;
    let mut published = Vec::new();
    for k in stored {
        let key = SigningKey::from_pkcs8_pem(&k.private_key_pem)
            .map_err(|e| DomainError::internal(format!("stored key {}: {e}", k.kid)))?;
        if active.is_none() && k.status == KeyStatus::Active {
            active = Some(key.clone());
        }
        published.push(key);
    }
    let active = active.ok_or_else(|| DomainError::internal("no active signing key"))?;
    Ok((active, published))
}
