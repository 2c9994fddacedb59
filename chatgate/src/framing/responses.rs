//! The Responses API's framing (`POST /v1/responses`): a `response` object
//! whole, or OpenAI's typed events streamed (`response.created`, the
//! output items and their deltas, `response.completed` once the turn is
//! stored), each with its `sequence_number`.
//!
//! A stored response's object is made from its meta and its whole reply,
//! the same way when it is returned (whole, or in `response.completed`)
//! and when it is read back ([`Shown`]), so `GET /v1/responses/{id}`
//! answers exactly what the client was given; output item ids follow from
//! the response's id, so the items a stream announces are the ones the
//! object holds.

use std::sync::Arc;

use bytes::Bytes;
use chatcore::{Usage, WireMessage};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{sse, Framing, Piece, Reply};
use crate::body::Body;
use crate::error::ApiError;

mod kept;
pub use kept::Shown;

/// What a response object says besides its output: its id, time, model,
/// and what it repeats of the request.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The model the client named.
    pub model: String,
    /// The response continued from.
    pub previous_response_id: Option<String>,
    /// The conversation joined.
    pub conversation: Option<String>,
    /// Whether it is kept.
    pub store: bool,
    /// What it repeats of the request (tools, text, metadata, …).
    pub echo: Map<String, Value>,
}

impl Meta {
    /// The id of the reply's message item.
    fn message_id(&self) -> String {
        ["msg_", self.suffix()].concat()
    }

    /// The id of the reply's `index`th function call item.
    fn call_id(&self, index: u32) -> String {
        format!("fc_{}_{index}", self.suffix())
    }

    fn suffix(&self) -> &str {
        self.id.strip_prefix("resp_").unwrap_or(&self.id)
    }

    /// The response object with `status`, `output` and `usage`, as JSON.
    /// Written piece by piece: a stored response's object is made on every
    /// turn, and most of it is fixed text (names, and the defaults of what
    /// the request did not set), copied rather than serialized.
    pub fn object_json<O: Output + ?Sized>(
        &self,
        status: &str,
        output: &O,
        usage: Option<Usage>,
        finish_reason: Option<&str>,
        error: Option<&Value>,
    ) -> Vec<u8> {
        let incomplete = finish_reason == Some("length") && status == "completed";
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"id\":");
        put(&mut out, self.id.as_str());
        out.extend_from_slice(b",\"object\":\"response\",\"created_at\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.created_at).as_bytes());
        out.extend_from_slice(b",\"status\":");
        put(&mut out, if incomplete { "incomplete" } else { status });
        out.extend_from_slice(b",\"background\":false,\"error\":");
        put(&mut out, &error);
        out.extend_from_slice(if incomplete {
            b",\"incomplete_details\":{\"reason\":\"max_output_tokens\"}".as_slice()
        } else {
            b",\"incomplete_details\":null".as_slice()
        });
        out.extend_from_slice(b",\"model\":");
        put(&mut out, self.model.as_str());
        out.extend_from_slice(b",\"output\":");
        output.write_json(&mut out);
        out.extend_from_slice(b",\"previous_response_id\":");
        put(&mut out, &self.previous_response_id);
        out.extend_from_slice(if self.store {
            b",\"store\":true,\"usage\":".as_slice()
        } else {
            b",\"store\":false,\"usage\":".as_slice()
        });
        match usage {
            Some(u) => write_usage(&mut out, u),
            None => out.extend_from_slice(b"null"),
        }
        // What the request may set, each with OpenAI's default.
        for (name, default) in ECHOED {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            match self.echo.get(*name) {
                Some(v) => put(&mut out, v),
                None => out.extend_from_slice(default.as_bytes()),
            }
        }
        for name in [
            "user",
            "safety_identifier",
            "service_tier",
            "prompt_cache_key",
        ] {
            if let Some(v) = self.echo.get(name) {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                put(&mut out, v);
            }
        }
        if let Some(id) = &self.conversation {
            out.extend_from_slice(b",\"conversation\":{\"id\":");
            put(&mut out, id.as_str());
            out.push(b'}');
        }
        out.push(b'}');
        out
    }

    /// The response object as a value (the streamed events carry it).
    pub fn object(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<Usage>,
        finish_reason: Option<&str>,
        error: Option<Value>,
    ) -> Value {
        let bytes = self.object_json(status, &output, usage, finish_reason, error.as_ref());
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// The output items of a whole reply: its text (or refusal) as a
    /// message, then one item per function call.
    pub fn output(&self, content: &str, wire: Option<&WireMessage>) -> Vec<Value> {
        let message: Option<Value> = wire.and_then(|w| serde_json::from_str(w.as_str()).ok());
        let items = self.output_items(content, message.as_ref());
        match serde_json::to_value(&items) {
            Ok(Value::Array(items)) => items,
            _ => Vec::new(),
        }
    }

    /// The output items of a whole reply, borrowed from it (and from the
    /// assistant message `wire`, parsed, when it is more than text).
    pub fn output_items<'a>(
        &'a self,
        content: &'a str,
        wire: Option<&'a Value>,
    ) -> Vec<ItemOut<'a>> {
        let refusal = wire
            .and_then(|m| m.get("refusal"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty());
        let text: std::borrow::Cow<'a, str> = match wire.map(|m| m.get("content")) {
            Some(Some(Value::String(s))) => s.as_str().into(),
            Some(Some(Value::Array(parts))) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<String>()
                .into(),
            Some(_) => "".into(),
            None => content.into(),
        };
        let mut out = Vec::new();
        if let Some(r) = refusal {
            out.push(ItemOut::Message {
                id: self.message_id(),
                status: "completed",
                role: "assistant",
                content: vec![PartOut::Refusal { refusal: r.into() }],
            });
        } else if !text.is_empty() {
            out.push(ItemOut::Message {
                id: self.message_id(),
                status: "completed",
                role: "assistant",
                content: vec![PartOut::text(text)],
            });
        }
        let calls = wire
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array);
        for (i, call) in calls.into_iter().flatten().enumerate() {
            let f = &call["function"];
            out.push(ItemOut::FunctionCall {
                id: self.call_id(i as u32),
                call_id: call["id"].as_str().unwrap_or_default(),
                name: f["name"].as_str().unwrap_or_default(),
                arguments: f["arguments"].as_str().unwrap_or_default(),
                status: "completed",
            });
        }
        out
    }

    fn message_item(&self, status: &str, part: Value) -> Value {
        json!({
            "type": "message",
            "id": self.message_id(),
            "status": status,
            "role": "assistant",
            "content": if part.is_null() { json!([]) } else { json!([part]) },
        })
    }
}

/// `value` as JSON at the end of `out`.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A response object's output items, as they write themselves into it.
pub trait Output {
    /// Appends the items, a JSON array, to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl Output for [Value] {
    fn write_json(&self, out: &mut Vec<u8>) {
        put(out, self);
    }
}

/// A reply's items are written by hand: every member name is fixed text,
/// and only the reply's own strings need escaping.
impl Output for [ItemOut<'_>] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match item {
                ItemOut::Message {
                    id,
                    status,
                    role,
                    content,
                } => {
                    out.extend_from_slice(b"{\"type\":\"message\",\"id\":");
                    put(out, id.as_str());
                    out.extend_from_slice(b",\"status\":");
                    put(out, *status);
                    out.extend_from_slice(b",\"role\":");
                    put(out, *role);
                    out.extend_from_slice(b",\"content\":[");
                    for (j, part) in content.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        match part {
                            PartOut::OutputText { text, .. } => {
                                out.extend_from_slice(b"{\"type\":\"output_text\",\"text\":");
                                put(out, &**text);
                                out.extend_from_slice(b",\"annotations\":[],\"logprobs\":[]}");
                            }
                            PartOut::Refusal { refusal } => {
                                out.extend_from_slice(b"{\"type\":\"refusal\",\"refusal\":");
                                put(out, &**refusal);
                                out.push(b'}');
                            }
                        }
                    }
                    out.extend_from_slice(b"]}");
                }
                ItemOut::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status,
                } => {
                    out.extend_from_slice(b"{\"type\":\"function_call\",\"id\":");
                    put(out, id.as_str());
                    out.extend_from_slice(b",\"call_id\":");
                    put(out, *call_id);
                    out.extend_from_slice(b",\"name\":");
                    put(out, *name);
                    out.extend_from_slice(b",\"arguments\":");
                    put(out, *arguments);
                    out.extend_from_slice(b",\"status\":");
                    put(out, *status);
                    out.push(b'}');
                }
            }
        }
        out.push(b']');
    }
}

impl<T> Output for Vec<T>
where
    [T]: Output,
{
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

/// `u` as the Responses API names its counts.
fn write_usage(out: &mut Vec<u8>, u: Usage) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"input_tokens\":");
    out.extend_from_slice(n.format(u.prompt_tokens).as_bytes());
    out.extend_from_slice(b",\"input_tokens_details\":{\"cached_tokens\":");
    out.extend_from_slice(n.format(u.cached_tokens).as_bytes());
    out.extend_from_slice(b"},\"output_tokens\":");
    out.extend_from_slice(n.format(u.completion_tokens).as_bytes());
    out.extend_from_slice(b",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
    out.extend_from_slice(
        n.format(u.prompt_tokens.saturating_add(u.completion_tokens))
            .as_bytes(),
    );
    out.push(b'}');
}

/// An output item, borrowed from the reply.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemOut<'a> {
    /// The reply's text or refusal.
    Message {
        /// `msg_…`.
        id: String,
        /// `completed`.
        status: &'static str,
        /// `assistant`.
        role: &'static str,
        /// One part.
        content: Vec<PartOut<'a>>,
    },
    /// One of the reply's calls.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// The upstream's call id.
        call_id: &'a str,
        /// The function.
        name: &'a str,
        /// Its arguments, JSON text.
        arguments: &'a str,
        /// `completed`.
        status: &'static str,
    },
}

/// A message item's content part.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PartOut<'a> {
    /// Text.
    OutputText {
        /// The text.
        text: std::borrow::Cow<'a, str>,
        /// None.
        annotations: [(); 0],
        /// None.
        logprobs: [(); 0],
    },
    /// A refusal.
    Refusal {
        /// Why.
        refusal: std::borrow::Cow<'a, str>,
    },
}

impl<'a> PartOut<'a> {
    fn text(text: std::borrow::Cow<'a, str>) -> Self {
        PartOut::OutputText {
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

/// The members a response repeats from its request, with the JSON each
/// has when the request did not set it.
const ECHOED: &[(&str, &str)] = &[
    ("instructions", "null"),
    ("max_output_tokens", "null"),
    ("metadata", "{}"),
    ("parallel_tool_calls", "true"),
    ("reasoning", "{\"effort\":null,\"summary\":null}"),
    ("temperature", "1.0"),
    ("text", "{\"format\":{\"type\":\"text\"}}"),
    ("tool_choice", "\"auto\""),
    ("tools", "[]"),
    ("top_p", "1.0"),
    ("truncation", "\"disabled\""),
];

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// One item being streamed.
#[derive(Debug)]
enum Open {
    /// The message item: its text (or refusal) so far.
    Message { text: String, refusal: bool },
    /// A function call: its index in the reply, call id, name, arguments so far.
    Call {
        index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// The Responses framing, for one request.
#[derive(Debug)]
pub struct Responses {
    /// Shared with what the turn stores (a stored response's document is
    /// written from it once the reply is whole).
    meta: Arc<Meta>,
    seq: u64,
    /// Output items announced, in order; the last may still be open.
    items: Vec<Value>,
    open: Option<Open>,
}

impl Responses {
    /// A framing for the response `meta` describes.
    pub fn new(meta: impl Into<Arc<Meta>>) -> Self {
        Responses {
            meta: meta.into(),
            seq: 0,
            items: Vec::new(),
            open: None,
        }
    }

    /// The response's id.
    pub fn id(&self) -> &str {
        &self.meta.id
    }

    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = Value::String(kind.to_owned());
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(&sse::event(kind, &data));
    }

    /// Ends the open item, if any: its `.done` events.
    fn close_open(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = self.items.len() - 1;
        match open {
            Open::Message { text, refusal } => {
                let item_id = self.meta.message_id();
                let part = if refusal {
                    self.event(
                        out,
                        "response.refusal.done",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "refusal": text}),
                    );
                    json!({"type": "refusal", "refusal": text})
                } else {
                    self.event(
                        out,
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
                    );
                    text_part(&text)
                };
                self.event(
                    out,
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "part": part}),
                );
                let item = self.meta.message_item("completed", part);
                self.items[output_index] = item.clone();
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
            }
            Open::Call {
                index,
                call_id,
                name,
                arguments,
            } => {
                let item_id = self.meta.call_id(index);
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": output_index, "name": name, "arguments": arguments}),
                );
                let item = json!({
                    "type": "function_call", "id": item_id, "call_id": call_id,
                    "name": name, "arguments": arguments, "status": "completed",
                });
                self.items[output_index] = item.clone();
                self.event(
                    out,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item}),
                );
            }
        }
    }

    /// Text or a refusal: opens the message item when needed, then its delta.
    fn text(&mut self, out: &mut Vec<u8>, piece: &str, refusal: bool) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close_open(out);
            let output_index = self.items.len();
            let item = self.meta.message_item("in_progress", Value::Null);
            self.items.push(item.clone());
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            );
            let part = if refusal {
                json!({"type": "refusal", "refusal": ""})
            } else {
                text_part("")
            };
            self.event(
                out,
                "response.content_part.added",
                json!({"item_id": self.meta.message_id(), "output_index": output_index, "content_index": 0, "part": part}),
            );
            self.open = Some(Open::Message {
                text: String::new(),
                refusal,
            });
        }
        let output_index = self.items.len() - 1;
        if let Some(Open::Message { text, .. }) = &mut self.open {
            text.push_str(piece);
        }
        let kind = if refusal {
            "response.refusal.delta"
        } else {
            "response.output_text.delta"
        };
        let mut data = json!({"item_id": self.meta.message_id(), "output_index": output_index, "content_index": 0, "delta": piece});
        if !refusal {
            data["logprobs"] = json!([]);
        }
        self.event(out, kind, data);
    }

    fn call(
        &mut self,
        out: &mut Vec<u8>,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        args: &str,
    ) {
        let same = matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index);
        if !same {
            self.close_open(out);
            let output_index = self.items.len();
            let call_id = id.unwrap_or_default().to_owned();
            let name = name.unwrap_or_default().to_owned();
            let item = json!({
                "type": "function_call", "id": self.meta.call_id(index), "call_id": call_id,
                "name": name, "arguments": "", "status": "in_progress",
            });
            self.items.push(item.clone());
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
            );
            self.open = Some(Open::Call {
                index,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        if args.is_empty() {
            return;
        }
        if let Some(Open::Call { arguments, .. }) = &mut self.open {
            arguments.push_str(args);
        }
        let output_index = self.items.len() - 1;
        self.event(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": self.meta.call_id(index), "output_index": output_index, "delta": args}),
        );
    }
}

impl Framing for Responses {
    fn whole(&self, reply: &Reply<'_>) -> Response<Body> {
        let wire: Option<Value> = reply
            .wire
            .and_then(|w| serde_json::from_str(w.as_str()).ok());
        let output = self.meta.output_items(reply.content, wire.as_ref());
        let body =
            self.meta
                .object_json("completed", &output, reply.usage, reply.finish_reason, None);
        let mut resp = Response::new(Body::full(body));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    fn opening(&mut self, _raw: bool) -> Option<Bytes> {
        let mut out = Vec::new();
        let object = self
            .meta
            .object("in_progress", Vec::new(), None, None, None);
        self.event(&mut out, "response.created", json!({"response": object}));
        self.event(
            &mut out,
            "response.in_progress",
            json!({"response": object}),
        );
        Some(Bytes::from(out))
    }

    fn answered_by(&mut self, _target: &str) {
        // The object names the model the client asked for.
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Bytes> {
        let mut out = Vec::new();
        match piece {
            Piece::Text(t) if !t.is_empty() => self.text(&mut out, t, false),
            Piece::Refusal(t) if !t.is_empty() => self.text(&mut out, t, true),
            Piece::ToolCall(d) => self.call(
                &mut out,
                d.index,
                d.id.as_deref(),
                d.name.as_deref(),
                &d.arguments,
            ),
            Piece::FunctionCall(d) => self.call(&mut out, 0, None, d.name.as_deref(), &d.arguments),
            Piece::Text(_) | Piece::Refusal(_) | Piece::Raw(_) => {}
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn closing(&mut self, reply: &Reply<'_>) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.close_open(&mut out);
        // A stored response's object is the one it is read back as: its
        // output made from the whole reply, as `whole` and a later read
        // make it.
        let output = if self.meta.store {
            self.meta.output(reply.content, reply.wire)
        } else {
            std::mem::take(&mut self.items)
        };
        let object = self
            .meta
            .object("completed", output, reply.usage, reply.finish_reason, None);
        let kind = match object.get("status").and_then(Value::as_str) {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        self.event(&mut out, kind, json!({"response": object}));
        vec![Bytes::from(out)]
    }

    fn failure(&mut self, e: &ApiError) -> Bytes {
        let mut out = Vec::new();
        let (_, body) = e.openai_body();
        let message = body
            .get("error")
            .and_then(|e| e.get("message"))
            .cloned()
            .unwrap_or(Value::Null);
        let code = body
            .get("error")
            .and_then(|e| e.get("code"))
            .cloned()
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| json!("server_error"));
        let error = json!({"code": code, "message": message});
        let object = self
            .meta
            .object("failed", Vec::new(), None, None, Some(error));
        self.event(&mut out, "response.failed", json!({"response": object}));
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::conversation_id;
    use chatcore::StoredResponse;

    fn meta() -> Meta {
        Meta {
            id: "resp_abc".into(),
            created_at: 1,
            model: "m".into(),
            previous_response_id: None,
            conversation: None,
            store: true,
            echo: Map::new(),
        }
    }

    fn events(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .flat_map(|b| {
                std::str::from_utf8(b)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .map(|d| serde_json::from_str::<Value>(d).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_streamed_reply_announces_the_items_its_object_holds() {
        // Stored, the object is made from the whole reply (as a later read
        // makes it); not stored, from the items streamed.
        let whole = WireMessage::parse(
            r#"{"role":"assistant","content":"Hello","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"a\":1}"}}]}"#,
        )
        .unwrap();
        for store in [true, false] {
            streamed_items_match_the_object(store, &whole);
        }
    }

    fn streamed_items_match_the_object(store: bool, whole: &WireMessage) {
        let mut f = Responses::new(Meta { store, ..meta() });
        let mut frames = vec![f.opening(false).unwrap()];
        frames.extend(f.piece(Piece::Text("Hel")));
        frames.extend(f.piece(Piece::Text("lo")));
        let call = chatcore::ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            kind: Some("function".into()),
            name: Some("get".into()),
            arguments: "{\"a\"".into(),
        };
        frames.extend(f.piece(Piece::ToolCall(&call)));
        let more = chatcore::ToolCallDelta {
            index: 0,
            id: None,
            kind: None,
            name: None,
            arguments: ":1}".into(),
        };
        frames.extend(f.piece(Piece::ToolCall(&more)));
        let reply = Reply {
            session_id: None,
            content: "Hello",
            wire: store.then_some(whole),
            usage: None,
            finish_reason: Some("tool_calls"),
            raw: None,
        };
        frames.extend(f.closing(&reply));
        let all = events(&frames);
        let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let done = &all.last().unwrap()["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["output"][1]["call_id"], "call_1");
    }

    #[test]
    fn the_object_repeats_the_request_and_fills_in_defaults() {
        let mut m = meta();
        m.echo.insert("metadata".into(), json!({"k": "v"}));
        m.echo.insert("user".into(), json!("u1"));
        m.conversation = Some("conv_1".into());
        let out = m.output_items("Hi \"there\"\n", None);
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 1,
        };
        let bytes = m.object_json("completed", &out, Some(usage), Some("length"), None);
        let o: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(o["status"], "incomplete");
        assert_eq!(o["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(o["metadata"], json!({"k": "v"}));
        assert_eq!(o["user"], "u1");
        assert_eq!(o["conversation"]["id"], "conv_1");
        assert_eq!(o["tools"], json!([]));
        assert_eq!(o["text"]["format"]["type"], "text");
        assert_eq!(o["temperature"], 1.0);
        assert_eq!(o["usage"]["total_tokens"], 5);
        assert_eq!(o["usage"]["input_tokens_details"]["cached_tokens"], 1);
        assert_eq!(o["output"][0]["content"][0]["text"], "Hi \"there\"\n");
        assert!(o.get("safety_identifier").is_none());
        assert!(o["previous_response_id"].is_null());
    }

    #[test]
    fn a_whole_reply_with_calls_has_one_item_per_call() {
        let wire = WireMessage::parse(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}},{"id":"c2","type":"function","function":{"name":"g","arguments":"{}"}}]}"#,
        )
        .unwrap();
        let out = meta().output("", Some(&wire));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["type"], "function_call");
        assert_eq!(out[1]["call_id"], "c2");
        assert_eq!(out[1]["id"], "fc_abc_1");
    }

    /// Its turn's session.
    fn session() -> chatcore::SessionId {
        chatcore::SessionId::from(uuid::Uuid::from_u128(0xabc))
    }

    fn stored(document: String, messages: Vec<chatcore::Message>) -> StoredResponse {
        let n = messages.len() as i64;
        StoredResponse {
            id: "resp_abc".into(),
            session_id: session(),
            through: chatcore::MessageCursor::after(10 + n - 1),
            document,
            positions: (10..10 + n).collect(),
            messages,
            usage: Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cached_tokens: 2,
            }),
        }
    }

    #[test]
    fn a_stored_response_reads_back_as_it_was_returned_from_a_few_bytes() {
        let at = chrono::Utc::now();
        let call = r#"{"role":"assistant","content":"Let me look.","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"q\":1}"}}]}"#;
        let reply = chatcore::Message::from_json(call, at).unwrap();
        let mut m = meta();
        m.echo.insert("metadata".into(), json!({"k": "v"}));
        m.echo.insert("temperature".into(), json!(0.5));
        m.previous_response_id = Some("resp_prev".into());
        m.conversation = Some(conversation_id(session()));
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            cached_tokens: 2,
        };
        let wire: Value = serde_json::from_str(reply.view().wire.unwrap()).unwrap();
        let returned = m.object_json(
            "completed",
            &m.output_items("", Some(&wire)),
            Some(usage),
            Some("length"),
            None,
        );
        // Item input: its items are kept as listed.
        let items = vec![json!({"type": "message", "id": "mine", "role": "user",
            "content": [{"type": "input_text", "text": "look it up"}], "status": "completed"})];
        let doc = m.kept(Some("length"), Some(&items));
        assert!(
            !doc.contains("Let me look."),
            "the reply is the turn's: {doc}"
        );
        let user = chatcore::Message::text(chatcore::Role::User, "look it up", at);
        let r = stored(doc, vec![user.clone(), reply.clone()]);
        let shown = Shown::new(&r).unwrap();
        assert_eq!(shown.object(), returned);
        assert_eq!(shown.items(), items);

        // Text input: neither text is kept; the item is the user message.
        let doc = m.kept(Some("length"), None);
        assert!(
            !doc.contains("look it up") && !doc.contains("Let me look."),
            "{doc}"
        );
        assert!(
            !doc.contains("conv_") && !doc.contains("usage"),
            "the turn's: {doc}"
        );
        let r = stored(doc, vec![user, reply]);
        let shown = Shown::new(&r).unwrap();
        assert_eq!(shown.object(), returned);
        assert_eq!(
            shown.items(),
            [
                json!({"type": "message", "id": "msg_abc_in0", "role": "user",
                "content": [{"type": "input_text", "text": "look it up"}], "status": "completed"})
            ]
        );
        // Its user message deleted (a conversation's item): no input item.
        let mut gone = r;
        gone.messages.remove(0);
        gone.positions.remove(0);
        assert_eq!(Shown::new(&gone).unwrap().items(), Vec::<Value>::new());
        assert_eq!(Shown::new(&gone).unwrap().object(), returned);
        // Its reply deleted: no output, and its tokens went with it.
        let mut replyless = gone;
        replyless.messages.clear();
        replyless.positions.clear();
        let o: Value = serde_json::from_slice(&Shown::new(&replyless).unwrap().object()).unwrap();
        assert_eq!(o["output"], json!([]));
        assert!(o["usage"].is_null(), "{o}");
        assert_eq!(o["id"], "resp_abc");
    }

    #[test]
    fn an_echoed_number_reads_back_as_it_was_returned() {
        // 17 significant digits and a large exponent: read back without
        // exact parsing, its last digit can move.
        let mut m = meta();
        let v: Value = serde_json::from_str("6.351783524375287e-259").unwrap();
        m.echo.insert("top_p".into(), v);
        m.echo.insert("temperature".into(), json!(0.1 + 0.2));
        let returned = m.object_json("completed", &Vec::<ItemOut>::new(), None, None, None);
        let r = stored(m.kept(None, None), Vec::new());
        let back: Value = serde_json::from_slice(&Shown::new(&r).unwrap().object()).unwrap();
        let sent: Value = serde_json::from_slice(&returned).unwrap();
        assert_eq!(back["top_p"], sent["top_p"]);
        assert_eq!(back["temperature"], sent["temperature"]);
    }

    #[test]
    fn a_response_stored_whole_by_an_earlier_version_reads_as_it_was() {
        let object = r#"{"id":"resp_abc","object":"response","status":"completed"}"#;
        let items = r#"[{"type":"message","id":"msg_1","role":"user"}]"#;
        let r = stored(format!("{object}\n{items}"), Vec::new());
        let shown = Shown::new(&r).unwrap();
        assert_eq!(shown.object(), object.as_bytes());
        assert_eq!(
            shown.items(),
            serde_json::from_str::<Vec<Value>>(items).unwrap()
        );
        let r = stored("not json".into(), Vec::new());
        assert_eq!(
            Shown::new(&r).unwrap_err().status,
            hyper::StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_hand_written_items_are_what_serde_writes() {
        let wire: Value = serde_json::from_str(
            r#"{"role":"assistant","content":"say \"hi\"\n\u00e9","tool_calls":[{"id":"c\"1","type":"function","function":{"name":"f","arguments":"{\"q\":\"\\n\"}"}}]}"#,
        )
        .unwrap();
        let refusal: Value =
            serde_json::from_str(r#"{"role":"assistant","content":null,"refusal":"no \"way\""}"#)
                .unwrap();
        let m = meta();
        for items in [
            m.output_items("", Some(&wire)),
            m.output_items("", Some(&refusal)),
            m.output_items("plain\ttext", None),
            Vec::new(),
        ] {
            let mut mine = Vec::new();
            items.write_json(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&items).unwrap()
            );
        }
        let mut usage = Vec::new();
        write_usage(
            &mut usage,
            Usage {
                prompt_tokens: 4_000_000_000,
                completion_tokens: 400_000_000,
                cached_tokens: 7,
            },
        );
        let usage: Value = serde_json::from_slice(&usage).unwrap();
        assert_eq!(
            usage,
            json!({"input_tokens": 4_000_000_000u32, "input_tokens_details": {"cached_tokens": 7},
                "output_tokens": 400_000_000, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u32::MAX})
        );
    }
}
