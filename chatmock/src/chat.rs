//! What the mock answers to one chat request, independent of how it is sent:
//! the request fields it honours, each choice's reply (text, reasoning, a
//! refusal, tool calls) cut to `max_tokens`, the finish reason, the token
//! usage, and the JSON of a whole completion and of each streamed chunk.
//! Both the JSON and the SSE modes build on [`Answer`], so they cannot
//! disagree on content or usage.
//!
//! Unscripted, it answers as a model would to what the request holds: the
//! tool results it was just given, a tool call when it was offered tools
//! and asked something, a JSON object matching a requested schema, or the
//! echo of the last user message.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

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
    pub(crate) fn parse(body: &[u8]) -> Result<Option<ChatRequest>, (&'static str, String)> {
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

    /// The answer: `scripted` when the test gave one, else what the
    /// request calls for (see the module docs); `request_no` numbers this
    /// request, for tool-call ids that differ between requests.
    pub(crate) fn answer(&self, scripted: Scripted, request_no: u64) -> Answer {
        let choice = match scripted {
            Scripted::Pieces(pieces) if !pieces.is_empty() => Choice::text(pieces),
            Scripted::Message(message) => Choice::from_message(&message),
            Scripted::Pieces(_) => self.unscripted(request_no),
        };
        let mut choice = choice;
        if let Some(max) = self.max_pieces {
            if choice.content.len() > max {
                choice.content.truncate(max);
                choice.finish_reason = "length";
            }
        }
        let reply_chars = choice.content.iter().map(String::len).sum::<usize>()
            + choice.reasoning.iter().map(String::len).sum::<usize>()
            + choice.refusal.iter().map(String::len).sum::<usize>()
            + choice
                .tool_calls
                .iter()
                .map(|c| c.arguments.iter().map(String::len).sum::<usize>())
                .sum::<usize>();
        let reasoning_chars: usize = choice.reasoning.iter().map(String::len).sum();
        Answer {
            choices: vec![choice; self.n],
            logprobs: self.logprobs,
            usage: Usage {
                prompt_tokens: self.prompt_chars / 4,
                completion_tokens: reply_chars / 4,
                reasoning_tokens: reasoning_chars / 4,
            },
        }
    }

    /// What a model would say to this request unprompted.
    fn unscripted(&self, request_no: u64) -> Choice {
        if !self.tool_results.is_empty() {
            return Choice::text(split_words(&format!(
                "Tool results: {}",
                self.tool_results.join("; ")
            )));
        }
        let tools_allowed = !self.tools.is_empty()
            && self.last_role == "user"
            && self.tool_choice.as_ref().and_then(Value::as_str) != Some("none");
        if tools_allowed {
            let named = self
                .tool_choice
                .as_ref()
                .and_then(|c| c.pointer("/function/name"))
                .and_then(Value::as_str);
            let called: Vec<&Tool> = match named {
                Some(name) => self.tools.iter().filter(|t| t.name == name).collect(),
                None if self.tool_choice.as_ref().and_then(Value::as_str) == Some("required")
                    && self.parallel_tool_calls =>
                {
                    self.tools.iter().collect()
                }
                None => self.tools.iter().take(1).collect(),
            };
            if !called.is_empty() {
                return Choice {
                    tool_calls: called
                        .iter()
                        .enumerate()
                        .map(|(i, t)| ToolCall {
                            id: format!("call_{request_no}_{i}"),
                            name: t.name.clone(),
                            arguments: split_arguments(
                                &sample(&t.parameters, &t.parameters, &self.last_user).to_string(),
                            ),
                        })
                        .collect(),
                    finish_reason: "tool_calls",
                    ..Choice::default()
                };
            }
        }
        let format = self.response_format.as_ref();
        match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("json_schema") => {
                let schema = format
                    .and_then(|f| f.pointer("/json_schema/schema"))
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                Choice::text(vec![sample(&schema, &schema, &self.last_user).to_string()])
            }
            Some("json_object") => Choice::text(vec![json!({"echo": self.last_user}).to_string()]),
            _ => Choice::text(split_words(&format!("Echo: {}", self.last_user))),
        }
    }
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

/// What a test scripted for one request.
#[derive(Debug, Clone)]
pub(crate) enum Scripted {
    /// These text pieces (none: the mock decides).
    Pieces(Vec<String>),
    /// This assistant message.
    Message(Value),
}

/// A value that fits `schema`: every property of an object, the first of
/// an enum or a union, `text` for a string. `root` resolves `$ref`s.
fn sample(schema: &Value, root: &Value, text: &str) -> Value {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .unwrap_or(&Value::Null);
        return sample(target, root, text);
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    for union in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(union).and_then(|u| u.get(0)) {
            return sample(first, root, text);
        }
    }
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => kinds.first().and_then(Value::as_str).unwrap_or("null"),
        Some(Value::String(k)) => k.as_str(),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    out.insert(name.clone(), sample(prop, root, text));
                }
            }
            Value::Object(out)
        }
        "array" => json!([sample(
            schema.get("items").unwrap_or(&json!({})),
            root,
            text
        )]),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(if text.is_empty() { "sample" } else { text }),
    }
}

/// Splits a reply the way the mock streams it: one piece per word, each
/// keeping its trailing space, so the pieces concatenate back to the text.
pub(crate) fn split_words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// Splits a tool call's arguments into pieces of a few characters, as
/// OpenAI streams them, so a client must join them.
fn split_arguments(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    chars.chunks(8).map(|c| c.iter().collect()).collect()
}

/// One tool call of a reply, its arguments in pieces.
#[derive(Debug, Clone)]
pub(crate) struct ToolCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: Vec<String>,
}

/// One choice of a reply, in pieces.
#[derive(Debug, Clone, Default)]
pub(crate) struct Choice {
    /// `reasoning_content` pieces (vLLM's and DeepSeek's reasoning field).
    pub(crate) reasoning: Vec<String>,
    /// Content pieces; with none and no `content_text`, content is null.
    pub(crate) content: Vec<String>,
    /// Whether the message has text content (else `content: null`).
    content_text: bool,
    /// Refusal pieces.
    pub(crate) refusal: Vec<String>,
    pub(crate) tool_calls: Vec<ToolCall>,
    /// The older `functions` API's one call (its id unused).
    pub(crate) function_call: Option<ToolCall>,
    /// `"stop"`, `"length"` when the token limit cut the reply,
    /// `"tool_calls"` or `"function_call"`.
    pub(crate) finish_reason: &'static str,
}

impl Choice {
    fn text(pieces: Vec<String>) -> Choice {
        Choice {
            content: pieces,
            content_text: true,
            finish_reason: "stop",
            ..Choice::default()
        }
    }

    /// A choice from a scripted assistant message: its `content` (a
    /// string or null), `refusal`, `reasoning_content`, `tool_calls` and
    /// `function_call`.
    fn from_message(m: &Value) -> Choice {
        let text = |key: &str| m.get(key).and_then(Value::as_str).map(split_words);
        let tool_calls: Vec<ToolCall> = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: c
                            .get("id")
                            .and_then(Value::as_str)
                            .map_or_else(|| format!("call_{i}"), str::to_owned),
                        name: c
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        arguments: split_arguments(
                            c.pointer("/function/arguments")
                                .and_then(Value::as_str)
                                .unwrap_or("{}"),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let function_call = m.get("function_call").map(|f| ToolCall {
            id: String::new(),
            name: f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            arguments: split_arguments(f.get("arguments").and_then(Value::as_str).unwrap_or("{}")),
        });
        let content = text("content");
        Choice {
            reasoning: text("reasoning_content").unwrap_or_default(),
            content_text: content.is_some(),
            content: content.unwrap_or_default(),
            refusal: text("refusal").unwrap_or_default(),
            finish_reason: if !tool_calls.is_empty() {
                "tool_calls"
            } else if function_call.is_some() {
                "function_call"
            } else {
                "stop"
            },
            tool_calls,
            function_call,
        }
    }

    /// The whole message, as a non-streamed completion carries it.
    fn message(&self) -> MessageOut<'_> {
        MessageOut {
            content: self.content_text.then(|| self.content.concat()),
            refusal: (!self.refusal.is_empty()).then(|| self.refusal.concat()),
            reasoning_content: (!self.reasoning.is_empty()).then(|| self.reasoning.concat()),
            role: "assistant",
            tool_calls: self
                .tool_calls
                .iter()
                .map(|c| CallOut {
                    function: FunctionOut {
                        arguments: c.arguments.concat(),
                        name: &c.name,
                    },
                    id: &c.id,
                    kind: "function",
                })
                .collect(),
            function_call: self.function_call.as_ref().map(|c| FunctionOut {
                arguments: c.arguments.concat(),
                name: &c.name,
            }),
        }
    }
}

// The JSON a completion is written from: typed (building `Value` maps for
// every reply made the mock, which shares the bench's cores, costlier than
// the gateway it measures), members in alphabetical order as a `Value`
// would write them.

#[derive(Serialize)]
struct CompletionOut<'a> {
    choices: Vec<ChoiceOut<'a>>,
    created: u64,
    id: &'static str,
    model: &'a str,
    object: &'static str,
    system_fingerprint: &'static str,
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    finish_reason: &'a str,
    index: usize,
    logprobs: Option<Value>,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    refusal: Option<String>,
    role: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallOut<'a>>,
}

#[derive(Serialize)]
struct CallOut<'a> {
    function: FunctionOut<'a>,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    arguments: String,
    name: &'a str,
}

#[derive(Serialize)]
struct UsageOut {
    completion_tokens: usize,
    completion_tokens_details: ReasoningOut,
    prompt_tokens: usize,
    prompt_tokens_details: CachedOut,
    total_tokens: usize,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: usize,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: usize,
}

/// Token counts, estimated as one token per four bytes of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    reasoning_tokens: usize,
}

impl Usage {
    fn out(self) -> UsageOut {
        UsageOut {
            completion_tokens: self.completion_tokens,
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: self.reasoning_tokens,
            },
            prompt_tokens: self.prompt_tokens,
            prompt_tokens_details: CachedOut { cached_tokens: 0 },
            total_tokens: self.prompt_tokens + self.completion_tokens,
        }
    }

    fn to_json(self) -> Value {
        serde_json::to_value(self.out()).unwrap_or(Value::Null)
    }
}

/// The reply to one request, before it is framed as JSON or SSE.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Each choice (`n` of them), in order.
    pub(crate) choices: Vec<Choice>,
    /// Whether each content piece carries its log probability.
    logprobs: bool,
    /// What the reply cost.
    pub(crate) usage: Usage,
}

/// The log probabilities of `pieces`, in OpenAI's shape.
fn logprobs_of(pieces: &[String]) -> Value {
    json!({"content": pieces.iter().map(|p| json!({
        "token": p,
        "logprob": -0.25,
        "bytes": p.as_bytes(),
        "top_logprobs": [],
    })).collect::<Vec<_>>(), "refusal": null})
}

/// The body of a non-streaming completion.
pub(crate) fn completion_json(request: &ChatRequest, answer: &Answer) -> Bytes {
    let out = CompletionOut {
        choices: answer
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| ChoiceOut {
                finish_reason: c.finish_reason,
                index: i,
                logprobs: answer.logprobs.then(|| logprobs_of(&c.content)),
                message: c.message(),
            })
            .collect(),
        created: 0,
        id: COMPLETION_ID,
        model: &request.model,
        object: "chat.completion",
        system_fingerprint: FINGERPRINT,
        usage: answer.usage.out(),
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// Builds the SSE events of one streamed completion, each a whole
/// `data: …\n\n` event.
#[derive(Debug)]
pub(crate) struct Chunks {
    model: String,
    include_usage: bool,
    logprobs: bool,
}

impl Chunks {
    pub(crate) fn new(request: &ChatRequest) -> Chunks {
        Chunks {
            model: request.model.clone(),
            include_usage: request.include_usage,
            logprobs: request.logprobs,
        }
    }

    /// A choice's first chunk: the role, with empty content, as upstream
    /// sends it (content null for a reply that will call tools).
    pub(crate) fn role(&self, index: usize, choice: &Choice) -> Bytes {
        let calls = !choice.tool_calls.is_empty() || choice.function_call.is_some();
        let content = if choice.content_text || !calls {
            Value::from("")
        } else {
            Value::Null
        };
        self.choice(
            index,
            json!({"role": "assistant", "content": content}),
            None,
            None,
        )
    }

    /// One content piece.
    pub(crate) fn content(&self, index: usize, piece: &str) -> Bytes {
        let logprobs = self.logprobs.then(|| logprobs_of(&[piece.to_owned()]));
        self.choice(index, json!({"content": piece}), None, logprobs)
    }

    /// One reasoning piece.
    pub(crate) fn reasoning(&self, index: usize, piece: &str) -> Bytes {
        self.choice(index, json!({"reasoning_content": piece}), None, None)
    }

    /// One refusal piece.
    pub(crate) fn refusal(&self, index: usize, piece: &str) -> Bytes {
        self.choice(index, json!({"refusal": piece}), None, None)
    }

    /// A piece of tool call `call` (the `position`-th of the reply): the
    /// first carries its id, type and name.
    pub(crate) fn tool_call(
        &self,
        index: usize,
        position: usize,
        call: &ToolCall,
        piece: usize,
    ) -> Bytes {
        let mut delta = json!({"index": position, "function": {"arguments": call.arguments.get(piece).map_or("", String::as_str)}});
        if piece == 0 {
            delta["id"] = Value::from(call.id.as_str());
            delta["type"] = Value::from("function");
            delta["function"]["name"] = Value::from(call.name.as_str());
        }
        self.choice(index, json!({"tool_calls": [delta]}), None, None)
    }

    /// A piece of the older API's function call: the first carries its
    /// name.
    pub(crate) fn function_call(&self, index: usize, call: &ToolCall, piece: usize) -> Bytes {
        let mut delta = json!({"arguments": call.arguments.get(piece).map_or("", String::as_str)});
        if piece == 0 {
            delta["name"] = Value::from(call.name.as_str());
        }
        self.choice(index, json!({"function_call": delta}), None, None)
    }

    /// The chunk with an empty delta and the finish reason.
    pub(crate) fn finish(&self, index: usize, reason: &str) -> Bytes {
        self.choice(index, json!({}), Some(reason), None)
    }

    /// The usage chunk, or `None` when the request did not ask for it.
    pub(crate) fn usage(&self, usage: Usage) -> Option<Bytes> {
        self.include_usage.then(|| {
            let mut chunk = self.envelope(json!([]));
            chunk["usage"] = usage.to_json();
            event(&chunk.to_string())
        })
    }

    fn choice(
        &self,
        index: usize,
        delta: Value,
        finish_reason: Option<&str>,
        logprobs: Option<Value>,
    ) -> Bytes {
        let mut choice = json!({
            "index": index,
            "delta": delta,
            "finish_reason": finish_reason
        });
        if let Some(lp) = logprobs {
            choice["logprobs"] = lp;
        }
        let mut chunk = self.envelope(json!([choice]));
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
            "system_fingerprint": FINGERPRINT,
            "choices": choices
        })
    }
}

/// Frames `data` as one SSE event.
pub(crate) fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_fits_a_pydantic_style_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "pet": {"$ref": "#/$defs/Pet"},
                "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}
            },
            "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}}}
        });
        let v = sample(&schema, &schema, "Ann");
        assert_eq!(
            v,
            json!({"name": "Ann", "age": 1, "tags": ["Ann"], "pet": {"kind": "cat"}, "nick": "Ann"})
        );
    }
}
