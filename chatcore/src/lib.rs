//! # chatcore
//!
//! Everything an AI-chat product needs between its front end and an LLM,
//! as a library. An application embeds it directly; the `chatgate` binary
//! is a thin HTTP shell around it.
//!
//! ```no_run
//! # async fn demo() -> chatcore::Result<()> {
//! use chatcore::{ChatCore, NewSession, OpenAiChat, SqliteStore};
//!
//! let core = ChatCore::builder()
//!     .store(SqliteStore::open("chat.db")?)
//!     .model(OpenAiChat::from_env()?)
//!     .messages_per_minute(5)
//!     .build()?;
//! // Act for anyone (this service checks who its users are itself); a
//! // gateway acts for each request's caller with `core.as_caller(..)`.
//! let me = core.anyone();
//! let session = me.initialize(NewSession::default()).await?;
//! let reply = me.chat(session.session.id, "Hello").await?;
//! println!("{}", reply.content);
//! me.submit_feedback(session.session.id, "Helpful", None).await?;
//! # Ok(()) }
//! ```
//!
//! ## The map
//!
//! Every item is at the crate root; the files below are private, and each
//! owns one concern.
//!
//! - `facade.rs`: [`ChatCore`], the facade, built once with
//!   [`ChatCore::builder`], cheap to clone, shared by every request; what
//!   its clones share is `inner.rs`, which the code below reads.
//!   [`ChatCore::as_caller`] gives the facade as one caller sees it
//!   ([`Scoped`], `scoped.rs`), the one way to act on sessions: others'
//!   sessions do not exist, admins see all; [`Scoped::chat`] runs one turn.
//! - `turn.rs`: one turn in two steps. [`Scoped::prepare`] checks the
//!   session, takes the quotas (`quota.rs`) and waits for the session's
//!   earlier turns (`queue.rs`: FIFO per session; on a shared store also
//!   `claim.rs`: the session claimed in the store), giving a
//!   [`PreparedTurn`] that owns its guards; it calls the model whole or
//!   streamed ([`TurnStream`]) and appends the turn's messages atomically.
//!   `input.rs`: a turn's new messages ([`TurnInput`]) and their rules.
//! - `conversations.rs`: conversations on sessions: items are messages
//!   named by position ([`Scoped::items`]), added without a reply
//!   ([`Scoped::add_items`], [`PreparedTurn::store_input`]) or deleted.
//! - `responses.rs`: the Responses API's state on sessions: a chain of
//!   responses is a session; a response is stored with its turn, found by
//!   id ([`Scoped::response`]), continued or forked ([`Scoped::fork_chain`]).
//! - `message.rs`: messages as the protocol has them ([`Message`]: a role
//!   and text, or the whole message object when it holds more: content
//!   parts, tool calls, tool results). `json.rs`: JSON objects read member
//!   by member ([`Fields`]). `tokens.rs`: the token estimate and trimming.
//! - `llm/`: the [`ChatModel`] trait (complete, and stream with a provided
//!   default), [`ChatRequest`], [`CompletionStream`], and the OpenAI
//!   chat-completions adapter [`OpenAiChat`] (`llm/openai/`); a client's
//!   other fields travel untouched and the reply can come back as sent,
//!   for a gateway that relays it. `history.rs`: the [`History`] a model
//!   is sent, borrowed from the cache.
//! - `storage/`: the storage traits ([`SessionStore`], [`MessageStore`],
//!   [`ResponseStore`] (`responses.rs`), [`FeedbackStore`], [`KeyStore`],
//!   together [`Store`]; [`TurnClaims`]
//!   for a store several gateways share) and three backends: `memory.rs`
//!   ([`MemoryStore`]), `sqlite/` ([`SqliteStore`]: one writer thread,
//!   group commit, WAL, checkpoints off the commit path, a few reading
//!   connections) and, with the `postgres` feature, `postgres/`
//!   ([`PostgresStore`]: several gateways on one database); `sql_log.rs`:
//!   the SQL lines, statements that save data at info, reads at debug.
//! - `rate_limit/`: the [`RateLimiter`] trait and two limiters:
//!   [`GovernorLimiter`] (GCRA in process, exact under concurrency) and,
//!   with the `redis` feature, [`RedisLimiter`] (GCRA in Redis, shared by
//!   several gateways).
//! - `caller.rs`: who a request acts for ([`Caller`]: anyone, a
//!   [`Principal`], a session token's holder). `keys.rs`: API keys
//!   ([`KeyRing`]): made once, stored as a hash, verified in constant time.
//! - `session.rs`: sessions created, looked up and purged ([`SessionInfo`]);
//!   expiry is derived from `last_active` and the idle timeout.
//!   `feedback.rs`: feedback's rules. `hot/`: the hot-session cache
//!   (`window.rs`: one session's packed recent messages).
//! - `error.rs`: one [`Error`] whose [`ErrorKind`] maps one-to-one onto the
//!   gateway's error table, with whose fault it is ([`Fault`]).
//!   `redact.rs`: credentials hidden in URLs that are shown ([`redact_url`]).
//!   `types.rs`: ids and records ([`SessionId`], [`Session`], [`Usage`],
//!   [`Feedback`], [`Rating`]). `clock.rs`: where time comes from.
//!
//! chatcore has no HTTP server types and logs only what it swallows (model
//! retries) and, when asked, the SQL it runs.

#![warn(missing_docs)]

mod caller;
mod claim;
mod clock;
mod conversations;
mod error;
mod facade;
mod feedback;
mod history;
mod hot;
mod inner;
mod input;
mod json;
mod keys;
mod llm;
mod message;
mod queue;
mod quota;
mod rate_limit;
mod redact;
mod responses;
mod scoped;
mod session;
mod storage;
mod tokens;
mod turn;
mod types;

pub use caller::{Caller, Principal};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Error, ErrorKind, Fault, Quota, Result};
pub use facade::{ChatCore, ChatCoreBuilder, Dependency};
pub use feedback::MAX_FEEDBACK_CHARS;
pub use input::{TurnInput, MAX_MESSAGE_CHARS};
pub use keys::{key_id, KeyRing, NewKey, KEY_PREFIX};
pub use llm::{
    ChatModel, ChatOptions, ChatRequest, Completion, CompletionStream, Fields, FunctionCallDelta,
    History, Input, KeyHeader, OpenAiChat, OpenAiConfig, RawChunk, ReplyBuilder, RouteConfig,
    Router, RouterConfig, StreamEvent, TargetConfig, ToolCallDelta, UpstreamConfig, UpstreamHealth,
    UpstreamStats, UpstreamStatus, MAX_REPLY_BYTES, OPENAI_BASE_URL,
};
pub use message::{Message, MessageRef, Role, WireMessage};
pub use rate_limit::{key_of, Check, Decision, GovernorLimiter, Joint, RateLimiter};
#[cfg(feature = "redis")]
pub use rate_limit::{OnUnavailable, RedisLimiter, RedisLimiterConfig};
pub use redact::redact_url;
pub use scoped::Scoped;
pub use session::{SessionInfo, MAX_METADATA_BYTES, MAX_SYSTEM_PROMPT_CHARS};
pub use storage::{
    new_response_id, response_session, ApiKey, Claim, FeedbackFilter, FeedbackStore,
    HistoryVersion, KeyStore, MemoryStore, MessageCursor, MessagePage, MessageStore,
    ResponseRecord, ResponseStore, SessionCursor, SessionStore, SqliteOptions, SqliteStats,
    SqliteStore, Store, StoredResponse, Turn, TurnClaims, TurnToken, MAX_TURN_MESSAGES,
};
#[cfg(feature = "postgres")]
pub use storage::{PostgresOptions, PostgresStore};
pub use tokens::{estimate_tokens, message_tokens, trim_history, IMAGE_TOKENS, MEDIA_TOKENS};
pub use turn::{ChatReply, PreparedTurn, TurnEvent, TurnStream};
pub use types::{
    format_time, Feedback, NewSession, PurgeReport, Rating, Session, SessionId, Usage,
};
