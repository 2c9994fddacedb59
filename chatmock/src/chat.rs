//! What the mock answers to one chat request, independent of how it is sent:
//! the request fields it honours, the reply pieces after `max_tokens`, the
//! finish reason, the token usage, and the JSON of a whole completion and of
//! each streamed chunk. Both the JSON and the SSE modes build on [`Answer`],
//! so they cannot disagree on content or usage.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

/// The id every completion and chunk carries; tests match on it.
const COMPLETION_ID: &str = "chatcmpl-mock";

/// The fields of a chat request that shape the answer.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    /// The model name, echoed in every answer.
    pub(crate) model: String,
    /// Whether the client asked for server-sent events.
    pub(crate) stream: bool,
    /// Whether the client asked for a final usage chunk
    /// (`stream_options.include_usage`).
    pub(crate) include_usage: bool,
    /// The reply limit in word pieces (`max_completion_tokens`, else `max_tokens`).
    max_pieces: Option<usize>,
    /// Total length of all message contents, for the prompt token count.
    prompt_chars: usize,
    /// The last user message, for the echo reply.
    last_user: String,
    /// The prompt's size as a tokenizer would roughly count it (see
    /// `MockOpenAi::set_context_limit`).
    pub(crate) prompt_tokens: u64,
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    messages: Vec<WireMessage<'a>>,
    #[serde(default)]
    stream: bool,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream_options: Option<WireStreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl ChatRequest {
    /// Reads a request body; `None` when it is not a chat request.
    pub(crate) fn parse(body: &[u8]) -> Option<ChatRequest> {
        let wire: WireRequest<'_> = serde_json::from_slice(body).ok()?;
        let last_user = wire
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone().into_owned())
            .unwrap_or_default();
        // The newer name wins, as it does upstream, where `max_tokens` is
        // the deprecated spelling of the same limit.
        let limit = wire.max_completion_tokens.or(wire.max_tokens);
        Some(ChatRequest {
            model: wire.model.as_deref().unwrap_or("mock").to_owned(),
            stream: wire.stream,
            include_usage: wire.stream_options.is_some_and(|o| o.include_usage),
            max_pieces: limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            prompt_chars: wire.messages.iter().map(|m| m.content.len()).sum(),
            prompt_tokens: wire
                .messages
                .iter()
                .map(|m| {
                    let ascii = m.content.chars().filter(char::is_ascii).count();
                    let other = m.content.chars().count() - ascii;
                    4 + ascii.div_ceil(4) as u64 + other as u64
                })
                .sum(),
            last_user,
        })
    }

    /// The answer made of `pieces`, or of the echo of the last user message
    /// when `pieces` is empty, cut to the request's token limit.
    pub(crate) fn answer(&self, pieces: Vec<String>) -> Answer {
        let mut pieces = if pieces.is_empty() {
            split_words(&format!("Echo: {}", self.last_user))
        } else {
            pieces
        };
        let mut finish_reason = "stop";
        if let Some(max) = self.max_pieces {
            if pieces.len() > max {
                pieces.truncate(max);
                finish_reason = "length";
            }
        }
        let reply_chars: usize = pieces.iter().map(String::len).sum();
        Answer {
            pieces,
            finish_reason,
            usage: Usage {
                prompt_tokens: self.prompt_chars / 4,
                completion_tokens: reply_chars / 4,
            },
        }
    }
}

/// Splits a reply the way the mock streams it: one piece per word, each
/// keeping its trailing space, so the pieces concatenate back to the text.
pub(crate) fn split_words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// Token counts, estimated as one token per four bytes of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// The reply to one request, before it is framed as JSON or SSE.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The content pieces, in order; one SSE chunk each.
    pub(crate) pieces: Vec<String>,
    /// `"stop"`, or `"length"` when the token limit cut the reply.
    pub(crate) finish_reason: &'static str,
    /// What the reply cost.
    pub(crate) usage: Usage,
}

/// The body of a non-streaming completion.
pub(crate) fn completion_json(request: &ChatRequest, answer: &Answer) -> Bytes {
    let out = json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": 0,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.pieces.concat()},
            "finish_reason": answer.finish_reason
        }],
        "usage": answer.usage.to_json()
    });
    Bytes::from(out.to_string())
}

/// Builds the SSE events of one streamed completion, each a whole
/// `data: …\n\n` event.
#[derive(Debug)]
pub(crate) struct Chunks {
    model: String,
    include_usage: bool,
}

impl Chunks {
    pub(crate) fn new(request: &ChatRequest) -> Chunks {
        Chunks {
            model: request.model.clone(),
            include_usage: request.include_usage,
        }
    }

    /// The first chunk: the role, with empty content, as upstream sends it.
    pub(crate) fn role(&self) -> Bytes {
        self.choice(json!({"role": "assistant", "content": ""}), None)
    }

    /// One content piece.
    pub(crate) fn content(&self, piece: &str) -> Bytes {
        self.choice(json!({"content": piece}), None)
    }

    /// The chunk with an empty delta and the finish reason.
    pub(crate) fn finish(&self, reason: &str) -> Bytes {
        self.choice(json!({}), Some(reason))
    }

    /// The usage chunk, or `None` when the request did not ask for it.
    pub(crate) fn usage(&self, usage: Usage) -> Option<Bytes> {
        self.include_usage.then(|| {
            let mut chunk = self.envelope(json!([]));
            chunk["usage"] = usage.to_json();
            event(&chunk.to_string())
        })
    }

    fn choice(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let mut chunk = self.envelope(json!([{
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason
        }]));
        // Upstream marks every chunk before the usage chunk this way when
        // usage was asked for; clients must tolerate the null.
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        event(&chunk.to_string())
    }

    fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices
        })
    }
}

/// Frames `data` as one SSE event.
pub(crate) fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}
