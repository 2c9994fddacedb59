//! `POST /chat/`: one chat turn, answered whole or, with `"stream": true`
//! or `Accept: text/event-stream`, as server-sent events (`delta`, then
//! `done` once the turn is stored, or `error`). Served by
//! [`crate::turn`] in the seed API's framing.

use std::net::IpAddr;
use std::sync::Arc;

use chatcore::{Caller, SessionId};
use hyper::body::Incoming;
use hyper::Request;

use crate::api::parse_chat;
use crate::framing::seed::Seed;
use crate::handlers::{accepts_event_stream, read_body, HandlerResult};
use crate::turn::{self, Served};
use crate::App;

/// Runs one turn and answers with the assistant's reply and the session's
/// remaining quota in `X-RateLimit-*` headers.
pub async fn chat(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    caller: Caller,
    peer: IpAddr,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_body_bytes).await?;
    let input = parse_chat(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    let stream = input
        .stream
        .unwrap_or_else(|| accepts_event_stream(&parts.headers));
    let scoped = app.scoped(caller, peer, &parts.headers);
    let at = Served {
        app,
        rid,
        model: &app.model,
    };
    if stream {
        let turn = scoped
            .prepare(id, input.content.into_owned(), app.turn_options())
            .await?;
        return turn::streamed(at, turn, Seed).await;
    }
    let turn = scoped
        .prepare(id, &*input.content, app.turn_options())
        .await?;
    turn::whole(at, turn, Seed).await
}
