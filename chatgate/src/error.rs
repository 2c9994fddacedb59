//! The one map from chatcore's [`ErrorKind`] to an HTTP status and a JSON
//! `{"detail": …}` body. The match is exhaustive (no `_ =>`), so a new kind
//! forces a decision here. Conversion is pure; the router logs the error
//! once, with its cause chain.

use std::borrow::Cow;

use bytes::Bytes;
use chatcore::{Error, ErrorKind};
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::router::{json_bytes, Body};

/// One item of a FastAPI-style validation error list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Invalid {
    /// Where: `["body", "content"]`, or `["body", 12]` for a JSON syntax error.
    pub loc: Vec<serde_json::Value>,
    /// What is wrong, for a person.
    pub msg: Cow<'static, str>,
    /// What is wrong, for a program (pydantic's error type names).
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl Invalid {
    /// An error about body field `field`.
    pub fn field(field: &str, msg: impl Into<Cow<'static, str>>, kind: &'static str) -> Self {
        Invalid {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind,
        }
    }
}

/// The `detail` of an error body: a sentence, or a validation list.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Detail {
    /// `{"detail": "Session not found"}`
    Message(Cow<'static, str>),
    /// `{"detail": [{"loc": …, "msg": …, "type": …}]}`
    Validation(Vec<Invalid>),
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The body's `detail`.
    pub detail: Detail,
    /// `Retry-After`, in whole seconds.
    pub retry_after: Option<u64>,
    /// The whole cause chain, for the log (never sent to the client).
    pub cause: Option<String>,
    /// Extra headers (e.g. `Allow` on 405).
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a plain sentence as detail.
    pub fn new(status: StatusCode, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            detail: Detail::Message(detail.into()),
            retry_after: None,
            cause: None,
            allow: None,
        }
    }

    /// 422 with a FastAPI-style list.
    pub fn validation(items: Vec<Invalid>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: Detail::Validation(items),
            retry_after: None,
            cause: None,
            allow: None,
        }
    }

    /// `{"detail": "Not Found"}`
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found")
    }

    /// `{"detail": "Method Not Allowed"}` with an `Allow` header.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        e.allow = Some(allow);
        e
    }

    /// 500 `{"detail": "Internal Server Error"}`, the cause kept for the log.
    pub fn internal(cause: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        e.cause = Some(cause.into());
        e
    }

    /// Whether this error is worth an error-level log line (our fault or
    /// the upstream's, not the client's).
    pub fn is_server_side(&self) -> bool {
        self.status.is_server_error()
    }

    /// The response.
    pub fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Out<'a> {
            detail: &'a Detail,
        }
        let mut resp = Response::new(http_body_util::Full::new(Bytes::from(json_bytes(&Out {
            detail: &self.detail,
        }))));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            h.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

fn whole_seconds(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidInput => {
                let field = e.field().unwrap_or("body");
                return ApiError::validation(vec![Invalid::field(
                    field,
                    e.message().to_owned(),
                    "value_error",
                )]);
            }
            ErrorKind::SessionNotFound => StatusCode::NOT_FOUND,
            ErrorKind::SessionExpired => StatusCode::GONE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Storage | ErrorKind::Internal => {
                return ApiError::internal(e.chain());
            }
        };
        let mut out = ApiError::new(status, e.message().to_owned());
        out.retry_after = e.retry_after().map(whole_seconds);
        if e.fault() != chatcore::Fault::Client {
            out.cause = Some(e.chain());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kinds_map_to_the_spec_table() {
        let cases = [
            (Error::session_not_found(), 404),
            (Error::session_expired(), 410),
            (Error::new(ErrorKind::RateLimited, "x"), 429),
            (Error::new(ErrorKind::UpstreamBusy, "x"), 503),
            (Error::new(ErrorKind::UpstreamFailed, "x"), 502),
            (Error::new(ErrorKind::UpstreamTimeout, "x"), 504),
            (Error::storage("disk"), 500),
            (Error::internal("bug"), 500),
            (Error::invalid("content", "empty"), 422),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status.as_u16(), status);
        }
    }

    #[test]
    fn storage_errors_hide_their_cause_from_the_client() {
        let e = ApiError::from(Error::storage("secret path /var/x"));
        assert!(matches!(&e.detail, Detail::Message(m) if m == "Internal Server Error"));
        assert!(e.cause.as_deref().unwrap().contains("/var/x"));
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        let e = ApiError::from(
            Error::new(ErrorKind::UpstreamBusy, "busy")
                .with_retry_after(Duration::from_millis(1500)),
        );
        assert_eq!(e.retry_after, Some(2));
    }
}
