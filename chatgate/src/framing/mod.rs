//! How each API shows a turn's reply: the seed's `/chat/` JSON and its
//! `delta`/`done` events ([`seed`]), OpenAI's `chat.completion` and
//! `chat.completion.chunk`s ([`chat_completions`]), the Responses API's
//! `response` object and typed events ([`responses`]). The turn itself
//! (logging, limits, the model call, storing, metrics) is served once, in
//! [`crate::turn`]; a framing only turns what happened into bytes.

pub mod chat_completions;
pub mod responses;
pub mod seed;
pub(crate) mod sse;

use bytes::Bytes;
use chatcore::{
    ChatReply, Completion, FunctionCallDelta, RawChunk, SessionId, ToolCallDelta, Usage,
    WireMessage,
};
use hyper::Response;

use crate::body::Body;
use crate::error::ApiError;

/// A reply, whole, as a framing shows it: a session turn's or a stateless
/// call's.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The session the turn belongs to (none for a stateless call).
    pub session_id: Option<SessionId>,
    /// The reply as a person reads it.
    pub content: &'a str,
    /// The whole assistant message, when it is more than text.
    pub wire: Option<&'a WireMessage>,
    /// Tokens, when the upstream said.
    pub usage: Option<Usage>,
    /// Why it ended.
    pub finish_reason: Option<&'a str>,
    /// The upstream's body as it was sent, when there is one.
    pub raw: Option<&'a Bytes>,
}

impl<'a> From<&'a ChatReply> for Reply<'a> {
    fn from(r: &'a ChatReply) -> Self {
        Reply {
            session_id: Some(r.session_id),
            content: &r.content,
            wire: r.wire.as_ref(),
            usage: r.usage,
            finish_reason: r.finish_reason.as_deref(),
            raw: r.raw.as_ref(),
        }
    }
}

impl<'a> From<&'a Completion> for Reply<'a> {
    fn from(c: &'a Completion) -> Self {
        Reply {
            session_id: None,
            content: &c.content,
            wire: c.wire.as_ref(),
            usage: c.usage,
            finish_reason: c.finish_reason.as_deref(),
            raw: c.raw.as_ref(),
        }
    }
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// The next piece of text.
    Text(&'a str),
    /// A piece of a tool call.
    ToolCall(&'a ToolCallDelta),
    /// A piece of a function call (the older `functions` API).
    FunctionCall(&'a FunctionCallDelta),
    /// The next piece of a refusal.
    Refusal(&'a str),
    /// The upstream's own chunk.
    Raw(&'a RawChunk),
}

/// One API's way of showing a reply.
pub trait Framing: Send + 'static {
    /// The whole reply as a response.
    fn whole(&self, reply: &Reply<'_>) -> Response<Body>;

    /// The frame sent before any piece, if the API has one; `raw` says
    /// whether the upstream's own chunks will follow ([`Piece::Raw`]).
    fn opening(&mut self, raw: bool) -> Option<Bytes>;

    /// The call went to `target` (`upstream:model`, the model as the
    /// upstream knows it), which the reply may name instead of the
    /// client's model.
    fn answered_by(&mut self, target: &str);

    /// The frame that shows `piece`, if this API shows it.
    fn piece(&mut self, piece: Piece<'_>) -> Option<Bytes>;

    /// The frames that end a stream well, once the reply is whole (and,
    /// for a session's turn, stored).
    fn closing(&mut self, reply: &Reply<'_>) -> Vec<Bytes>;

    /// The frame that ends a stream with a failure.
    fn failure(&mut self, e: &ApiError) -> Bytes;
}
