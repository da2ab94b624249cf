//! Password hashing: the canonical client digest every transmission mode reduces to, argon2id
//! over it (with an optional pepper) on a dedicated pool of hashing threads (which bounds
//! memory and keeps every core hashing back to back, without a round trip through the async
//! runtime between two hashes), and the dummy verification that makes unknown identities cost
//! the same as wrong passwords.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use keygate_config::PasswordHashing;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest password accepted, in bytes (NIST asks for at least 64 characters).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The canonical digest: lowercase hex SHA-256 of `password + "|" + tenant_id`. The `hash`
/// transmission mode sends exactly this; the server computes it for every other mode, so one
/// stored hash verifies them all.
pub fn canonical_digest(password: &str, tenant_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(password.as_bytes());
    h.update(b"|");
    h.update(tenant_id.as_bytes());
    hex::encode(h.finalize())
}

/// Hashing failed for a reason other than a wrong password.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Parameters or stored hash unusable.
    #[error("password hashing: {0}")]
    Argon(String),
    /// The blocking task died.
    #[error("password hashing task failed")]
    Join,
}

/// Outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password, unknown user or unusable stored hash.
    No,
    /// Correct; the stored hash uses the current parameters.
    Yes,
    /// Correct, and here is a new hash with the current parameters to store.
    YesRehashed(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies canonical digests with argon2id on `max_concurrent` dedicated threads.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pepper: Option<Vec<u8>>,
    jobs: mpsc::Sender<Job>,
    state: Mutex<ParamState>,
    /// How long a verification with the current parameters takes (a moving average, ns).
    current_cost_ns: AtomicU64,
}

impl Inner {
    /// Adds a verification with the current parameters to the moving average.
    fn record_cost(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.current_cost_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.current_cost_ns.store(new, Ordering::Relaxed);
    }

    /// How much longer a failed verification that took `took` must last to look like one
    /// with the current parameters.
    fn padding(&self, took: Duration) -> Option<Duration> {
        let expected = Duration::from_nanos(self.current_cost_ns.load(Ordering::Relaxed));
        expected.checked_sub(took).filter(|d| !d.is_zero())
    }
}

#[derive(Debug, Clone)]
struct ParamState {
    params: Params,
    /// A hash of a random digest with the current parameters, verified against when the
    /// identity is unknown so that the work done is the same.
    dummy: Arc<str>,
}

impl PasswordHasher {
    /// A hasher with these parameters; `pepper` is the server-side secret, if any.
    pub fn new(config: &PasswordHashing, pepper: Option<Vec<u8>>) -> Result<Self, HashError> {
        let threads = if config.max_concurrent == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.max_concurrent as usize
        };
        let params = to_params(config)?;
        let started = Instant::now();
        let dummy = hash_blocking(&params, pepper.as_deref(), &super::random::secret(16))?;
        let first_cost = started.elapsed();
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("keygate-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            // Every hasher handle is gone.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| HashError::Argon(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pepper,
                jobs: tx,
                state: Mutex::new(ParamState {
                    params,
                    dummy: dummy.into(),
                }),
                current_cost_ns: AtomicU64::new(
                    u64::try_from(first_cost.as_nanos()).unwrap_or(u64::MAX),
                ),
            }),
        })
    }

    /// Switches to new parameters (runtime-config reload). Existing hashes keep verifying and
    /// are upgraded on their next successful verification.
    pub fn update_params(&self, config: &PasswordHashing) -> Result<(), HashError> {
        let params = to_params(config)?;
        if self.state().params == params {
            return Ok(());
        }
        let started = Instant::now();
        let dummy = hash_blocking(
            &params,
            self.inner.pepper.as_deref(),
            &super::random::secret(16),
        )?;
        // The average starts afresh at the new parameters' cost.
        self.inner.current_cost_ns.store(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Ok(mut s) = self.inner.state.lock() {
            *s = ParamState {
                params,
                dummy: dummy.into(),
            };
        }
        Ok(())
    }

    fn state(&self) -> ParamState {
        match self.inner.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Runs `work` on a hashing thread and waits for its result.
    async fn run<T, F>(&self, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, ParamState) -> Result<T, HashError> + Send + 'static,
    {
        let state = self.state();
        let inner = self.inner.clone();
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            crate::metrics::HASH_QUEUE.dec();
            let _ = tx.send(work(&inner, state));
        });
        crate::metrics::HASH_QUEUE.inc();
        if self.inner.jobs.send(job).is_err() {
            crate::metrics::HASH_QUEUE.dec();
            return Err(HashError::Join);
        }
        rx.await.map_err(|_| HashError::Join)?
    }

    /// Hashes a canonical digest for storage (PHC string).
    #[tracing::instrument(name = "password.hash", skip_all)]
    pub async fn hash(&self, digest: String) -> Result<String, HashError> {
        self.run(move |inner, state| hash_blocking(&state.params, inner.pepper.as_deref(), &digest))
            .await
    }

    /// Verifies a canonical digest against a stored PHC string; `None` (unknown identity, or a
    /// user without a password) runs the same work against the dummy hash and answers `No`.
    /// A wrong password against a hash made with older, cheaper parameters is answered no
    /// sooner than one with the current parameters (the difference is waited out, off the
    /// hashing threads), so that timing does not tell dormant accounts from unknown ones.
    #[tracing::instrument(name = "password.verify", skip_all)]
    pub async fn verify(
        &self,
        digest: String,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let (verified, padding) = self
            .run(move |inner, state| {
                let pepper = inner.pepper.as_deref();
                let started = Instant::now();
                let Some(stored) = stored else {
                    let _ = verify_blocking(pepper, &digest, &state.dummy);
                    inner.record_cost(started.elapsed());
                    return Ok((Verified::No, None));
                };
                let current = uses_params(&stored, &state.params);
                let right = match verify_blocking(pepper, &digest, &stored) {
                    Ok(right) => right,
                    Err(e) => {
                        tracing::error!(error = %e, "stored password hash is unusable");
                        false
                    }
                };
                let took = started.elapsed();
                if current {
                    inner.record_cost(took);
                }
                match (right, current) {
                    (false, true) => Ok((Verified::No, None)),
                    (false, false) => Ok((Verified::No, inner.padding(took))),
                    (true, true) => Ok((Verified::Yes, None)),
                    (true, false) => hash_blocking(&state.params, pepper, &digest)
                        .map(|phc| (Verified::YesRehashed(phc), None)),
                }
            })
            .await?;
        if let Some(wait) = padding {
            tokio::time::sleep(wait).await;
        }
        Ok(verified)
    }
}

fn to_params(c: &PasswordHashing) -> Result<Params, HashError> {
    Params::new(c.memory_kib, c.iterations, c.parallelism, None)
        .map_err(|e| HashError::Argon(e.to_string()))
}

fn argon<'a>(params: &Params, pepper: Option<&'a [u8]>) -> Result<Argon2<'a>, HashError> {
    match pepper {
        None => Ok(Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            params.clone(),
        )),
        Some(p) => Argon2::new_with_secret(p, Algorithm::Argon2id, Version::V0x13, params.clone())
            .map_err(|e| HashError::Argon(e.to_string())),
    }
}

fn hash_blocking(
    params: &Params,
    pepper: Option<&[u8]>,
    digest: &str,
) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&super::random::bytes(16))
        .map_err(|e| HashError::Argon(e.to_string()))?;
    argon(params, pepper)?
        .hash_password(digest.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon(e.to_string()))
}

thread_local! {
    /// Each hashing thread keeps its argon2 working memory between verifications instead of
    /// allocating (and page-faulting) `memory_kib` for every one.
    static WORK_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn verify_blocking(pepper: Option<&[u8]>, digest: &str, stored: &str) -> Result<bool, HashError> {
    let bad = |e: &dyn std::fmt::Display| HashError::Argon(e.to_string());
    let parsed = PasswordHash::new(stored).map_err(|e| bad(&e))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version.is_some_and(|v| v != 0x13) {
        return Err(HashError::Argon("not an argon2id v19 hash".into()));
    }
    let expected = parsed
        .hash
        .ok_or_else(|| HashError::Argon("no hash output".into()))?;
    let salt = parsed
        .salt
        .ok_or_else(|| HashError::Argon("no salt".into()))?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| bad(&e))?;
    let params = Params::try_from(&parsed).map_err(|e| bad(&e))?;
    let argon = argon(&params, pepper)?;
    let mut out = vec![0u8; expected.len()];
    WORK_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(
                digest.as_bytes(),
                salt,
                &mut out,
                &mut memory[..blocks],
            )
            .map_err(|e| bad(&e))
    })?;
    Ok(subtle::ConstantTimeEq::ct_eq(out.as_slice(), expected.as_bytes()).into())
}

fn uses_params(stored: &str, params: &Params) -> bool {
    PasswordHash::new(stored)
        .ok()
        .and_then(|h| Params::try_from(&h).ok())
        .is_some_and(|p| {
            p.m_cost() == params.m_cost()
                && p.t_cost() == params.t_cost()
                && p.p_cost() == params.p_cost()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PasswordHashing {
        PasswordHashing {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
        }
    }

    #[test]
    fn canonical_digest_matches_the_documented_formula() {
        // printf 'correct horse|default' | sha256sum
        assert_eq!(
            canonical_digest("correct horse", "default"),
            "94d0ae21ee2a621d1118bbe8c4a3cc8dab96e96b800d1f8e6b7223042d734bd2"
        );
        let d = canonical_digest("correct horse", "default");
        assert_eq!(d.len(), 64);
        assert_ne!(d, canonical_digest("correct horse", "other"));
    }

    #[tokio::test]
    async fn verify_accepts_the_right_digest_only() {
        let h = PasswordHasher::new(&small(), None).unwrap();
        let stored = h.hash(canonical_digest("pw-1", "default")).await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(
            h.verify(canonical_digest("pw-1", "default"), Some(stored.clone()))
                .await
                .unwrap(),
            Verified::Yes
        );
        assert_eq!(
            h.verify(canonical_digest("pw-2", "default"), Some(stored))
                .await
                .unwrap(),
            Verified::No
        );
        assert_eq!(
            h.verify(canonical_digest("pw-1", "default"), None)
                .await
                .unwrap(),
            Verified::No
        );
    }

    #[tokio::test]
    async fn pepper_is_part_of_the_hash() {
        let peppered = PasswordHasher::new(&small(), Some(b"pepper".to_vec())).unwrap();
        let plain = PasswordHasher::new(&small(), None).unwrap();
        let stored = peppered.hash("d".into()).await.unwrap();
        assert_eq!(
            peppered
                .verify("d".into(), Some(stored.clone()))
                .await
                .unwrap(),
            Verified::Yes
        );
        assert_eq!(
            plain.verify("d".into(), Some(stored)).await.unwrap(),
            Verified::No
        );
    }

    #[tokio::test]
    async fn changed_parameters_upgrade_on_success() {
        let h = PasswordHasher::new(&small(), None).unwrap();
        let stored = h.hash("d".into()).await.unwrap();
        h.update_params(&PasswordHashing {
            iterations: 2,
            ..small()
        })
        .unwrap();
        match h.verify("d".into(), Some(stored)).await.unwrap() {
            Verified::YesRehashed(new) => assert!(new.contains("t=2"), "{new}"),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_wrong_password_on_an_old_cheap_hash_takes_as_long_as_an_unknown_identity() {
        let h = PasswordHasher::new(&small(), None).unwrap();
        let old = h.hash("d".into()).await.unwrap();
        h.update_params(&PasswordHashing {
            iterations: 8,
            ..small()
        })
        .unwrap();
        let timed = async |stored: Option<String>| {
            let started = Instant::now();
            assert_eq!(
                h.verify("wrong".into(), stored).await.unwrap(),
                Verified::No
            );
            started.elapsed()
        };
        // Warm the average with unknown identities (the current parameters' cost).
        let mut unknown = Duration::MAX;
        for _ in 0..4 {
            unknown = unknown.min(timed(None).await);
        }
        let dormant = timed(Some(old)).await;
        // t=1 alone would take about an eighth; the margin allows for a loaded machine.
        assert!(
            dormant.as_secs_f64() >= 0.6 * unknown.as_secs_f64(),
            "dormant {dormant:?} vs unknown {unknown:?}"
        );
    }

    #[tokio::test]
    async fn garbage_in_storage_is_a_failed_verification() {
        let h = PasswordHasher::new(&small(), None).unwrap();
        assert_eq!(
            h.verify("d".into(), Some("not-a-phc".into()))
                .await
                .unwrap(),
            Verified::No
        );
    }
}
