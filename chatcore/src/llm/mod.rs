//! The model behind a chat: the [`ChatModel`] trait, what it is asked
//! ([`ChatRequest`]) and what it answers ([`Completion`]), plus the OpenAI
//! chat-completions adapter ([`OpenAiChat`]).
//!
//! A request borrows the session's history instead of copying it; the
//! adapter serializes straight from the borrowed messages.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::mpsc;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::types::{Message, Role};

mod openai;

pub(crate) use self::Packed as PackedEntry;
pub use openai::{OpenAiChat, OpenAiConfig, UpstreamStats, MAX_REPLY_BYTES, OPENAI_BASE_URL};

/// One request to the model: optional system prompt, earlier messages
/// (oldest first), the new user message, and per-request options.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The system prompt, if any.
    pub system: Option<&'a str>,
    /// Earlier messages of the session, oldest first, already trimmed to fit.
    /// For a stateless request, every message before the last one (system
    /// messages included).
    pub history: History<'a>,
    /// The new user message.
    pub user: &'a str,
    /// Sampling and model choices for this request; every unset field
    /// falls back to the model's configured default.
    pub options: &'a ChatOptions,
}

impl<'a> ChatRequest<'a> {
    /// A request with default options.
    pub fn new(system: Option<&'a str>, history: History<'a>, user: &'a str) -> Self {
        ChatRequest {
            system,
            history,
            user,
            options: ChatOptions::none(),
        }
    }
}

/// Per-request choices a client may make (OpenAI's names). `None` (or an
/// empty `stop`) leaves the model's configured default.
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
};

impl ChatOptions {
    /// Options that leave every default in place.
    pub fn none() -> &'static ChatOptions {
        &NO_OPTIONS
    }
}

/// A borrowed view of a session's earlier messages, oldest first.
///
/// Either a slice of [`Message`]s (`(&messages[..]).into()`) or chatcore's
/// compact in-memory window (one text buffer plus small entries, which
/// keeps cached history at about half the memory of a `Vec<Message>`).
/// Iterate it with [`History::iter`].
#[derive(Debug, Clone, Copy)]
pub struct History<'a>(Repr<'a>);

#[derive(Debug, Clone, Copy)]
enum Repr<'a> {
    Slice(&'a [Message]),
    Packed {
        text: &'a str,
        entries: &'a [Packed],
    },
}

/// One message of a packed window: where its text is, and what it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed {
    pub(crate) start: u32,
    pub(crate) len: u32,
    pub(crate) cost: u32,
    pub(crate) role: Role,
    pub(crate) at_ms: i64,
}

/// One earlier message, borrowed from a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryItem<'a> {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: &'a str,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

impl<'a> History<'a> {
    /// No earlier messages.
    pub fn empty() -> History<'static> {
        History(Repr::Slice(&[]))
    }

    pub(crate) fn packed(text: &'a str, entries: &'a [Packed]) -> History<'a> {
        History(Repr::Packed { text, entries })
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Slice(s) => s.len(),
            Repr::Packed { entries, .. } => entries.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The messages, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = HistoryItem<'a>> + 'a {
        let (slice, text, entries): (&'a [Message], &'a str, &'a [Packed]) = match self.0 {
            Repr::Slice(s) => (s, "", &[]),
            Repr::Packed { text, entries } => (&[], text, entries),
        };
        let from_slice = slice.iter().map(|m| HistoryItem {
            role: m.role,
            content: &m.content,
            created_at: m.created_at,
        });
        let from_packed = entries.iter().map(move |e| HistoryItem {
            role: e.role,
            content: &text[e.start as usize..(e.start + e.len) as usize],
            created_at: crate::types::from_millis(e.at_ms),
        });
        Either(from_slice, from_packed, slice.len() + entries.len())
    }
}

impl<'a> From<&'a [Message]> for History<'a> {
    fn from(messages: &'a [Message]) -> Self {
        History(Repr::Slice(messages))
    }
}

impl<'a, const N: usize> From<&'a [Message; N]> for History<'a> {
    fn from(messages: &'a [Message; N]) -> Self {
        History(Repr::Slice(messages))
    }
}

impl<'a> From<&'a Vec<Message>> for History<'a> {
    fn from(messages: &'a Vec<Message>) -> Self {
        History(Repr::Slice(messages))
    }
}

/// Chains the two representations' iterators (only one is ever non-empty)
/// while keeping an exact length.
struct Either<A, B>(A, B, usize);

impl<'a, A, B> Iterator for Either<A, B>
where
    A: Iterator<Item = HistoryItem<'a>>,
    B: Iterator<Item = HistoryItem<'a>>,
{
    type Item = HistoryItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.0.next().or_else(|| self.1.next());
        if item.is_some() {
            self.2 -= 1;
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.2, Some(self.2))
    }
}

impl<'a, A, B> ExactSizeIterator for Either<A, B>
where
    A: Iterator<Item = HistoryItem<'a>>,
    B: Iterator<Item = HistoryItem<'a>>,
{
}

/// Token counts reported by the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens in the reply.
    pub completion_tokens: u32,
}

impl Usage {
    /// Adds `other` to these counts (saturating).
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

/// The model's reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The reply text.
    pub content: String,
    /// Token usage, when the model reported it.
    pub usage: Option<Usage>,
    /// Why the reply ended (`stop`, `length`, …), when the model said.
    pub finish_reason: Option<String>,
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The next piece of the reply's text (never empty).
    Delta(String),
    /// Token counts for the whole exchange (usually near the end).
    Usage(Usage),
    /// Why the reply ended (`stop`, `length`, …).
    Finish(String),
}

/// A reply arriving piece by piece (server-sent events, for OpenAI).
///
/// Call [`CompletionStream::next`] until it returns `None`; an `Err` item
/// ends the stream. Dropping the stream cancels the upstream request.
#[derive(Debug)]
pub struct CompletionStream {
    source: Source,
}

#[derive(Debug)]
enum Source {
    Channel(mpsc::Receiver<Result<StreamEvent>>),
    Sse(Box<openai::SseSource>),
}

impl CompletionStream {
    /// A stream and the sender that feeds it (for implementors). Dropping
    /// the sender ends the stream.
    pub fn channel(buffer: usize) -> (mpsc::Sender<Result<StreamEvent>>, CompletionStream) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (
            tx,
            CompletionStream {
                source: Source::Channel(rx),
            },
        )
    }

    /// A stream holding every event of `completion` (what a model that
    /// cannot stream answers).
    pub fn from_completion(completion: Completion) -> CompletionStream {
        let (tx, stream) = CompletionStream::channel(3);
        // The buffer has room for all three, so these cannot fail.
        if !completion.content.is_empty() {
            let _ = tx.try_send(Ok(StreamEvent::Delta(completion.content)));
        }
        if let Some(usage) = completion.usage {
            let _ = tx.try_send(Ok(StreamEvent::Usage(usage)));
        }
        if let Some(reason) = completion.finish_reason {
            let _ = tx.try_send(Ok(StreamEvent::Finish(reason)));
        }
        stream
    }

    pub(crate) fn sse(source: openai::SseSource) -> CompletionStream {
        CompletionStream {
            source: Source::Sse(Box::new(source)),
        }
    }

    /// The next event, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<StreamEvent>> {
        match &mut self.source {
            Source::Channel(rx) => rx.recv().await,
            Source::Sse(sse) => sse.next().await,
        }
    }

    /// Reads the whole stream into one completion.
    ///
    /// # Errors
    /// The first error the stream yields.
    pub async fn collect(mut self) -> Result<Completion> {
        let mut out = Completion::default();
        while let Some(event) = self.next().await {
            match event? {
                StreamEvent::Delta(piece) => out.content.push_str(&piece),
                StreamEvent::Usage(usage) => out.usage = Some(usage),
                StreamEvent::Finish(reason) => out.finish_reason = Some(reason),
            }
        }
        Ok(out)
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
