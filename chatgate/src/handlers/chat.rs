//! `POST /chat/`: one chat turn, answered whole or, with `"stream": true`
//! or `Accept: text/event-stream`, as server-sent events (`delta`, then
//! `done` once the turn is stored, or `error`).
//!
//! Content is logged in its Debug form (quoted, with `\n` and other control
//! characters escaped), so a message can never break the one-line-per-event
//! format of the log or forge a line of its own. It is logged only once the
//! turn has passed validation and the session checks.

use std::sync::Arc;

use chatcore::{ChatOptions, ChatReply, PreparedTurn, SessionId, TurnEvent};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use serde::Serialize;
use slog::{error, info, warn};

use crate::api::{parse_chat, ChatOut, UsageOut};
use crate::body::{event_stream, json, Body};
use crate::error::ApiError;
use crate::handlers::{accepts_event_stream, read_body, sse, HandlerResult};
use crate::App;

/// Runs one turn and answers with the assistant's reply and the session's
/// remaining quota in `X-RateLimit-*` headers.
pub async fn chat(app: &Arc<App>, req: Request<Incoming>, rid: &str) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, app.max_body_bytes).await?;
    let input = parse_chat(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    let stream = input
        .stream
        .unwrap_or_else(|| accepts_event_stream(&parts.headers));
    if stream {
        let turn = app
            .core
            .prepare(id, input.content.into_owned(), ChatOptions::default())
            .await?;
        log_user(app, &turn, rid);
        return stream_turn(app, turn, rid).await;
    }
    let turn = app
        .core
        .prepare(id, &*input.content, ChatOptions::default())
        .await?;
    log_user(app, &turn, rid);
    let reply = turn.complete().await?;
    log_reply(app, &reply, rid);
    let mut resp = json(&ChatOut {
        session_id: &input.session_id,
        role: "assistant",
        content: &reply.content,
    });
    rate_headers(&mut resp, reply.limit, reply.remaining);
    Ok(resp)
}

fn log_user(app: &App, turn: &PreparedTurn<'_>, rid: &str) {
    if app.log_content {
        info!(app.log, "user message";
            "session_id" => %turn.session_id(), "content" => ?turn.content(), "request_id" => rid);
    }
}

fn log_reply(app: &App, reply: &ChatReply, rid: &str) {
    if app.log_content {
        info!(app.log, "ai response";
            "session_id" => %reply.session_id, "content" => ?&reply.content, "request_id" => rid);
    }
}

/// `X-RateLimit-Limit` and `X-RateLimit-Remaining`.
pub(crate) fn rate_headers(resp: &mut Response<Body>, limit: u32, remaining: u32) {
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct DoneOut<'a> {
    session_id: String,
    role: &'static str,
    content: &'a str,
    usage: Option<UsageOut>,
}

/// Starts the upstream stream (its failures before the first piece are
/// ordinary JSON errors), then answers 200 with a body fed by a task that
/// forwards each piece as it arrives. The task stops, cancelling the
/// upstream request and storing nothing, as soon as the client goes away.
async fn stream_turn(app: &Arc<App>, turn: PreparedTurn<'static>, rid: &str) -> HandlerResult {
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let mut turn = turn.stream().await?;
    let (tx, body) = Body::channel(sse::BUFFER);
    let app = Arc::clone(app);
    let rid = rid.to_owned();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                () = tx.closed() => {
                    warn!(app.log, "client went away mid-stream; turn not stored"; "request_id" => &rid);
                    return;
                }
                next = turn.next() => next,
            };
            let frame = match next {
                Some(Ok(TurnEvent::Delta(piece))) => {
                    sse::event("delta", &DeltaOut { content: &piece })
                }
                Some(Ok(TurnEvent::Done(reply))) => {
                    log_reply(&app, &reply, &rid);
                    let frame = sse::event(
                        "done",
                        &DoneOut {
                            session_id: reply.session_id.to_string(),
                            role: "assistant",
                            content: &reply.content,
                            usage: reply.usage.map(UsageOut::from),
                        },
                    );
                    let _ = tx.send(frame).await;
                    return;
                }
                Some(Err(e)) => {
                    let e = ApiError::from(e);
                    error!(app.log, "stream failed";
                        "request_id" => &rid,
                        "status" => e.status.as_u16(),
                        "error" => e.cause.as_deref().unwrap_or("-"));
                    let _ = tx.send(sse::event_raw("error", &e.event_body())).await;
                    return;
                }
                None => return,
            };
            if tx.send(frame).await.is_err() {
                warn!(app.log, "client went away mid-stream; turn not stored"; "request_id" => &rid);
                return;
            }
        }
    });
    let mut resp = event_stream(body);
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}
