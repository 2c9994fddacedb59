//! The OpenAI-compatible API: `POST /v1/chat/completions` (whole or
//! streamed as `chat.completion.chunk` events ending in `data: [DONE]`)
//! and `GET /v1/models`.
//!
//! Without `X-Session-Id` a request is stateless: its messages go upstream
//! as given. With it, the request is one turn of that session, exactly as
//! on `/chat/`: one new user message, the session's system prompt and
//! trimmed history prepended, its expiry and rate limit applied, the turn
//! stored. Errors take OpenAI's shape (the router sees the `/v1` path).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chatcore::{
    Caller, ChatReply, ChatRequest, CompletionStream, Message, Role, SessionId, StreamEvent,
    TurnEvent, TurnStream, Usage,
};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use slog::error;

use crate::api::openai::{
    parse_completions, ChoiceOut, ChunkChoice, ChunkOut, CompletionOut, Completions, Delta,
    ReplyMessage, UsageOut,
};
use crate::body::{event_stream, json, Body};
use crate::error::ApiError;
use crate::handlers::chat::rate_headers;
use crate::handlers::{read_body, sse, HandlerResult};
use crate::router::UpstreamTime;
use crate::App;

/// `POST /v1/chat/completions`.
pub async fn completions(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    caller: Caller,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers).await?;
    let mut request = parse_completions(&body)?;
    request.options.max_tokens = app.cap_tokens(request.options.max_tokens);
    if !app.models.contains(&request.model) {
        return Err(model_not_found(&request.model));
    }
    match parts.headers.get("x-session-id") {
        Some(v) => {
            let id = SessionId::parse(v.to_str().unwrap_or(""))?;
            session_turn(app, caller, id, request, rid).await
        }
        None => stateless(app, caller, request, rid).await,
    }
}

/// One turn of a session.
async fn session_turn(
    app: &Arc<App>,
    caller: Caller,
    id: SessionId,
    mut request: Completions,
    rid: &str,
) -> HandlerResult {
    let content = match request.messages.as_mut_slice() {
        [(Role::User, text)] => std::mem::take(text),
        _ => {
            return Err(invalid(
                "messages",
                "with X-Session-Id, messages must be exactly one user message: \
                 the session supplies the system prompt and the history",
            ))
        }
    };
    let turn = app
        .core
        .as_caller(caller)
        .prepare(id, content, request.options)
        .await?;
    app.content_log.user(id, turn.content(), rid);
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let chunks = Chunks::new(request.model, request.include_usage);
    let mut resp = if request.stream {
        let stream = turn.stream().await?;
        stream_response(app, Source::Turn(Box::new(stream)), chunks, rid)
    } else {
        let reply = turn.complete().await?;
        log_reply(app, Some(id), &reply.content, rid);
        app.metrics.tokens(&chunks.model, reply.usage);
        let mut resp = whole(
            &chunks,
            &reply.content,
            reply.finish_reason.as_deref(),
            reply.usage,
        );
        resp.extensions_mut().insert(UpstreamTime(reply.upstream));
        resp
    };
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}

/// A stateless request: the messages as given, no session, nothing stored.
async fn stateless(
    app: &Arc<App>,
    caller: Caller,
    request: Completions,
    rid: &str,
) -> HandlerResult {
    if !app.client_system_prompt && request.messages.iter().any(|(r, _)| *r == Role::System) {
        return Err(invalid(
            "messages",
            "this gateway does not accept a client's system prompt",
        ));
    }
    let Some(((Role::User, user), earlier)) = request.messages.split_last() else {
        return Err(invalid("messages", "the last message must have role user"));
    };
    let now = chrono::Utc::now();
    let history: Vec<Message> = earlier
        .iter()
        .map(|(role, text)| Message {
            role: *role,
            content: text.clone(),
            created_at: now,
        })
        .collect();
    app.content_log.user("-", user, rid);
    let chat = ChatRequest {
        system: None,
        history: (&history).into(),
        user,
        options: &request.options,
    };
    let chunks = Chunks::new(request.model.clone(), request.include_usage);
    if request.stream {
        let stream = app.core.as_caller(caller).stream(chat).await?;
        return Ok(stream_response(app, Source::Raw(stream), chunks, rid));
    }
    let started = Instant::now();
    let completion = app.core.as_caller(caller).complete(chat).await?;
    let upstream = started.elapsed();
    log_reply(app, None, &completion.content, rid);
    app.metrics.tokens(&chunks.model, completion.usage);
    let mut resp = whole(
        &chunks,
        &completion.content,
        completion.finish_reason.as_deref(),
        completion.usage,
    );
    resp.extensions_mut().insert(UpstreamTime(upstream));
    Ok(resp)
}

/// `GET /v1/models`.
pub fn models(app: &App) -> hyper::Response<Body> {
    json(&ModelList {
        object: "list",
        data: app.models.iter().map(|m| ModelOut::new(m)).collect(),
    })
}

/// `GET /v1/models/{id}`.
pub fn model(app: &App, id: &str) -> HandlerResult {
    match app.models.iter().find(|m| *m == id) {
        Some(m) => Ok(json(&ModelOut::new(m))),
        None => Err(model_not_found(id)),
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelOut<'a>>,
}

#[derive(Serialize)]
struct ModelOut<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

impl<'a> ModelOut<'a> {
    fn new(id: &'a str) -> Self {
        ModelOut {
            id,
            object: "model",
            created: 0,
            owned_by: "chatgate",
        }
    }
}

fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_code("model_not_found")
}

fn invalid(param: &str, msg: &'static str) -> ApiError {
    ApiError::validation(vec![crate::error::Invalid::field(
        param,
        msg,
        "value_error",
    )])
}

fn log_reply(app: &App, id: Option<SessionId>, content: &str, rid: &str) {
    match id {
        Some(id) => app.content_log.reply(id, content, rid),
        None => app.content_log.reply("-", content, rid),
    }
}

/// What one response's chunks share: id, time, model.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

impl Chunks {
    fn new(model: String, include_usage: bool) -> Self {
        Chunks {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
            model,
            include_usage,
        }
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>) -> Bytes {
        sse::data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        })
    }

    fn usage(&self, usage: Usage) -> Bytes {
        sse::data(&ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &[],
            usage: Some(usage.into()),
        })
    }
}

fn whole(
    chunks: &Chunks,
    content: &str,
    finish_reason: Option<&str>,
    usage: Option<Usage>,
) -> hyper::Response<Body> {
    json(&CompletionOut {
        id: &chunks.id,
        object: "chat.completion",
        created: chunks.created,
        model: &chunks.model,
        choices: [ChoiceOut {
            index: 0,
            message: ReplyMessage {
                role: "assistant",
                content,
            },
            finish_reason: finish_reason.unwrap_or("stop"),
        }],
        usage: usage.map(UsageOut::from),
    })
}

/// Where a stream's pieces come from: a session's turn (stored at its
/// end) or the model directly.
enum Source {
    Turn(Box<TurnStream<'static>>),
    Raw(CompletionStream),
}

enum Item {
    Delta(String),
    Usage(Usage),
    Finish(String),
    Stored(ChatReply),
}

impl Source {
    async fn next(&mut self) -> Option<chatcore::Result<Item>> {
        match self {
            Source::Turn(t) => t.next().await.map(|r| {
                r.map(|e| match e {
                    TurnEvent::Delta(piece) => Item::Delta(piece),
                    TurnEvent::Done(reply) => Item::Stored(reply),
                })
            }),
            Source::Raw(s) => loop {
                return match s.next().await? {
                    Ok(StreamEvent::Delta(piece)) => Some(Ok(Item::Delta(piece))),
                    Ok(StreamEvent::Usage(u)) => Some(Ok(Item::Usage(u))),
                    Ok(StreamEvent::Finish(r)) => Some(Ok(Item::Finish(r))),
                    Ok(_) => continue,
                    Err(e) => Some(Err(e)),
                };
            },
        }
    }
}

/// A streamed completion while hyper writes it.
struct Live {
    app: Arc<App>,
    source: Source,
    chunks: Chunks,
    rid: String,
    /// Frames to send before reading the source again (the role chunk
    /// first; the finish, usage and `[DONE]` frames last).
    queued: VecDeque<Bytes>,
    /// The start of the reply so far, as much as the content log shows.
    text: String,
    /// The reply's length so far, in bytes.
    text_len: usize,
    usage: Option<Usage>,
    finish: Option<String>,
    /// When the request started, until its first piece arrives.
    waiting_since: Option<Instant>,
    over: bool,
}

impl Live {
    /// The frames that end a stream well, and its content log line.
    fn close(&mut self, session_id: Option<SessionId>) {
        self.over = true;
        self.app.metrics.tokens(&self.chunks.model, self.usage);
        let log = &self.app.content_log;
        match session_id {
            Some(id) => log.reply_collected(id, &self.text, self.text_len, &self.rid),
            None => log.reply_collected("-", &self.text, self.text_len, &self.rid),
        }
        let reason = self.finish.as_deref().unwrap_or("stop");
        self.queued
            .push_back(self.chunks.chunk(Delta::default(), Some(reason)));
        if self.chunks.include_usage {
            if let Some(u) = self.usage {
                self.queued.push_back(self.chunks.usage(u));
            }
        }
        self.queued.push_back(sse::done());
    }
}

/// Answers 200 with a body that hyper drives: a role chunk, a chunk per
/// piece as it arrives, a finish chunk, the usage chunk when asked for,
/// then `[DONE]`. A failure mid-stream sends an `{"error": …}` event and
/// no `[DONE]`, so clients never mistake a cut answer for a whole one.
/// When the client goes away hyper drops the body, and with it the
/// upstream request.
fn stream_response(
    app: &Arc<App>,
    source: Source,
    chunks: Chunks,
    rid: &str,
) -> hyper::Response<Body> {
    let first = chunks.chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    );
    let live = Live {
        app: Arc::clone(app),
        source,
        chunks,
        rid: rid.to_owned(),
        queued: VecDeque::from([first]),
        text: String::new(),
        text_len: 0,
        usage: None,
        finish: None,
        waiting_since: Some(Instant::now()),
        over: false,
    };
    let body = Body::unfold(live, |mut live| async move {
        loop {
            if let Some(frame) = live.queued.pop_front() {
                return Some((frame, live));
            }
            if live.over {
                return None;
            }
            match live.source.next().await {
                Some(Ok(Item::Delta(piece))) => {
                    if let Some(since) = live.waiting_since.take() {
                        live.app.metrics.first_token(since.elapsed());
                    }
                    let frame = live.chunks.chunk(
                        Delta {
                            role: None,
                            content: Some(&piece),
                        },
                        None,
                    );
                    // Collected for the content line, no further than
                    // it shows: a long reply costs no memory here.
                    let log = &live.app.content_log;
                    if log.enabled() {
                        live.text_len += piece.len();
                        if live.text.len() < log.max_bytes() {
                            live.text.push_str(&piece);
                        }
                    }
                    return Some((frame, live));
                }
                Some(Ok(Item::Usage(u))) => live.usage = Some(u),
                Some(Ok(Item::Finish(r))) => live.finish = Some(r),
                Some(Ok(Item::Stored(reply))) => {
                    live.usage = reply.usage;
                    live.finish = reply.finish_reason;
                    live.text_len = reply.content.len();
                    live.text = reply.content;
                    live.close(Some(reply.session_id));
                }
                Some(Err(e)) => {
                    live.over = true;
                    let e = ApiError::from(e);
                    error!(live.app.log, "stream failed";
                        "request_id" => &live.rid,
                        "status" => e.status.as_u16(),
                        "error" => e.cause.as_deref().unwrap_or("-"));
                    let (_, body) = e.openai_body();
                    return Some((sse::data(&body), live));
                }
                None => live.close(None),
            }
        }
    });
    event_stream(body)
}
