//! `POST /feedback/`.

use std::sync::Arc;

use chatcore::SessionId;
use hyper::body::Incoming;
use hyper::Request;

use crate::api::{parse_feedback, DetailOut};
use crate::body::json;
use crate::handlers::{read_body, HandlerResult};
use crate::App;

/// Stores feedback (accepted for expired sessions while they are retained).
pub async fn submit(app: &Arc<App>, req: Request<Incoming>) -> HandlerResult {
    let (parts, body) = req.into_parts();
    let body = read_body(app, body, &parts.headers).await?;
    let input = parse_feedback(&body)?;
    let id = SessionId::parse(&input.session_id)?;
    app.core
        .feedback()
        .submit(id, &input.feedback, input.rating)
        .await?;
    Ok(json(&DetailOut {
        detail: "Feedback received",
    }))
}
