//! argon2id hashing (R13) on a fixed set of dedicated threads.
//!
//! Hashing takes tens of milliseconds of pure CPU and 19 MiB of memory.
//! Running it on the async workers would stall every other RPC; running it on
//! tokio's (large) blocking pool leaves a 19 MiB allocator arena behind on
//! every thread that ever hashed. So: `concurrency` threads (the cores), each
//! owning one reusable block buffer, fed through a queue. Memory stays at
//! `concurrency × 19 MiB` and at most that many hashes run at once.
//!
//! The queue is bounded: at most `concurrency + queue` jobs are admitted at
//! once, and a call beyond that is refused at once (RESOURCE_EXHAUSTED,
//! `OVERLOADED`) instead of waiting behind everyone else's. A job whose
//! caller has gone away (client deadline, cancelled call, server timeout)
//! is skipped when its turn comes, so a flood of abandoned logins does not
//! keep the threads busy for callers who will never read the answer.

use crate::domain::DomainError;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use rand::RngCore;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// OWASP's minimum for argon2id: m = 19 MiB, t = 2, p = 1.
pub const OWASP_MEMORY_KIB: u32 = 19 * 1024;
pub const OWASP_ITERATIONS: u32 = 2;
pub const OWASP_PARALLELISM: u32 = 1;
const OUTPUT_LEN: usize = 32;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Jobs that may wait for a hashing thread by default (`--hash-queue`).
pub const DEFAULT_QUEUE: usize = 64;

/// What the hashing pool did, for `/metrics`.
#[derive(Debug, Default)]
pub struct HashStats {
    /// Hashes computed (verifications included).
    pub run: AtomicU64,
    /// Jobs skipped because their caller had gone away.
    pub abandoned: AtomicU64,
    /// Calls refused because the queue was full.
    pub overloaded: AtomicU64,
    /// Jobs admitted and not finished (queued or running).
    admitted: AtomicUsize,
}

/// One admitted job's place in the bounded queue; released when dropped.
#[derive(Debug)]
pub struct Permit {
    stats: Arc<HashStats>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    /// `concurrency + queue`: jobs admitted at once.
    bound: usize,
    pub stats: Arc<HashStats>,
    params: Params,
    /// A real hash of a random password, verified against when the email is
    /// unknown so that both answers take the same time (R12).
    dummy_hash: Arc<String>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

/// Computes a PHC string with the worker's reusable memory.
fn hash_with(params: &Params, password: &[u8], blocks: &mut Vec<Block>) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; OUTPUT_LEN];
    blocks.resize(params.block_count(), Block::default());
    argon2(params)
        .hash_password_into_with_memory(password, &salt, &mut out, &mut blocks[..])
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Verifies against a PHC string (any argon2id parameters it names).
fn verify_with(password: &[u8], phc: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let expected = expected.as_bytes();
    if expected.is_empty() || expected.len() > 64 {
        return false;
    }
    let mut out = [0u8; 64];
    let out = &mut out[..expected.len()];
    blocks.resize(params.block_count(), Block::default());
    if argon2(&params)
        .hash_password_into_with_memory(password, salt, out, &mut blocks[..])
        .is_err()
    {
        return false;
    }
    bool::from(out.ct_eq(expected))
}

impl PasswordHasher {
    /// `concurrency` threads, and up to `queue` jobs waiting for them.
    pub fn new(concurrency: usize, queue: usize) -> Result<Self, DomainError> {
        let params = Params::new(
            OWASP_MEMORY_KIB,
            OWASP_ITERATIONS,
            OWASP_PARALLELISM,
            Some(OUTPUT_LEN),
        )
        .map_err(|e| DomainError::internal(format!("argon2 params: {e}")))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut blocks = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut blocks),
                            Err(_) => return, // hasher dropped
                        }
                    }
                })
                .map_err(|e| DomainError::internal(format!("hashing thread: {e}")))?;
        }
        let mut blocks = Vec::new();
        let dummy = hash_with(
            &params,
            SaltString::generate(&mut rand::rngs::OsRng)
                .as_str()
                .as_bytes(),
            &mut blocks,
        )
        .map_err(|e| DomainError::internal(format!("argon2: {e}")))?;
        Ok(Self {
            jobs: tx,
            bound: concurrency.max(1) + queue,
            stats: Arc::default(),
            params,
            dummy_hash: Arc::new(dummy),
        })
    }

    /// A place in the queue, or OVERLOADED at once when it is full. Taken
    /// before anything else is done for the call (e.g. a login's lockout
    /// reservation), so a refused call leaves nothing behind.
    pub fn admit(&self) -> Result<Permit, DomainError> {
        let admitted = self.stats.admitted.fetch_add(1, Ordering::AcqRel);
        let permit = Permit {
            stats: self.stats.clone(),
        };
        if admitted >= self.bound {
            drop(permit);
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(DomainError::exhausted(
                crate::domain::error::reason::OVERLOADED,
                "the server is busy hashing passwords; retry with backoff",
            ));
        }
        Ok(permit)
    }

    async fn run<T: Send + 'static>(
        &self,
        permit: Permit,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, DomainError> {
        let (tx, rx) = oneshot::channel();
        let stats = self.stats.clone();
        self.jobs
            .send(Box::new(move |blocks| {
                // The place is freed when the job leaves the queue, so the
                // queue itself stays bounded even when callers go away.
                let _permit = permit;
                // The caller's future was dropped: nobody reads the answer.
                if tx.is_closed() {
                    stats.abandoned.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.run.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(f(blocks));
            }))
            .map_err(|_| DomainError::Unavailable)?;
        rx.await
            .map_err(|_| DomainError::internal("hashing thread stopped"))
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub async fn hash(&self, password: String) -> Result<String, DomainError> {
        let params = self.params.clone();
        let permit = self.admit()?;
        self.run(permit, move |blocks| {
            hash_with(&params, password.as_bytes(), blocks)
        })
        .await?
        .map_err(|e| DomainError::internal(format!("argon2: {e}")))
    }

    /// Verifies against `hash`, or against the dummy hash when `hash` is None
    /// (unknown account), so the caller cannot tell the two apart by time.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, DomainError> {
        let permit = self.admit()?;
        self.verify_admitted(permit, password, hash).await
    }

    /// `verify` with a place taken earlier (`admit`).
    pub async fn verify_admitted(
        &self,
        permit: Permit,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, DomainError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let ok = self
            .run(permit, move |blocks| {
                verify_with(password.as_bytes(), &hash, blocks)
            })
            .await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier};

    #[tokio::test]
    async fn hashes_interoperate_with_the_reference_implementation() {
        let h = PasswordHasher::new(1, DEFAULT_QUEUE).unwrap();
        let phc = h.hash("correct horse battery staple".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        // Ours verify with the argon2 crate's own verifier...
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_ok());
        // ...and theirs (other parameters) with ours.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(h.verify("pw".into(), Some(theirs.clone())).await.unwrap());
        assert!(!h.verify("PW".into(), Some(theirs)).await.unwrap());
        assert!(h
            .verify("correct horse battery staple".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!h.verify("wrong".into(), Some(phc)).await.unwrap());
        assert!(!h.verify("x".into(), None).await.unwrap());
        assert!(!h.verify("x".into(), Some("garbage".into())).await.unwrap());
    }
}
