//! OpenAI's Conversations API on sessions: `POST /v1/conversations`,
//! `GET`/`POST`/`DELETE /v1/conversations/{id}`, its items listed
//! (`after`, `limit`, `order`), added, read and deleted one by one. A
//! conversation is a session (`conv_` and the session's id); its items
//! are the session's messages, named by their stable positions, so
//! responses that join it (`conversation` on `POST /v1/responses`), the
//! seed API and `/v1` with `X-Session-Id` all see one history.

use std::sync::Arc;

use chatcore::{Caller, MessageCursor, Scoped, SessionId};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

use crate::api::openai::bad;
use crate::api::responses::{items_of, position_of, read_input};
use crate::body::json as json_response;
use crate::error::ApiError;
use crate::handlers::responses::{
    conversation_id, conversation_not_found, conversation_session, ItemPage,
};
use crate::handlers::{read_body, HandlerResult};
use crate::App;

fn item_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Item with id '{id}' not found."),
    )
}

/// `e`, with the API's own 404 for a conversation that is not there.
fn or_not_found(e: chatcore::Error, id: &str) -> ApiError {
    crate::handlers::responses::or_not_found(e, || conversation_not_found(id))
}

/// The conversation object of session `info`.
fn object(info: &chatcore::SessionInfo) -> Value {
    json!({
        "id": conversation_id(info.session.id),
        "object": "conversation",
        "created_at": info.session.created_at.timestamp(),
        "metadata": info.session.metadata.clone().unwrap_or_else(|| json!({})),
    })
}

/// A JSON object body (an empty body reads as `{}`).
async fn body_object(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Map<String, Value>, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_v1_body_bytes).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    serde_json::from_slice(&body).map_err(|e| {
        let mut err = ApiError::invalid_field("", format!("The body must be a JSON object: {e}"));
        err.code = Some("invalid_request");
        err
    })
}

/// `metadata` of a body: `None` when absent or null.
fn metadata(body: &mut Map<String, Value>) -> Result<Option<Value>, ApiError> {
    match body.remove("metadata") {
        None | Some(Value::Null) => Ok(None),
        Some(m @ Value::Object(_)) => Ok(Some(m)),
        Some(_) => Err(bad("metadata", "metadata must be an object")),
    }
}

/// `items` of a body as messages (`None` when absent).
fn items(
    body: &mut Map<String, Value>,
    required: bool,
) -> Result<Option<Vec<chatcore::Message>>, ApiError> {
    match body.remove("items") {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(bad("items", "Field required")),
        Some(Value::Array(list)) if list.is_empty() && !required => Ok(None),
        Some(v @ Value::Array(_)) => {
            let (messages, _) = read_input(v, chrono::Utc::now()).map_err(|mut e| {
                if let crate::error::Detail::Validation(list) = &mut e.detail {
                    for i in list.iter_mut() {
                        i.loc = vec!["body".into(), "items".into()];
                    }
                }
                e
            })?;
            Ok(Some(messages))
        }
        Some(_) => Err(bad("items", "items must be an array of items")),
    }
}

/// `POST /v1/conversations`: `items` (optional) and `metadata`.
pub async fn create(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    peer: std::net::IpAddr,
) -> HandlerResult {
    let headers = req.headers().clone();
    let mut body = body_object(app, req).await?;
    let metadata = metadata(&mut body)?;
    let items = items(&mut body, false)?.unwrap_or_default();
    let scoped = app.scoped(caller, peer, &headers);
    let info = scoped.create_conversation(metadata, items).await?;
    Ok(json_response(&object(&info)))
}

/// The session a conversation id names, if the caller may use it.
async fn session_of(scoped: &Scoped<'_>, id: &str) -> Result<chatcore::SessionInfo, ApiError> {
    let session = conversation_session(id)?;
    scoped.get(session).await.map_err(|e| or_not_found(e, id))
}

/// `GET /v1/conversations/{id}`.
pub async fn get(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    Ok(json_response(&object(&session_of(&scoped, id).await?)))
}

/// `POST /v1/conversations/{id}`: replaces `metadata`.
pub async fn update(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    id: &str,
) -> HandlerResult {
    let mut body = body_object(app, req).await?;
    if !body.contains_key("metadata") {
        return Err(bad("metadata", "Field required"));
    }
    let metadata = metadata(&mut body)?;
    let scoped = app.core.as_caller(caller);
    let session = conversation_session(id)?;
    scoped
        .set_metadata(session, metadata)
        .await
        .map_err(|e| or_not_found(e, id))?;
    Ok(json_response(&object(&session_of(&scoped, id).await?)))
}

/// `DELETE /v1/conversations/{id}`: the conversation and its items.
pub async fn delete(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    let session = conversation_session(id)?;
    scoped
        .delete(session)
        .await
        .map_err(|e| or_not_found(e, id))?;
    Ok(json_response(
        &json!({"id": id, "object": "conversation.deleted", "deleted": true}),
    ))
}

/// Every item of a conversation, oldest first.
async fn all_items(
    scoped: &Scoped<'_>,
    session: SessionId,
    id: &str,
) -> Result<Vec<Value>, ApiError> {
    let page = scoped
        .items(session)
        .await
        .map_err(|e| or_not_found(e, id))?;
    Ok(page
        .positions
        .iter()
        .zip(&page.messages)
        .flat_map(|(p, m)| items_of(*p, m))
        .collect())
}

/// `GET /v1/conversations/{id}/items`: `after`, `limit` (1–100, 20),
/// `order` (`asc`, or `desc`: the default).
pub async fn list_items(
    app: &Arc<App>,
    caller: Caller,
    id: &str,
    query: Option<&str>,
) -> HandlerResult {
    let page = ItemPage::parse(query)?;
    let scoped = app.core.as_caller(caller);
    let session = conversation_session(id)?;
    let all = all_items(&scoped, session, id).await?;
    Ok(json_response(&page.list(all)))
}

/// `POST /v1/conversations/{id}/items`: `items`, appended in order; the
/// list of the items added.
pub async fn add_items(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    peer: std::net::IpAddr,
    id: &str,
) -> HandlerResult {
    let headers = req.headers().clone();
    let mut body = body_object(app, req).await?;
    let messages = items(&mut body, true)?.unwrap_or_default();
    let scoped = app.scoped(caller, peer, &headers);
    let session = conversation_session(id)?;
    let added = messages.len();
    scoped
        .add_items(session, messages)
        .await
        .map_err(|e| or_not_found(e, id))?;
    let page = scoped
        .items(session)
        .await
        .map_err(|e| or_not_found(e, id))?;
    let start = page.messages.len().saturating_sub(added);
    let data: Vec<Value> = page.positions[start..]
        .iter()
        .zip(&page.messages[start..])
        .flat_map(|(p, m)| items_of(*p, m))
        .collect();
    Ok(json_response(&json!({
        "object": "list",
        "data": data,
        "first_id": data.first().and_then(|i| i.get("id")),
        "last_id": data.last().and_then(|i| i.get("id")),
        "has_more": false,
    })))
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(app: &Arc<App>, caller: Caller, id: &str, item: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    let session = conversation_session(id)?;
    let all = all_items(&scoped, session, id).await?;
    all.into_iter()
        .find(|i| i.get("id").and_then(Value::as_str) == Some(item))
        .map(|i| json_response(&i))
        .ok_or_else(|| item_not_found(item))
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: the message holding
/// the item (a function call goes with its message's other calls); the
/// conversation.
pub async fn delete_item(app: &Arc<App>, caller: Caller, id: &str, item: &str) -> HandlerResult {
    let scoped = app.core.as_caller(caller);
    let session = conversation_session(id)?;
    let position = position_of(item).ok_or_else(|| item_not_found(item))?;
    // Only an id the conversation lists names its message (`fc_7_9` does
    // not, if message 7 holds one call).
    let listed = all_items(&scoped, session, id).await?;
    if !listed
        .iter()
        .any(|i| i.get("id").and_then(Value::as_str) == Some(item))
    {
        return Err(item_not_found(item));
    }
    let deleted = scoped
        .delete_item(session, MessageCursor::after(position))
        .await
        .map_err(|e| or_not_found(e, id))?;
    if !deleted {
        return Err(item_not_found(item));
    }
    Ok(json_response(&object(&session_of(&scoped, id).await?)))
}
