//! The in-process ephemeral store: mutex-guarded maps with per-entry expiry read from the
//! injected clock. Expired entries leave through an expiry queue a few at a time on every
//! write (never a scan of the whole map under the lock), and each map holds at most
//! [`MAX_ENTRIES`] live entries: past that, the entry closest to its expiry makes room.

use super::attempts::{Gate, GateRule, GateState, decide};
use crate::auth::clock::SharedClock;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Live entries kept per map (values, gate counters, rate buckets) before the soonest to
/// expire is dropped to make room.
pub const MAX_ENTRIES: usize = 250_000;

/// Expired entries removed per write, at most.
const SWEEP_PER_WRITE: usize = 32;

/// A map whose entries expire at a time (Unix ms), with a queue ordered by expiry. The queue
/// may hold stale positions (an entry removed or moved later); they are skipped when reached.
#[derive(Debug)]
struct Expiring<V> {
    map: HashMap<String, (V, i64)>,
    queue: BinaryHeap<Reverse<(i64, String)>>,
    cap: usize,
    evicted: u64,
}

impl<V> Expiring<V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            queue: BinaryHeap::new(),
            cap,
            evicted: 0,
        }
    }

    fn get(&self, key: &str, now: i64) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    fn get_mut(&mut self, key: &str, now: i64) -> Option<&mut V> {
        self.map
            .get_mut(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v)
    }

    fn remove(&mut self, key: &str, now: i64) -> Option<V> {
        self.map
            .remove(key)
            .and_then(|(v, exp)| (exp > now).then_some(v))
    }

    fn insert(&mut self, key: &str, value: V, expires: i64, now: i64) {
        self.sweep(now, SWEEP_PER_WRITE);
        if let Some(entry) = self.map.get_mut(key) {
            let earlier = expires < entry.1;
            *entry = (value, expires);
            if earlier {
                self.queue.push(Reverse((expires, key.to_owned())));
            }
            return;
        }
        if self.map.len() >= self.cap {
            self.evict_one();
        }
        self.map.insert(key.to_owned(), (value, expires));
        self.queue.push(Reverse((expires, key.to_owned())));
        // Stale positions pile up when keys come and go: rebuild from the map now and then.
        if self.queue.len() > 2 * self.map.len() + 1024 {
            self.queue = self
                .map
                .iter()
                .map(|(k, (_, exp))| Reverse((*exp, k.clone())))
                .collect();
        }
    }

    /// Removes up to `budget` entries that expired by `now`.
    fn sweep(&mut self, now: i64, budget: usize) {
        for _ in 0..budget {
            match self.queue.peek() {
                Some(Reverse((exp, _))) if *exp <= now => {}
                _ => return,
            }
            let Some(Reverse((_, key))) = self.queue.pop() else {
                return;
            };
            match self.map.get(&key) {
                Some((_, exp)) if *exp <= now => {
                    self.map.remove(&key);
                }
                // Moved later: queue it at its new time.
                Some((_, exp)) => self.queue.push(Reverse((*exp, key))),
                None => {}
            }
        }
    }

    /// Drops the live entry closest to its expiry.
    fn evict_one(&mut self) {
        while let Some(Reverse((exp, key))) = self.queue.pop() {
            let current = self.map.get(&key).map(|(_, e)| *e);
            if current.is_some_and(|e| e != exp) {
                // Moved later: keep it queued at its new time (or it could never leave).
                if let Some(e) = current {
                    self.queue.push(Reverse((e, key)));
                }
                continue;
            }
            if current == Some(exp) {
                self.map.remove(&key);
                self.evicted += 1;
                if self.evicted.is_power_of_two() {
                    tracing::warn!(
                        evicted = self.evicted,
                        cap = self.cap,
                        "in-process ephemeral store full: dropping the entries closest to expiry"
                    );
                }
                return;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Ephemeral state of one process.
#[derive(Debug, Clone)]
pub struct MemoryEphemeral {
    clock: SharedClock,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    entries: Expiring<String>,
    gates: Expiring<GateState>,
    rates: Expiring<i64>,
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

impl MemoryEphemeral {
    /// An empty store on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self::with_capacity(clock, MAX_ENTRIES)
    }

    /// An empty store holding at most `cap` live entries per map.
    pub fn with_capacity(clock: SharedClock, cap: usize) -> Self {
        Self {
            clock,
            inner: Arc::new(Mutex::new(Inner {
                entries: Expiring::new(cap),
                gates: Expiring::new(cap),
                rates: Expiring::new(cap),
            })),
        }
    }

    fn now_ms(&self) -> i64 {
        (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, key: &str, value: &str, ttl: Duration) {
        let now = self.now_ms();
        self.lock()
            .entries
            .insert(key, value.to_owned(), now + ttl_ms(ttl), now);
    }

    pub(super) fn claim(&self, key: &str, ttl: Duration) -> Option<u64> {
        let now = self.now_ms();
        let mut g = self.lock();
        if let Some((_, exp)) = g.entries.map.get(key).filter(|(_, exp)| *exp > now) {
            return Some(u64::try_from(*exp - now).unwrap_or(1).max(1));
        }
        g.entries
            .insert(key, "1".to_owned(), now + ttl_ms(ttl), now);
        None
    }

    pub(super) fn exists_any(&self, keys: &[String]) -> bool {
        let now = self.now_ms();
        let g = self.lock();
        keys.iter().any(|k| g.entries.get(k, now).is_some())
    }

    pub(super) fn get(&self, key: &str) -> Option<String> {
        let now = self.now_ms();
        self.lock().entries.get(key, now).cloned()
    }

    pub(super) fn incr(&self, key: &str, ttl: Duration) -> i64 {
        let now = self.now_ms();
        let mut g = self.lock();
        if let Some(v) = g.entries.get_mut(key, now) {
            let n = v.parse::<i64>().unwrap_or(0) + 1;
            *v = n.to_string();
            return n;
        }
        g.entries
            .insert(key, "1".to_owned(), now + ttl_ms(ttl), now);
        1
    }

    pub(super) fn take_if(&self, key: &str, marker: &str) -> Option<String> {
        let now = self.now_ms();
        let mut g = self.lock();
        if g.entries.get(key, now).is_some_and(|v| v.contains(marker)) {
            g.entries.remove(key, now)
        } else {
            None
        }
    }

    pub(super) fn take(&self, key: &str) -> Option<String> {
        let now = self.now_ms();
        self.lock().entries.remove(key, now)
    }

    pub(super) fn gate_attempt(
        &self,
        account: &str,
        ip: &str,
        rules: (&GateRule, &GateRule),
        now: i64,
    ) -> Gate {
        let mut g = self.lock();
        let mut a = g.gates.get(account, now).copied().unwrap_or_default();
        let mut i = g.gates.get(ip, now).copied().unwrap_or_default();
        let gate = decide(&mut a, &mut i, rules, now);
        if let Gate::Admitted { .. } = gate {
            for (key, state, rule) in [(account, a, rules.0), (ip, i, rules.1)] {
                let expires = (now + rule.window_ms as i64).max(state.locked_until_ms);
                g.gates.insert(key, state, expires, now);
            }
        }
        gate
    }

    pub(super) fn gate_success(&self, account: &str, ip: &str) {
        let now = self.now_ms();
        let mut g = self.lock();
        g.gates.remove(account, now);
        if let Some(state) = g.gates.get_mut(ip, now) {
            state.failures = state.failures.saturating_sub(1);
        }
    }

    pub(super) fn gate_refund(&self, account: &str, ip: &str, lock_after: u32) {
        let now = self.now_ms();
        let mut g = self.lock();
        if let Some(state) = g.gates.get_mut(account, now) {
            super::attempts::refund(state, lock_after);
        }
        if let Some(state) = g.gates.get_mut(ip, now) {
            state.failures = state.failures.saturating_sub(1);
        }
    }

    pub(super) fn gate_failures(&self, account: &str, ip: &str) -> (u32, u32) {
        let now = self.now_ms();
        let g = self.lock();
        let failures = |k: &str| g.gates.get(k, now).map_or(0, |s| s.failures);
        (failures(account), failures(ip))
    }

    pub(super) fn gate_clear(&self, keys: &[String]) {
        let now = self.now_ms();
        let mut g = self.lock();
        for k in keys {
            g.gates.remove(k, now);
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
        let stored = g.rates.get(key, now).copied().unwrap_or(0);
        let new_tat = super::gcra(stored, limit, window_ms, now)?;
        g.rates.insert(key, new_tat, new_tat, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_leave_a_few_per_write_and_the_cap_holds() {
        let mut m = Expiring::new(1000);
        for i in 0..1000 {
            m.insert(&format!("k{i}"), i, 100, 0);
        }
        assert_eq!(m.len(), 1000);
        // At the cap, a new key drops the entry closest to expiry, not a random one.
        m.insert("late", 0, 10_000, 0);
        m.insert("soon", 0, 50, 0);
        assert_eq!(m.len(), 1000);
        assert!(m.get("late", 0).is_some());
        m.insert("x", 0, 10_000, 0);
        assert!(
            m.get("soon", 0).is_none(),
            "the soonest to expire made room"
        );
        // After expiry, every write removes a bounded number of dead entries.
        m.insert("y", 0, 10_000, 200);
        assert_eq!(m.len(), 1001 - SWEEP_PER_WRITE);
        for i in 0..100 {
            m.insert(&format!("z{i}"), 0, 10_000, 200);
        }
        assert!(m.len() <= 104, "{}", m.len());
        assert!(m.get("late", 200).is_some());
    }

    #[test]
    fn an_entry_moved_later_survives_its_old_expiry() {
        let mut m = Expiring::new(10);
        m.insert("a", 1, 100, 0);
        m.insert("a", 2, 1000, 0);
        m.sweep(500, 10);
        assert_eq!(m.get("a", 500), Some(&2));
        m.sweep(1000, 10);
        assert_eq!(m.get("a", 1000), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn entries_moved_later_stay_evictable_and_the_cap_holds() {
        let mut m = Expiring::new(4);
        for k in ["a", "b", "c", "d"] {
            m.insert(k, 0, 100, 0);
        }
        // Every entry moves later: their first queue positions are stale.
        for k in ["a", "b", "c", "d"] {
            m.insert(k, 1, 500, 0);
        }
        for i in 0..50 {
            m.insert(&format!("new{i}"), 0, 1000 + i, 0);
            assert!(m.len() <= 4, "the cap broke at {i}: {}", m.len());
        }
    }

    #[test]
    fn the_queue_stays_bounded_when_keys_come_and_go() {
        let mut m = Expiring::new(10);
        for _ in 0..100_000 {
            m.insert("hot", 1, 1_000_000, 0);
            m.remove("hot", 0);
        }
        assert!(m.queue.len() <= 1026, "{}", m.queue.len());
    }
}
