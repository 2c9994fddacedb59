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
//! Turns of one session run one at a time in arrival order (`queue`), so
//! stored history is never interleaved; turns of different sessions run in
//! parallel. For a session in the hot cache the checks and the rate-limit
//! token come before queueing (no `.await` before the queue, so arrival
//! order is kept), and a rejected message never waits behind others. A
//! session not in memory queues first and is loaded under the queue, so a
//! 404 or 410 still takes no token. On a store shared by several gateways
//! the turn also claims the session in the store (`claim`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::caller::Caller;
use crate::claim::{claim_session, ClaimGuard};
use crate::error::{Error, ErrorKind, Result};
use crate::hot::{Hot, Lease};
use crate::inner::Inner;
use crate::input::{check_calls_answered, validate_input, TurnInput};
use crate::llm::{
    ChatOptions, ChatRequest, Completion, CompletionStream, FunctionCallDelta, Input, RawChunk,
    ReplyBuilder, StreamEvent, ToolCallDelta,
};
use crate::message::{Message, MessageRef, Role, WireMessage};
use crate::queue::TurnSlot;
use crate::quota::take_token;
#[cfg(doc)]
use crate::storage::ResponseStore;
use crate::storage::{ResponseRecord, Turn, TurnToken};
use crate::tokens::{estimate_tokens, message_tokens};
use crate::types::{SessionId, Usage};

/// Prepares one turn (see the module doc and [`Scoped::prepare`](crate::Scoped::prepare)).
pub(crate) async fn prepare<'c>(
    inner: &Arc<Inner>,
    caller: &Caller,
    client: Option<&str>,
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
                return Err(expired_or_gone(inner, id).await);
            }
            // Turns that do not fit the session's last reply (its tool
            // calls unanswered) take no token; checked again under the
            // queue, where the history is final.
            if let Some(refused) = hot.peek_last(|last| check_calls_answered(&input, last)) {
                refused?;
            }
            // An in-process limiter answers at once: this await does not
            // suspend, and arrival order is kept. (A limiter across the
            // network may suspend here; a session's turns then enter its
            // queue in the order their checks end, still one at a time.)
            let owner = hot.session.owner.as_deref();
            let remaining = take_token(inner, caller, owner, client, id).await?;
            let slot = inner.queues.enter(id).await;
            // Under the queue the session may have gone (purged) or expired
            // while earlier turns ran: rare, and the token stays spent.
            let lease = lease(inner, id, Some(hot)).await?;
            if !inner.sessions.is_active_since(lease.hot.last_active()) {
                return Err(expired_or_gone(inner, id).await);
            }
            (slot, lease, remaining)
        }
        None => {
            // A caller who may not use the session must not wait behind its
            // owner's turns to be told so: when a turn holds the session,
            // who may use it is read before waiting (one read, only then).
            if !matches!(caller, Caller::Anyone) && inner.queues.is_busy(id) {
                match inner.store.get_session(id).await? {
                    Some(s) if caller.may_use(&s) => {}
                    _ => return Err(Error::session_not_found()),
                }
            }
            let slot = inner.queues.enter(id).await;
            let (lease, taken) = if inner.store.claims().is_some() {
                let (guard, lease, taken) = claim_session(inner, caller, client, id).await?;
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
            check_calls_answered(&input, lease.last())?;
            let remaining = match taken {
                Some(remaining) => remaining,
                None => {
                    let owner = lease.hot.session.owner.as_deref();
                    take_token(inner, caller, owner, client, id).await?
                }
            };
            (slot, lease, remaining)
        }
    };
    // Earlier turns of this session are done: the history is complete. (A
    // turn that raced another on a hot session is refused here, its token
    // spent.)
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
        instructions: None,
        response: None,
        lease,
        claim,
        _slot: slot,
    })
}

/// The answer for a cached session found expired: 410, unless the store no
/// longer has it (purged by another process, `chatgate purge` from cron
/// say), when it is 404 as everywhere else, and the cache lets it go. Only
/// this path pays the lookup: a live session's turns read no store.
async fn expired_or_gone(inner: &Inner, id: SessionId) -> Error {
    match inner.store.get_session(id).await {
        Ok(Some(_)) => Error::session_expired(),
        Ok(None) => {
            inner.hot.forget(id);
            Error::session_not_found()
        }
        Err(e) => e,
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
    /// This request's system prompt, in place of the session's (not stored).
    instructions: Option<String>,
    /// The response to store with the turn, made from its reply.
    response: Option<ResponseMaker>,
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

    /// Sends `text` as this request's system prompt, in place of the
    /// session's (or the configured one): the Responses API's
    /// `instructions`, which apply to one response and are not stored.
    #[must_use]
    pub fn with_instructions(mut self, text: String) -> Self {
        self.instructions = Some(text);
        self
    }

    /// Stores a response (see [`ResponseStore`]) with the turn, under `id`,
    /// in the same atomic step: `document` makes what is kept of it from
    /// the reply and the reply's time. The document comes back in
    /// [`ChatReply::response`].
    #[must_use]
    pub fn with_response(
        mut self,
        id: String,
        document: impl FnOnce(&Completion, DateTime<Utc>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.response = Some(ResponseMaker {
            id,
            make: Box::new(document),
        });
        self
    }

    /// The id of the response stored with the session's newest turn, if
    /// that turn has one. Read while this turn holds the session, so no
    /// other turn can move the session on before this one is stored: a
    /// continuation from that response can append here, one from any other
    /// must fork.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the store fails.
    pub async fn head_response(&self) -> Result<Option<String>> {
        self.inner.store.head_response(self.id).await
    }

    /// The text of the turn's user message, as a person reads it (empty
    /// for a turn of tool results alone).
    pub fn content(&self) -> Cow<'_, str> {
        match &self.input {
            TurnInput::Text(t) => Cow::Borrowed(t),
            TurnInput::Messages(m) | TurnInput::Items(m) => {
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
        let system = match &self.instructions {
            Some(text) => Some(text.as_str()),
            None => self
                .lease
                .hot
                .session
                .system_prompt
                .as_deref()
                .or(inner.system_prompt.as_deref()),
        }
        .filter(|s| !s.is_empty());
        let (input, new_cost) = match &self.input {
            TurnInput::Text(t) => (Input::Text(t), estimate_tokens(t)),
            TurnInput::Messages(m) | TurnInput::Items(m) => (
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
            session: Some(self.id),
            pinned: self.lease.target().map(|t| &**t),
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
    /// fault: it (with the system prompt) does not fit the model. A caller
    /// that relays the upstream's replies (`raw_reply`) gets the upstream's
    /// own refusal, which its clients already know how to read.
    fn overflow(&self, e: Error) -> Error {
        let pinned = usize::from(self.input.answers_calls());
        if e.is_context_overflow()
            && !self.options.raw_reply
            && self.request().history.len() <= pinned
        {
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
            reply: ReplyBuilder::with_limit(upstream.reply_limit()),
            upstream,
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
            TurnInput::Messages(m) | TurnInput::Items(m) => {
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
        // The target is written only when it changes: a session's first
        // turn through a router, or a failover.
        let moved = completion
            .target
            .as_ref()
            .filter(|t| self.lease.target() != Some(*t));
        let document = self
            .response
            .take()
            .map(|r| (r.id, (r.make)(&completion, reply_at)));
        let turn = Turn {
            messages,
            usage: completion.usage,
            target: moved.map(|t| &**t),
            response: document
                .as_ref()
                .map(|(id, document)| ResponseRecord { id, document }),
        };
        let token = append(&inner, self.id, &mut self.claim, turn).await?;
        self.lease
            .record(messages, completion.target.as_ref(), token);
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
            target: completion.target,
            response: document.map(|(_, d)| d),
        })
    }
}

/// Appends `turn` to session `id`: under the turn's claim (which the
/// append releases, and whose token it returns) on a shared store, plainly
/// otherwise. The one place a turn's messages are written.
async fn append(
    inner: &Inner,
    id: SessionId,
    claim: &mut Option<ClaimGuard>,
    turn: Turn<'_>,
) -> Result<Option<TurnToken>> {
    match claim {
        None => inner.store.append_turn(id, turn).await.map(|()| None),
        Some(claim) => {
            crate::claim::claims(&*inner.store)?
                .append_claimed_turn(id, claim.token, turn)
                .await?;
            claim.released = true;
            Ok(Some(claim.token))
        }
    }
}

impl PreparedTurn<'_> {
    /// Stores the turn's new messages with no reply (items added to a
    /// conversation), with the same guarantees as a turn: in the session's
    /// order, atomically, the session's `last_active` moved.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`] (purged meanwhile) and
    /// [`ErrorKind::Storage`]; nothing is stored then.
    pub async fn store_input(mut self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        self.lease.writing();
        let user_at = self.user_at;
        let messages: Vec<MessageRef<'_>> = match &self.input {
            TurnInput::Text(t) => vec![MessageRef {
                role: Role::User,
                content: t,
                wire: None,
                created_at: user_at,
            }],
            TurnInput::Messages(m) | TurnInput::Items(m) => m
                .iter()
                .map(|m| MessageRef {
                    created_at: user_at,
                    ..m.view()
                })
                .collect(),
        };
        let turn = Turn {
            messages: &messages,
            usage: None,
            target: None,
            response: None,
        };
        let token = append(&inner, self.id, &mut self.claim, turn).await?;
        self.lease.record(&messages, None, token);
        Ok(())
    }
}

/// Makes a response's document from the reply and its time.
type MakeDocument = Box<dyn FnOnce(&Completion, DateTime<Utc>) -> String + Send + Sync>;

/// Makes the response a turn stores ([`PreparedTurn::with_response`]).
struct ResponseMaker {
    id: String,
    make: MakeDocument,
}

impl std::fmt::Debug for ResponseMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseMaker")
            .field("id", &self.id)
            .finish_non_exhaustive()
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
    /// A piece of a function call (the older `functions` API).
    FunctionCall(FunctionCallDelta),
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

    /// The upstream and model answering, when a router chose them (see
    /// [`Completion::target`]).
    pub fn target(&self) -> Option<&std::sync::Arc<str>> {
        self.upstream.target()
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
                    let mut completion = std::mem::take(&mut self.reply).finish();
                    completion.target = self.upstream.target().cloned();
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
                StreamEvent::FunctionCall(d) => TurnEvent::FunctionCall(d),
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
    /// The upstream and model that answered, when a router chose them
    /// (see [`Completion::target`]).
    pub target: Option<std::sync::Arc<str>>,
    /// The response document stored with the turn
    /// ([`PreparedTurn::with_response`]).
    pub response: Option<String>,
}
