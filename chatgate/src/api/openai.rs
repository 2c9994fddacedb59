//! OpenAI's chat-completions wire format, as `/v1` speaks it: the request
//! (parsed strictly: an unknown field is refused, as OpenAI itself does,
//! rather than silently dropped), the whole response, and stream chunks.

use chatcore::{ChatOptions, Role, Usage};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Invalid};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionsIn {
    /// One of `openai.models`.
    pub model: String,
    /// The conversation (stateless) or the one new user message
    /// (session-bound).
    pub messages: Vec<MessageIn>,
    /// Answer as `chat.completion.chunk` server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Stream settings.
    #[serde(default)]
    pub stream_options: Option<StreamOptionsIn>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0 to 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Reply length cap (older name).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Reply length cap (newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Up to 4 stop sequences.
    #[serde(default)]
    pub stop: Option<StopIn>,
    /// -2 to 2.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// -2 to 2.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Best-effort determinism.
    #[serde(default)]
    pub seed: Option<i64>,
    /// The end user, for the upstream's abuse monitoring.
    #[serde(default)]
    pub user: Option<String>,
    /// Number of choices: only 1 is served.
    #[serde(default)]
    pub n: Option<u32>,
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptionsIn {
    /// Send a last chunk with the usage of the whole request.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopIn {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    /// `system`, `developer` (read as system), `user` or `assistant`.
    pub role: String,
    /// Text, or a list of text parts.
    pub content: ContentIn,
    /// A participant name (accepted, not forwarded).
    #[serde(default)]
    pub name: Option<String>,
}

/// A message's content: a string or a list of `{"type": "text", "text": …}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentIn {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<PartIn>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct PartIn {
    /// Only `text` is served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A validated request: what the handler needs, owned.
#[derive(Debug)]
pub struct Completions {
    /// The model named.
    pub model: String,
    /// Role and text of each message, in order.
    pub messages: Vec<(Role, String)>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether the stream ends with a usage chunk.
    pub include_usage: bool,
    /// What is forwarded upstream.
    pub options: ChatOptions,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::validation(vec![Invalid::field(param, msg.into(), "value_error")])
}

/// Checked as sent (f64), before narrowing to what is forwarded (f32), so
/// a value just past a bound is not rounded into range.
fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(bad(
            param,
            format!("must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// Parses and validates a `POST /v1/chat/completions` body.
///
/// # Errors
/// A validation error (answered 400 `invalid_request_error` on `/v1`).
pub fn parse_completions(body: &[u8]) -> Result<Completions, ApiError> {
    let input: CompletionsIn = serde_json::from_slice(body).map_err(|e| {
        let mut err = ApiError::validation(vec![Invalid {
            loc: vec!["body".into()],
            msg: format!("Invalid request body: {e}").into(),
            kind: "value_error",
        }]);
        err.code = Some("invalid_request");
        err
    })?;
    if input.model.trim().is_empty() {
        return Err(bad("model", "must name a model"));
    }
    if input.messages.is_empty() {
        return Err(bad("messages", "must hold at least one message"));
    }
    if input.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    in_range("temperature", input.temperature, 0.0, 2.0)?;
    in_range("top_p", input.top_p, 0.0, 1.0)?;
    in_range("presence_penalty", input.presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", input.frequency_penalty, -2.0, 2.0)?;
    let max_tokens = input.max_completion_tokens.or(input.max_tokens);
    if max_tokens == Some(0) {
        return Err(bad("max_tokens", "must be at least 1"));
    }
    let stop = match input.stop {
        None => Vec::new(),
        Some(StopIn::One(s)) => vec![s],
        Some(StopIn::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(bad("stop", "at most 4 stop sequences"));
    }
    let mut messages = Vec::with_capacity(input.messages.len());
    for (i, m) in input.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(
                    "messages",
                    format!("messages[{i}].role {other:?} is not supported (system, developer, user, assistant)"),
                ))
            }
        };
        let text = match m.content {
            ContentIn::Text(t) => t,
            ContentIn::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(bad(
                                "messages",
                                format!("messages[{i}]: content part type {kind:?} is not supported (text only)"),
                            ))
                        }
                    }
                }
                text
            }
        };
        messages.push((role, text));
    }
    let stream = input.stream.unwrap_or(false);
    if input.stream_options.is_some() && !stream {
        // As OpenAI answers: the option means nothing without a stream.
        return Err(bad(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = input
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(Completions {
        options: ChatOptions {
            model: Some(input.model.clone()),
            temperature: input.temperature.map(|v| v as f32),
            top_p: input.top_p.map(|v| v as f32),
            max_tokens,
            stop,
            presence_penalty: input.presence_penalty.map(|v| v as f32),
            frequency_penalty: input.frequency_penalty.map(|v| v as f32),
            seed: input.seed,
            user: input.user,
        },
        model: input.model,
        messages,
        stream,
        include_usage,
    })
}

/// `usage` in OpenAI's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageOut {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Reply tokens.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// The whole `chat.completion` response.
#[derive(Debug, Serialize)]
pub struct CompletionOut<'a> {
    /// `chatcmpl-…`.
    pub id: &'a str,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The model named in the request.
    pub model: &'a str,
    /// The one choice.
    pub choices: [ChoiceOut<'a>; 1],
    /// Tokens, when the upstream reported them.
    pub usage: Option<UsageOut>,
}

/// One choice of a whole response.
#[derive(Debug, Serialize)]
pub struct ChoiceOut<'a> {
    /// Always 0.
    pub index: u32,
    /// The reply.
    pub message: ReplyMessage<'a>,
    /// `stop`, `length`, …
    pub finish_reason: &'a str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct ReplyMessage<'a> {
    /// `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: &'a str,
}

/// One `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub struct ChunkOut<'a> {
    /// The same id for every chunk of a stream.
    pub id: &'a str,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The model named in the request.
    pub model: &'a str,
    /// One choice, or none in the usage chunk.
    pub choices: &'a [ChunkChoice<'a>],
    /// Only in the last chunk, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// One choice of a chunk.
#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    /// Always 0.
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta<'a>,
    /// Set on the last content chunk.
    pub finish_reason: Option<&'a str>,
}

/// A chunk's addition.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The next piece of text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_sdk_request_parses() {
        let c = parse_completions(
            br#"{"model":"m","messages":[{"role":"system","content":"Be brief"},
                {"role":"user","content":[{"type":"text","text":"Hi"}]}],
                "stream":true,"stream_options":{"include_usage":true},
                "temperature":0.2,"max_tokens":50,"stop":"END"}"#,
        )
        .unwrap();
        assert_eq!(
            c.messages,
            [(Role::System, "Be brief".into()), (Role::User, "Hi".into())]
        );
        assert!(c.stream && c.include_usage);
        assert_eq!(c.options.max_tokens, Some(50));
        assert_eq!(c.options.stop, ["END"]);
        assert_eq!(c.options.model.as_deref(), Some("m"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        for body in [
            &br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#[..],
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":2.0000001}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            br#"[1]"#,
        ] {
            let e = parse_completions(body).unwrap_err();
            assert_eq!(e.openai_body().0, hyper::StatusCode::BAD_REQUEST);
        }
    }
}
