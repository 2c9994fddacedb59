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
pub use openai::{OpenAiChat, OpenAiConfig, MAX_REPLY_BYTES, OPENAI_BASE_URL};

/// One request to the model: optional system prompt, earlier messages
/// (oldest first) and the new user message.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The system prompt, if any.
    pub system: Option<&'a str>,
    /// Earlier messages of the session, oldest first, already trimmed to fit.
    pub history: History<'a>,
    /// The new user message.
    pub user: &'a str,
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

/// The model's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The reply text.
    pub content: String,
    /// Token usage, when the model reported it.
    pub usage: Option<Usage>,
}

/// A reply arriving piece by piece (server-sent events, for OpenAI).
///
/// Call [`CompletionStream::next`] until it returns `None`; an `Err` item
/// ends the stream.
#[derive(Debug)]
pub struct CompletionStream {
    rx: mpsc::Receiver<Result<String>>,
}

impl CompletionStream {
    /// A stream and the sender that feeds it (for implementors).
    pub fn channel(buffer: usize) -> (mpsc::Sender<Result<String>>, CompletionStream) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (tx, CompletionStream { rx })
    }

    /// The next piece of the reply, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<String>> {
        self.rx.recv().await
    }

    /// Reads the whole stream into one string.
    ///
    /// # Errors
    /// The first error the stream yields.
    pub async fn collect(mut self) -> Result<String> {
        let mut out = String::new();
        while let Some(piece) = self.next().await {
            out.push_str(&piece?);
        }
        Ok(out)
    }
}

/// A chat model. Implement [`ChatModel::complete`]; streaming has a provided
/// default (one piece holding the whole reply) that a model able to stream
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

    /// Answers a request piece by piece.
    ///
    /// # Errors
    /// As [`ChatModel::complete`], before the first piece; later failures
    /// arrive as an `Err` item of the stream.
    async fn stream(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        let completion = self.complete(request).await?;
        let (tx, stream) = CompletionStream::channel(1);
        // The buffer has room for this one item, so this cannot fail.
        let _ = tx.try_send(Ok(completion.content));
        Ok(stream)
    }
}
