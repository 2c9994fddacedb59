//! One chat turn, in two steps: [`PreparedTurn`] (validate -> session check
//! -> rate-limit token -> per-session queue -> history) and its finish
//! (atomic append + cache update), with the model call between them, whole
//! ([`PreparedTurn::complete`]) or streamed ([`PreparedTurn::stream`]).
//!
//! A prepared turn owns its guards (the session's queue slot and its cached
//! history window) rather than borrowing the facade, so a streamed turn can
//! live inside a `'static` response body; dropping it at any point releases
//! both and stores nothing.
//!
//! Turns of one session run one at a time in arrival order (a fair FIFO
//! async mutex per session), so stored history is never interleaved; turns
//! of different sessions run in parallel. For a session in the hot cache the
//! checks and the rate-limit token come before queueing (no `.await` before
//! the queue, so arrival order is kept), and a rejected message never waits
//! behind others. A session not in memory queues first and is loaded under
//! the queue, so a 404 or 410 still takes no token.
//!
//! On a store shared by several gateways ([`MessageStore::shared`](crate::storage::MessageStore::shared)) the
//! per-process queue is not enough: under it, a turn also claims the
//! session in the store (a `ClaimGuard`), which loads the history as stored
//! by whichever gateway wrote last, and the append succeeds only while the
//! claim is held. The claim is a row update, not a held connection or
//! lock, so no database connection waits on the model.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use bytes::Bytes;

use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::hot::{Hot, Lease};
use crate::llm::{
    ChatOptions, ChatRequest, Completion, CompletionStream, Input, RawChunk, ReplyBuilder,
    StreamEvent, ToolCallDelta,
};
use crate::message::{Message, MessageRef, Role, WireMessage};
use crate::rate_limit::Decision;
use crate::storage::{Claim, Store, Turn, TurnToken, MAX_TURN_MESSAGES};
use crate::tokens::{estimate_tokens, message_tokens};
use crate::types::{SessionId, Usage};
use crate::Inner;

/// A turn's new messages, as a caller hands them in.
#[derive(Debug, Clone)]
pub enum TurnInput<'c> {
    /// One user message of plain text (borrowed or owned).
    Text(Cow<'c, str>),
    /// Messages of any kind, oldest first: a user message (text or content
    /// parts), or the tool results that answer the previous reply's tool
    /// calls, perhaps followed by a user message.
    Messages(Vec<Message>),
}

impl<'c> From<&'c str> for TurnInput<'c> {
    fn from(text: &'c str) -> Self {
        TurnInput::Text(Cow::Borrowed(text))
    }
}

impl From<String> for TurnInput<'_> {
    fn from(text: String) -> Self {
        TurnInput::Text(Cow::Owned(text))
    }
}

impl<'c> From<Cow<'c, str>> for TurnInput<'c> {
    fn from(text: Cow<'c, str>) -> Self {
        TurnInput::Text(text)
    }
}

impl From<Vec<Message>> for TurnInput<'_> {
    fn from(messages: Vec<Message>) -> Self {
        TurnInput::Messages(messages)
    }
}

impl TurnInput<'_> {
    /// Whether the first new message is a tool's result: then the previous
    /// reply's tool calls must go upstream with it.
    fn answers_calls(&self) -> bool {
        match self {
            TurnInput::Text(_) => false,
            TurnInput::Messages(m) => m
                .first()
                .is_some_and(|m| matches!(m.role, Role::Tool | Role::Function)),
        }
    }
}

/// Prepares one turn (see the module doc and [`ChatCore::prepare`](crate::ChatCore::prepare)).
pub(crate) async fn prepare<'c>(
    inner: &Arc<Inner>,
    caller: &Caller,
    id: SessionId,
    input: TurnInput<'c>,
    options: ChatOptions,
) -> Result<PreparedTurn<'c>> {
    validate_input(&input)?;
    let mut claim = None;
    let (slot, lease, remaining) = match inner.hot.get(id) {
        Some(hot) => {
            // Another caller's session does not exist, as far as it knows.
            if !caller.may_use(&hot.session) {
                return Err(Error::session_not_found());
            }
            if !inner.sessions.is_active_since(hot.last_active()) {
                return Err(Error::session_expired());
            }
            // An in-process limiter answers at once: this await does not
            // suspend, and arrival order is kept. (A limiter across the
            // network may suspend here; a session's turns then enter its
            // queue in the order their checks end, still one at a time.)
            let remaining = take_token(inner, caller, id).await?;
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
            let (lease, taken) = if inner.store.shared() {
                let (guard, lease, taken) = claim_session(inner, caller, id).await?;
                claim = Some(guard);
                (lease, taken)
            } else {
                // An earlier turn may have loaded it while this one waited.
                (lease(inner, id, inner.hot.get(id)).await?, None)
            };
            if !caller.may_use(&lease.hot.session) {
                return Err(Error::session_not_found());
            }
            if !inner.sessions.is_active_since(lease.hot.last_active()) {
                return Err(Error::session_expired());
            }
            let remaining = match taken {
                Some(remaining) => remaining,
                None => take_token(inner, caller, id).await?,
            };
            (slot, lease, remaining)
        }
    };
    // Earlier turns of this session are done: the history is complete.
    check_calls_answered(&input, lease.last())?;
    Ok(PreparedTurn {
        inner: Arc::clone(inner),
        id,
        input,
        options,
        user_at: inner.clock.now(),
        remaining,
        tight: false,
        upstream: Duration::ZERO,
        lease,
        claim,
        _slot: slot,
    })
}

/// Takes one message from the caller's principal quota (across its
/// sessions), then from the session's: a message refused for either is not
/// forwarded.
async fn take_token(inner: &Inner, caller: &Caller, id: SessionId) -> Result<u32> {
    take_principal_token(inner, caller).await?;
    match inner.limiter.check(id).await? {
        Decision::Allowed { remaining } => Ok(remaining),
        Decision::Limited { retry_after } => Err(rate_limited(inner.limiter.limit(), retry_after)),
    }
}

/// Claims session `id` in a shared store, waiting while a turn elsewhere
/// holds it, and leases its history as stored. A message the caller may
/// not send (another's session, an expired one, over quota) is refused
/// before it waits: then its rate-limit token is taken here, and returned.
async fn claim_session(
    inner: &Inner,
    caller: &Caller,
    id: SessionId,
) -> Result<(ClaimGuard, Lease, Option<u32>)> {
    let token = TurnToken::new();
    let ttl = inner.claim_ttl;
    // Armed while a claim may land: a claim statement cannot be taken back
    // once sent, so if this future is dropped mid-call (the client went
    // away) the guard releases whatever landed.
    let mut guard = ClaimGuard::new(Arc::clone(&inner.store), id, token);
    let mut taken = None;
    // Turns of one session at once on several gateways are rare (a person
    // waits for a reply), so waiting polls: a short first wait, doubling,
    // with jitter so that two waiters do not retry in step.
    let mut wait = Duration::from_millis(2);
    let (session, history) = loop {
        guard.released = false;
        match inner
            .store
            .claim_turn(id, token, ttl, inner.history_limit)
            .await?
        {
            Claim::Held(session, history) => break (session, history),
            Claim::Missing => {
                guard.released = true;
                return Err(Error::session_not_found());
            }
            Claim::Busy(session) => {
                guard.released = true;
                if taken.is_none() {
                    if !caller.may_use(&session) {
                        return Err(Error::session_not_found());
                    }
                    if !inner.sessions.is_active_since(session.last_active) {
                        return Err(Error::session_expired());
                    }
                    taken = Some(take_token(inner, caller, id).await?);
                }
                let jitter = Duration::from_micros(fastrand::u64(0..=wait.as_micros() as u64 / 2));
                tokio::time::sleep(wait + jitter).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        }
    };
    guard.renew_every(ttl);
    let mut session = session;
    session.metadata = None;
    let hot = inner.hot.insert(session, history);
    let lease = inner
        .hot
        .lease(hot)
        .ok_or_else(|| Error::internal("a fresh session window was already leased"))?;
    Ok((guard, lease, taken))
}

/// A turn's claim on its session in a shared store. Once held, a
/// background task renews it while the turn runs (a streamed reply may
/// outlast any fixed lifetime); dropping the guard stops the renewal and
/// releases the claim, unless the turn was stored, which released it
/// already (or no claim can be held: `released`).
#[derive(Debug)]
pub(crate) struct ClaimGuard {
    store: Arc<dyn Store>,
    id: SessionId,
    token: TurnToken,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl ClaimGuard {
    fn new(store: Arc<dyn Store>, id: SessionId, token: TurnToken) -> Self {
        ClaimGuard {
            store,
            id,
            token,
            renewer: None,
            released: false,
        }
    }

    /// Renews the held claim every third of `ttl`.
    fn renew_every(&mut self, ttl: Duration) {
        let (store, id, token) = (Arc::clone(&self.store), self.id, self.token);
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                // A lost claim cannot come back; a failed renewal may be a
                // blip, and the claim still has two thirds of its life.
                if let Ok(false) = store.renew_claim(id, token, ttl).await {
                    return;
                }
            }
        }));
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
        if self.released {
            return;
        }
        // Dropped without storing: free the session now rather than when
        // the claim lapses. Should this fail, the lapse frees it anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, id, token) = (Arc::clone(&self.store), self.id, self.token);
            runtime.spawn(async move {
                let _ = store.release_claim(id, token).await;
            });
        }
    }
}

/// A turn that has passed every check, taken its rate-limit token and
/// reached the front of its session's queue; it holds the session until it
/// is finished or dropped. Dropping it stores nothing (the token stays
/// spent).
#[derive(Debug)]
pub struct PreparedTurn<'c> {
    inner: Arc<Inner>,
    id: SessionId,
    input: TurnInput<'c>,
    options: ChatOptions,
    user_at: DateTime<Utc>,
    remaining: u32,
    /// Set after the upstream said the prompt overflowed its context: the
    /// history budget is cut to a quarter for the one retry.
    tight: bool,
    /// Time spent waiting on the model so far.
    upstream: Duration,
    // Field order is drop order: the window goes back to the cache, and a
    // shared store's claim is released, before the next turn of the
    // session is let in.
    lease: Lease,
    claim: Option<ClaimGuard>,
    _slot: TurnSlot,
}

impl<'c> PreparedTurn<'c> {
    /// The session this turn belongs to.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The session's quota per minute.
    pub fn limit(&self) -> u32 {
        self.inner.limiter.limit()
    }

    /// Messages the session may still send right now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// The text of the turn's user message, as a person reads it (empty
    /// for a turn of tool results alone).
    pub fn content(&self) -> Cow<'_, str> {
        match &self.input {
            TurnInput::Text(t) => Cow::Borrowed(t),
            TurnInput::Messages(m) => {
                let texts: Vec<Cow<'_, str>> = m
                    .iter()
                    .map(Message::display_text)
                    .filter(|t| !t.is_empty())
                    .collect();
                match texts.len() {
                    0 => Cow::Borrowed(""),
                    1 => texts.into_iter().next().unwrap_or_default(),
                    _ => Cow::Owned(texts.join("\n")),
                }
            }
        }
    }

    /// What the model is asked: the session's system prompt, the history
    /// that fits the context budget, and the new messages.
    pub fn request(&self) -> ChatRequest<'_> {
        let inner = &*self.inner;
        let system = self
            .lease
            .hot
            .session
            .system_prompt
            .as_deref()
            .or(inner.system_prompt.as_deref())
            .filter(|s| !s.is_empty());
        let (input, new_cost) = match &self.input {
            TurnInput::Text(t) => (Input::Text(t), estimate_tokens(t)),
            TurnInput::Messages(m) => (
                Input::Messages(m),
                m.iter().map(|m| message_tokens(m.view())).sum(),
            ),
        };
        // The history budget: what the system prompt and new messages
        // leave. Tool results go with the call they answer, whatever it
        // costs.
        let mut budget = inner
            .context_tokens
            .saturating_sub(system.map_or(0, estimate_tokens) + new_cost);
        if self.tight {
            budget /= 4;
        }
        let pinned = usize::from(self.input.answers_calls());
        ChatRequest {
            system,
            history: self.lease.history_within(budget, pinned),
            input,
            options: &self.options,
        }
    }

    /// Asks the model for the whole reply, then stores the turn.
    ///
    /// # Errors
    /// The upstream kinds from the model, [`ErrorKind::SessionNotFound`]
    /// (purged meanwhile) and [`ErrorKind::Storage`]; nothing is stored.
    pub async fn complete(mut self) -> Result<ChatReply> {
        let started = Instant::now();
        let first = self.inner.model.complete(self.request()).await;
        let completion = match first {
            Err(e) if self.retry_tighter(&e) => {
                let again = self.inner.model.complete(self.request()).await;
                again.map_err(|e| self.overflow(e))?
            }
            other => other.map_err(|e| self.overflow(e))?,
        };
        self.upstream += started.elapsed();
        self.finish(completion).await
    }

    /// After a context overflow with history to spare, cuts the history
    /// budget for one retry (the token estimate was short for this text).
    /// A session must not break for good because its history grew past
    /// what the model takes.
    fn retry_tighter(&mut self, e: &Error) -> bool {
        let pinned = usize::from(self.input.answers_calls());
        if !e.is_context_overflow() || self.tight || self.request().history.len() <= pinned {
            return false;
        }
        self.tight = true;
        true
    }

    /// An overflow with no history left to drop is the message's own
    /// fault: it (with the system prompt) does not fit the model.
    fn overflow(&self, e: Error) -> Error {
        let pinned = usize::from(self.input.answers_calls());
        if e.is_context_overflow() && self.request().history.len() <= pinned {
            return Error::invalid(
                "content",
                "The message does not fit the model's context window",
            );
        }
        e
    }

    /// Asks the model to stream its reply. Returns once the upstream has
    /// accepted the request, so failures before the first piece are
    /// ordinary errors; the turn is stored when the stream ends well.
    ///
    /// # Errors
    /// The upstream kinds from the model; nothing is stored.
    pub async fn stream(mut self) -> Result<TurnStream<'c>> {
        let first = self.inner.model.stream(self.request()).await;
        let upstream = match first {
            Err(e) if self.retry_tighter(&e) => {
                let again = self.inner.model.stream(self.request()).await;
                again.map_err(|e| self.overflow(e))?
            }
            other => other.map_err(|e| self.overflow(e))?,
        };
        Ok(TurnStream {
            id: self.id,
            started: Instant::now(),
            turn: Some(self),
            upstream,
            reply: ReplyBuilder::default(),
        })
    }

    /// Stores the turn's new messages and `completion`'s message
    /// atomically, moves the session's `last_active`, and releases the
    /// session.
    ///
    /// # Errors
    /// [`ErrorKind::UpstreamFailed`] when the reply says nothing (no text,
    /// tool calls or refusal), [`ErrorKind::SessionNotFound`] (purged
    /// meanwhile) and [`ErrorKind::Storage`]; nothing is stored then.
    pub async fn finish(mut self, completion: Completion) -> Result<ChatReply> {
        if !completion.has_substance() {
            return Err(Error::new(
                ErrorKind::UpstreamFailed,
                "Upstream sent an empty reply (no content, tool calls or refusal)",
            ));
        }
        let inner = Arc::clone(&self.inner);
        let reply_at = inner.clock.now();
        self.lease.writing();
        let user_at = self.user_at;
        let reply = MessageRef {
            role: Role::Assistant,
            content: if completion.wire.is_some() {
                ""
            } else {
                &completion.content
            },
            wire: completion.wire.as_ref().map(WireMessage::as_str),
            created_at: reply_at,
        };
        // Borrowed, not copied: a text turn (nearly every one) stores its
        // two messages from a stack array.
        let pair;
        let list: Vec<MessageRef<'_>>;
        let messages: &[MessageRef<'_>] = match &self.input {
            TurnInput::Text(t) => {
                pair = [
                    MessageRef {
                        role: Role::User,
                        content: t,
                        wire: None,
                        created_at: user_at,
                    },
                    reply,
                ];
                &pair
            }
            TurnInput::Messages(m) => {
                list = m
                    .iter()
                    .map(|m| MessageRef {
                        created_at: user_at,
                        ..m.view()
                    })
                    .chain([reply])
                    .collect();
                &list
            }
        };
        let turn = Turn {
            messages,
            usage: completion.usage,
        };
        match &mut self.claim {
            None => inner.store.append_turn(self.id, turn).await?,
            Some(claim) => {
                inner
                    .store
                    .append_claimed_turn(self.id, claim.token, turn)
                    .await?;
                claim.released = true;
            }
        }
        self.lease.record(messages);
        let (session_id, remaining, upstream) = (self.id, self.remaining, self.upstream);
        drop(self);
        Ok(ChatReply {
            session_id,
            content: completion.content,
            wire: completion.wire,
            limit: inner.limiter.limit(),
            remaining,
            usage: completion.usage,
            finish_reason: completion.finish_reason,
            raw: completion.raw,
            upstream,
        })
    }
}

/// A turn whose reply is streaming in. Read it with [`TurnStream::next`]:
/// the reply's pieces as they arrive, then [`TurnEvent::Done`] once the
/// turn is stored (always the last item), or an error (nothing stored).
/// Dropping it cancels the upstream request and stores nothing.
#[derive(Debug)]
pub struct TurnStream<'c> {
    id: SessionId,
    /// When the upstream accepted the request.
    started: Instant,
    turn: Option<PreparedTurn<'c>>,
    upstream: CompletionStream,
    reply: ReplyBuilder,
}

/// One item of a [`TurnStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEvent {
    /// The next piece of the reply's text.
    Delta(String),
    /// A piece of a tool call.
    ToolCall(ToolCallDelta),
    /// The next piece of a refusal.
    Refusal(String),
    /// The upstream chunk the pieces just before it came from, as it was
    /// sent (only when the turn's options ask for it).
    Raw(RawChunk),
    /// The turn is stored; the whole reply.
    Done(ChatReply),
}

impl TurnStream<'_> {
    /// The session the turn belongs to.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// Whether the stream hands back the upstream's own chunks
    /// ([`TurnEvent::Raw`]).
    pub fn relays_raw(&self) -> bool {
        self.upstream.relays_raw()
    }

    /// The next item; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<TurnEvent>> {
        self.turn.as_ref()?;
        loop {
            let event = match self.upstream.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    self.turn = None;
                    return Some(Err(e));
                }
                None => {
                    let mut turn = self.turn.take()?;
                    turn.upstream += self.started.elapsed();
                    let completion = std::mem::take(&mut self.reply).finish();
                    return Some(turn.finish(completion).await.map(TurnEvent::Done));
                }
            };
            if let Err(e) = self.reply.push(&event) {
                self.turn = None;
                return Some(Err(e));
            }
            let out = match event {
                StreamEvent::Delta(piece) => TurnEvent::Delta(piece),
                StreamEvent::ToolCall(d) => TurnEvent::ToolCall(d),
                StreamEvent::Refusal(piece) => TurnEvent::Refusal(piece),
                StreamEvent::Raw(chunk) => TurnEvent::Raw(chunk),
                StreamEvent::Usage(_) | StreamEvent::Finish(_) => continue,
            };
            return Some(Ok(out));
        }
    }
}

/// The session's hot entry (`known`, when the caller already looked it
/// up) with its history window, loaded from the store when it is not in
/// memory or a cancelled turn left its window in doubt.
async fn lease(inner: &Inner, id: SessionId, known: Option<Arc<Hot>>) -> Result<Lease> {
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

/// The answer to one successful turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReply {
    /// The session the turn belongs to.
    pub session_id: SessionId,
    /// The assistant's reply as a person reads it: its text, or its
    /// refusal.
    pub content: String,
    /// The whole assistant message as stored, when it is more than text
    /// (tool calls, a refusal, content parts).
    pub wire: Option<WireMessage>,
    /// The upstream's whole reply body as it was sent, when the model has
    /// one and the reply was not streamed.
    pub raw: Option<Bytes>,
    /// The session's quota per minute.
    pub limit: u32,
    /// Messages the session may still send right now.
    pub remaining: u32,
    /// Token usage, when the model reported it.
    pub usage: Option<Usage>,
    /// Why the reply ended (`stop`, `length`, …), when the model said.
    pub finish_reason: Option<String>,
    /// How long the turn waited on the model (for a stream, from its
    /// start to its last piece); the rest of its time is the gateway's.
    pub upstream: Duration,
}

/// Validates a turn's new messages: a user message of text, or messages
/// in one of the shapes a turn takes (tool results, then at most one user
/// message), each of bounded text.
fn validate_input(input: &TurnInput<'_>) -> Result<()> {
    let messages = match input {
        TurnInput::Text(t) => return validate_message(t),
        TurnInput::Messages(m) => m,
    };
    if messages.is_empty() {
        return Err(Error::invalid(
            "messages",
            "a turn needs at least one message",
        ));
    }
    if messages.len() >= MAX_TURN_MESSAGES {
        return Err(Error::invalid(
            "messages",
            format!("a turn takes at most {} messages", MAX_TURN_MESSAGES - 1),
        ));
    }
    let (last, results) = messages.split_last().expect("not empty");
    let results_ok = results
        .iter()
        .all(|m| matches!(m.role, Role::Tool | Role::Function));
    let last_ok = matches!(last.role, Role::User | Role::Tool | Role::Function);
    if !results_ok || !last_ok {
        return Err(Error::invalid(
            "messages",
            "a session's turn sends a user message, or the tool results that answer the \
             previous reply's tool calls (optionally followed by a user message); the session \
             supplies the system prompt and the history",
        ));
    }
    for m in messages {
        let text = m.display_text();
        if text.len() > MAX_MESSAGE_CHARS && text.chars().count() > MAX_MESSAGE_CHARS {
            return Err(Error::invalid(
                "messages",
                format!("a message's text must be at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks the turn against the session's newest message: when that reply
/// called tools, the turn must first answer each call, once; tool results
/// must answer calls of that reply. (The session's window always holds
/// its newest message, whatever it costs.)
fn check_calls_answered(input: &TurnInput<'_>, last: Option<MessageRef<'_>>) -> Result<()> {
    let calls = last
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.tool_call_ids())
        .unwrap_or_default();
    let results: Vec<Option<String>> = match input {
        TurnInput::Text(_) => Vec::new(),
        TurnInput::Messages(m) => m
            .iter()
            .filter(|m| matches!(m.role, Role::Tool | Role::Function))
            .map(|m| m.view().tool_call_id())
            .collect(),
    };
    if calls.is_empty() && results.is_empty() {
        return Ok(());
    }
    if calls.is_empty() {
        return Err(Error::invalid(
            "messages",
            "tool results answer tool calls, and the session's last reply called no tool",
        ));
    }
    let mut answered: Vec<&str> = results.iter().filter_map(|r| r.as_deref()).collect();
    answered.sort_unstable();
    let mut expected: Vec<&str> = calls.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if answered != expected || results.iter().any(Option::is_none) {
        return Err(Error::invalid(
            "messages",
            format!(
                "the session's last reply called tools {}: send one tool message for each \
                 (tool_call_id), before any user message",
                expected.join(", ")
            ),
        ));
    }
    Ok(())
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
pub(crate) struct TurnSlot {
    queues: Arc<TurnQueues>,
    id: SessionId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TurnQueues {
    fn shard(&self, id: &SessionId) -> &Mutex<LockMap> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Waits for `id`'s earlier turns to finish (in arrival order).
    pub(crate) async fn enter(self: &Arc<Self>, id: SessionId) -> TurnSlot {
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
            queues: Arc::clone(self),
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

impl Drop for TurnSlot {
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

/// Takes one message from the caller's principal quota, if it has one
/// (stateless requests count against it too).
pub(crate) async fn take_principal_token(inner: &Inner, caller: &Caller) -> Result<()> {
    if let (Some(p), Some(limiter)) = (caller.principal(), &inner.principal_limiter) {
        if let Decision::Limited { retry_after } = limiter
            .check(crate::rate_limit::key_of(p.id.as_bytes()))
            .await?
        {
            // The field names the quota, so an operator can tell the
            // principal's refusals from the session's.
            return Err(rate_limited(limiter.limit(), retry_after).with_field("principal"));
        }
    }
    Ok(())
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
        let queues = Arc::new(TurnQueues::default());
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
