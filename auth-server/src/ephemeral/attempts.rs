//! The sign-in attempt gate: failure counters with a growing delay and a hard lock, decided
//! for an account key and a client-address key together in one atomic step. Every attempt is
//! counted when it is admitted (before the password is evaluated), so concurrent attempts can
//! never evaluate more passwords than the policy allows; a success resets the account and gives
//! the address its attempt back. This file holds the rules and the in-process decision; the
//! Redis script in `redis.rs` applies the same rules to the same fields.

/// Thresholds for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRule {
    /// Failures after which each attempt must wait.
    pub delay_after: u32,
    /// First wait, in milliseconds; doubles with each further failure.
    pub base_delay_ms: u64,
    /// Longest wait, in milliseconds.
    pub max_delay_ms: u64,
    /// Failures at which the key locks.
    pub lock_after: u32,
    /// Lock duration, in milliseconds.
    pub lock_ms: u64,
    /// Counters are forgotten after this long without an attempt, in milliseconds.
    pub window_ms: u64,
}

/// The stored state of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateState {
    /// Attempts admitted and not (yet) reset by a success.
    pub failures: u32,
    /// No attempt before this time (Unix ms).
    pub next_allowed_ms: i64,
    /// Locked until this time (Unix ms); 0 when not locked.
    pub locked_until_ms: i64,
}

/// What the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Evaluate the password; the counts are those before this attempt.
    Admitted {
        /// Account failures before this attempt.
        account_failures: u32,
        /// Client-address failures before this attempt.
        ip_failures: u32,
    },
    /// Not now: wait this long. `locked` when a hard lock (rather than a delay) is the reason.
    Refused {
        /// Milliseconds to wait.
        retry_after_ms: u64,
        /// A lock, not a delay.
        locked: bool,
    },
}

/// The wait after `failures` failures under `rule`, in milliseconds.
pub fn delay_ms(rule: &GateRule, failures: u32) -> u64 {
    if failures < rule.delay_after {
        return 0;
    }
    let doublings = (failures - rule.delay_after).min(32);
    rule.base_delay_ms
        .saturating_mul(1u64 << doublings)
        .min(rule.max_delay_ms)
}

fn refusal(state: &GateState, now: i64) -> Option<(u64, bool)> {
    if state.locked_until_ms > now {
        Some(((state.locked_until_ms - now) as u64, true))
    } else if state.next_allowed_ms > now {
        Some(((state.next_allowed_ms - now) as u64, false))
    } else {
        None
    }
}

/// A served lock starts the count afresh.
fn expire_served_lock(state: &mut GateState, now: i64) {
    if state.locked_until_ms > 0 && state.locked_until_ms <= now {
        *state = GateState::default();
    }
}

fn admit(state: &mut GateState, rule: &GateRule, now: i64) {
    state.failures += 1;
    // No wait owed is 0, not `now`: concurrent attempts read their clocks before they reach
    // the store, so an attempt stamped a millisecond earlier must not find itself "delayed".
    let delay = delay_ms(rule, state.failures) as i64;
    state.next_allowed_ms = if delay > 0 { now + delay } else { 0 };
    if state.failures >= rule.lock_after {
        state.locked_until_ms = now + rule.lock_ms as i64;
    }
}

/// Gives back the attempt of a right first factor whose sign-in goes on to a second one: the
/// count is not reset (that waits for the whole sign-in) but this attempt does not count, and
/// the delay it set is lifted, as is a lock unless the count still reaches it (an attempt
/// admitted concurrently may have added a failure; `lock_after` > `delay_after` bounds that to
/// the last guess before the lock).
pub fn refund(state: &mut GateState, lock_after: u32) {
    state.failures = state.failures.saturating_sub(1);
    state.next_allowed_ms = 0;
    if state.failures < lock_after {
        state.locked_until_ms = 0;
    }
}

/// Decides an attempt on `(account, ip)` at `now`, updating both states when admitted.
pub fn decide(
    account: &mut GateState,
    ip: &mut GateState,
    rules: (&GateRule, &GateRule),
    now: i64,
) -> Gate {
    expire_served_lock(account, now);
    expire_served_lock(ip, now);
    let a = refusal(account, now);
    let i = refusal(ip, now);
    if a.is_some() || i.is_some() {
        let (ms, locked) = [a, i]
            .into_iter()
            .flatten()
            .max_by_key(|(ms, _)| *ms)
            .unwrap_or((0, false));
        return Gate::Refused {
            retry_after_ms: ms,
            locked,
        };
    }
    let before = Gate::Admitted {
        account_failures: account.failures,
        ip_failures: ip.failures,
    };
    admit(account, rules.0, now);
    admit(ip, rules.1, now);
    before
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: GateRule = GateRule {
        delay_after: 3,
        base_delay_ms: 1000,
        max_delay_ms: 8000,
        lock_after: 6,
        lock_ms: 60_000,
        window_ms: 3_600_000,
    };
    const LOOSE: GateRule = GateRule {
        delay_after: 100,
        lock_after: 200,
        ..RULE
    };

    #[test]
    fn delays_grow_then_the_key_locks() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 9].map(|f| delay_ms(&RULE, f)),
            [0, 0, 0, 1000, 2000, 4000, 8000]
        );
        let (mut a, mut i) = (GateState::default(), GateState::default());
        let mut now = 0;
        for expected_before in 0..3 {
            assert_eq!(
                decide(&mut a, &mut i, (&RULE, &LOOSE), now),
                Gate::Admitted {
                    account_failures: expected_before,
                    ip_failures: expected_before
                }
            );
        }
        // After the third failure the next attempt must wait a second.
        assert_eq!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Refused {
                retry_after_ms: 1000,
                locked: false
            }
        );
        now += 1000;
        assert!(matches!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Admitted { .. }
        ));
        assert_eq!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now + 1999),
            Gate::Refused {
                retry_after_ms: 1,
                locked: false
            }
        );
        now += 2000;
        assert!(matches!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Admitted { .. }
        ));
        now += 4000;
        assert!(matches!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Admitted { .. }
        ));
        // That was the sixth: locked for a minute.
        assert_eq!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now + 10_000),
            Gate::Refused {
                retry_after_ms: 50_000,
                locked: true
            }
        );
        // After the lock, counting starts afresh.
        assert_eq!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now + 60_000),
            Gate::Admitted {
                account_failures: 0,
                ip_failures: 6
            }
        );
    }

    #[test]
    fn a_refund_keeps_earlier_failures_and_lifts_only_its_own_delay() {
        let (mut a, mut i) = (GateState::default(), GateState::default());
        for _ in 0..3 {
            decide(&mut a, &mut i, (&RULE, &LOOSE), 0);
        }
        // The fourth attempt (a right password) set a delay; refunded, the next factor may
        // be answered at once, and the three failures still count.
        let now = 1000;
        assert!(matches!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Admitted { .. }
        ));
        refund(&mut a, RULE.lock_after);
        assert_eq!(a.failures, 3);
        assert_eq!(
            decide(&mut a, &mut i, (&RULE, &LOOSE), now),
            Gate::Admitted {
                account_failures: 3,
                ip_failures: 4
            }
        );
        // A lock set by an admitted attempt is lifted with it, an earned one is not.
        let mut locked = GateState {
            failures: RULE.lock_after,
            next_allowed_ms: 5,
            locked_until_ms: 99,
        };
        refund(&mut locked, RULE.lock_after);
        assert_eq!(locked.locked_until_ms, 0);
        let mut earned = GateState {
            failures: RULE.lock_after + 1,
            next_allowed_ms: 5,
            locked_until_ms: 99,
        };
        refund(&mut earned, RULE.lock_after);
        assert_eq!(earned.locked_until_ms, 99);
    }

    #[test]
    fn an_attempt_stamped_a_moment_earlier_is_not_delayed_when_no_wait_is_owed() {
        let (mut a, mut i) = (GateState::default(), GateState::default());
        decide(&mut a, &mut i, (&RULE, &LOOSE), 1000);
        let mut other = GateState::default();
        // Another account's attempt from the same address, whose clock read came 2 ms earlier.
        assert!(matches!(
            decide(&mut other, &mut i, (&RULE, &LOOSE), 998),
            Gate::Admitted { .. }
        ));
    }

    #[test]
    fn the_address_gate_refuses_every_account() {
        let ip_rule = GateRule {
            delay_after: 2,
            lock_after: 4,
            ..RULE
        };
        let mut ip = GateState::default();
        for n in 0..2 {
            let mut fresh_account = GateState::default();
            assert_eq!(
                decide(&mut fresh_account, &mut ip, (&RULE, &ip_rule), 0),
                Gate::Admitted {
                    account_failures: 0,
                    ip_failures: n
                }
            );
        }
        let mut another = GateState::default();
        assert!(matches!(
            decide(&mut another, &mut ip, (&RULE, &ip_rule), 10),
            Gate::Refused { .. }
        ));
        assert_eq!(
            another,
            GateState::default(),
            "a refused attempt counts nowhere"
        );
    }
}
