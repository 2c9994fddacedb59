//! Per-session message quotas: the [`RateLimiter`] trait, its default, a
//! keyed GCRA limiter from `governor` in process memory, and (feature
//! `redis`) `RedisLimiter`, the same algorithm in Redis for several
//! gateways sharing one quota.
//!
//! GCRA keeps one timestamp per key and decides with one compare-and-swap,
//! so a check takes no lock and is exact under concurrency: of 20 parallel
//! messages to a fresh session with a quota of 5, exactly 5 pass.
//!
//! A check is asynchronous and fallible (a limiter across the network can
//! fail), but [`Check`] lets an in-process limiter answer at once: no
//! allocation, no suspension, so the default path costs what a plain call
//! costs.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};

use crate::error::Result;
use crate::types::SessionId;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{OnUnavailable, RedisLimiter, RedisLimiterConfig};

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

/// The answer of [`RateLimiter::check`] (a [`Decision`]) or
/// [`RateLimiter::check_both`] (a [`Joint`]), to `.await`: ready at once
/// (an in-process limiter) or a boxed future (a limiter across the
/// network).
#[must_use = "a check does nothing until awaited"]
pub enum Check<'a, T = Decision> {
    /// Decided already; `None` once taken.
    Ready(Option<Result<T>>),
    /// Deciding.
    Pending(Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>),
}

impl<'a, T> Check<'a, T> {
    /// An answer known at once.
    pub fn ready(decision: Result<T>) -> Self {
        Check::Ready(Some(decision))
    }

    /// An answer still to come.
    pub fn pending(future: impl Future<Output = Result<T>> + Send + 'a) -> Self {
        Check::Pending(Box::pin(future))
    }

    /// The answer, if it is known without waiting.
    pub fn now(self) -> Option<Result<T>> {
        match self {
            Check::Ready(decision) => decision,
            Check::Pending(_) => None,
        }
    }
}

impl<T: Unpin> Future for Check<'_, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Check::Ready(decision) => {
                Poll::Ready(decision.take().expect("a Check polled after it was ready"))
            }
            Check::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Check<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ready(d) => f.debug_tuple("Ready").field(d).finish(),
            Check::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// The outcome of [`RateLimiter::check_both`]: one message drawing on two
/// quotas (its payer's and its session's, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joint {
    /// Both had a token, and one was taken from each; `remaining` is the
    /// checking limiter's.
    Allowed {
        /// Messages that would still pass immediately after this one.
        remaining: u32,
    },
    /// The other quota (`also`) refused; nothing was taken from either.
    AlsoLimited {
        /// How long until that quota has a token again.
        retry_after: Duration,
    },
    /// The checking limiter's quota refused. Nothing was taken from it;
    /// whether `also`'s token was is [`RateLimiter::check_both`]'s to say.
    Limited {
        /// How long until this quota has a token again.
        retry_after: Duration,
    },
}

/// A readiness probe's future (see [`RateLimiter::ping`]).
pub type Ping<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Decides whether a key (a session, a principal, a client address) may
/// send one more message.
pub trait RateLimiter: Any + Send + Sync + fmt::Debug {
    /// Takes one message from `key`'s quota, if there is one left.
    ///
    /// # Errors
    /// [`ErrorKind::LimiterUnavailable`](crate::ErrorKind::LimiterUnavailable)
    /// when the limiter's shared store cannot be reached and it is set to
    /// refuse then. An in-process limiter never fails.
    fn check(&self, key: SessionId) -> Check<'_>;

    /// Takes one token from `also`'s quota for `also_key` and one from
    /// this limiter's for `key`: a message that draws on both.
    ///
    /// The provided method checks `also` first and then this limiter, so
    /// a refusal here leaves `also`'s token spent. A limiter that can
    /// decide both at once overrides it and spends neither when either
    /// refuses (the Redis limiter does, in one round trip, when `also`
    /// shares its Redis).
    ///
    /// # Errors
    /// As [`RateLimiter::check`], from either limiter.
    fn check_both<'a>(
        &'a self,
        key: SessionId,
        also: &'a dyn RateLimiter,
        also_key: SessionId,
    ) -> Check<'a, Joint> {
        one_then_other(self, key, also, also_key)
    }

    /// The quota: messages per period (a minute, unless the limiter was
    /// made for another period).
    fn limit(&self) -> u32;

    /// Forgets keys whose state no longer matters (they are back at full
    /// quota), bounding memory. Called periodically by the sweep.
    fn forget_idle(&self) {}

    /// Checks that the limiter's shared store is reachable (for readiness
    /// probes); an in-process limiter always is.
    fn ping(&self) -> Ping<'_> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// What kind of limiter this is, for readiness reports: `"memory"` or
    /// `"redis"`.
    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// [`RateLimiter::check_both`] as two checks, `also`'s first; answered
/// at once when both limiters answer at once.
fn one_then_other<'a, L: RateLimiter + ?Sized>(
    this: &'a L,
    key: SessionId,
    also: &'a dyn RateLimiter,
    also_key: SessionId,
) -> Check<'a, Joint> {
    fn joint(also: Decision, this: Option<Decision>) -> Joint {
        match (also, this) {
            (Decision::Limited { retry_after }, _) => Joint::AlsoLimited { retry_after },
            (_, Some(Decision::Limited { retry_after })) => Joint::Limited { retry_after },
            (_, Some(Decision::Allowed { remaining })) => Joint::Allowed { remaining },
            (Decision::Allowed { .. }, None) => unreachable!("checked when also allowed"),
        }
    }
    let first = also.check(also_key);
    let first = match first {
        Check::Ready(Some(Ok(d @ Decision::Limited { .. }))) => {
            return Check::ready(Ok(joint(d, None)))
        }
        Check::Ready(Some(Ok(d))) => match this.check(key) {
            Check::Ready(Some(second)) => return Check::ready(second.map(|s| joint(d, Some(s)))),
            second => return Check::pending(async move { Ok(joint(d, Some(second.await?))) }),
        },
        other => other,
    };
    Check::pending(async move {
        let d = first.await?;
        if let Decision::Limited { .. } = d {
            return Ok(joint(d, None));
        }
        Ok(joint(d, Some(this.check(key).await?)))
    })
}

/// A limiter key for anything that is not a session (a principal's name,
/// a client address). The limiters are keyed by 16-byte ids: a name of up
/// to 15 bytes (every IPv4 address) is its own key, its length first; a
/// longer one is the first 16 bytes of its SHA-256 with the first byte set
/// to 0xFF, which no length is. Two names share a key only if SHA-256
/// collides in 120 bits; the hash is skipped where it is not needed, since
/// an anonymous caller's address is keyed on every request.
pub fn key_of(name: &[u8]) -> SessionId {
    let mut key = [0u8; 16];
    if name.len() < key.len() {
        key[0] = name.len() as u8;
        key[1..=name.len()].copy_from_slice(name);
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, name);
        key.copy_from_slice(&digest.as_ref()[..16]);
        key[0] = 0xFF;
    }
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

    /// Takes one message from `key`'s quota: [`RateLimiter::check`] without
    /// the future around it.
    #[inline]
    pub fn decide(&self, key: SessionId) -> Decision {
        match self.inner.check_key(&key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }
}

impl RateLimiter for GovernorLimiter {
    #[inline]
    fn check(&self, key: SessionId) -> Check<'_> {
        Check::ready(Ok(self.decide(key)))
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

    #[test]
    fn names_are_keyed_apart() {
        let names: [&[u8]; 6] = [
            b"",
            b"a",
            b"203.0.113.1",
            b"203.0.113.10",
            b"2001:db8:1:2::/64",
            b"2001:db8:1:3::/64",
        ];
        let keys: std::collections::HashSet<_> = names.iter().map(|n| key_of(n)).collect();
        assert_eq!(keys.len(), names.len());
        assert_eq!(key_of(b"203.0.113.1"), key_of(b"203.0.113.1"));
        let long = key_of(b"a name longer than fifteen bytes");
        assert_eq!(long.as_bytes()[0], 0xFF);
    }
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
                l.decide(s),
                Decision::Allowed {
                    remaining: expected
                }
            );
        }
        match l.decide(s) {
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::from_secs(10), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(12), "{retry_after:?}");
            }
            other => panic!("expected limited, got {other:?}"),
        }
        // Another session is unaffected.
        assert!(matches!(
            l.decide(SessionId::new_v4()),
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
                std::thread::spawn(move || matches!(l.decide(s), Decision::Allowed { .. }))
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
    fn the_trait_answers_at_once() {
        let l = limiter(1);
        let s = SessionId::new_v4();
        assert_eq!(
            RateLimiter::check(&l, s).now().map(|r| r.unwrap()),
            Some(Decision::Allowed { remaining: 0 })
        );
        assert!(matches!(
            RateLimiter::check(&l, s).now(),
            Some(Ok(Decision::Limited { .. }))
        ));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        // 60,000 a minute: one token every millisecond, so a key is back at
        // full quota (and forgettable) almost at once.
        let l = limiter(60_000);
        for _ in 0..100 {
            l.decide(SessionId::new_v4());
        }
        assert_eq!(l.tracked_keys(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert_eq!(l.tracked_keys(), 0);
    }
}
