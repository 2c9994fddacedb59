//! What the mock says: each choice's pieces, the finish reason and the
//! usage, scripted or answered to what the request holds.

use serde_json::{json, Map, Value};

use super::{ChatRequest, Tool};

impl ChatRequest {
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
                cached_tokens: self.cached_chars / 4,
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
    pub(crate) content_text: bool,
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
}

/// Token counts, estimated as one token per four bytes of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) reasoning_tokens: usize,
    /// Of the prompt's tokens, those the mock's prompt cache held.
    pub(crate) cached_tokens: usize,
}

impl Usage {
    pub(crate) fn to_json(self) -> Value {
        serde_json::to_value(self.out()).unwrap_or(Value::Null)
    }
}

/// The reply to one request, before it is framed as JSON or SSE.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Each choice (`n` of them), in order.
    pub(crate) choices: Vec<Choice>,
    /// Whether each content piece carries its log probability.
    pub(crate) logprobs: bool,
    /// What the reply cost.
    pub(crate) usage: Usage,
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
