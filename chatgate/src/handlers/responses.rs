//! OpenAI's Responses API over sessions: `POST /v1/responses` (whole or
//! streamed), `GET`/`DELETE /v1/responses/{id}` and
//! `GET /v1/responses/{id}/input_items`.
//!
//! A response is one turn on the one turn path. A new response starts a
//! chain (a session of its own); `previous_response_id` continues that
//! response's session when it is the session's newest response, and forks
//! the session through it otherwise, both decided while the turn holds the
//! session, so two continuations of one response never share a history;
//! `conversation` appends to the conversation's session. The response
//! (what its turn's messages do not already hold) is stored in the turn's
//! own atomic write, so it can be continued the moment the client has it,
//! on any replica.
//! `store: false` reads the chain but stores nothing.

use std::sync::Arc;

use chatcore::{
    Caller, ChatOptions, ChatRequest, History, Input, Message, Scoped, SessionId, TurnInput,
};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::api::openai::bad;
use crate::api::responses::{name_items, new_id, parse_responses, ResponsesRequest};
use crate::body::{json as json_response, Body};
use crate::error::ApiError;
use crate::framing::responses::{Meta, Responses, Shown};
use crate::handlers::openai::model_not_found;
use crate::handlers::{read_body, HandlerResult};
use crate::turn::{self, Served};
use crate::App;

/// `POST /v1/responses`.
pub async fn create(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    caller: Caller,
    peer: std::net::IpAddr,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_v1_body_bytes).await?;
    let mut request = parse_responses(&body, &app.v1_policy)?;
    drop(body);
    if !app.models.contains(&request.model) {
        return Err(model_not_found(&request.model));
    }
    if !app.client_system_prompt
        && (request.instructions.is_some()
            || request
                .messages
                .iter()
                .any(|m| matches!(m.role, chatcore::Role::System | chatcore::Role::Developer)))
    {
        return Err(bad(
            "instructions",
            "this gateway does not accept a client's system prompt (instructions, or system and developer messages)",
        ));
    }
    let scoped = app.scoped(caller, peer, &parts.headers);
    // Named once the response's session is known (a stored one), or now.
    let meta = Meta {
        id: String::new(),
        created_at: chrono::Utc::now().timestamp(),
        model: request.model.clone(),
        previous_response_id: request.previous_response_id.clone(),
        conversation: request.conversation.clone(),
        store: request.store,
        echo: std::mem::take(&mut request.echo),
    };
    if request.store {
        stored(app, scoped, request, meta, rid).await
    } else {
        unstored(app, scoped, request, meta, rid).await
    }
}

/// The session a conversation id names (`conv_` and the session's id).
pub fn conversation_session(id: &str) -> Result<SessionId, ApiError> {
    id.strip_prefix("conv_")
        .and_then(|hex| uuid::Uuid::try_parse(hex).ok())
        .map(SessionId::from)
        .ok_or_else(|| conversation_not_found(id))
}

pub use crate::api::responses::conversation_id;

/// The 404 for a conversation that is not there (or not the caller's).
pub(crate) fn conversation_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Conversation with id '{id}' not found."),
    )
}

fn response_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Response with id '{id}' not found."),
    )
}

/// `e`, or the API's 404 (`missing`) when it says the session is not there.
pub(crate) fn or_not_found(e: chatcore::Error, missing: impl FnOnce() -> ApiError) -> ApiError {
    if e.kind() == chatcore::ErrorKind::SessionNotFound {
        missing()
    } else {
        e.into()
    }
}

fn options(request: &mut ResponsesRequest) -> ChatOptions {
    ChatOptions {
        model: Some(request.model.clone()),
        fields: std::mem::take(&mut request.fields),
        ..ChatOptions::default()
    }
}

/// A stored response: one turn of its chain's session.
async fn stored(
    app: &Arc<App>,
    scoped: Scoped<'_>,
    mut request: ResponsesRequest,
    mut meta: Meta,
    rid: &str,
) -> HandlerResult {
    let previous = match &request.previous_response_id {
        Some(id) => Some(
            scoped
                .response(id)
                .await
                .map_err(|e| or_not_found(e, || previous_not_found(id)))?,
        ),
        None => None,
    };
    // A response that is no longer its session's newest never will be
    // again: fork at once, leaving the original session (and its quota)
    // untouched.
    let session = match (&previous, &request.conversation) {
        (Some(p), _) if scoped.is_newest(p).await? => p.session_id,
        (Some(p), _) => scoped.fork_chain(p).await?.session.id,
        (None, Some(c)) => conversation_session(c)?,
        (None, None) => scoped.new_chain().await?.session.id,
    };
    let options = options(&mut request);
    let messages = std::mem::take(&mut request.messages);
    // Kept for the rare fork: the first turn is given up unsent.
    let again = previous
        .as_ref()
        .map(|_| (messages.clone(), options.clone()));
    let conversation = request.conversation.as_deref();
    let mut prepared = scoped
        .prepare(session, TurnInput::Items(messages), options)
        .await
        .map_err(|e| match conversation {
            Some(c) => or_not_found(e, || conversation_not_found(c)),
            None => e.into(),
        })?;
    if let (Some(p), Some((messages, options))) = (&previous, again) {
        // Checked again under the turn's hold on the session (nothing moves
        // it meanwhile): another continuation may have appended first.
        if p.session_id == session
            && prepared.head_response().await?.as_deref() != Some(p.id.as_str())
        {
            drop(prepared);
            let fork = scoped.fork_chain(p).await?;
            prepared = scoped
                .prepare(fork.session.id, TurnInput::Items(messages), options)
                .await?;
        }
    }
    if let Some(i) = request.instructions.take() {
        prepared = prepared.with_instructions(i);
    }
    // Its id names the session it is stored in (found without an index);
    // a conversation is that session, named as its id is read back.
    meta.id = chatcore::new_response_id(prepared.session_id());
    if meta.conversation.is_some() {
        meta.conversation = Some(conversation_id(prepared.session_id()));
    }
    let items = request.items.take().map(|mut items| {
        name_items(&mut items, &meta.id);
        items
    });
    let meta = Arc::new(meta);
    let kept = Arc::clone(&meta);
    prepared = prepared.with_response(meta.id.clone(), move |c, _| {
        kept.kept(c.finish_reason.as_deref(), items.as_deref())
    });
    let at = Served {
        app,
        rid,
        model: &request.model,
    };
    let framing = Responses::new(meta);
    if request.stream {
        turn::streamed(at, prepared, framing).await
    } else {
        turn::whole(at, prepared, framing).await
    }
}

fn previous_not_found(id: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Previous response with id '{id}' not found."),
    );
    e.code = Some("previous_response_not_found");
    e
}

/// `store: false`: the chain or conversation read, nothing stored.
async fn unstored(
    app: &Arc<App>,
    scoped: Scoped<'_>,
    mut request: ResponsesRequest,
    mut meta: Meta,
    rid: &str,
) -> HandlerResult {
    meta.id = new_id("resp");
    let mut history: Vec<Message> = match (&request.previous_response_id, &request.conversation) {
        (Some(id), _) => {
            let p = scoped
                .response(id)
                .await
                .map_err(|e| or_not_found(e, || previous_not_found(id)))?;
            scoped.history_through(&p).await?
        }
        (None, Some(c)) => scoped
            .messages(conversation_session(c)?)
            .await
            .map_err(|e| or_not_found(e, || conversation_not_found(c)))?,
        (None, None) => Vec::new(),
    };
    history.append(&mut request.messages);
    let options = options(&mut request);
    let chat = ChatRequest {
        system: request.instructions.as_deref(),
        history: History::empty(),
        input: Input::Messages(&history),
        options: &options,
        session: None,
        pinned: None,
    };
    let user = history
        .iter()
        .rev()
        .find(|m| m.role == chatcore::Role::User)
        .map(|m| m.display_text().into_owned())
        .unwrap_or_default();
    let at = Served {
        app,
        rid,
        model: &request.model,
    };
    let framing = Responses::new(meta);
    if request.stream {
        let stream = scoped.stream(chat).await?;
        return Ok(turn::stateless_stream(at, &user, stream, framing));
    }
    let started = std::time::Instant::now();
    let completion = scoped.complete(chat).await?;
    Ok(turn::stateless_whole(
        at,
        &user,
        &completion,
        started.elapsed(),
        framing,
    ))
}

/// A stored response, for a caller who may see it.
async fn find(scoped: &Scoped<'_>, id: &str) -> Result<chatcore::StoredResponse, ApiError> {
    scoped
        .response(id)
        .await
        .map_err(|e| or_not_found(e, || response_not_found(id)))
}

/// `GET /v1/responses/{id}`.
pub async fn get(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    let stored = find(&scoped, id).await?;
    let mut resp = hyper::Response::new(Body::full(Shown::new(&stored)?.object()));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    scoped
        .delete_response(id)
        .await
        .map_err(|e| or_not_found(e, || response_not_found(id)))?;
    Ok(json_response(
        &json!({"id": id, "object": "response", "deleted": true}),
    ))
}

/// `GET /v1/responses/{id}/input_items`: `after`, `limit` (1–100, 20),
/// `order` (`asc` or `desc`, the default).
pub async fn input_items(
    app: &Arc<App>,
    caller: Caller,
    id: &str,
    query: Option<&str>,
) -> HandlerResult {
    let page = ItemPage::parse(query)?;
    let scoped = app.core.as_caller(caller);
    let stored = find(&scoped, id).await?;
    Ok(json_response(&page.list(Shown::new(&stored)?.items())))
}

/// A cursor-paged list's query: `after` (an item id), `limit`, `order`.
#[derive(Debug)]
pub struct ItemPage {
    after: Option<String>,
    limit: usize,
    ascending: bool,
}

impl ItemPage {
    /// Reads the query.
    ///
    /// # Errors
    /// 400 naming a bad `limit` or `order`.
    pub fn parse(query: Option<&str>) -> Result<ItemPage, ApiError> {
        let mut page = ItemPage {
            after: None,
            limit: 20,
            ascending: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            match key {
                "after" => page.after = Some(value.into_owned()),
                "limit" => {
                    page.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid_query(
                                "limit",
                                "limit must be an integer from 1 to 100",
                            )
                        })?;
                }
                "order" => {
                    page.ascending = match &*value {
                        "asc" => true,
                        "desc" => false,
                        _ => {
                            return Err(ApiError::invalid_query(
                                "order",
                                "order must be asc or desc",
                            ))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(page)
    }

    /// The page of `items` (oldest first) as an OpenAI list.
    pub fn list(&self, mut items: Vec<Value>) -> Value {
        if !self.ascending {
            items.reverse();
        }
        let start = match &self.after {
            Some(after) => items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
                .map_or(items.len(), |p| p + 1),
            None => 0,
        };
        let end = start.saturating_add(self.limit).min(items.len());
        let has_more = end < items.len();
        let data: Vec<Value> = items.drain(start..end).collect();
        json!({
            "object": "list",
            "data": data,
            "first_id": data.first().and_then(|i| i.get("id")),
            "last_id": data.last().and_then(|i| i.get("id")),
            "has_more": has_more,
        })
    }
}
