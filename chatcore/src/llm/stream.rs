//! A reply arriving piece by piece ([`CompletionStream`] of
//! [`StreamEvent`]s), and the one place the pieces are put back together
//! into a whole reply ([`ReplyBuilder`]): text, a refusal, tool calls
//! whose names and arguments arrive split across chunks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Completion, Usage, MAX_REPLY_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, Role, WireMessage};

/// A piece of one tool call in a streamed reply. The first piece of a call
/// carries its `id` and function `name`; later ones add to its
/// `arguments`. Pieces of one call share its `index`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of the reply this piece belongs to.
    pub index: u32,
    /// The call's id (first piece).
    pub id: Option<String>,
    /// The call's type, `function` (first piece).
    pub kind: Option<String>,
    /// The function's name (first piece).
    pub name: Option<String>,
    /// The next piece of the function's arguments (JSON text, in pieces).
    pub arguments: String,
}

/// A piece of the one function call of a reply in OpenAI's older
/// `functions` API (`function_call`, no id): the first piece carries the
/// name, later ones add to the arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionCallDelta {
    /// The function's name (first piece).
    pub name: Option<String>,
    /// The next piece of the arguments (JSON text, in pieces).
    pub arguments: String,
}

/// One upstream chunk as it was sent, for a gateway that relays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    /// The chunk's JSON (a `data:` line's payload).
    pub data: Bytes,
    /// Whether it is the chunk that only reports usage (no choices), which
    /// the adapter asks for on every stream.
    pub usage_only: bool,
}

/// One item of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The next piece of the reply's text (never empty).
    Delta(String),
    /// A piece of a tool call.
    ToolCall(ToolCallDelta),
    /// A piece of a function call (the older `functions` API).
    FunctionCall(FunctionCallDelta),
    /// The next piece of a refusal.
    Refusal(String),
    /// Token counts for the whole exchange (usually near the end).
    Usage(Usage),
    /// Why the reply ended (`stop`, `length`, `tool_calls`, …).
    Finish(String),
    /// The upstream chunk the events just before it came from, as it was
    /// sent; only when the request asked for it
    /// ([`ChatOptions::raw_reply`](crate::ChatOptions::raw_reply)).
    Raw(RawChunk),
}

/// A reply arriving piece by piece (server-sent events, for OpenAI).
///
/// Call [`CompletionStream::next`] until it returns `None`; an `Err` item
/// ends the stream. Dropping the stream cancels the upstream request.
#[derive(Debug)]
pub struct CompletionStream {
    source: Box<dyn EventSource>,
    target: Option<Arc<str>>,
    reply_limit: usize,
}

/// What a stream reads its events from: a model's own reader (the OpenAI
/// adapter's server-sent events), or a channel an implementor feeds.
pub(crate) trait EventSource: Send + fmt::Debug {
    /// The next event, `None` at the end.
    fn next(&mut self) -> Pin<Box<dyn Future<Output = Option<Result<StreamEvent>>> + Send + '_>>;

    /// Whether it hands back the upstream's own chunks
    /// ([`StreamEvent::Raw`]) beside the decoded events.
    fn relays_raw(&self) -> bool;
}

/// The events an implementor sends ([`CompletionStream::channel`]).
#[derive(Debug)]
struct Channel(mpsc::Receiver<Result<StreamEvent>>);

impl EventSource for Channel {
    fn next(&mut self) -> Pin<Box<dyn Future<Output = Option<Result<StreamEvent>>> + Send + '_>> {
        Box::pin(self.0.recv())
    }

    fn relays_raw(&self) -> bool {
        false
    }
}

impl CompletionStream {
    /// A stream and the sender that feeds it (for implementors). Dropping
    /// the sender ends the stream.
    pub fn channel(buffer: usize) -> (mpsc::Sender<Result<StreamEvent>>, CompletionStream) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (tx, CompletionStream::from_source(Channel(rx)))
    }

    /// A stream holding every event of `completion` (what a model that
    /// cannot stream answers): its text as one piece, its refusal, its
    /// tool calls one piece each, then usage and finish reason.
    pub fn from_completion(completion: Completion) -> CompletionStream {
        let mut events = Vec::new();
        if let Some(wire) = &completion.wire {
            events.extend(pieces_of(wire));
        } else if !completion.content.is_empty() {
            events.push(StreamEvent::Delta(completion.content));
        }
        if let Some(usage) = completion.usage {
            events.push(StreamEvent::Usage(usage));
        }
        if let Some(reason) = completion.finish_reason {
            events.push(StreamEvent::Finish(reason));
        }
        let (tx, stream) = CompletionStream::channel(events.len());
        for e in events {
            // The buffer has room for every event, so this cannot fail.
            let _ = tx.try_send(Ok(e));
        }
        stream
    }

    /// A stream reading `source`.
    pub(crate) fn from_source(source: impl EventSource + 'static) -> CompletionStream {
        CompletionStream {
            source: Box::new(source),
            target: None,
            reply_limit: MAX_REPLY_BYTES,
        }
    }

    /// The same stream, whose reply may hold at most `bytes` (see
    /// [`ReplyBuilder::with_limit`]); [`MAX_REPLY_BYTES`] unless an
    /// implementor says otherwise.
    #[must_use]
    pub fn with_reply_limit(mut self, bytes: usize) -> CompletionStream {
        self.reply_limit = bytes;
        self
    }

    /// The most a reply read from this stream may hold, in bytes: whoever
    /// puts the pieces back together stops there.
    pub fn reply_limit(&self) -> usize {
        self.reply_limit
    }

    /// The same stream, said to come from `target` (see
    /// [`Completion::target`]).
    #[must_use]
    pub fn with_target(mut self, target: Option<Arc<str>>) -> CompletionStream {
        self.target = target;
        self
    }

    /// The upstream and model answering, when a router chose them (see
    /// [`Completion::target`]).
    pub fn target(&self) -> Option<&Arc<str>> {
        self.target.as_ref()
    }

    /// The next event, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<StreamEvent>> {
        self.source.next().await
    }

    /// Whether this stream hands back the upstream's own chunks
    /// ([`StreamEvent::Raw`]) beside the decoded events.
    pub fn relays_raw(&self) -> bool {
        self.source.relays_raw()
    }

    /// Reads the whole stream into one completion.
    ///
    /// # Errors
    /// The first error the stream yields, or
    /// [`ErrorKind::UpstreamFailed`] when the reply grows past
    /// [`MAX_REPLY_BYTES`].
    pub async fn collect(mut self) -> Result<Completion> {
        let mut out = ReplyBuilder::with_limit(self.reply_limit);
        while let Some(event) = self.next().await {
            out.push(&event?)?;
        }
        Ok(out.finish())
    }
}

/// The events a model that cannot stream sends for a reply kept whole.
fn pieces_of(wire: &WireMessage) -> Vec<StreamEvent> {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(default)]
        content: Option<serde_json::Value>,
        #[serde(default)]
        refusal: Option<String>,
        #[serde(default)]
        tool_calls: Option<Vec<Call>>,
        #[serde(default)]
        function_call: Option<Function>,
    }
    #[derive(serde::Deserialize)]
    struct Call {
        #[serde(default)]
        id: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        function: Option<Function>,
    }
    #[derive(serde::Deserialize)]
    struct Function {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        arguments: Option<String>,
    }
    let Ok(shape) = serde_json::from_str::<Shape>(wire.as_str()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let text = Message {
        role: Role::Assistant,
        content: String::new(),
        created_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        wire: Some(wire.clone()),
    };
    if shape.content.as_ref().is_some_and(|c| !c.is_null()) {
        let t = text.display_text();
        if !t.is_empty() {
            out.push(StreamEvent::Delta(t.into_owned()));
        }
    }
    if let Some(r) = shape.refusal.filter(|r| !r.is_empty()) {
        out.push(StreamEvent::Refusal(r));
    }
    for (i, call) in shape.tool_calls.unwrap_or_default().into_iter().enumerate() {
        let (name, arguments) = call.function.map_or((None, String::new()), |f| {
            (f.name, f.arguments.unwrap_or_default())
        });
        out.push(StreamEvent::ToolCall(ToolCallDelta {
            index: i as u32,
            id: call.id,
            kind: call.kind,
            name,
            arguments,
        }));
    }
    if let Some(f) = shape.function_call {
        out.push(StreamEvent::FunctionCall(FunctionCallDelta {
            name: f.name,
            arguments: f.arguments.unwrap_or_default(),
        }));
    }
    out
}

/// What a tool-call piece costs beyond its text, counted against a reply's
/// bound.
const PIECE_BYTES: usize = 64;

/// The most tool calls one reply may make (OpenAI's parallel calls are a
/// handful); past it the reply is refused, as one past its size is.
const MAX_TOOL_CALLS: usize = 1024;

/// Puts a streamed reply back together: its text, its refusal, its tool
/// calls (pieces joined by index), usage and finish reason; refuses to
/// hold more than its limit ([`MAX_REPLY_BYTES`] by default), as a whole
/// reply is refused.
#[derive(Debug)]
pub struct ReplyBuilder {
    text: String,
    refusal: String,
    calls: Vec<CallParts>,
    /// The older API's one function call: its name and arguments.
    function: Option<(String, String)>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    bytes: usize,
    limit: usize,
}

impl Default for ReplyBuilder {
    fn default() -> ReplyBuilder {
        ReplyBuilder::with_limit(MAX_REPLY_BYTES)
    }
}

#[derive(Debug, Default)]
struct CallParts {
    index: u32,
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

impl ReplyBuilder {
    /// An empty reply that may grow to `limit` bytes of text, refusal and
    /// tool calls together.
    pub fn with_limit(limit: usize) -> ReplyBuilder {
        ReplyBuilder {
            text: String::new(),
            refusal: String::new(),
            calls: Vec::new(),
            function: None,
            usage: None,
            finish_reason: None,
            bytes: 0,
            limit,
        }
    }

    /// Adds one event.
    ///
    /// # Errors
    /// [`ErrorKind::UpstreamFailed`] once the reply holds more than its
    /// limit.
    pub fn push(&mut self, event: &StreamEvent) -> Result<()> {
        match event {
            StreamEvent::Delta(piece) => {
                self.grow(piece.len())?;
                self.text.push_str(piece);
            }
            StreamEvent::Refusal(piece) => {
                self.grow(piece.len())?;
                self.refusal.push_str(piece);
            }
            StreamEvent::ToolCall(d) => {
                // Every piece counts for its bookkeeping too, so pieces that
                // carry nothing (or only a new index) cannot grow the reply
                // without bound.
                let added = PIECE_BYTES
                    + d.arguments.len()
                    + d.name.as_ref().map_or(0, String::len)
                    + d.id.as_ref().map_or(0, String::len);
                self.grow(added)?;
                let call = match self.calls.iter_mut().position(|c| c.index == d.index) {
                    Some(i) => &mut self.calls[i],
                    None if self.calls.len() >= MAX_TOOL_CALLS => {
                        return Err(Error::new(
                            ErrorKind::UpstreamFailed,
                            format!("Upstream reply has more than {MAX_TOOL_CALLS} tool calls"),
                        ));
                    }
                    None => {
                        self.calls.push(CallParts {
                            index: d.index,
                            ..CallParts::default()
                        });
                        self.calls.last_mut().expect("just pushed")
                    }
                };
                if d.id.is_some() {
                    call.id.clone_from(&d.id);
                }
                if d.kind.is_some() {
                    call.kind.clone_from(&d.kind);
                }
                if let Some(name) = &d.name {
                    call.name.push_str(name);
                }
                call.arguments.push_str(&d.arguments);
            }
            StreamEvent::FunctionCall(d) => {
                self.grow(
                    PIECE_BYTES + d.arguments.len() + d.name.as_ref().map_or(0, String::len),
                )?;
                let (name, arguments) = self.function.get_or_insert_with(Default::default);
                if let Some(n) = &d.name {
                    name.push_str(n);
                }
                arguments.push_str(&d.arguments);
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Finish(r) => self.finish_reason = Some(r.clone()),
            StreamEvent::Raw(_) => {}
        }
        Ok(())
    }

    fn grow(&mut self, by: usize) -> Result<()> {
        self.bytes += by;
        if self.bytes > self.limit {
            return Err(Error::new(
                ErrorKind::UpstreamFailed,
                format!("Upstream reply is larger than {} bytes", self.limit),
            ));
        }
        Ok(())
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The whole reply: plain text, or, with a refusal or calls, the
    /// assistant message object OpenAI would have sent whole.
    pub fn finish(mut self) -> Completion {
        if self.calls.is_empty() && self.refusal.is_empty() && self.function.is_none() {
            return Completion {
                content: self.text,
                usage: self.usage,
                finish_reason: self.finish_reason,
                ..Completion::default()
            };
        }
        #[derive(Serialize)]
        struct Out<'a> {
            role: &'static str,
            content: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            refusal: Option<&'a str>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            tool_calls: &'a [CallOut<'a>],
            #[serde(skip_serializing_if = "Option::is_none")]
            function_call: Option<FunctionOut<'a>>,
        }
        #[derive(Serialize)]
        struct CallOut<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            function: FunctionOut<'a>,
        }
        #[derive(Serialize)]
        struct FunctionOut<'a> {
            name: &'a str,
            arguments: &'a str,
        }
        self.calls.sort_by_key(|c| c.index);
        let calls: Vec<CallOut<'_>> = self
            .calls
            .iter()
            .map(|c| CallOut {
                id: c.id.as_deref().unwrap_or(""),
                kind: c.kind.as_deref().unwrap_or("function"),
                function: FunctionOut {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect();
        let out = Out {
            role: "assistant",
            content: (!self.text.is_empty()).then_some(self.text.as_str()),
            refusal: (!self.refusal.is_empty()).then_some(self.refusal.as_str()),
            tool_calls: &calls,
            function_call: self
                .function
                .as_ref()
                .map(|(name, arguments)| FunctionOut { name, arguments }),
        };
        let wire = serde_json::to_string(&out)
            .ok()
            .and_then(|json| WireMessage::parse(&json).ok());
        let content = if self.text.is_empty() {
            self.refusal.clone()
        } else {
            self.text.clone()
        };
        Completion {
            content,
            wire,
            usage: self.usage,
            finish_reason: self.finish_reason,
            raw: None,
            target: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tool_call_pieces_cannot_grow_a_reply_without_bound() {
        let piece = |index| {
            StreamEvent::ToolCall(ToolCallDelta {
                index,
                id: None,
                kind: None,
                name: None,
                arguments: String::new(),
            })
        };
        // New indices, nothing in them: refused at the call bound.
        let mut b = ReplyBuilder::default();
        let refused = (0..10_000).find(|&i| b.push(&piece(i)).is_err());
        assert_eq!(refused, Some(MAX_TOOL_CALLS as u32));
        // The same index again and again: refused at the size bound.
        let mut b = ReplyBuilder::with_limit(64 * 1000);
        let refused = (0..10_000).find(|_| b.push(&piece(0)).is_err());
        assert_eq!(refused, Some(1000));
    }

    #[test]
    fn a_split_function_call_is_joined_and_replays_as_one_piece() {
        let mut b = ReplyBuilder::default();
        for event in [
            StreamEvent::FunctionCall(FunctionCallDelta {
                name: Some("add".into()),
                arguments: "{\"a\"".into(),
            }),
            StreamEvent::FunctionCall(FunctionCallDelta {
                name: None,
                arguments: ":1}".into(),
            }),
        ] {
            b.push(&event).unwrap();
        }
        let c = b.finish();
        let wire = c.wire.clone().expect("more than text");
        assert_eq!(
            wire.as_str(),
            r#"{"role":"assistant","content":null,"function_call":{"name":"add","arguments":"{\"a\":1}"}}"#
        );
        let replayed: Vec<StreamEvent> = pieces_of(&wire);
        assert_eq!(
            replayed,
            [StreamEvent::FunctionCall(FunctionCallDelta {
                name: Some("add".into()),
                arguments: "{\"a\":1}".into(),
            })]
        );
    }

    #[test]
    fn split_tool_calls_are_joined_by_index() {
        let mut b = ReplyBuilder::default();
        let events = [
            StreamEvent::ToolCall(ToolCallDelta {
                index: 1,
                id: Some("b".into()),
                kind: Some("function".into()),
                name: Some("second".into()),
                arguments: String::new(),
            }),
            StreamEvent::ToolCall(ToolCallDelta {
                index: 0,
                id: Some("a".into()),
                kind: Some("function".into()),
                name: Some("first".into()),
                arguments: "{\"ci".into(),
            }),
            StreamEvent::ToolCall(ToolCallDelta {
                index: 0,
                arguments: "ty\":\"Paris\"}".into(),
                ..ToolCallDelta::default()
            }),
            StreamEvent::ToolCall(ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
                ..ToolCallDelta::default()
            }),
            StreamEvent::Finish("tool_calls".into()),
        ];
        for e in &events {
            b.push(e).unwrap();
        }
        let c = b.finish();
        let wire: serde_json::Value =
            serde_json::from_str(c.wire.as_ref().unwrap().as_str()).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "first", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "b", "type": "function", "function": {"name": "second", "arguments": "{}"}}
            ]})
        );
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
        // And back into events, as a model that cannot stream sends them.
        let again = pieces_of(c.wire.as_ref().unwrap());
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn text_alone_stays_text_and_the_size_is_bounded() {
        let mut b = ReplyBuilder::default();
        b.push(&StreamEvent::Delta("Hel".into())).unwrap();
        b.push(&StreamEvent::Delta("lo".into())).unwrap();
        let c = b.finish();
        assert_eq!(c.content, "Hello");
        assert!(c.wire.is_none());
        let mut b = ReplyBuilder::default();
        let big = "x".repeat(1 << 20);
        for _ in 0..16 {
            b.push(&StreamEvent::Delta(big.clone())).unwrap();
        }
        assert!(b.push(&StreamEvent::Delta("x".into())).is_err());
    }
}
