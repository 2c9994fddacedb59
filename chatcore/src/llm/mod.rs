//! The model behind a chat: the [`ChatModel`] trait, what it is asked
//! ([`ChatRequest`]) and what it answers ([`Completion`]), plus the OpenAI
//! chat-completions adapter ([`OpenAiChat`]).
//!
//! A request borrows the session's history instead of copying it; the
//! adapter serializes straight from the borrowed messages.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::types::Message;

mod openai;

pub use openai::{OpenAiChat, OpenAiConfig, OPENAI_BASE_URL};

/// One request to the model: optional system prompt, earlier messages
/// (oldest first) and the new user message.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The system prompt, if any.
    pub system: Option<&'a str>,
    /// Earlier messages of the session, oldest first, already trimmed to fit.
    pub history: &'a [Message],
    /// The new user message.
    pub user: &'a str,
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
