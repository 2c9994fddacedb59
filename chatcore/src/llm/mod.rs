//! The model behind a chat: the [`ChatModel`] trait, what it is asked
//! ([`ChatRequest`]) and what it answers ([`Completion`], or a
//! [`CompletionStream`]), plus the OpenAI chat-completions adapter
//! ([`OpenAiChat`]).
//!
//! A request borrows the session's history instead of copying it; the
//! adapter serializes straight from the borrowed messages. Whatever a
//! client sent beyond what chatcore acts on travels as [`Fields`] and is
//! written into the upstream request untouched; the upstream's reply can
//! come back as it was sent ([`ChatOptions::raw_reply`]), so a gateway can
//! relay it without rebuilding it from the fields chatcore knows.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::error::Result;
use crate::message::{Message, MessageRef, Role, WireMessage};
use crate::types::{SessionId, Usage};

mod openai;
mod router;
mod stream;

/// The largest reply a model's reply is read to (16 MiB): a whole
/// non-streamed body, one line of a streamed one, or a streamed reply put
/// back together; past it the reply is refused rather than buffered.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

pub use crate::history::History;
pub use crate::json::Fields;
pub use openai::{KeyHeader, OpenAiChat, OpenAiConfig, UpstreamStats, OPENAI_BASE_URL};
pub use router::{
    RouteConfig, Router, RouterConfig, TargetConfig, UpstreamConfig, UpstreamHealth, UpstreamStatus,
};
pub use stream::{
    CompletionStream, FunctionCallDelta, RawChunk, ReplyBuilder, StreamEvent, ToolCallDelta,
};

/// One request to the model: optional system prompt, earlier messages
/// (oldest first), this turn's new messages, and per-request options.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The system prompt, if any.
    pub system: Option<&'a str>,
    /// Earlier messages of the session, oldest first, already trimmed to
    /// fit.
    pub history: History<'a>,
    /// This turn's new messages.
    pub input: Input<'a>,
    /// Model, sampling and other choices for this request; every unset
    /// field falls back to the model's configured default.
    pub options: &'a ChatOptions,
    /// The session this turn belongs to (none for a stateless request): a
    /// [`Router`] derives the `prompt_cache_key` from it.
    pub session: Option<SessionId>,
    /// The target that answered the session's last turn
    /// ([`Completion::target`]), which a [`Router`] keeps it on.
    pub pinned: Option<&'a str>,
}

/// A turn's new messages.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// One user message of plain text (a `/chat/` turn).
    Text(&'a str),
    /// Messages of any kind, oldest first: tool results, a user message
    /// with content parts.
    Messages(&'a [Message]),
    /// A whole `messages` array, as a client sent it (a stateless request,
    /// which has no history of its own).
    Json(&'a RawValue),
}

impl<'a> ChatRequest<'a> {
    /// A request for one user message of text, with default options.
    pub fn new(system: Option<&'a str>, history: History<'a>, user: &'a str) -> Self {
        ChatRequest {
            system,
            history,
            input: Input::Text(user),
            options: ChatOptions::none(),
            session: None,
            pinned: None,
        }
    }

    /// The text of the last user message among the new ones (empty when
    /// there is none, or it holds no text).
    pub fn user_text(&self) -> std::borrow::Cow<'a, str> {
        match self.input {
            Input::Text(t) => std::borrow::Cow::Borrowed(t),
            Input::Messages(m) => m
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| std::borrow::Cow::Owned(m.display_text().into_owned()))
                .unwrap_or_default(),
            Input::Json(_) => std::borrow::Cow::Borrowed(""),
        }
    }

    /// The new messages, oldest first (none for [`Input::Json`], which is
    /// written whole).
    pub fn new_messages(&self) -> impl Iterator<Item = MessageRef<'a>> + 'a {
        let (text, list): (Option<&'a str>, &'a [Message]) = match self.input {
            Input::Text(t) => (Some(t), &[]),
            Input::Messages(m) => (None, m),
            Input::Json(_) => (None, &[]),
        };
        text.map(|t| MessageRef {
            role: Role::User,
            content: t,
            wire: None,
            created_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        })
        .into_iter()
        .chain(list.iter().map(Message::view))
    }
}

/// Per-request choices (OpenAI's names). `None` (or an empty `stop`)
/// leaves the model's configured default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatOptions {
    /// The model to ask, instead of the configured one.
    pub model: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// The most tokens the reply may have.
    pub max_tokens: Option<u32>,
    /// Sequences at which the reply stops (at most 4).
    pub stop: Vec<String>,
    /// Penalty for tokens already present.
    pub presence_penalty: Option<f32>,
    /// Penalty by frequency of tokens already present.
    pub frequency_penalty: Option<f32>,
    /// A seed for best-effort deterministic sampling.
    pub seed: Option<i64>,
    /// An end-user identifier passed to the upstream for abuse monitoring.
    pub user: Option<String>,
    /// Everything else the request holds, sent upstream as given (tools,
    /// `response_format`, vendor fields, …). A member named like one the
    /// adapter sets itself (`model`, `messages`, `stream`) or like a field
    /// above that is set is not written twice: the adapter's wins, except
    /// that `stream_options` members are kept beside the usage it asks for.
    pub fields: Fields,
    /// Hand back the upstream's reply as it was sent, beside the decoded
    /// one: [`Completion::raw`] and [`StreamEvent::Raw`], for a gateway
    /// that relays it.
    pub raw_reply: bool,
}

static NO_OPTIONS: ChatOptions = ChatOptions {
    model: None,
    temperature: None,
    top_p: None,
    max_tokens: None,
    stop: Vec::new(),
    presence_penalty: None,
    frequency_penalty: None,
    seed: None,
    user: None,
    fields: Fields::new(),
    raw_reply: false,
};

impl ChatOptions {
    /// Options that leave every default in place.
    pub fn none() -> &'static ChatOptions {
        &NO_OPTIONS
    }
}

/// The model's reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The reply as a person reads it: its text, or its refusal (see
    /// [`Message::display_text`]).
    pub content: String,
    /// The whole assistant message, when it is more than text: tool calls,
    /// a refusal, content parts, vendor fields. `None` for plain text.
    pub wire: Option<WireMessage>,
    /// Token usage, when the model reported it.
    pub usage: Option<Usage>,
    /// Why the reply ended (`stop`, `length`, …), when the model said.
    pub finish_reason: Option<String>,
    /// The upstream's whole reply body as it was sent (every choice,
    /// `logprobs`, `system_fingerprint`, …), when the model has one.
    pub raw: Option<Bytes>,
    /// The upstream and model that answered (`upstream:model`), when a
    /// [`Router`] chose them: a session's next turn goes there too.
    pub target: Option<Arc<str>>,
}

impl Completion {
    /// The reply as a message to store, made at `at`.
    pub fn message(&self, at: chrono::DateTime<chrono::Utc>) -> Message {
        match &self.wire {
            Some(wire) => Message {
                role: Role::Assistant,
                content: String::new(),
                created_at: at,
                wire: Some(wire.clone()),
            },
            None => Message::text(Role::Assistant, self.content.clone(), at),
        }
    }

    /// Whether the reply says anything: text, a refusal, tool calls.
    pub fn has_substance(&self) -> bool {
        match &self.wire {
            Some(w) => MessageRef {
                role: Role::Assistant,
                content: "",
                wire: Some(w.as_str()),
                created_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            }
            .has_substance(),
            None => !self.content.is_empty(),
        }
    }
}

/// A chat model. Implement [`ChatModel::complete`]; streaming has a provided
/// default (the whole reply as one piece) that a model able to stream
/// overrides, so adding streaming never breaks an implementor.
#[async_trait]
pub trait ChatModel: Send + Sync + fmt::Debug {
    /// Answers a request with the whole reply.
    ///
    /// # Errors
    /// [`ErrorKind::UpstreamBusy`](crate::ErrorKind::UpstreamBusy),
    /// [`ErrorKind::UpstreamFailed`](crate::ErrorKind::UpstreamFailed) or
    /// [`ErrorKind::UpstreamTimeout`](crate::ErrorKind::UpstreamTimeout).
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion>;

    /// Answers a request piece by piece. It returns once the upstream has
    /// accepted the request, so errors found before the first piece are
    /// ordinary errors.
    ///
    /// # Errors
    /// As [`ChatModel::complete`], before the first piece; later failures
    /// arrive as an `Err` item of the stream.
    async fn stream(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        Ok(CompletionStream::from_completion(
            self.complete(request).await?,
        ))
    }
}
