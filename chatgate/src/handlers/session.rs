//! `POST /session/initialize_session`, `GET /session/{id}` and
//! `GET /session/{id}/messages`.

use std::sync::Arc;

use chatcore::{NewSession, SessionId};
use hyper::body::Incoming;
use hyper::Request;

use crate::api::{parse_initialize, parse_page_query, MessageOut, MessagesOut, SessionOut};
use crate::body::json;
use crate::handlers::{read_body, HandlerResult};
use crate::App;

/// Creates a session (optional `system_prompt` and `metadata`).
pub async fn initialize(app: &Arc<App>, req: Request<Incoming>) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers).await?;
    let input = parse_initialize(&body)?;
    let info = app
        .core
        .sessions()
        .initialize_with(NewSession {
            system_prompt: input.system_prompt,
            metadata: input.metadata.map(serde_json::Value::Object),
        })
        .await?;
    Ok(json(&SessionOut::from(&info)))
}

/// Shows a session, with `is_active` as of now and the tokens its turns
/// cost.
pub async fn get(app: &Arc<App>, id: &str) -> HandlerResult {
    let id = SessionId::parse(id)?;
    let info = app.core.sessions().get(id).await?;
    let usage = app.core.sessions().usage(id).await?;
    let mut out = SessionOut::from(&info);
    out.usage = Some(usage.into());
    Ok(json(&out))
}

/// Lists a session's messages, oldest first, a page at a time
/// (`?limit=` up to 1,000, `?after=` the previous page's `next_cursor`).
pub async fn messages(app: &Arc<App>, id: &str, query: Option<&str>) -> HandlerResult {
    let id = SessionId::parse(id)?;
    let q = parse_page_query(query)?;
    let page = app
        .core
        .sessions()
        .messages_page(id, q.after, q.limit)
        .await?;
    Ok(json(&MessagesOut {
        session_id: id.to_string(),
        messages: page.messages.iter().map(MessageOut::from).collect(),
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}
