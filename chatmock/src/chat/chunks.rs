//! The SSE chunks of a streamed completion.

use bytes::Bytes;
use serde_json::{json, Value};

use super::json::logprobs_of;
use super::{ChatRequest, Choice, ToolCall, Usage, COMPLETION_ID, FINGERPRINT};

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
