//! The key-rotation schedule of a `SigningKey`: a pure function of its timing, its keys (as
//! their Secrets record them) and the time, so that whole timelines are tested without a
//! cluster or a clock. A new key is published `prePublish` before it signs (longer than any
//! server or verifier takes to see it); the key it replaces stops signing at that moment and
//! stays published `retireAfter` longer (longer than any token it signed lives); then it goes.

/// A key of one `SigningKey`, as its Secret records it (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// 1, 2, 3, ...: the Secret is `<name>-<ordinal>`.
    pub ordinal: u32,
    /// From when it signs.
    pub activates_at: i64,
    /// When it is gone (set once a successor is planned).
    pub retires_at: Option<i64>,
}

/// The timing of a `SigningKey`, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a key signs before the next takes over; `None`: only on request.
    pub rotation_period: Option<i64>,
    /// Publication before signing.
    pub pre_publish: i64,
    /// Publication after signing.
    pub retire_after: i64,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// A new key: (ordinal, activates_at).
    pub create: Option<(u32, i64)>,
    /// Keys to give a retirement time: (ordinal, retires_at).
    pub retire: Vec<(u32, i64)>,
    /// Keys past retirement, to remove.
    pub delete: Vec<u32>,
    /// When the next key signs (pending, or planned by the period).
    pub next_rotation: Option<i64>,
    /// When the schedule next has something to do.
    pub next_wake: Option<i64>,
}

/// Key states as `status.keys[].state` shows them.
pub fn state(keys: &[KeyRecord], key: &KeyRecord, now: i64) -> &'static str {
    let active = keys
        .iter()
        .filter(|k| k.activates_at <= now && k.retires_at.is_none_or(|r| now < r))
        .max_by_key(|k| (k.activates_at, k.ordinal));
    if key.activates_at > now {
        "pending"
    } else if active.is_some_and(|a| a.ordinal == key.ordinal) {
        "active"
    } else {
        "retiring"
    }
}

/// The plan for `keys` at `now`; `rotate_now` asks for a rotation at once (still published
/// `prePublish` ahead).
pub fn plan(t: &Timing, keys: &[KeyRecord], now: i64, rotate_now: bool) -> Plan {
    let mut plan = Plan::default();
    let mut live: Vec<KeyRecord> = Vec::new();
    for k in keys {
        if k.retires_at.is_some_and(|r| r <= now) {
            plan.delete.push(k.ordinal);
        } else {
            live.push(k.clone());
        }
    }
    live.sort_by_key(|k| (k.activates_at, k.ordinal));
    let next_ordinal = keys.iter().map(|k| k.ordinal).max().unwrap_or(0) + 1;
    let Some(latest) = live.last().cloned() else {
        // The first key (or every key gone): nothing has been signed with a key that would
        // need its successor announced, so it signs at once.
        plan.create = Some((next_ordinal, now));
        return plan;
    };
    if latest.activates_at > now {
        // A successor is pending already.
        plan.next_rotation = Some(latest.activates_at);
    } else {
        let due = t
            .rotation_period
            .map(|p| latest.activates_at.saturating_add(p) - t.pre_publish);
        if rotate_now || due.is_some_and(|d| d <= now) {
            let mut at = now + t.pre_publish;
            if !rotate_now && let Some(p) = t.rotation_period {
                at = at.max(latest.activates_at.saturating_add(p));
            }
            plan.create = Some((next_ordinal, at));
            plan.next_rotation = Some(at);
            live.push(KeyRecord {
                ordinal: next_ordinal,
                activates_at: at,
                retires_at: None,
            });
        } else {
            plan.next_rotation = t
                .rotation_period
                .map(|p| latest.activates_at.saturating_add(p));
            plan.next_wake = due;
        }
    }
    // Every key with a successor retires `retireAfter` after the successor starts signing.
    for pair in live.windows(2) {
        if pair[0].retires_at.is_none() {
            plan.retire
                .push((pair[0].ordinal, pair[1].activates_at + t.retire_after));
        }
    }
    let retirements = live
        .iter()
        .filter_map(|k| k.retires_at)
        .chain(plan.retire.iter().map(|(_, r)| *r));
    let activations = live.iter().map(|k| k.activates_at).filter(|a| *a > now);
    plan.next_wake = retirements
        .chain(activations)
        .chain(plan.next_wake)
        .filter(|w| *w > now)
        .min();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        rotation_period: Some(100),
        pre_publish: 20,
        retire_after: 50,
    };

    /// At one second: the keys published and the one signing.
    type Moment = (i64, Vec<u32>, Option<u32>);

    /// Applies plans from `start` to `end`, waking when each plan says (and every second in
    /// between, as resyncs would); returns the keys and every (time, published kids, signing
    /// kid) observed.
    fn run(start: i64, end: i64) -> (Vec<KeyRecord>, Vec<Moment>) {
        let mut keys: Vec<KeyRecord> = Vec::new();
        let mut seen = Vec::new();
        for now in start..=end {
            let p = plan(&T, &keys, now, false);
            keys.retain(|k| !p.delete.contains(&k.ordinal));
            for (o, r) in &p.retire {
                keys.iter_mut()
                    .find(|k| k.ordinal == *o)
                    .unwrap()
                    .retires_at = Some(*r);
            }
            if let Some((o, a)) = p.create {
                keys.push(KeyRecord {
                    ordinal: o,
                    activates_at: a,
                    retires_at: None,
                });
            }
            let published: Vec<u32> = keys
                .iter()
                .filter(|k| k.retires_at.is_none_or(|r| now < r))
                .map(|k| k.ordinal)
                .collect();
            let signing = keys
                .iter()
                .filter(|k| k.activates_at <= now && k.retires_at.is_none_or(|r| now < r))
                .max_by_key(|k| k.activates_at)
                .map(|k| k.ordinal);
            seen.push((now, published, signing));
        }
        (keys, seen)
    }

    #[test]
    fn the_first_key_signs_at_once_and_each_next_one_is_announced_ahead() {
        let (keys, seen) = run(1000, 1400);
        // Key 1 from 1000, key 2 from 1100, 3 from 1200, 4 from 1300, 5 from 1400.
        let signer_at = |t: i64| seen.iter().find(|s| s.0 == t).unwrap().2;
        assert_eq!(signer_at(1000), Some(1));
        assert_eq!(signer_at(1099), Some(1));
        assert_eq!(signer_at(1100), Some(2));
        assert_eq!(signer_at(1300), Some(4));
        // Every key is published at least pre_publish before it signs...
        for k in 2..=5u32 {
            let first_seen = seen.iter().find(|s| s.1.contains(&k)).unwrap().0;
            let first_signing = seen.iter().find(|s| s.2 == Some(k)).unwrap().0;
            assert!(first_signing - first_seen >= T.pre_publish, "key {k}");
        }
        // ...and stays published retire_after past its last signature.
        for k in 1..=3u32 {
            let last_signing = seen.iter().rev().find(|s| s.2 == Some(k)).unwrap().0;
            let last_seen = seen.iter().rev().find(|s| s.1.contains(&k)).unwrap().0;
            assert!(last_seen - last_signing >= T.retire_after, "key {k}");
        }
        // Old keys are removed after retirement.
        assert!(keys.iter().all(|k| k.ordinal >= 3), "{keys:?}");
        // There is always exactly one signer.
        assert!(seen.iter().all(|s| s.2.is_some()));
    }

    #[test]
    fn plans_are_idempotent_while_a_successor_is_pending() {
        let keys = vec![KeyRecord {
            ordinal: 1,
            activates_at: 0,
            retires_at: None,
        }];
        let p = plan(&T, &keys, 85, false);
        assert_eq!(p.create, Some((2, 105)), "announced pre_publish ahead");
        assert_eq!(p.retire, vec![(1, 155)]);
        let keys = vec![
            KeyRecord {
                retires_at: Some(155),
                ..keys[0].clone()
            },
            KeyRecord {
                ordinal: 2,
                activates_at: 105,
                retires_at: None,
            },
        ];
        // Asking again (a restarted or second operator) changes nothing.
        let again = plan(&T, &keys, 90, false);
        assert_eq!((again.create, again.retire.len()), (None, 0));
        assert_eq!(again.next_rotation, Some(105));
        assert_eq!(again.next_wake, Some(105));
        assert_eq!(state(&keys, &keys[0], 90), "active");
        assert_eq!(state(&keys, &keys[1], 90), "pending");
        assert_eq!(state(&keys, &keys[0], 110), "retiring");
        assert_eq!(plan(&T, &keys, 155, false).delete, vec![1]);
    }

    #[test]
    fn a_requested_rotation_is_announced_too_and_without_a_period_none_happens() {
        let manual = Timing {
            rotation_period: None,
            ..T
        };
        let keys = vec![KeyRecord {
            ordinal: 1,
            activates_at: 0,
            retires_at: None,
        }];
        let p = plan(&manual, &keys, 10_000, false);
        assert_eq!((p.create, p.next_rotation, p.next_wake), (None, None, None));
        let p = plan(&manual, &keys, 10_000, true);
        assert_eq!(p.create, Some((2, 10_020)));
        assert_eq!(p.retire, vec![(1, 10_070)]);
        assert_eq!(plan(&T, &[], 5, false).create, Some((1, 5)));
    }
}
