//! One file per endpoint group; each handler parses, calls chatcore, and
//! shapes the answer. Errors go back to the router as [`ApiError`]s.

pub mod admin;
pub mod chat;
pub mod conversations;
pub mod docs;
pub mod feedback;
pub mod meta;
pub mod openai;
pub mod playground;
pub mod responses;
pub mod session;
pub mod upstreams;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::Body;
use crate::error::ApiError;
use crate::App;

/// What a handler returns.
pub type HandlerResult = Result<Response<Body>, ApiError>;

/// Reads a request body, refusing more than `limit` bytes with 413 and a
/// body that has not arrived whole within `server.body_timeout` with 408
/// (a client that stops sending must not hold its connection for ever).
///
/// # Errors
/// 413 when the body is too large; 408 when it is too slow; 400 when it
/// cannot be read.
pub async fn read_body(
    app: &App,
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (limit {limit} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(app.body_timeout, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        let mut err = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "Request body not received within {}",
                humantime::format_duration(app.body_timeout)
            ),
        );
        // The rest of the body may still trickle in: the connection cannot
        // be reused for another request.
        err.close = true;
        return Err(err);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => {
            let mut err = ApiError::new(StatusCode::BAD_REQUEST, "Could not read the request body");
            err.cause = Some(e.to_string());
            Err(err)
        }
    }
}

/// Whether the client asked for server-sent events in its `Accept` header.
pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

/// A file compiled into the binary (the docs page, the playground): its
/// type, `nosniff`, no referrer, and the page's Content-Security-Policy.
pub(crate) fn static_file(
    bytes: impl Into<Bytes>,
    content_type: &str,
    csp: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Body::full(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
