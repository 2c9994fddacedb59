//! [`ChatCore`], the facade every caller holds: built once with
//! [`ChatCore::builder`], cheap to clone, shared by every request. It owns
//! what all clones share (`Inner`, `inner.rs`) and hands out the
//! caller-scoped view ([`Scoped`]) through which sessions, turns and
//! feedback are reached, the key ring, the sweeper and readiness.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::caller::Caller;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::feedback::FeedbackDesk;
use crate::hot::HotSessions;
use crate::inner::Inner;
use crate::keys::KeyRing;
use crate::llm::ChatModel;
use crate::rate_limit::{GovernorLimiter, RateLimiter};
use crate::scoped::Scoped;
use crate::session::SessionManager;
use crate::storage::Store;
use crate::tokens::history_read_limit;
use crate::types::PurgeReport;

/// The facade: built once, cloned freely (all clones share the same
/// state). Sessions, turns and feedback are reached through the view of
/// one caller, [`ChatCore::as_caller`].
#[derive(Debug, Clone)]
pub struct ChatCore {
    inner: Arc<Inner>,
}

/// Builds a [`ChatCore`]. Every setting has the product's default.
#[derive(Debug)]
pub struct ChatCoreBuilder {
    store: Option<Arc<dyn Store>>,
    model: Option<Arc<dyn ChatModel>>,
    limiter: Option<Arc<dyn RateLimiter>>,
    principal_limiter: Option<Arc<dyn RateLimiter>>,
    session_limiter: Option<Arc<dyn RateLimiter>>,
    address_limiter: Option<Arc<dyn RateLimiter>>,
    feedback_limiter: Option<Arc<dyn RateLimiter>>,
    clock: Arc<dyn Clock>,
    messages_per_minute: u32,
    idle_timeout: Duration,
    retention: Duration,
    system_prompt: Option<String>,
    context_tokens: usize,
    hot_sessions: usize,
    hot_cache_bytes: usize,
    claim_ttl: Duration,
}

impl Default for ChatCoreBuilder {
    fn default() -> Self {
        ChatCoreBuilder {
            store: None,
            model: None,
            limiter: None,
            principal_limiter: None,
            session_limiter: None,
            address_limiter: None,
            feedback_limiter: None,
            clock: Arc::new(SystemClock),
            messages_per_minute: Self::DEFAULT_MESSAGES_PER_MINUTE,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            retention: Self::DEFAULT_RETENTION,
            system_prompt: None,
            context_tokens: Self::DEFAULT_CONTEXT_TOKENS,
            hot_sessions: Self::DEFAULT_HOT_SESSIONS,
            hot_cache_bytes: Self::DEFAULT_HOT_CACHE_BYTES,
            claim_ttl: Duration::from_secs(15),
        }
    }
}

impl ChatCoreBuilder {
    /// Messages per minute per session, unless set: the product's 5.
    pub const DEFAULT_MESSAGES_PER_MINUTE: u32 = 5;
    /// How long a session may idle before it expires, unless set: 30 min.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// How long an idle session's data is kept, unless set: 183 days (six
    /// months).
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(183 * 24 * 3600);
    /// The token budget of a request's system prompt, history and new
    /// messages, unless set.
    pub const DEFAULT_CONTEXT_TOKENS: usize = 3000;
    /// Sessions the hot-session cache holds, unless set.
    pub const DEFAULT_HOT_SESSIONS: usize = 10_000;
    /// Memory the hot-session cache may use, unless set: 32 MiB.
    pub const DEFAULT_HOT_CACHE_BYTES: usize = 32 << 20;

    /// The storage backend (required).
    #[must_use]
    pub fn store(self, store: impl Store + 'static) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// The storage backend, already shared (required unless
    /// [`ChatCoreBuilder::store`] is used).
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The model (required).
    #[must_use]
    pub fn model(self, model: impl ChatModel + 'static) -> Self {
        self.shared_model(Arc::new(model))
    }

    /// The model, already shared.
    #[must_use]
    pub fn shared_model(mut self, model: Arc<dyn ChatModel>) -> Self {
        self.model = Some(model);
        self
    }

    /// Messages per minute per session, with a burst of the same size
    /// (default 5). Ignored when [`ChatCoreBuilder::rate_limiter`] is set.
    #[must_use]
    pub fn messages_per_minute(mut self, n: u32) -> Self {
        self.messages_per_minute = n;
        self
    }

    /// A rate limiter of your own instead of the default GCRA limiter.
    #[must_use]
    pub fn rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// A limiter of your own for the principal quota (see
    /// [`ChatCoreBuilder::principal_messages_per_minute`]), such as a
    /// `RedisLimiter` shared by several gateways.
    #[must_use]
    pub fn principal_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.principal_limiter = Some(limiter);
        self
    }

    /// Sessions a caller may create per hour (off by default), keyed by
    /// its principal, or by the client [`Scoped::with_client`] names for an
    /// anonymous caller. Applies to sessions made through
    /// [`ChatCore::as_caller`].
    #[must_use]
    pub fn sessions_per_hour(mut self, n: NonZeroU32) -> Self {
        self.session_limiter = Some(Arc::new(GovernorLimiter::per_hour(n)));
        self
    }

    /// A limiter of your own for the sessions-per-hour quota (see
    /// [`ChatCoreBuilder::sessions_per_hour`]).
    #[must_use]
    pub fn session_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.session_limiter = Some(limiter);
        self
    }

    /// Messages per minute from one client address (off by default),
    /// across its sessions and its stateless calls, for a caller with no
    /// principal: [`Caller::Anyone`], or the holder of a token of a session
    /// no principal owns. The address is what [`Scoped::with_client`]
    /// names; a caller without one is not metered by address.
    #[must_use]
    pub fn address_messages_per_minute(mut self, n: NonZeroU32) -> Self {
        self.address_limiter = Some(Arc::new(GovernorLimiter::new(n)));
        self
    }

    /// A limiter of your own for the per-address quota (see
    /// [`ChatCoreBuilder::address_messages_per_minute`]).
    #[must_use]
    pub fn address_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.address_limiter = Some(limiter);
        self
    }

    /// Feedback per hour (off by default), counted twice: per session, and
    /// per principal (the session's owner, for its token's holder) or, with
    /// none, per client address.
    #[must_use]
    pub fn feedback_per_hour(mut self, n: NonZeroU32) -> Self {
        self.feedback_limiter = Some(Arc::new(GovernorLimiter::per_hour(n)));
        self
    }

    /// A limiter of your own for the feedback quota (see
    /// [`ChatCoreBuilder::feedback_per_hour`]).
    #[must_use]
    pub fn feedback_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.feedback_limiter = Some(limiter);
        self
    }

    /// How long a turn's claim on its session lasts in a store shared by
    /// several gateways, unless renewed (default 15 s). A running turn
    /// renews it every third of that; it bounds how long a session stays
    /// held after the gateway running its turn dies.
    #[must_use]
    pub fn turn_claim_ttl(mut self, d: Duration) -> Self {
        self.claim_ttl = d;
        self
    }

    /// Messages per minute per principal, across all its sessions (off by
    /// default). Applies to turns made through [`ChatCore::as_caller`]
    /// with a [`Caller::Principal`].
    #[must_use]
    pub fn principal_messages_per_minute(mut self, n: NonZeroU32) -> Self {
        self.principal_limiter = Some(Arc::new(GovernorLimiter::new(n)));
        self
    }

    /// How long a session may stay idle before it expires (default 30 min).
    #[must_use]
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// How long an idle session's data is kept (default 183 days).
    #[must_use]
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// The default system prompt; empty means none (the default).
    #[must_use]
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        let prompt = prompt.into();
        self.system_prompt = (!prompt.is_empty()).then_some(prompt);
        self
    }

    /// The token budget for system prompt, history and new message
    /// (default 3000); history is trimmed from the oldest end to fit.
    #[must_use]
    pub fn context_tokens(mut self, n: usize) -> Self {
        self.context_tokens = n;
        self
    }

    /// How many sessions the hot-session cache keeps in memory (default
    /// 10,000; 0 turns it off). With it, a chat turn reads nothing from
    /// storage: the session and the history that can still fit the context
    /// budget are in memory. It assumes this facade is the only writer of
    /// its store's messages, so on a store shared by several gateways
    /// ([`MessageStore::claims`](crate::MessageStore::claims)) it keeps the
    /// histories only: each turn still claims its session, and reads its
    /// messages only when another gateway moved them on
    /// ([`HistoryVersion`](crate::HistoryVersion)).
    #[must_use]
    pub fn hot_sessions(mut self, n: usize) -> Self {
        self.hot_sessions = n;
        self
    }

    /// About how much memory the hot-session cache may hold, in bytes
    /// (default 32 MiB): system prompts, history text and index, by their
    /// allocations. Sessions are evicted to stay under it.
    #[must_use]
    pub fn hot_cache_bytes(mut self, n: usize) -> Self {
        self.hot_cache_bytes = n;
        self
    }

    /// Where time comes from (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the facade.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the store or model is missing, or
    /// `messages_per_minute`, `idle_timeout` or `context_tokens` is zero.
    pub fn build(self) -> Result<ChatCore> {
        let store = self
            .store
            .ok_or_else(|| Error::invalid("store", "a storage backend is required"))?;
        let model = self
            .model
            .ok_or_else(|| Error::invalid("model", "a model is required"))?;
        let limiter = match self.limiter {
            Some(l) => l,
            None => {
                let n = NonZeroU32::new(self.messages_per_minute).ok_or_else(|| {
                    Error::invalid(
                        "messages_per_minute",
                        "messages_per_minute must be at least 1",
                    )
                })?;
                Arc::new(GovernorLimiter::new(n))
            }
        };
        if self.idle_timeout.is_zero() {
            return Err(Error::invalid(
                "idle_timeout",
                "idle_timeout must be positive",
            ));
        }
        if self.context_tokens == 0 {
            return Err(Error::invalid(
                "context_tokens",
                "context_tokens must be positive",
            ));
        }
        if self.claim_ttl < Duration::from_millis(30) {
            return Err(Error::invalid(
                "turn_claim_ttl",
                "turn_claim_ttl must be at least 30 ms",
            ));
        }
        // Another gateway may move a shared store's sessions on at any
        // time: there, a session's history is kept only for a claim to
        // confirm it current, never served as it is.
        let (hot_sessions, windows) = if store.claims().is_some() {
            (0, self.hot_sessions)
        } else {
            (self.hot_sessions, 0)
        };
        let cache = |n| {
            Arc::new(HotSessions::new(
                n,
                self.hot_cache_bytes,
                self.context_tokens,
            ))
        };
        let (hot, windows) = (cache(hot_sessions), cache(windows));
        let sessions = SessionManager::new(
            Arc::clone(&store),
            Arc::clone(&self.clock),
            Arc::clone(&hot),
            self.idle_timeout,
            self.retention,
        );
        let feedback = FeedbackDesk::new(Arc::clone(&store), Arc::clone(&self.clock));
        Ok(ChatCore {
            inner: Arc::new(Inner {
                store,
                model,
                limiter,
                principal_limiter: self.principal_limiter,
                session_limiter: self.session_limiter,
                address_limiter: self.address_limiter,
                feedback_limiter: self.feedback_limiter,
                clock: self.clock,
                sessions,
                feedback,
                queues: Arc::default(),
                hot,
                windows,
                system_prompt: self.system_prompt,
                history_limit: history_read_limit(self.context_tokens),
                context_tokens: self.context_tokens,
                claim_ttl: self.claim_ttl,
            }),
        })
    }
}

impl ChatCore {
    /// A builder with the product's defaults.
    pub fn builder() -> ChatCoreBuilder {
        ChatCoreBuilder::default()
    }

    /// The rate limiter in use.
    pub fn rate_limiter(&self) -> &dyn RateLimiter {
        &*self.inner.limiter
    }

    /// The storage backend in use, raw: no caller's view, no quota, no
    /// cache. For tests and tools; a service acts on sessions through
    /// [`ChatCore::as_caller`].
    pub fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    /// The facade as `caller` sees it: the one way to act on sessions.
    /// Sessions it may not use do not exist, sessions it creates are its
    /// own, its quotas apply, and admin operations need an admin.
    pub fn as_caller(&self, caller: Caller) -> Scoped<'_> {
        Scoped::new(&self.inner, caller)
    }

    /// The view for [`Caller::Anyone`]: every session is visible and no
    /// principal's quota applies. For a service that does its own access
    /// control, or none.
    pub fn anyone(&self) -> Scoped<'_> {
        self.as_caller(Caller::Anyone)
    }

    /// API keys: create, verify, list, revoke.
    pub fn keys(&self) -> KeyRing<'_> {
        KeyRing::new(&*self.inner.store, &*self.inner.clock)
    }

    /// Runs one retention sweep: purges sessions idle past retention and
    /// lets every in-process rate limiter forget the keys it no longer
    /// needs, so their state stays bounded by the recently active keys.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage); nothing is deleted then.
    pub async fn sweep(&self) -> Result<PurgeReport> {
        let inner = &self.inner;
        inner.limiter.forget_idle();
        for limiter in [
            &inner.principal_limiter,
            &inner.session_limiter,
            &inner.address_limiter,
            &inner.feedback_limiter,
        ]
        .into_iter()
        .flatten()
        {
            limiter.forget_idle();
        }
        self.inner.sessions.purge().await
    }

    /// Spawns a task that calls [`ChatCore::sweep`] every `interval` (the
    /// first after one interval) and hands each outcome to `report`. Abort
    /// the returned handle to stop it.
    pub fn spawn_sweeper<F>(&self, interval: Duration, report: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Result<PurgeReport>) + Send + Sync + 'static,
    {
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                report(core.sweep().await);
            }
        })
    }

    /// How many sessions the hot cache holds now (on a shared store: how
    /// many histories are kept for claims to confirm).
    pub fn cached_sessions(&self) -> usize {
        self.inner.hot.len() + self.inner.windows.len()
    }

    /// Checks that storage and the rate limiters' stores are reachable.
    ///
    /// # Errors
    /// The first dependency's error.
    pub async fn ready(&self) -> Result<()> {
        self.readiness()
            .await
            .into_iter()
            .try_for_each(|d| d.status)
    }

    /// Checks each dependency in turn: storage, then the rate limiter (the
    /// principal limiter too, when it lives elsewhere).
    pub async fn readiness(&self) -> Vec<Dependency> {
        let inner = &self.inner;
        let mut out = vec![
            Dependency {
                name: "storage",
                backend: inner.store.backend(),
                status: inner.store.ping().await,
            },
            Dependency {
                name: "rate_limiter",
                backend: inner.limiter.backend(),
                status: inner.limiter.ping().await,
            },
        ];
        if let Some(p) = &inner.principal_limiter {
            if p.backend() != inner.limiter.backend() {
                out.push(Dependency {
                    name: "principal_rate_limiter",
                    backend: p.backend(),
                    status: p.ping().await,
                });
            }
        }
        out
    }
}

/// One dependency's state, from [`ChatCore::readiness`].
#[derive(Debug)]
pub struct Dependency {
    /// What it is for: `storage`, `rate_limiter`.
    pub name: &'static str,
    /// What serves it: `sqlite`, `postgres`, `memory`, `redis`.
    pub backend: &'static str,
    /// Whether it answered.
    pub status: Result<()>,
}
