//! Sessions: `POST /session/initialize_session`, `GET` and `DELETE
//! /session/{id}`, `GET /session/{id}/messages`, and `GET /sessions` (the
//! caller's own, for a chat app's sidebar).
//!
//! Every call acts for its caller (`ChatCore::as_caller`): another
//! principal's session answers 404, as an unknown one does.

use std::net::IpAddr;
use std::sync::Arc;

use chatcore::{Caller, NewSession, SessionCursor, SessionId};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use crate::api::{
    bad_query, parse_initialize, parse_listing, parse_page_query, MessageOut, MessagesOut,
    SessionOut, SessionsOut,
};
use crate::body::{json, Body};
use crate::error::ApiError;
use crate::handlers::{read_body, HandlerResult};
use crate::App;

/// Most sessions one page of `GET /sessions` holds.
const MAX_SESSIONS_PAGE: usize = 100;

/// Creates a session (optional `system_prompt` and `metadata`) owned by
/// the caller, within `rate_limit.sessions_per_hour` (per principal, or per
/// client address for an anonymous caller). In `session_token` mode the
/// answer carries the session's token.
pub async fn initialize(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    peer: IpAddr,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_body_bytes).await?;
    let input = parse_initialize(&body)?;
    if input.system_prompt.is_some() && !app.client_system_prompt {
        return Err(ApiError::invalid_field(
            "system_prompt",
            "This gateway does not accept a client's system prompt",
        ));
    }
    // An anonymous caller's sessions per hour are counted per client.
    let client = app.client_key(peer, &parts.headers);
    let info = app
        .core
        .as_caller(caller)
        .with_client(client)
        .initialize(NewSession {
            system_prompt: input.system_prompt,
            metadata: input.metadata.map(serde_json::Value::Object),
        })
        .await?;
    app.metrics.session_created();
    let mut out = SessionOut::from(&info);
    out.session_token = app.auth.session_token(info.session.id);
    Ok(json(&out))
}

/// Shows a session, with `is_active` as of now and the tokens its turns
/// cost.
pub async fn get(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let id = SessionId::parse(id)?;
    let scoped = app.core.as_caller(caller);
    let (info, usage) = scoped.get_with_usage(id).await?;
    let mut out = SessionOut::from(&info);
    out.usage = Some(usage.into());
    Ok(json(&out))
}

/// Deletes a session with its messages and feedback, at once: 204.
pub async fn delete(app: &Arc<App>, caller: Caller, id: &str) -> HandlerResult {
    let id = SessionId::parse(id)?;
    app.core.as_caller(caller).delete(id).await?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// Lists a session's messages, oldest first, a page at a time
/// (`?limit=` up to 1,000, `?after=` the previous page's `next_cursor`).
pub async fn messages(
    app: &Arc<App>,
    caller: Caller,
    id: &str,
    query: Option<&str>,
) -> HandlerResult {
    let id = SessionId::parse(id)?;
    let q = parse_page_query(query)?;
    let page = app
        .core
        .as_caller(caller)
        .messages_page(id, q.after, q.limit)
        .await?;
    Ok(json(&MessagesOut {
        session_id: id.to_string(),
        messages: page.messages.iter().map(MessageOut::from).collect(),
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// The caller's sessions (every session for an admin), most recently
/// active first (`?limit=` up to 100, `?after=`).
pub async fn list(app: &Arc<App>, caller: Caller, query: Option<&str>) -> HandlerResult {
    let (limit, after) = parse_listing(query, MAX_SESSIONS_PAGE, |_, _| Ok(()))?;
    let after =
        match after {
            Some(text) => Some(SessionCursor::parse(text).ok_or_else(|| {
                bad_query("after", "Input should be a cursor from an earlier page")
            })?),
            None => None,
        };
    // One more than asked for says whether there is a next page.
    let mut sessions = app
        .core
        .as_caller(caller)
        .sessions(after, limit + 1)
        .await?;
    let next_cursor = crate::api::next_page(&mut sessions, limit, |s| {
        SessionCursor::after(&s.session).to_string()
    });
    let mut resp = json(&SessionsOut {
        sessions: sessions.iter().map(SessionOut::from).collect(),
        next_cursor,
    });
    // A listing is the caller's own: no shared cache may keep it.
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(resp)
}
