//! The in-process ephemeral store: a mutex-guarded map with per-entry expiry read from the
//! injected clock, swept as it grows.

use super::attempts::{Gate, GateRule, GateState, decide};
use crate::auth::clock::SharedClock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Entries kept between sweeps of expired ones.
const SWEEP_EVERY: usize = 1024;

/// Ephemeral state of one process.
#[derive(Debug, Clone)]
pub struct MemoryEphemeral {
    clock: SharedClock,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (String, i128)>,
    gates: HashMap<String, (GateState, i64)>,
    rates: HashMap<String, i64>,
    writes_since_sweep: usize,
}

impl MemoryEphemeral {
    /// An empty store on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn now_ms(&self) -> i128 {
        self.clock.now().unix_timestamp_nanos() / 1_000_000
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, key: &str, value: &str, ttl: Duration) {
        let now = self.now_ms();
        let mut g = self.lock();
        g.writes_since_sweep += 1;
        if g.writes_since_sweep >= SWEEP_EVERY {
            g.writes_since_sweep = 0;
            g.entries.retain(|_, (_, exp)| *exp > now);
        }
        g.entries.insert(
            key.to_owned(),
            (value.to_owned(), now + ttl.as_millis() as i128),
        );
    }

    pub(super) fn exists_any(&self, keys: &[String]) -> bool {
        let now = self.now_ms();
        let g = self.lock();
        keys.iter()
            .any(|k| g.entries.get(k).is_some_and(|(_, exp)| *exp > now))
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        let now = self.now_ms();
        self.lock()
            .entries
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone())
    }

    pub(super) fn incr(&self, key: &str, ttl: Duration) -> i64 {
        let now = self.now_ms();
        let mut g = self.lock();
        let entry = g
            .entries
            .entry(key.to_owned())
            .or_insert_with(|| ("0".to_owned(), now + ttl.as_millis() as i128));
        if entry.1 <= now {
            *entry = ("0".to_owned(), now + ttl.as_millis() as i128);
        }
        let n = entry.0.parse::<i64>().unwrap_or(0) + 1;
        entry.0 = n.to_string();
        n
    }

    pub(super) fn take_if(&self, key: &str, marker: &str) -> Option<String> {
        let now = self.now_ms();
        let mut g = self.lock();
        let live = g
            .entries
            .get(key)
            .is_some_and(|(v, exp)| *exp > now && v.contains(marker));
        if live {
            g.entries.remove(key).map(|(v, _)| v)
        } else {
            None
        }
    }

    pub(super) fn take(&self, key: &str) -> Option<String> {
        let now = self.now_ms();
        self.lock()
            .entries
            .remove(key)
            .and_then(|(v, exp)| (exp > now).then_some(v))
    }

    fn gate_state(g: &mut Inner, key: &str, now: i64) -> GateState {
        match g.gates.get(key) {
            Some((state, expires)) if *expires > now => *state,
            _ => GateState::default(),
        }
    }

    pub(super) fn gate_attempt(
        &self,
        account: &str,
        ip: &str,
        rules: (&GateRule, &GateRule),
        now: i64,
    ) -> Gate {
        let mut g = self.lock();
        if g.gates.len() > 100_000 {
            g.gates.retain(|_, (_, exp)| *exp > now);
        }
        let mut a = Self::gate_state(&mut g, account, now);
        let mut i = Self::gate_state(&mut g, ip, now);
        let gate = decide(&mut a, &mut i, rules, now);
        if let Gate::Admitted { .. } = gate {
            for (key, state, rule) in [(account, a, rules.0), (ip, i, rules.1)] {
                let expires = (now + rule.window_ms as i64).max(state.locked_until_ms);
                g.gates.insert(key.to_owned(), (state, expires));
            }
        }
        gate
    }

    pub(super) fn gate_success(&self, account: &str, ip: &str) {
        let mut g = self.lock();
        g.gates.remove(account);
        if let Some((state, _)) = g.gates.get_mut(ip) {
            state.failures = state.failures.saturating_sub(1);
        }
    }

    pub(super) fn gate_failures(&self, account: &str, ip: &str) -> (u32, u32) {
        let now = self.now_ms() as i64;
        let mut g = self.lock();
        (
            Self::gate_state(&mut g, account, now).failures,
            Self::gate_state(&mut g, ip, now).failures,
        )
    }

    pub(super) fn gate_clear(&self, keys: &[String]) {
        let mut g = self.lock();
        for k in keys {
            g.gates.remove(k);
        }
    }

    pub(super) fn rate_check(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now: i64,
    ) -> Result<(), u64> {
        let mut g = self.lock();
        if g.rates.len() > 100_000 {
            g.rates.retain(|_, tat| *tat > now);
        }
        let stored = g.rates.get(key).copied().unwrap_or(0);
        let new_tat = super::gcra(stored, limit, window_ms, now)?;
        g.rates.insert(key.to_owned(), new_tat);
        Ok(())
    }
}
