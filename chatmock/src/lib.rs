//! # chatmock
//!
//! A mock OpenAI chat-completions server: a real hyper server on a loopback
//! port that speaks the actual wire format, both plain JSON and server-sent
//! events (`stream: true`, chunks ending in `data: [DONE]`). Tests, examples
//! and benches point an OpenAI client at [`MockOpenAi::base_url`].
//!
//! By default it echoes the last user message (`"Echo: …"`). Replies can be
//! scripted, one per request in order ([`MockOpenAi::push`]): a text, a
//! status (with `Retry-After`), a delay, malformed JSON, or a dropped
//! connection. It records requests it received (the most recent
//! [`RECORD_LIMIT`]) so tests can check what was sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How many requests the mock remembers.
pub const RECORD_LIMIT: usize = 1024;

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this assistant text.
    Text(String),
    /// This status with an OpenAI-style error body and, optionally, a
    /// `Retry-After` header (seconds).
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` value in seconds, if any.
        retry_after: Option<u64>,
    },
    /// Waits, then answers with the inner reply.
    Delay(Duration, Box<Reply>),
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// Closes the connection without answering.
    Drop,
}

impl Reply {
    /// A status reply without `Retry-After`.
    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    /// The default echo reply, delayed.
    pub fn slow(delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(Reply::Text(String::new())))
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body, parsed as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

#[derive(Debug, Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    recorded: Mutex<VecDeque<Recorded>>,
    requests: AtomicU64,
    record: std::sync::atomic::AtomicBool,
    latency_us: AtomicU64,
}

/// A running mock server; it stops when this handle is dropped.
#[derive(Debug)]
pub struct MockOpenAi {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<()>,
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    messages: Vec<WireMessage<'a>>,
    #[serde(default)]
    stream: bool,
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
}

impl MockOpenAi {
    /// Starts a mock on `127.0.0.1` with a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound (the test cannot run anyway).
    pub async fn start() -> MockOpenAi {
        MockOpenAi::bind("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .expect("bind the mock OpenAI server on loopback")
    }

    /// Starts a mock on `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MockOpenAi> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.record.store(true, Ordering::Relaxed);
        let (stop, mut stopped) = watch::channel(());
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&st), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(MockOpenAi {
            addr,
            state,
            _stop: stop,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an OpenAI client (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply for the next request that has none scripted.
    pub fn push(&self, reply: Reply) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(reply);
    }

    /// Adds a fixed delay before every default (unscripted) reply.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Turns request recording on or off (off for benches).
    pub fn set_recording(&self, on: bool) {
        self.state.record.store(on, Ordering::Relaxed);
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The most recent requests, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

type Body = Full<Bytes>;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    if state.record.load(Ordering::Relaxed) {
        let mut rec = state.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if rec.len() == RECORD_LIMIT {
            rec.pop_front();
        }
        rec.push_back(Recorded {
            path: path.clone(),
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
    }
    if !path.ends_with("/chat/completions") {
        return Ok(error(StatusCode::NOT_FOUND, "unknown path", None));
    }
    let scripted = state
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let mut reply = match scripted {
        Some(r) => r,
        None => {
            let us = state.latency_us.load(Ordering::Relaxed);
            if us > 0 {
                tokio::time::sleep(Duration::from_micros(us)).await;
            }
            Reply::Text(String::new())
        }
    };
    loop {
        match reply {
            Reply::Delay(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            Reply::Drop => return Err(std::io::Error::other("scripted drop")),
            Reply::MalformedJson => {
                return Ok(json(
                    StatusCode::OK,
                    Bytes::from_static(b"{\"choices\": [oops"),
                ));
            }
            Reply::Status {
                status,
                retry_after,
            } => {
                let code =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Ok(error(code, "scripted failure", retry_after));
            }
            Reply::Text(text) => return Ok(complete(&body, text)),
        }
    }
}

/// Answers a chat request: `text`, or an echo of the last user message when
/// `text` is empty; as SSE when the request asked to stream.
fn complete(body: &[u8], text: String) -> Response<Body> {
    let Ok(parsed) = serde_json::from_slice::<ChatBody<'_>>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "request body is not a chat request",
            None,
        );
    };
    let prompt_chars: usize = parsed.messages.iter().map(|m| m.content.len()).sum();
    let content = if text.is_empty() {
        let last = parsed
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_ref())
            .unwrap_or("");
        format!("Echo: {last}")
    } else {
        text
    };
    let model = parsed.model.as_deref().unwrap_or("mock");
    if parsed.stream {
        return sse(model, &content);
    }
    let out = serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_chars / 4,
            "completion_tokens": content.len() / 4,
            "total_tokens": prompt_chars / 4 + content.len() / 4
        }
    });
    json(StatusCode::OK, Bytes::from(out.to_string()))
}

fn sse(model: &str, content: &str) -> Response<Body> {
    let mut out = String::new();
    let mut push = |delta: serde_json::Value, finish: Option<&str>| {
        let chunk = serde_json::json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    };
    push(serde_json::json!({"role": "assistant"}), None);
    for piece in content.split_inclusive(' ') {
        push(serde_json::json!({"content": piece}), None);
    }
    push(serde_json::json!({}), Some("stop"));
    out.push_str("data: [DONE]\n\n");
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message, "type": "mock_error", "code": status.as_u16()}});
    let mut resp = json(status, Bytes::from(body.to_string()));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
