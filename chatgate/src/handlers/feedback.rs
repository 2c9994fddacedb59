//! `POST /feedback/`.

use std::sync::Arc;

use chatcore::{Caller, SessionId};
use hyper::body::Incoming;
use hyper::Request;

use crate::api::{parse_feedback, DetailOut};
use crate::body::json;
use crate::handlers::{read_body, HandlerResult};
use crate::App;

/// Stores feedback (accepted for expired sessions while they are retained).
/// Only a caller that may use the session may leave feedback on it.
pub async fn submit(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    peer: std::net::IpAddr,
) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers, app.max_body_bytes).await?;
    let input = parse_feedback(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    app.scoped(caller, peer, &parts.headers)
        .submit_feedback(id, &input.feedback, input.rating)
        .await?;
    Ok(json(&DetailOut {
        detail: "Feedback received",
    }))
}
