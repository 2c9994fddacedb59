//! Passive health of one upstream, from the outcomes of real calls (no
//! background probes): consecutive failures eject it for a cool-down that
//! doubles while it keeps failing; after the cool-down one trial call
//! decides whether it takes traffic again. An upstream's `Retry-After`
//! rests it until then. Lock-free: every field is an atomic read on the
//! hot path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// When an upstream may be called, as the router asks before each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Healthy: call it.
    Yes,
    /// Its cool-down is over and this call is its one trial.
    Trial,
    /// Not now; `until` (router milliseconds) is when it may be again.
    No { until: u64, ejected: bool },
}

/// What a router shows of an upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHealth {
    /// Taking traffic.
    Healthy,
    /// Resting until its `Retry-After` passes.
    Resting {
        /// How long until it takes traffic again.
        remaining: Duration,
    },
    /// Ejected after consecutive failures; a trial call decides after the
    /// cool-down.
    Ejected {
        /// How long until the trial.
        remaining: Duration,
    },
    /// The cool-down is over: the next call is its trial.
    Probation,
}

/// The health of one upstream.
#[derive(Debug)]
pub(crate) struct Health {
    failures: AtomicU32,
    /// Router milliseconds until which it is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// The cool-down the next ejection gets (milliseconds).
    cooldown: AtomicU64,
    /// A trial call is in flight.
    trial: AtomicBool,
    /// Router milliseconds until which its `Retry-After` rests it.
    resting_until: AtomicU64,
    /// Times it was ejected.
    pub(crate) ejections: AtomicU64,
}

/// The rules: failures to eject, the first cool-down, the longest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub(crate) failures: u32,
    pub(crate) cooldown: Duration,
    pub(crate) max_cooldown: Duration,
}

impl Health {
    pub(crate) fn new(rules: &Rules) -> Health {
        Health {
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            cooldown: AtomicU64::new(millis(rules.cooldown)),
            trial: AtomicBool::new(false),
            resting_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// Whether a call may go to it at `now`. With `force`, an ejection is
    /// ignored (every candidate of a route is ejected: trying one beats
    /// refusing the call), a rest is not.
    pub(crate) fn admit(&self, now: u64, force: bool) -> Admit {
        let resting = self.resting_until.load(Ordering::Relaxed);
        if now < resting {
            return Admit::No {
                until: resting,
                ejected: false,
            };
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return Admit::Yes;
        }
        if now < until {
            // Forced: every candidate is out, and trying one beats refusing
            // the call. Once the cool-down is over, the trial rule holds
            // even then.
            if force {
                return Admit::Yes;
            }
            return Admit::No {
                until,
                ejected: true,
            };
        }
        // The cool-down is over: exactly one call finds out.
        match self
            .trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Admit::Trial,
            Err(_) => Admit::No {
                until: now + 1,
                ejected: true,
            },
        }
    }

    /// Whether it is out of the running at `now`, without taking its
    /// trial.
    pub(crate) fn admit_peek(&self, now: u64) -> Admit {
        let resting = self.resting_until.load(Ordering::Relaxed);
        if now < resting {
            return Admit::No {
                until: resting,
                ejected: false,
            };
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && (now < until || self.trial.load(Ordering::Relaxed)) {
            return Admit::No {
                until: until.max(now + 1),
                ejected: true,
            };
        }
        Admit::Yes
    }

    /// A call answered (or the upstream judged the request itself: it is
    /// up).
    pub(crate) fn success(&self, admitted: Admit, rules: &Rules) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if admitted == Admit::Trial || self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.cooldown
                .store(millis(rules.cooldown), Ordering::Relaxed);
            self.trial.store(false, Ordering::Release);
        }
    }

    /// A call failed at `now`: a trial's failure ejects it again for twice
    /// as long; otherwise the `failures`-th consecutive one ejects it.
    /// Returns whether this failure ejected it.
    pub(crate) fn failure(&self, now: u64, admitted: Admit, rules: &Rules) -> bool {
        if admitted == Admit::Trial {
            let doubled = self
                .cooldown
                .load(Ordering::Relaxed)
                .saturating_mul(2)
                .min(millis(rules.max_cooldown));
            self.cooldown.store(doubled, Ordering::Relaxed);
            self.eject(now, doubled);
            self.trial.store(false, Ordering::Release);
            return true;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < rules.failures {
            return false;
        }
        // Of two failures at once, one ejects it.
        let until = now
            .saturating_add(self.cooldown.load(Ordering::Relaxed))
            .max(1);
        let ejected = self
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ejected {
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
        ejected
    }

    /// A trial whose call ended with no verdict (the caller went away
    /// first): the next call takes the trial instead.
    pub(crate) fn abandon_trial(&self) {
        self.trial.store(false, Ordering::Release);
    }

    fn eject(&self, now: u64, cooldown: u64) {
        self.ejected_until
            .store(now.saturating_add(cooldown).max(1), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps calls off it until `until` (its `Retry-After`).
    pub(crate) fn rest(&self, until: u64) {
        self.resting_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Its state at `now`, for operators.
    pub(crate) fn state(&self, now: u64) -> UpstreamHealth {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 {
            return if now < until {
                UpstreamHealth::Ejected {
                    remaining: Duration::from_millis(until - now),
                }
            } else {
                UpstreamHealth::Probation
            };
        }
        let resting = self.resting_until.load(Ordering::Relaxed);
        if now < resting {
            return UpstreamHealth::Resting {
                remaining: Duration::from_millis(resting - now),
            };
        }
        UpstreamHealth::Healthy
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        failures: 3,
        cooldown: Duration::from_secs(30),
        max_cooldown: Duration::from_secs(100),
    };

    #[test]
    fn consecutive_failures_eject_then_one_trial_decides() {
        let h = Health::new(&RULES);
        assert!(!h.failure(1, Admit::Yes, &RULES));
        h.success(Admit::Yes, &RULES);
        // A success in between starts the count again.
        assert!(!h.failure(2, Admit::Yes, &RULES));
        assert!(!h.failure(3, Admit::Yes, &RULES));
        assert!(h.failure(4, Admit::Yes, &RULES), "the third in a row");
        assert!(matches!(h.admit(5, false), Admit::No { ejected: true, .. }));
        assert_eq!(
            h.admit(5, true),
            Admit::Yes,
            "forced: every candidate is out"
        );
        assert!(matches!(h.state(5), UpstreamHealth::Ejected { .. }));
        // After the cool-down, exactly one trial.
        let later = 4 + 30_000;
        assert_eq!(h.admit(later, false), Admit::Trial);
        assert!(matches!(h.admit(later, false), Admit::No { .. }));
        // It fails: ejected for twice as long, then capped.
        assert!(h.failure(later, Admit::Trial, &RULES));
        assert!(matches!(h.admit(later + 59_999, false), Admit::No { .. }));
        assert_eq!(h.admit(later + 60_000, false), Admit::Trial);
        assert!(h.failure(later + 60_000, Admit::Trial, &RULES));
        assert_eq!(h.admit(later + 60_000 + 100_000, false), Admit::Trial);
        // It answers: healthy, and the next ejection starts short again.
        h.success(Admit::Trial, &RULES);
        assert_eq!(h.admit(later + 200_000, false), Admit::Yes);
        assert_eq!(h.state(later + 200_000), UpstreamHealth::Healthy);
        assert_eq!(h.ejections.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_rest_keeps_calls_off_even_forced() {
        let h = Health::new(&RULES);
        h.rest(5_000);
        assert_eq!(
            h.admit(1_000, true),
            Admit::No {
                until: 5_000,
                ejected: false
            }
        );
        assert!(matches!(h.state(1_000), UpstreamHealth::Resting { .. }));
        assert_eq!(h.admit(5_000, false), Admit::Yes);
    }
}
