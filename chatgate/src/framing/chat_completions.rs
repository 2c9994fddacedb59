//! OpenAI's chat-completions framing (`POST /v1/chat/completions`).
//!
//! The upstream's own reply is relayed as it was sent: the whole body, or
//! each `chat.completion.chunk` as it arrives, ending with `data: [DONE]`.
//! Only `model` is changed, back to the name the client asked for when
//! the gateway sent another upstream; and the usage the gateway asks for
//! on every stream is passed on only when the client asked for it too:
//! the usage-only chunk is left out, and so is the `"usage": null` an
//! upstream then adds to every other chunk, so the client reads the
//! chunks it would have read from the upstream itself. A model that hands back no raw reply (one embedded without an
//! upstream of its own) gets the same shapes built from its pieces.

use bytes::Bytes;
use chatcore::{Fields, ToolCallDelta, Usage, WireMessage};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;

use super::{sse, Framing, Piece, Reply};
use crate::body::{json, Body};
use crate::error::ApiError;

/// OpenAI's chat-completions framing, for one request.
#[derive(Debug)]
pub struct ChatCompletions {
    /// The model the client named.
    client_model: String,
    /// The model the upstream was asked for.
    upstream_model: String,
    /// Whether the client asked for the usage chunk.
    include_usage: bool,
    /// Whether the upstream's chunks are relayed (else they are built).
    raw: bool,
    /// For built replies: their id and time.
    id: String,
    created: i64,
}

impl ChatCompletions {
    /// A framing for a request that named `client_model`, sent upstream as
    /// `upstream_model`.
    pub fn new(client_model: String, upstream_model: String, include_usage: bool) -> Self {
        ChatCompletions {
            client_model,
            upstream_model,
            include_usage,
            raw: false,
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
        }
    }

    /// `json` (an upstream body) with the client's model name, when the
    /// gateway sent another; as it came otherwise.
    fn relayed(&self, json: &Bytes) -> Bytes {
        if self.client_model == self.upstream_model {
            return json.clone();
        }
        rewrite(json, Some(&self.client_model), false)
    }

    /// An upstream chunk as the client would have read it from the
    /// upstream itself: [`ChatCompletions::relayed`], without the
    /// `"usage": null` that asking for usage made the upstream add.
    fn relayed_chunk(&self, json: &Bytes) -> Bytes {
        let rename = self.client_model != self.upstream_model;
        let unasked = !self.include_usage && json.windows(7).any(|w| w == b"\"usage\"");
        if !rename && !unasked {
            return json.clone();
        }
        rewrite(json, rename.then_some(self.client_model.as_str()), unasked)
    }

    fn chunk(&self, delta: DeltaOut<'_>, finish_reason: Option<&str>) -> Bytes {
        sse::data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.client_model,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        })
    }
}

/// `json` with its top-level `model` set to `model` (when given) and a
/// `"usage": null` member removed (with `drop_null_usage`); unchanged if
/// it is not a JSON object.
fn rewrite(json: &Bytes, model: Option<&str>, drop_null_usage: bool) -> Bytes {
    let Ok(mut fields) = Fields::parse(json) else {
        return json.clone();
    };
    if let Some(name) = model.and_then(|m| serde_json::value::to_raw_value(m).ok()) {
        fields.set("model", name);
    }
    if drop_null_usage && fields.get("usage").is_some_and(|u| u.get() == "null") {
        fields.remove("usage");
    }
    Bytes::from(crate::body::json_bytes(&fields))
}

impl Framing for ChatCompletions {
    fn answered_by(&mut self, target: &str) {
        // `upstream:model`: upstream names hold no `:`, model names may.
        if let Some((_, model)) = target.split_once(':') {
            if model != self.upstream_model {
                self.upstream_model = model.to_owned();
            }
        }
    }

    fn whole(&self, reply: &Reply<'_>) -> Response<Body> {
        if let Some(raw) = reply.raw {
            let mut resp = Response::new(Body::full(self.relayed(raw)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        json(&CompletionOut {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.client_model,
            choices: [ChoiceOut {
                index: 0,
                message: match reply.wire {
                    Some(wire) => MessageOut::Wire(wire),
                    None => MessageOut::Text {
                        role: "assistant",
                        content: reply.content,
                    },
                },
                finish_reason: reply.finish_reason.unwrap_or("stop"),
            }],
            usage: reply.usage.map(UsageOut::from),
        })
    }

    fn opening(&mut self, raw: bool) -> Option<Bytes> {
        self.raw = raw;
        (!raw).then(|| {
            self.chunk(
                DeltaOut {
                    role: Some("assistant"),
                    content: Some(""),
                    ..DeltaOut::default()
                },
                None,
            )
        })
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Bytes> {
        match piece {
            Piece::Raw(chunk) => {
                if chunk.usage_only && !self.include_usage {
                    return None;
                }
                Some(sse::data_raw(&self.relayed_chunk(&chunk.data)))
            }
            _ if self.raw => None,
            Piece::Text(text) => Some(self.chunk(
                DeltaOut {
                    content: Some(text),
                    ..DeltaOut::default()
                },
                None,
            )),
            Piece::Refusal(text) => Some(self.chunk(
                DeltaOut {
                    refusal: Some(text),
                    ..DeltaOut::default()
                },
                None,
            )),
            Piece::ToolCall(call) => Some(self.chunk(
                DeltaOut {
                    tool_calls: Some([ToolCallOut::from(call)]),
                    ..DeltaOut::default()
                },
                None,
            )),
            Piece::FunctionCall(call) => Some(self.chunk(
                DeltaOut {
                    function_call: Some(FunctionOut {
                        name: call.name.as_deref(),
                        arguments: &call.arguments,
                    }),
                    ..DeltaOut::default()
                },
                None,
            )),
        }
    }

    fn closing(&mut self, reply: &Reply<'_>) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(3);
        if !self.raw {
            out.push(self.chunk(
                DeltaOut::default(),
                Some(reply.finish_reason.unwrap_or("stop")),
            ));
            if let (true, Some(u)) = (self.include_usage, reply.usage) {
                out.push(sse::data(&ChunkOut {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.client_model,
                    choices: &[],
                    usage: Some(u.into()),
                }));
            }
        }
        out.push(sse::done());
        out
    }

    fn failure(&mut self, e: &ApiError) -> Bytes {
        // No `[DONE]` after it: a client never takes a cut answer for a
        // whole one.
        sse::data(&e.openai_body().1)
    }
}

/// `usage` in OpenAI's shape.
#[derive(Debug, Clone, Copy, Serialize)]
struct UsageOut {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
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

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MessageOut<'a> {
    Wire(&'a WireMessage),
    Text {
        role: &'static str,
        content: &'a str,
    },
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Default, Serialize)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallOut<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionOut<'a>>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl<'a> From<&'a ToolCallDelta> for ToolCallOut<'a> {
    fn from(d: &'a ToolCallDelta) -> Self {
        ToolCallOut {
            index: d.index,
            id: d.id.as_deref(),
            kind: d.kind.as_deref(),
            function: FunctionOut {
                name: d.name.as_deref(),
                arguments: &d.arguments,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_is_renamed_and_everything_else_is_kept() {
        let chunk = br#"{"id":"x","model":"qwen2.5-7b","choices":[{"index":0,"delta":{"reasoning_content":"hm"},"logprobs":null}],"system_fingerprint":"fp"}"#;
        let bytes = Bytes::from_static(chunk);
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite(&bytes, Some("gpt-4o"), false)).unwrap();
        let mut expected: serde_json::Value = serde_json::from_slice(chunk).unwrap();
        expected["model"] = "gpt-4o".into();
        assert_eq!(out, expected);
        let same = ChatCompletions::new("m".into(), "m".into(), false);
        assert_eq!(same.relayed(&bytes), bytes, "relayed untouched");
        assert_eq!(same.relayed_chunk(&bytes), bytes, "relayed untouched");
        let with_null = Bytes::from_static(br#"{"id":"x","choices":[],"usage":null}"#);
        assert_eq!(
            &same.relayed_chunk(&with_null)[..],
            br#"{"id":"x","choices":[]}"#
        );
        let asked = ChatCompletions::new("m".into(), "m".into(), true);
        assert_eq!(asked.relayed_chunk(&with_null), with_null);
    }

    fn data(frame: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(frame).unwrap();
        serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
    }

    /// A model with no raw reply of its own (one embedded in chatcore)
    /// gets OpenAI's chunks built from its pieces, tool calls included.
    #[test]
    fn chunks_are_built_when_there_is_nothing_to_relay() {
        let mut f = ChatCompletions::new("m".into(), "m".into(), true);
        let role = f.opening(false).expect("a role chunk");
        assert_eq!(
            data(&role)["choices"][0]["delta"],
            serde_json::json!({"role": "assistant", "content": ""})
        );
        let call = ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            kind: Some("function".into()),
            name: Some("f".into()),
            arguments: "{}".into(),
        };
        let chunk = data(&f.piece(Piece::ToolCall(&call)).unwrap());
        assert_eq!(
            chunk["choices"][0]["delta"]["tool_calls"],
            serde_json::json!([{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
        );
        let text = data(&f.piece(Piece::Text("Hi")).unwrap());
        assert_eq!(text["choices"][0]["delta"]["content"], "Hi");
        let reply = Reply {
            session_id: None,
            content: "Hi",
            wire: None,
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                cached_tokens: 0,
            }),
            finish_reason: Some("tool_calls"),
            raw: None,
        };
        let closing = f.closing(&reply);
        assert_eq!(closing.len(), 3, "finish, usage, [DONE]");
        assert_eq!(
            data(&closing[0])["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(data(&closing[1])["usage"]["total_tokens"], 4);
        assert_eq!(&closing[2][..], b"data: [DONE]\n\n");
    }

    #[test]
    fn the_usage_chunk_is_passed_on_only_when_asked() {
        let chunk = chatcore::RawChunk {
            data: Bytes::from_static(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#),
            usage_only: true,
        };
        let mut quiet = ChatCompletions::new("m".into(), "m".into(), false);
        assert!(quiet.opening(true).is_none());
        assert!(quiet.piece(Piece::Raw(&chunk)).is_none());
        let mut asked = ChatCompletions::new("m".into(), "m".into(), true);
        asked.opening(true);
        assert!(asked.piece(Piece::Raw(&chunk)).is_some());
        assert!(asked
            .piece(Piece::Text("ignored: the raw chunk carries it"))
            .is_none());
    }
}
