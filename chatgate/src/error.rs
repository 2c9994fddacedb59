//! The one map from chatcore's [`ErrorKind`] to an HTTP status and a JSON
//! `{"detail": …}` body. The match is exhaustive (no `_ =>`), so a new kind
//! forces a decision here. Conversion is pure; the router logs the error
//! once, with its cause chain.

use std::borrow::Cow;

use chatcore::{Error, ErrorKind, Fault};
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::body::{json_bytes, Body};

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
    /// Close the connection after this response (`Connection: close`).
    pub close: bool,
    /// Ask for a bearer credential (`WWW-Authenticate: Bearer`, on 401).
    pub challenge: bool,
    /// The quota that refused the request, for the metrics.
    pub limit_scope: Option<chatcore::Quota>,
    /// A machine-readable code for OpenAI-shaped bodies (`model_not_found`);
    /// without one, the code follows from the status.
    pub code: Option<&'static str>,
    /// The upstream's own error body, for an upstream refusal of the
    /// request itself: OpenAI-shaped answers relay it as it came.
    pub upstream_body: Option<Box<bytes::Bytes>>,
    /// The status is the upstream's own answer to the request (an upstream
    /// 4xx), which only the OpenAI shape relays.
    pub relayed: bool,
    /// Whose fault it is: the log line is an error for anything but the
    /// client's. Follows the status unless the error came from chatcore,
    /// which knows.
    pub fault: Fault,
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
            close: false,
            challenge: false,
            limit_scope: None,
            code: None,
            upstream_body: None,
            relayed: false,
            fault: if status.is_server_error() {
                Fault::Server
            } else {
                Fault::Client
            },
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
            close: false,
            challenge: false,
            limit_scope: None,
            code: None,
            upstream_body: None,
            relayed: false,
            fault: Fault::Client,
        }
    }

    /// 422 about one request field: `loc` is `["body", field]`, or
    /// `["body"]` for the body as a whole (`field` empty).
    pub fn invalid_field(field: &str, msg: impl Into<Cow<'static, str>>) -> Self {
        let mut loc: Vec<serde_json::Value> = vec!["body".into()];
        if !field.is_empty() {
            loc.push(field.into());
        }
        ApiError::validation(vec![Invalid {
            loc,
            msg: msg.into(),
            kind: "value_error",
        }])
    }

    /// 422 about query parameter `name`: `loc` is `["query", name]`.
    pub fn invalid_query(name: &str, msg: impl Into<Cow<'static, str>>) -> Self {
        ApiError::validation(vec![Invalid {
            loc: vec!["query".into(), name.into()],
            msg: msg.into(),
            kind: "value_error",
        }])
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

    /// The same error with OpenAI-shaped `code`.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The status and body of this error as a mid-stream `error` event
    /// carries them: `{"detail": "…", "status": 502}`.
    pub fn event_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            detail: &'a Detail,
            status: u16,
        }
        json_bytes(&Out {
            detail: &self.detail,
            status: self.status.as_u16(),
        })
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}` for this
    /// error; a validation list becomes one 400 `invalid_request_error`
    /// naming the first field at fault.
    pub fn openai_body(&self) -> (StatusCode, serde_json::Value) {
        let (message, param): (Cow<'_, str>, Option<String>) = match &self.detail {
            Detail::Message(m) => (Cow::Borrowed(m), None),
            Detail::Validation(items) => {
                let message = items
                    .iter()
                    .map(|i| {
                        let field = i.loc.get(1).map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        });
                        match field {
                            Some(f) => format!("{f}: {}", i.msg),
                            None => i.msg.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                // A turn's text is `content` on /chat/ but lives in
                // `messages` in OpenAI's request.
                let param = items.first().and_then(|i| match i.loc.get(1) {
                    Some(serde_json::Value::String(s)) if s == "content" => {
                        Some("messages".to_owned())
                    }
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    _ => None,
                });
                (Cow::Owned(message), param)
            }
        };
        let status = if self.status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            self.status
        };
        let (kind, default_code) = match status.as_u16() {
            400 | 413 => ("invalid_request_error", "invalid_request"),
            408 => ("invalid_request_error", "request_timeout"),
            401 => ("authentication_error", "invalid_api_key"),
            403 => ("permission_error", "forbidden"),
            404 => ("invalid_request_error", "not_found"),
            405 => ("invalid_request_error", "method_not_allowed"),
            410 => ("invalid_request_error", "session_expired"),
            429 => ("requests", "rate_limit_exceeded"),
            502 => ("server_error", "upstream_error"),
            503 => ("server_error", "upstream_unavailable"),
            504 => ("server_error", "upstream_timeout"),
            _ => ("server_error", "internal_error"),
        };
        let body = serde_json::json!({"error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": self.code.unwrap_or(default_code),
        }});
        (status, body)
    }

    /// The response in OpenAI's error shape (for `/v1`): the upstream's
    /// own body when it refused the request itself, as it came.
    pub fn into_openai_response(mut self) -> Response<Body> {
        if let Some(body) = self.upstream_body.take() {
            let status = self.status;
            return self.respond(status, body.to_vec());
        }
        let (status, body) = self.openai_body();
        self.respond(status, json_bytes(&body))
    }

    /// The error as the seed API answers it. An upstream's refusal of the
    /// request is relayed only where the client wrote that request (`/v1`);
    /// on `/chat/` the gateway wrote it, so the refusal is the gateway's
    /// problem: 502, the upstream's explanation in the detail and the log.
    #[must_use]
    pub fn in_seed_shape(mut self) -> Self {
        if self.relayed {
            self.status = StatusCode::BAD_GATEWAY;
            self.fault = Fault::Upstream;
            self.upstream_body = None;
            self.relayed = false;
            if let Detail::Message(m) = &self.detail {
                self.cause = Some(m.to_string());
            }
        }
        self
    }

    /// Whether this error is worth an error-level log line (our fault or
    /// the upstream's, not the client's).
    pub fn is_server_side(&self) -> bool {
        self.fault != Fault::Client
    }

    /// The response.
    pub fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Out<'a> {
            detail: &'a Detail,
        }
        let body = json_bytes(&Out {
            detail: &self.detail,
        });
        let status = self.status;
        self.respond(status, body)
    }

    fn respond(self, status: StatusCode, body: Vec<u8>) -> Response<Body> {
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = status;
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
        if self.close {
            h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.challenge {
            h.insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

fn whole_seconds(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let fault = e.fault();
        let mut out = api_error_of(e);
        out.fault = fault;
        out
    }
}

/// The response an error of chatcore's becomes (its fault set by the
/// caller).
fn api_error_of(e: Error) -> ApiError {
    let status = match e.kind() {
        ErrorKind::InvalidInput => {
            let field = e.field().unwrap_or("body");
            return ApiError::invalid_field(field, e.message().to_owned());
        }
        ErrorKind::SessionNotFound => {
            return ApiError::new(StatusCode::NOT_FOUND, e.message().to_owned())
                .with_code("session_not_found")
        }
        ErrorKind::SessionExpired => StatusCode::GONE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::UpstreamRejected => {
            // The request's own fault, as the upstream judged it: its
            // status, and on `/v1` its body.
            let (status, body) = match e.upstream_reply() {
                Some((status, body)) => (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    Some(body.clone()),
                ),
                None => (StatusCode::BAD_REQUEST, None),
            };
            let mut out = ApiError::new(status, e.message().to_owned());
            out.relayed = true;
            out.upstream_body = body
                .filter(|b| serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok())
                .map(Box::new);
            return out;
        }
        ErrorKind::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
        ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::StorageUnavailable => {
            let mut out = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable")
                .with_code("storage_unavailable");
            out.retry_after = Some(1);
            out.cause = Some(e.chain());
            return out;
        }
        ErrorKind::LimiterUnavailable => {
            let mut out =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Rate limiter unavailable")
                    .with_code("rate_limiter_unavailable");
            out.retry_after = Some(1);
            out.cause = Some(e.chain());
            return out;
        }
        ErrorKind::Storage | ErrorKind::Internal => {
            return ApiError::internal(e.chain());
        }
    };
    let mut out = ApiError::new(status, e.message().to_owned());
    out.limit_scope = e.quota();
    out.retry_after = e.retry_after().map(whole_seconds);
    if e.fault() != chatcore::Fault::Client {
        out.cause = Some(e.chain());
    }
    out
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
            (Error::new(ErrorKind::Forbidden, "x"), 403),
            (Error::new(ErrorKind::UpstreamBusy, "x"), 503),
            (Error::new(ErrorKind::UpstreamFailed, "x"), 502),
            (
                Error::new(ErrorKind::UpstreamRejected, "x")
                    .with_upstream_reply(422, bytes::Bytes::from_static(b"{}")),
                422,
            ),
            (Error::new(ErrorKind::UpstreamTimeout, "x"), 504),
            (Error::storage("disk"), 500),
            (Error::storage_unavailable("disk full"), 503),
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
    fn openai_shape_turns_validation_into_400() {
        let e = ApiError::validation(vec![Invalid::field(
            "messages",
            "Field required",
            "missing",
        )]);
        let (status, body) = e.openai_body();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["message"], "messages: Field required");
        let (status, body) = ApiError::from(Error::session_not_found()).openai_body();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "session_not_found");
        let (status, body) = ApiError::from(
            Error::new(ErrorKind::RateLimited, "slow down")
                .with_retry_after(Duration::from_secs(3)),
        )
        .openai_body();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn an_upstream_refusal_is_relayed_in_the_openai_shape() {
        let body = bytes::Bytes::from_static(
            br#"{"error":{"message":"Unsupported parameter: 'max_tokens'","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#,
        );
        let e = ApiError::from(
            Error::new(
                ErrorKind::UpstreamRejected,
                "Upstream rejected the request: status 400",
            )
            .with_upstream_reply(400, body.clone()),
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.cause.is_none(), "the client's fault: no error line");
        let resp = e.into_openai_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn an_upstream_refusal_is_the_gateways_problem_on_the_seed_api() {
        let e = ApiError::from(
            Error::new(
                ErrorKind::UpstreamRejected,
                "Upstream rejected the request: status 404: no such model",
            )
            .with_upstream_reply(404, bytes::Bytes::from_static(b"{}")),
        )
        .in_seed_shape();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(e.is_server_side());
        assert!(e.cause.as_deref().unwrap().contains("no such model"));
        assert!(e.upstream_body.is_none());
        // Anything else is as it was.
        let e = ApiError::from(Error::session_expired()).in_seed_shape();
        assert_eq!(e.status, StatusCode::GONE);
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
