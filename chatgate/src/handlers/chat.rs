//! `POST /chat/`: one chat turn, answered whole or, with `"stream": true`
//! or `Accept: text/event-stream`, as server-sent events (`delta`, then
//! `done` once the turn is stored, or `error`).
//!
//! The message is logged (see [`ContentLog`](crate::logging::ContentLog))
//! only once the turn has passed validation and the session checks.

use std::sync::Arc;
use std::time::Instant;

use chatcore::{Caller, ChatReply, PreparedTurn, SessionId, TurnEvent, TurnStream};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use serde::Serialize;
use slog::error;

use crate::api::{parse_chat, ChatOut, UsageOut};
use crate::body::{event_stream, json, Body};
use crate::error::ApiError;
use crate::handlers::{accepts_event_stream, read_body, sse, HandlerResult};
use crate::router::UpstreamTime;
use crate::App;

/// Runs one turn and answers with the assistant's reply and the session's
/// remaining quota in `X-RateLimit-*` headers.
pub async fn chat(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    caller: Caller,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers).await?;
    let input = parse_chat(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    let stream = input
        .stream
        .unwrap_or_else(|| accepts_event_stream(&parts.headers));
    let scoped = app.core.as_caller(caller);
    if stream {
        let turn = scoped
            .prepare(id, input.content.into_owned(), app.turn_options())
            .await?;
        log_user(app, &turn, rid);
        return stream_turn(app, turn, rid).await;
    }
    let turn = scoped
        .prepare(id, &*input.content, app.turn_options())
        .await?;
    log_user(app, &turn, rid);
    let reply = turn.complete().await?;
    log_reply(app, &reply, rid);
    app.metrics.tokens(&app.model, reply.usage);
    // The canonical form of the id, whatever form the client sent.
    let mut buf = uuid::Uuid::encode_buffer();
    let mut resp = json(&ChatOut {
        session_id: id.as_uuid().hyphenated().encode_lower(&mut buf),
        role: "assistant",
        content: &reply.content,
    });
    rate_headers(&mut resp, reply.limit, reply.remaining);
    resp.extensions_mut().insert(UpstreamTime(reply.upstream));
    Ok(resp)
}

fn log_user(app: &App, turn: &PreparedTurn<'_>, rid: &str) {
    app.content_log.user(turn.session_id(), turn.content(), rid);
}

fn log_reply(app: &App, reply: &ChatReply, rid: &str) {
    app.content_log.reply(reply.session_id, &reply.content, rid);
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

/// A streamed turn while hyper writes it.
struct Live {
    app: Arc<App>,
    turn: TurnStream<'static>,
    rid: String,
    /// When the turn started, until its first piece arrives.
    waiting_since: Option<Instant>,
    over: bool,
}

/// Starts the upstream stream (its failures before the first piece are
/// ordinary JSON errors), then answers 200 with a body that forwards each
/// piece as hyper asks for the next frame. When the client goes away hyper
/// drops the body, and with it the turn: the upstream request is cancelled
/// and nothing is stored (the router's access line says `client_gone`).
async fn stream_turn(app: &Arc<App>, turn: PreparedTurn<'static>, rid: &str) -> HandlerResult {
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let live = Live {
        app: Arc::clone(app),
        waiting_since: Some(Instant::now()),
        turn: turn.stream().await?,
        rid: rid.to_owned(),
        over: false,
    };
    let body = Body::unfold(live, |mut live| async move {
        if live.over {
            return None;
        }
        let frame = match live.turn.next().await? {
            Ok(TurnEvent::Delta(piece)) => {
                if let Some(since) = live.waiting_since.take() {
                    live.app.metrics.first_token(since.elapsed());
                }
                sse::event("delta", &DeltaOut { content: &piece })
            }
            Ok(TurnEvent::Done(reply)) => {
                live.over = true;
                log_reply(&live.app, &reply, &live.rid);
                live.app.metrics.tokens(&live.app.model, reply.usage);
                sse::event(
                    "done",
                    &DoneOut {
                        session_id: reply.session_id.to_string(),
                        role: "assistant",
                        content: &reply.content,
                        usage: reply.usage.map(UsageOut::from),
                    },
                )
            }
            Err(e) => {
                live.over = true;
                let e = ApiError::from(e);
                error!(live.app.log, "stream failed";
                    "request_id" => &live.rid,
                    "status" => e.status.as_u16(),
                    "error" => e.cause.as_deref().unwrap_or("-"));
                sse::event_raw("error", &e.event_body())
            }
        };
        Some((frame, live))
    });
    let mut resp = event_stream(body);
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}
