//! The OpenAI-compatible API: `POST /v1/chat/completions` (whole, or
//! streamed as `chat.completion.chunk`s ending in `data: [DONE]`) and
//! `GET /v1/models`.
//!
//! Without `X-Session-Id` a request is stateless: it goes upstream as the
//! client sent it. With it, the request is one turn of that session, on
//! the same turn path as `/chat/`: its new messages (a user message, or
//! the tool results answering the previous reply's calls) after the
//! session's system prompt and trimmed history, its per-request fields
//! (`tools`, `response_format`, …) passed through and not stored, the turn
//! stored with the reply as returned. Errors take OpenAI's shape (the
//! router sees the `/v1` path).

use std::sync::Arc;
use std::time::Instant;

use chatcore::{Caller, ChatOptions, ChatRequest, History, Input, Message, Scoped, SessionId};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::openai::{bad, parse_completions, Completions};
use crate::body::{json, Body};
use crate::error::ApiError;
use crate::framing::chat_completions::ChatCompletions;
use crate::handlers::{read_body, HandlerResult};
use crate::turn::{self, Served};
use crate::App;

/// `POST /v1/chat/completions`.
pub async fn completions(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    caller: Caller,
    peer: std::net::IpAddr,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_v1_body_bytes).await?;
    let request = parse_completions(&body, &app.v1_policy)?;
    drop(body);
    if !app.models.contains(&request.model) {
        return Err(model_not_found(&request.model));
    }
    let scoped = app.scoped(caller, peer, &parts.headers);
    match parts.headers.get("x-session-id") {
        Some(v) => {
            let id = SessionId::parse(v.to_str().unwrap_or(""))?;
            session_turn(app, scoped, id, request, rid).await
        }
        None => stateless(app, scoped, request, rid).await,
    }
}

/// The options a `/v1` request goes upstream with: its model and every
/// field it sent, and the upstream's reply handed back as sent.
fn options(request: &mut Completions) -> ChatOptions {
    ChatOptions {
        model: Some(request.model.clone()),
        fields: std::mem::take(&mut request.fields),
        raw_reply: true,
        ..ChatOptions::default()
    }
}

fn framing(request: &Completions) -> ChatCompletions {
    ChatCompletions::new(
        request.model.clone(),
        request.model.clone(),
        request.include_usage,
    )
}

/// One turn of a session.
async fn session_turn(
    app: &Arc<App>,
    scoped: Scoped<'_>,
    id: SessionId,
    mut request: Completions,
    rid: &str,
) -> HandlerResult {
    let now = chrono::Utc::now();
    let items: Vec<&RawValue> = serde_json::from_str(request.messages.get())
        .map_err(|_| bad("messages", "messages must be an array of message objects"))?;
    let messages = items
        .iter()
        .map(|m| Message::from_json(m.get(), now))
        .collect::<chatcore::Result<Vec<Message>>>()?;
    let turn = scoped.prepare(id, messages, options(&mut request)).await?;
    let at = Served {
        app,
        rid,
        model: &request.model,
    };
    if request.stream {
        turn::streamed(at, turn, framing(&request)).await
    } else {
        turn::whole(at, turn, framing(&request)).await
    }
}

/// A stateless request: the messages as given, no session, nothing stored.
async fn stateless(
    app: &Arc<App>,
    scoped: Scoped<'_>,
    mut request: Completions,
    rid: &str,
) -> HandlerResult {
    if !app.client_system_prompt && names_a_system_prompt(&request.messages) {
        return Err(bad(
            "messages",
            "this gateway does not accept a client's system prompt",
        ));
    }
    let options = options(&mut request);
    let chat = ChatRequest {
        system: None,
        history: History::empty(),
        input: Input::Json(&request.messages),
        options: &options,
        session: None,
        pinned: None,
    };
    let user = if app.content_log.enabled() {
        last_user_text(&request.messages)
    } else {
        String::new()
    };
    let at = Served {
        app,
        rid,
        model: &request.model,
    };
    if request.stream {
        let stream = scoped.stream(chat).await?;
        return Ok(turn::stateless_stream(at, &user, stream, framing(&request)));
    }
    let started = Instant::now();
    let completion = scoped.complete(chat).await?;
    Ok(turn::stateless_whole(
        at,
        &user,
        &completion,
        started.elapsed(),
        framing(&request),
    ))
}

/// Whether any message has the `system` or `developer` role.
fn names_a_system_prompt(messages: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Role<'a> {
        #[serde(borrow)]
        role: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Vec<Role<'_>>>(messages.get()).is_ok_and(|all| {
        all.iter()
            .any(|m| m.role == "system" || m.role == "developer")
    })
}

/// The text of the last user message, for the content line.
fn last_user_text(messages: &RawValue) -> String {
    let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    serde_json::from_str::<Vec<&RawValue>>(messages.get())
        .unwrap_or_default()
        .iter()
        .rev()
        .filter_map(|m| Message::from_json(m.get(), epoch).ok())
        .find(|m| m.role == chatcore::Role::User)
        .map(|m| m.display_text().into_owned())
        .unwrap_or_default()
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

pub(crate) fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_code("model_not_found")
}
