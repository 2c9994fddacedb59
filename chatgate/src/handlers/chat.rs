//! `POST /chat/`: one chat turn.

use std::sync::Arc;

use chatcore::SessionId;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::Request;
use slog::info;

use crate::api::{parse_chat, ChatOut};
use crate::router::{json, read_body, HandlerResult};
use crate::App;

// Content is logged in its Debug form (quoted, with `\n` and other control
// characters escaped), so a message can never break the one-line-per-event
// format of the log or forge a line of its own.

/// Runs one turn and answers with the assistant's reply and the session's
/// remaining quota in `X-RateLimit-*` headers.
pub async fn chat(app: &Arc<App>, req: Request<Incoming>, rid: &str) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, app.max_body_bytes).await?;
    let input = parse_chat(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    if app.log_content {
        info!(app.log, "user message";
            "session_id" => &*input.session_id, "content" => ?&*input.content, "request_id" => rid);
    }
    let reply = app.core.chat(id, &input.content).await?;
    if app.log_content {
        info!(app.log, "ai response";
            "session_id" => &*input.session_id, "content" => ?&reply.content, "request_id" => rid);
    }
    let mut resp = json(&ChatOut {
        session_id: &input.session_id,
        role: "assistant",
        content: &reply.content,
    });
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(reply.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(reply.remaining));
    Ok(resp)
}
