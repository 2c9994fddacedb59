//! Per-session message quotas: the [`RateLimiter`] trait and its default,
//! a keyed GCRA limiter from `governor`.
//!
//! GCRA keeps one timestamp per key and decides with one compare-and-swap,
//! so a check takes no lock and is exact under concurrency: of 20 parallel
//! messages to a fresh session with a quota of 5, exactly 5 pass.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};

use crate::types::SessionId;

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The message may go ahead; `remaining` more would pass right now.
    Allowed {
        /// Messages that would still pass immediately after this one.
        remaining: u32,
    },
    /// Over quota; the next message passes after `retry_after`.
    Limited {
        /// How long until one more message would pass.
        retry_after: Duration,
    },
}

/// Decides whether a session may send one more message.
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Takes one message from `session`'s quota, if there is one left.
    fn check(&self, session: SessionId) -> Decision;

    /// The quota: messages per minute.
    fn limit(&self) -> u32;

    /// Forgets keys whose state no longer matters (they are back at full
    /// quota), bounding memory. Called periodically by the sweep.
    fn forget_idle(&self) {}
}

/// A limiter key for anything that is not a session (a principal's name,
/// a client address): the first 16 bytes of the SHA-256 of `name`. The
/// limiters are keyed by 16-byte ids; a collision would need SHA-256's.
pub fn key_of(name: &[u8]) -> SessionId {
    let digest = ring::digest::digest(&ring::digest::SHA256, name);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    SessionId::from_bytes(key)
}

type Keyed =
    Gcra<SessionId, DefaultKeyedStateStore<SessionId>, DefaultClock, StateInformationMiddleware>;

/// The default limiter: GCRA per session, `messages_per_minute` with a
/// burst of the same size.
pub struct GovernorLimiter {
    inner: Keyed,
    clock: DefaultClock,
    limit: u32,
}

impl fmt::Debug for GovernorLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GovernorLimiter")
            .field("limit", &self.limit)
            .field("keys", &self.inner.len())
            .finish()
    }
}

impl GovernorLimiter {
    /// A limiter allowing `per_minute` messages per minute per session, in
    /// bursts of up to `per_minute`.
    pub fn new(per_minute: NonZeroU32) -> Self {
        let clock = DefaultClock::default();
        let quota = Quota::per_minute(per_minute).allow_burst(per_minute);
        let inner = Gcra::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        GovernorLimiter {
            inner,
            clock,
            limit: per_minute.get(),
        }
    }

    /// A limiter allowing `per_hour` events per hour per key, in bursts of
    /// up to `per_hour` (for quotas such as sessions created per hour;
    /// [`RateLimiter::limit`] then reports the hourly figure).
    pub fn per_hour(per_hour: NonZeroU32) -> Self {
        let clock = DefaultClock::default();
        let quota = Quota::per_hour(per_hour).allow_burst(per_hour);
        let inner = Gcra::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        GovernorLimiter {
            inner,
            clock,
            limit: per_hour.get(),
        }
    }

    /// How many sessions the limiter holds state for.
    pub fn tracked_keys(&self) -> usize {
        self.inner.len()
    }
}

impl RateLimiter for GovernorLimiter {
    #[inline]
    fn check(&self, session: SessionId) -> Decision {
        match self.inner.check_key(&session) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    fn limit(&self) -> u32 {
        self.limit
    }

    fn forget_idle(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn limiter(n: u32) -> GovernorLimiter {
        GovernorLimiter::new(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn burst_then_limited_with_a_wait() {
        let l = limiter(5);
        let s = SessionId::new_v4();
        for expected in (0..5).rev() {
            assert_eq!(
                l.check(s),
                Decision::Allowed {
                    remaining: expected
                }
            );
        }
        match l.check(s) {
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::from_secs(10), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(12), "{retry_after:?}");
            }
            other => panic!("expected limited, got {other:?}"),
        }
        // Another session is unaffected.
        assert!(matches!(
            l.check(SessionId::new_v4()),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn exact_under_concurrency() {
        let l = Arc::new(limiter(5));
        let s = SessionId::new_v4();
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || matches!(l.check(s), Decision::Allowed { .. }))
            })
            .collect();
        let passed = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        // 60,000 a minute: one token every millisecond, so a key is back at
        // full quota (and forgettable) almost at once.
        let l = limiter(60_000);
        for _ in 0..100 {
            l.check(SessionId::new_v4());
        }
        assert_eq!(l.tracked_keys(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert_eq!(l.tracked_keys(), 0);
    }
}
