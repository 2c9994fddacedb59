//! What every clone of a [`ChatCore`](crate::ChatCore) shares: the one
//! state the turn, quota, claim and caller-scoped code reads. Apart from
//! the facade, so that code depends on the state and not on the facade
//! that hands it out.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::feedback::FeedbackDesk;
use crate::hot::HotSessions;
use crate::llm::ChatModel;
use crate::queue::TurnQueues;
use crate::rate_limit::RateLimiter;
use crate::session::SessionManager;
use crate::storage::Store;

/// What every clone of a [`ChatCore`](crate::ChatCore) shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) model: Arc<dyn ChatModel>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) principal_limiter: Option<Arc<dyn RateLimiter>>,
    /// Sessions a caller may create per hour, when limited.
    pub(crate) session_limiter: Option<Arc<dyn RateLimiter>>,
    /// Messages per client address, for callers with no principal.
    pub(crate) address_limiter: Option<Arc<dyn RateLimiter>>,
    /// Feedback per session, and per principal or address.
    pub(crate) feedback_limiter: Option<Arc<dyn RateLimiter>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sessions: SessionManager,
    pub(crate) feedback: FeedbackDesk,
    pub(crate) queues: Arc<TurnQueues>,
    pub(crate) hot: Arc<HotSessions>,
    /// On a store shared by several gateways, each session's history as of
    /// the version this process last stored or read, which only a claim
    /// may use (see `claim`); `hot` is off there. Empty and off otherwise.
    pub(crate) windows: Arc<HotSessions>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) context_tokens: usize,
    pub(crate) history_limit: usize,
    pub(crate) claim_ttl: Duration,
}
