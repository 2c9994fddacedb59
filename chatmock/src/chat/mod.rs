//! What the mock answers to one chat request, independent of how it is sent:
//! the request fields it honours, each choice's reply (text, reasoning, a
//! refusal, tool calls) cut to `max_tokens`, the finish reason, the token
//! usage, and the JSON of a whole completion and of each streamed chunk.
//! Both the JSON and the SSE modes build on [`Answer`], so they cannot
//! disagree on content or usage. This file reads the request;
//! `answer.rs` decides the answer, `json.rs` writes it whole and
//! `chunks.rs` in streamed chunks.
//!
//! Unscripted, it answers as a model would to what the request holds: the
//! tool results it was just given, a tool call when it was offered tools
//! and asked something, a JSON object matching a requested schema, or the
//! echo of the last user message.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Map, Value};

mod answer;
mod chunks;
mod json;

pub(crate) use answer::{split_words, Answer, Choice, Scripted, ToolCall, Usage};
pub(crate) use chunks::{event, Chunks};
pub(crate) use json::completion_json;

/// The id every completion and chunk carries; tests match on it.
const COMPLETION_ID: &str = "chatcmpl-mock";

/// The `system_fingerprint` every answer carries, as OpenAI's do.
const FINGERPRINT: &str = "fp_mock";

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
    /// Total length of all message texts, for the prompt token count.
    prompt_chars: usize,
    /// The prompt's prefixes, a message longer each: a hash of the model
    /// and the messages so far, and their length. What a provider's prompt
    /// cache keys on.
    pub(crate) prefixes: Vec<(u64, usize)>,
    /// Of `prompt_chars`, those the mock had seen as a prompt prefix
    /// before (set by the server, which keeps the cache).
    pub(crate) cached_chars: usize,
    /// The last user message's text, for the echo reply.
    last_user: String,
    /// The last message's role.
    last_role: String,
    /// The tool results at the end of the conversation, in order.
    tool_results: Vec<String>,
    /// The tools offered, and how the model is told to use them.
    tools: Vec<Tool>,
    tool_choice: Option<Value>,
    parallel_tool_calls: bool,
    /// The requested output format (`response_format`).
    response_format: Option<Value>,
    /// How many choices (`n`).
    n: usize,
    /// Whether to report log probabilities.
    logprobs: bool,
    /// The prompt's size as a tokenizer would roughly count it (see
    /// `MockOpenAi::set_context_limit`).
    pub(crate) prompt_tokens: u64,
}

#[derive(Debug, Clone)]
struct Tool {
    name: String,
    parameters: Value,
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    messages: Vec<WireMessage<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream_options: Option<WireStreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    logprobs: Option<bool>,
    // Checked against the ranges OpenAI accepts (see `out_of_range`).
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    presence_penalty: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    /// Read raw, then as a string or parts (an untagged enum would buffer
    /// every message, which showed in the bench's profile).
    #[serde(borrow, default)]
    content: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

/// The text a model reads of a message's content: the string, or the
/// text parts joined.
fn content_text(content: &serde_json::value::RawValue) -> Cow<'_, str> {
    let raw = content.get();
    if let Ok(text) = serde_json::from_str::<&str>(raw) {
        return Cow::Borrowed(text);
    }
    if let Ok(text) = serde_json::from_str::<String>(raw) {
        return Cow::Owned(text);
    }
    let parts: Vec<Map<String, Value>> = serde_json::from_str(raw).unwrap_or_default();
    Cow::Owned(
        parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    parameters: Option<Value>,
}

impl ChatRequest {
    /// Reads a request body: `Err` with what OpenAI would say of a
    /// parameter out of its range, `Ok(None)` when it is not a chat
    /// request.
    /// With `prefixes`, also keys each prefix of the prompt for the prompt
    /// cache (skipped otherwise: the mock shares benches' cores).
    pub(crate) fn parse(
        body: &[u8],
        prefixes: bool,
    ) -> Result<Option<ChatRequest>, (&'static str, String)> {
        let Ok(wire) = serde_json::from_slice::<WireRequest<'_>>(body) else {
            return Ok(None);
        };
        out_of_range(&wire)?;
        let texts: Vec<Cow<'_, str>> = wire
            .messages
            .iter()
            .map(|m| {
                let mut text = m.content.map_or(Cow::Borrowed(""), content_text);
                for call in m.tool_calls.iter().flatten() {
                    let args = call.pointer("/function/arguments").and_then(Value::as_str);
                    text.to_mut().push_str(args.unwrap_or(""));
                }
                text
            })
            .collect();
        let last_user = wire
            .messages
            .iter()
            .zip(&texts)
            .rev()
            .find(|(m, _)| m.role == "user")
            .map(|(_, t)| t.clone().into_owned())
            .unwrap_or_default();
        let tool_results: Vec<String> = wire
            .messages
            .iter()
            .zip(&texts)
            .rev()
            .take_while(|(m, _)| m.role == "tool" || m.role == "function")
            .map(|(_, t)| t.clone().into_owned())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let prefixes = if prefixes {
            prompt_prefixes(&wire, &texts)
        } else {
            Vec::new()
        };
        // The newer name wins, as it does upstream, where `max_tokens` is
        // the deprecated spelling of the same limit.
        let limit = wire.max_completion_tokens.or(wire.max_tokens);
        Ok(Some(ChatRequest {
            model: wire
                .model
                .map_or_else(|| "mock".to_owned(), Cow::into_owned),
            stream: wire.stream.unwrap_or(false),
            include_usage: wire
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            max_pieces: limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            prompt_chars: texts.iter().map(|t| t.len()).sum(),
            prefixes,
            cached_chars: 0,
            prompt_tokens: texts
                .iter()
                .map(|t| {
                    let ascii = t.chars().filter(char::is_ascii).count();
                    let other = t.chars().count() - ascii;
                    4 + ascii.div_ceil(4) as u64 + other as u64
                })
                .sum(),
            last_role: wire
                .messages
                .last()
                .map(|m| m.role.clone().into_owned())
                .unwrap_or_default(),
            last_user,
            tool_results,
            tools: wire
                .tools
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.function)
                .map(|f| Tool {
                    name: f.name,
                    parameters: f.parameters.unwrap_or_else(|| json!({"type": "object"})),
                })
                .collect(),
            tool_choice: wire.tool_choice,
            parallel_tool_calls: wire.parallel_tool_calls.unwrap_or(true),
            response_format: wire.response_format,
            n: wire.n.map_or(1, |n| n.clamp(1, 16) as usize),
            logprobs: wire.logprobs.unwrap_or(false),
        }))
    }
}

/// Each prefix of the prompt (the model and the messages up to one) as a
/// hash, with its length in characters.
fn prompt_prefixes(wire: &WireRequest<'_>, texts: &[Cow<'_, str>]) -> Vec<(u64, usize)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::with_capacity(texts.len());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    wire.model.hash(&mut hasher);
    let mut chars = 0;
    for (m, t) in wire.messages.iter().zip(texts) {
        m.role.hash(&mut hasher);
        t.as_ref().hash(&mut hasher);
        chars += t.len();
        out.push((hasher.finish(), chars));
    }
    out
}

/// The first parameter outside the range OpenAI accepts, and what OpenAI
/// says of it: the mock refuses what the real service refuses, so a
/// gateway that relays the refusal can be tested.
fn out_of_range(wire: &WireRequest<'_>) -> Result<(), (&'static str, String)> {
    for (param, value, lo, hi) in [
        ("temperature", &wire.temperature, 0.0, 2.0),
        ("top_p", &wire.top_p, 0.0, 1.0),
        ("presence_penalty", &wire.presence_penalty, -2.0, 2.0),
        ("frequency_penalty", &wire.frequency_penalty, -2.0, 2.0),
    ] {
        let Some(value) = value.as_ref().filter(|v| !v.is_null()) else {
            continue;
        };
        match value.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => {}
            _ => {
                return Err((
                    param,
                    format!("Invalid '{param}': {value} is not a number in [{lo}, {hi}]."),
                ))
            }
        }
    }
    if wire.n == Some(0) || wire.n.is_some_and(|n| n > 128) {
        return Err(("n", "Invalid 'n': must be from 1 to 128.".to_owned()));
    }
    if wire.messages.is_empty() {
        return Err(("messages", "Invalid 'messages': empty array.".to_owned()));
    }
    Ok(())
}
