//! One chat turn: validate -> session check -> rate-limit token -> per-session
//! queue -> history -> model -> atomic append (`run`).
//!
//! Turns of one session run one at a time in arrival order (a fair FIFO
//! async mutex per session), so stored history is never interleaved; turns
//! of different sessions run in parallel. For a session in the hot cache the
//! checks and the rate-limit token come before queueing (no `.await` before
//! the queue, so arrival order is kept), and a rejected message never waits
//! behind others. A session not in memory queues first and is loaded under
//! the queue, so a 404 or 410 still takes no token.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::error::{Error, ErrorKind, Result};
use crate::hot::{Hot, Lease};
use crate::llm::{ChatRequest, Usage};
use crate::rate_limit::Decision;
use crate::storage::Turn;
use crate::types::{Message, SessionId};
use crate::Inner;

/// Runs one turn (see the module doc and [`ChatCore::chat`](crate::ChatCore::chat)).
pub(crate) async fn run(inner: &Inner, id: SessionId, content: &str) -> Result<ChatReply> {
    validate_message(content)?;
    let take_token = || match inner.limiter.check(id) {
        Decision::Allowed { remaining } => Ok(remaining),
        Decision::Limited { retry_after } => Err(rate_limited(inner.limiter.limit(), retry_after)),
    };
    let (slot, mut lease, remaining) = match inner.hot.get(id) {
        Some(hot) => {
            if !inner.sessions.is_active_since(hot.last_active()) {
                return Err(Error::session_expired());
            }
            let remaining = take_token()?;
            let slot = inner.queues.enter(id).await;
            // Under the queue the session may have gone (purged) or expired
            // while earlier turns ran: rare, and the token stays spent.
            let lease = lease(inner, id, Some(hot)).await?;
            if !inner.sessions.is_active_since(lease.hot.last_active()) {
                return Err(Error::session_expired());
            }
            (slot, lease, remaining)
        }
        None => {
            let slot = inner.queues.enter(id).await;
            // An earlier turn may have loaded it while this one waited.
            let lease = lease(inner, id, inner.hot.get(id)).await?;
            if !inner.sessions.is_active_since(lease.hot.last_active()) {
                return Err(Error::session_expired());
            }
            let remaining = take_token()?;
            (slot, lease, remaining)
        }
    };
    // Earlier turns of this session are done: the history is complete.
    let user_at = inner.clock.now();
    let hot = std::sync::Arc::clone(&lease.hot);
    let system = hot
        .session
        .system_prompt
        .as_deref()
        .or(inner.system_prompt.as_deref())
        .filter(|s| !s.is_empty());
    // The history budget: what the system prompt and new message leave.
    let budget = inner
        .context_tokens
        .saturating_sub(system.map_or(0, estimate_tokens) + estimate_tokens(content));
    let completion = inner
        .model
        .complete(ChatRequest {
            system,
            history: lease.history_within(budget),
            user: content,
        })
        .await?;
    let reply_at = inner.clock.now();
    lease.writing();
    inner
        .store
        .append_turn(
            id,
            Turn {
                user: content,
                user_at,
                reply: &completion.content,
                reply_at,
            },
        )
        .await?;
    lease.record(content, user_at, &completion.content, reply_at);
    drop(lease);
    drop(slot);
    Ok(ChatReply {
        session_id: id,
        content: completion.content,
        limit: inner.limiter.limit(),
        remaining,
        usage: completion.usage,
    })
}

/// The session's hot entry (`known`, when the caller already looked it
/// up) with its history window, loaded from the store when it is not in
/// memory or a cancelled turn left its window in doubt.
async fn lease(inner: &Inner, id: SessionId, known: Option<Arc<Hot>>) -> Result<Lease<'_>> {
    if let Some(hot) = known {
        if let Some(lease) = inner.hot.lease(hot) {
            return Ok(lease);
        }
    }
    let (mut session, history) = inner
        .store
        .load_turn_context(id, inner.history_limit)
        .await?
        .ok_or_else(Error::session_not_found)?;
    // A turn never needs the metadata: keep it out of memory.
    session.metadata = None;
    let hot = inner.hot.insert(session, history);
    inner
        .hot
        .lease(hot)
        .ok_or_else(|| Error::internal("a fresh session window was already leased"))
}

/// Longest user message accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 32_000;

/// Tokens a message costs beyond its text (role and framing), per OpenAI's
/// published accounting for chat models.
const TOKENS_PER_MESSAGE: usize = 4;

/// Estimated tokens of a message: one token per four characters (rounded
/// up, counting chars rather than bytes so non-Latin text is not
/// over-counted fourfold), plus 4 per message (`TOKENS_PER_MESSAGE`). Deliberately simple
/// and dependency-free; it errs on the generous side for English text.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + TOKENS_PER_MESSAGE
}

/// The most messages that can fit `context_tokens`: each costs at least
/// `TOKENS_PER_MESSAGE` (an empty message). Bounds how much history a turn
/// ever reads.
pub(crate) fn history_read_limit(context_tokens: usize) -> usize {
    context_tokens / TOKENS_PER_MESSAGE + 1
}

/// Drops messages from the oldest end of `history` until it, the system
/// prompt and the new message fit `context_tokens`; returns what remains.
pub fn trim_history<'a>(
    history: &'a [Message],
    system: Option<&str>,
    user: &str,
    context_tokens: usize,
) -> &'a [Message] {
    let fixed = system.map_or(0, estimate_tokens) + estimate_tokens(user);
    let mut budget = context_tokens.saturating_sub(fixed);
    let mut keep = 0;
    for m in history.iter().rev() {
        let cost = estimate_tokens(&m.content);
        if cost > budget {
            break;
        }
        budget -= cost;
        keep += 1;
    }
    &history[history.len() - keep..]
}

/// The answer to one successful turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReply {
    /// The session the turn belongs to.
    pub session_id: SessionId,
    /// The assistant's reply.
    pub content: String,
    /// The session's quota per minute.
    pub limit: u32,
    /// Messages the session may still send right now.
    pub remaining: u32,
    /// Token usage, when the model reported it.
    pub usage: Option<Usage>,
}

/// Validates a user message.
pub(crate) fn validate_message(content: &str) -> Result<()> {
    if content.trim().is_empty() {
        return Err(Error::invalid("content", "content must not be empty"));
    }
    if content.len() > MAX_MESSAGE_CHARS && content.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Error::invalid(
            "content",
            format!("content must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

const SHARDS: usize = 16;

/// A session's queue: the FIFO lock and how many turns hold or wait on it.
#[derive(Debug)]
struct Queue {
    lock: Arc<AsyncMutex<()>>,
    users: usize,
}

type LockMap = HashMap<SessionId, Queue>;

/// One FIFO queue per session with a turn in flight; a session's entry is
/// removed when its last turn ends (or is cancelled while waiting), so the
/// map holds only busy sessions.
#[derive(Debug, Default)]
pub(crate) struct TurnQueues {
    shards: [Mutex<LockMap>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// Holds (or waits for) a session's turn slot; dropping it lets the next
/// turn in and, if it was the last user, removes the queue.
#[derive(Debug)]
pub(crate) struct TurnSlot<'a> {
    queues: &'a TurnQueues,
    id: SessionId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TurnQueues {
    fn shard(&self, id: &SessionId) -> &Mutex<LockMap> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Waits for `id`'s earlier turns to finish (in arrival order).
    pub(crate) async fn enter(&self, id: SessionId) -> TurnSlot<'_> {
        let lock = {
            let mut map = self.shard(&id).lock().unwrap_or_else(|p| p.into_inner());
            let queue = map.entry(id).or_insert_with(|| Queue {
                lock: Arc::default(),
                users: 0,
            });
            queue.users += 1;
            Arc::clone(&queue.lock)
        };
        // Made before waiting: if this future is dropped while it waits,
        // the slot's drop still counts this user out.
        let mut slot = TurnSlot {
            queues: self,
            id,
            guard: None,
        };
        slot.guard = Some(lock.lock_owned().await);
        slot
    }

    #[cfg(test)]
    pub(crate) fn busy_sessions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Drop for TurnSlot<'_> {
    fn drop(&mut self) {
        // Release first, then count this user out; the last one out removes
        // the queue. Users are counted under the shard lock.
        drop(self.guard.take());
        let mut map = self
            .queues
            .shard(&self.id)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = map.get_mut(&self.id) {
            queue.users -= 1;
            if queue.users == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// Maps a rate-limit rejection to its error.
pub(crate) fn rate_limited(limit: u32, retry_after: std::time::Duration) -> Error {
    // Whole seconds, at least one: a client told "0" would retry at once.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    Error::new(
        ErrorKind::RateLimited,
        format!("Rate limit exceeded: {limit} messages per minute"),
    )
    .with_retry_after(std::time::Duration::from_secs(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;
    use chrono::Utc;

    fn msg(content: &str) -> Message {
        Message {
            role: Role::User,
            content: content.to_owned(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn estimate_counts_chars_not_bytes() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("abcd"), 5);
        assert_eq!(estimate_tokens("abcde"), 6);
        assert_eq!(estimate_tokens("ééééé"), 6);
    }

    #[test]
    fn trimming_drops_the_oldest_first() {
        let history: Vec<Message> = (0..10).map(|i| msg(&format!("{i:0>40}"))).collect();
        // 40 chars -> 14 tokens each; user "hi" -> 5; budget 50 -> 3 messages.
        let kept = trim_history(&history, None, "hi", 50);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].content, history[7].content);
        assert_eq!(trim_history(&history, None, "hi", 1_000_000).len(), 10);
        assert!(trim_history(&history, Some(&"x".repeat(400)), "hi", 50).is_empty());
    }

    #[test]
    fn read_limit_covers_every_message_that_could_fit() {
        let limit = history_read_limit(3000);
        let tiny: Vec<Message> = (0..limit + 50).map(|_| msg("")).collect();
        assert!(trim_history(&tiny, None, "", 3000).len() < limit);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = rate_limited(5, std::time::Duration::from_millis(10));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(1)));
        let e = rate_limited(5, std::time::Duration::from_millis(11_500));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(12)));
        assert_eq!(e.to_string(), "Rate limit exceeded: 5 messages per minute");
    }

    #[test]
    fn empty_and_oversized_messages_are_rejected() {
        assert!(validate_message("   ").is_err());
        assert!(validate_message(&"a".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
        assert!(validate_message("Hello").is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_no_queue_behind() {
        let queues = TurnQueues::default();
        let id = SessionId::new_v4();
        let first = queues.enter(id).await;
        {
            let waiting = queues.enter(id);
            tokio::pin!(waiting);
            // Poll once so it queues, then drop it (a client going away).
            assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        }
        drop(first);
        assert_eq!(queues.busy_sessions(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn queues_are_fifo_and_cleaned_up() {
        let queues = Arc::new(TurnQueues::default());
        let id = SessionId::new_v4();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = queues.enter(id).await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (q, o) = (Arc::clone(&queues), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = q.enter(id).await;
                o.lock().unwrap().push(i);
            }));
            // Let task i queue before task i + 1 arrives.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(queues.busy_sessions(), 0);
    }
}
