//! The seed API's framing (`POST /chat/`): `{"session_id", "role",
//! "content"}` whole; streamed, a `delta` event per piece of text, then
//! `done` with the whole reply once it is stored, or `error`.

use bytes::Bytes;
use hyper::Response;
use serde::Serialize;

use super::{sse, Framing, Piece, Reply};
use crate::api::{ChatOut, UsageOut};
use crate::body::{json, Body};
use crate::error::ApiError;

/// The seed API's framing.
#[derive(Debug, Default)]
pub struct Seed;

#[derive(Serialize)]
struct DeltaOut<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct DoneOut<'a> {
    session_id: &'a str,
    role: &'static str,
    content: &'a str,
    usage: Option<UsageOut>,
}

/// The canonical (hyphenated, lower-case) form of a session id, whatever
/// form the client sent.
fn session_id<'b>(reply: &Reply<'_>, buf: &'b mut [u8; 45]) -> &'b str {
    match reply.session_id {
        Some(id) => id.as_uuid().hyphenated().encode_lower(buf),
        None => "",
    }
}

impl Framing for Seed {
    // The seed API's replies name no model.
    fn answered_by(&mut self, _target: &str) {}

    fn whole(&self, reply: &Reply<'_>) -> Response<Body> {
        let mut buf = uuid::Uuid::encode_buffer();
        json(&ChatOut {
            session_id: session_id(reply, &mut buf),
            role: "assistant",
            content: reply.content,
        })
    }

    fn opening(&mut self, _raw: bool) -> Option<Bytes> {
        None
    }

    fn piece(&mut self, piece: Piece<'_>) -> Option<Bytes> {
        match piece {
            Piece::Text(text) => Some(sse::event("delta", &DeltaOut { content: text })),
            // The seed's events carry text; a tool call or refusal shows in
            // `done`'s content (a refusal's text) and in the stored history.
            Piece::ToolCall(_) | Piece::FunctionCall(_) | Piece::Refusal(_) | Piece::Raw(_) => None,
        }
    }

    fn closing(&mut self, reply: &Reply<'_>) -> Vec<Bytes> {
        let mut buf = uuid::Uuid::encode_buffer();
        vec![sse::event(
            "done",
            &DoneOut {
                session_id: session_id(reply, &mut buf),
                role: "assistant",
                content: reply.content,
                usage: reply.usage.map(UsageOut::from),
            },
        )]
    }

    fn failure(&mut self, e: &ApiError) -> Bytes {
        sse::event_raw("error", &e.event_body())
    }
}
