//! The OpenAI-compatible API: `POST /v1/chat/completions` (whole or
//! streamed as `chat.completion.chunk` events ending in `data: [DONE]`)
//! and `GET /v1/models`.
//!
//! Without `X-Session-Id` a request is stateless: its messages go upstream
//! as given. With it, the request is one turn of that session, exactly as
//! on `/chat/`: one new user message, the session's system prompt and
//! trimmed history prepended, its expiry and rate limit applied, the turn
//! stored. Errors take OpenAI's shape (the router sees the `/v1` path).

use std::sync::Arc;

use bytes::Bytes;
use chatcore::{
    ChatReply, ChatRequest, CompletionStream, Message, Role, SessionId, StreamEvent, TurnEvent,
    TurnStream, Usage,
};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use slog::{error, info, warn};

use crate::api::openai::{
    parse_completions, ChoiceOut, ChunkChoice, ChunkOut, CompletionOut, Completions, Delta,
    ReplyMessage, UsageOut,
};
use crate::body::{event_stream, json, Body};
use crate::error::ApiError;
use crate::handlers::chat::rate_headers;
use crate::handlers::{read_body, sse, HandlerResult};
use crate::App;

/// `POST /v1/chat/completions`.
pub async fn completions(app: &Arc<App>, req: Request<Incoming>, rid: &str) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, app.max_body_bytes).await?;
    let request = parse_completions(&body)?;
    if !app.models.contains(&request.model) {
        return Err(model_not_found(&request.model));
    }
    match parts.headers.get("x-session-id") {
        Some(v) => {
            let id = SessionId::parse(v.to_str().unwrap_or(""))?;
            session_turn(app, id, request, rid).await
        }
        None => stateless(app, request, rid).await,
    }
}

/// One turn of a session.
async fn session_turn(
    app: &Arc<App>,
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
    let turn = app.core.prepare(id, content, request.options).await?;
    if app.log_content {
        info!(app.log, "user message";
            "session_id" => %id, "content" => ?turn.content(), "request_id" => rid);
    }
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let chunks = Chunks::new(request.model, request.include_usage);
    let mut resp = if request.stream {
        let stream = turn.stream().await?;
        spawn_stream(app, Source::Turn(Box::new(stream)), chunks, rid)
    } else {
        let reply = turn.complete().await?;
        log_reply(app, Some(id), &reply.content, rid);
        whole(
            &chunks,
            &reply.content,
            reply.finish_reason.as_deref(),
            reply.usage,
        )
    };
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}

/// A stateless request: the messages as given, no session, nothing stored.
async fn stateless(app: &Arc<App>, request: Completions, rid: &str) -> HandlerResult {
    let Some(((Role::User, user), earlier)) = request.messages.split_last() else {
        return Err(invalid("messages", "the last message must have role user"));
    };
    if user.trim().is_empty() {
        return Err(invalid("messages", "the last message must not be empty"));
    }
    let now = chrono::Utc::now();
    let history: Vec<Message> = earlier
        .iter()
        .map(|(role, text)| Message {
            role: *role,
            content: text.clone(),
            created_at: now,
        })
        .collect();
    if app.log_content {
        info!(app.log, "user message";
            "session_id" => "-", "content" => ?user, "request_id" => rid);
    }
    let chat = ChatRequest {
        system: None,
        history: (&history).into(),
        user,
        options: &request.options,
    };
    let chunks = Chunks::new(request.model.clone(), request.include_usage);
    if request.stream {
        let stream = app.core.stream(chat).await?;
        return Ok(spawn_stream(app, Source::Raw(stream), chunks, rid));
    }
    let completion = app.core.complete(chat).await?;
    log_reply(app, None, &completion.content, rid);
    Ok(whole(
        &chunks,
        &completion.content,
        completion.finish_reason.as_deref(),
        completion.usage,
    ))
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
    if app.log_content {
        let session = id.map_or_else(|| "-".to_owned(), |id| id.to_string());
        info!(app.log, "ai response";
            "session_id" => session, "content" => ?content, "request_id" => rid);
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

/// Answers 200 with a body fed by a task: a role chunk, a chunk per
/// piece as it arrives, a finish chunk, the usage chunk when asked for,
/// then `[DONE]`. A failure mid-stream sends an `{"error": …}` event and
/// no `[DONE]`, so clients never mistake a cut answer for a whole one. The
/// task stops, dropping the upstream request, when the client goes away.
fn spawn_stream(
    app: &Arc<App>,
    mut source: Source,
    chunks: Chunks,
    rid: &str,
) -> hyper::Response<Body> {
    let (tx, body) = Body::channel(sse::BUFFER);
    let app = Arc::clone(app);
    let rid = rid.to_owned();
    let session = match &source {
        Source::Turn(_) => true,
        Source::Raw(_) => false,
    };
    tokio::spawn(async move {
        let first = chunks.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            None,
        );
        if tx.send(first).await.is_err() {
            return;
        }
        let mut text = String::new();
        let mut usage = None;
        let mut finish = None;
        let mut session_id = None;
        loop {
            let next = tokio::select! {
                biased;
                () = tx.closed() => {
                    warn!(app.log, "client went away mid-stream"; "request_id" => &rid);
                    return;
                }
                next = source.next() => next,
            };
            match next {
                Some(Ok(Item::Delta(piece))) => {
                    let frame = chunks.chunk(
                        Delta {
                            role: None,
                            content: Some(&piece),
                        },
                        None,
                    );
                    if session || app.log_content {
                        text.push_str(&piece);
                    }
                    if tx.send(frame).await.is_err() {
                        warn!(app.log, "client went away mid-stream"; "request_id" => &rid);
                        return;
                    }
                }
                Some(Ok(Item::Usage(u))) => usage = Some(u),
                Some(Ok(Item::Finish(r))) => finish = Some(r),
                Some(Ok(Item::Stored(reply))) => {
                    usage = reply.usage;
                    finish = reply.finish_reason;
                    session_id = Some(reply.session_id);
                    text = reply.content;
                    break;
                }
                Some(Err(e)) => {
                    let e = ApiError::from(e);
                    error!(app.log, "stream failed";
                        "request_id" => &rid,
                        "status" => e.status.as_u16(),
                        "error" => e.cause.as_deref().unwrap_or("-"));
                    let (_, body) = e.openai_body();
                    let _ = tx.send(sse::data(&body)).await;
                    return;
                }
                None => break,
            }
        }
        log_reply(&app, session_id, &text, &rid);
        let last = chunks.chunk(Delta::default(), Some(finish.as_deref().unwrap_or("stop")));
        let _ = tx.send(last).await;
        if chunks.include_usage {
            if let Some(u) = usage {
                let _ = tx.send(chunks.usage(u)).await;
            }
        }
        let _ = tx.send(sse::done()).await;
    });
    event_stream(body)
}
