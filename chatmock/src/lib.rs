//! # chatmock
//!
//! A mock OpenAI chat-completions server: a real hyper server on a loopback
//! port that speaks the actual wire format, both plain JSON and server-sent
//! events. Tests, examples and benches point an OpenAI client at
//! [`MockOpenAi::base_url`].
//!
//! By default it answers as a model would: the echo of the last user
//! message (`"Echo: …"`); a call to one of the request's `tools` when it
//! offers some and ends with a user message (every tool, in parallel, for
//! `tool_choice: "required"`), with arguments that fit the tool's schema;
//! `Tool results: …` when it ends with tool results; a JSON object that
//! fits a `response_format` schema. It honours `n` (that many choices) and
//! `logprobs`, and reports usage with its details (`cached_tokens` from a
//! prompt cache of its own when turned on,
//! `reasoning_tokens`) and a `system_fingerprint`. Replies can be
//! scripted, one per request in order ([`MockOpenAi::push`]): a text, an
//! assistant message of any kind (tool calls, a refusal, reasoning,
//! `content: null`), a status (with `Retry-After`), a delay, malformed
//! JSON, a dropped connection, or a scripted stream. It records every
//! request body it receives (the most recent [`RECORD_LIMIT`]) so tests
//! can check what was sent.
//!
//! **Streams** (`"stream": true`) are streamed as upstream streams them: a
//! role chunk, one chunk per word piece, a finish chunk, a usage chunk when
//! the request sets `stream_options.include_usage`, then `data: [DONE]`.
//! Each event is its own body frame, sent as it is produced by a task of
//! its own. Both modes honour `max_completion_tokens` / `max_tokens` (a
//! limit in word pieces; a cut reply finishes with `"length"`) and count
//! usage alike: a token per four bytes of the messages and of the reply.
//!
//! A [`StreamScript`] ([`Reply::Stream`]) picks the pieces, a delay before
//! each, a [`StreamFault`] (an aborted connection, a malformed event, a
//! stall) and a [`StreamGate`] that holds each chunk until the test lets it
//! pass, which proves that deltas reach a client before the upstream is
//! done. [`MockOpenAi::disconnects`] and [`MockOpenAi::streams_completed`]
//! tell how streams ended, which proves that a gateway cancels its upstream
//! request when its own client goes away.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod chat;
mod proxy;
mod stream;

pub use proxy::TcpProxy;
pub use stream::{StreamFault, StreamGate, StreamScript};

use chat::{completion_json, split_words, ChatRequest, Scripted};
use stream::{Plan, SseBody, Tally};

/// How many requests the mock remembers.
pub const RECORD_LIMIT: usize = 1024;

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this assistant text (the echo reply when empty); streamed
    /// one word piece per chunk when the request asks to stream.
    Text(String),
    /// This status with an OpenAI-style error body and, optionally, a
    /// `Retry-After` header (seconds).
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` value in seconds, if any.
        retry_after: Option<u64>,
    },
    /// Waits, then answers with the inner reply (for a stream: before the
    /// response headers).
    Delay(Duration, Box<Reply>),
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// Closes the connection without answering.
    Drop,
    /// A scripted stream: its pieces, pacing, gate and fault.
    Stream(StreamScript),
    /// 400 `context_length_exceeded`, as OpenAI answers a prompt longer
    /// than the model's context window.
    ContextOverflow,
    /// 200 with this assistant message (its `content`, a string or null;
    /// `refusal`; `reasoning_content`; `tool_calls` with `id` and
    /// `function.name`/`arguments`), in each of the request's `n` choices.
    /// Streamed, each is sent in pieces as OpenAI sends them: reasoning,
    /// content and refusal a word at a time, tool-call arguments a few
    /// characters at a time after a first piece with the call's id and name.
    Message(serde_json::Value),
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

impl From<StreamScript> for Reply {
    fn from(script: StreamScript) -> Reply {
        Reply::Stream(script)
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Every header, lowercase names (`api-key`, extra headers an operator
    /// configured…).
    pub headers: Vec<(String, String)>,
    /// The body, parsed as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

#[derive(Debug, Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    recorded: Mutex<VecDeque<Recorded>>,
    requests: AtomicU64,
    record: AtomicBool,
    latency_us: AtomicU64,
    /// The context window in tokens (0: unlimited); see
    /// [`MockOpenAi::set_context_limit`].
    context_limit: AtomicU64,
    streams: Arc<Tally>,
    /// The answer to every request while set, before the script.
    fault: Mutex<Option<Reply>>,
    /// Whether the prompt cache is on (see [`MockOpenAi::set_prompt_cache`]).
    caching: AtomicBool,
    /// Prompt prefixes seen (see `ChatRequest::prefixes`), as a provider's
    /// prompt cache holds them.
    prompt_cache: Mutex<std::collections::HashSet<u64>>,
    /// Prompt tokens served from that cache, summed.
    cached_tokens: AtomicU64,
}

/// A running mock server; it stops when this handle is dropped.
#[derive(Debug)]
pub struct MockOpenAi {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<()>,
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

    /// Adds a fixed delay before every default (unscripted) reply; for a
    /// stream the headers go out at once and the delay precedes the first
    /// chunk, as a model's time to first token does.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Refuses, as OpenAI does (400 `context_length_exceeded`), every
    /// request whose prompt is longer than `tokens`, counted like a BPE
    /// tokenizer roughly counts: 4 tokens per message, a token per four
    /// ASCII characters and one per other character. `None` lifts it.
    pub fn set_context_limit(&self, tokens: Option<u64>) {
        self.state
            .context_limit
            .store(tokens.unwrap_or(0), Ordering::Relaxed);
    }

    /// Answers every request with `reply` (a status, a delay, a dropped
    /// connection…) until called again with `None`: an upstream that is
    /// down, or rate-limiting, for as long as a test needs. Scripted
    /// replies wait behind it.
    pub fn fail_all(&self, reply: Option<Reply>) {
        *self.state.fault.lock().unwrap_or_else(|p| p.into_inner()) = reply;
    }

    /// Turns the prompt cache on (off by default, so a reply depends on
    /// its request alone): as a provider does, the mock then remembers
    /// every prompt prefix it is sent (the model and the messages up to
    /// each one) and reports the longest one a new prompt starts with as
    /// `prompt_tokens_details.cached_tokens`. Each mock has its own cache,
    /// as each provider deployment does.
    pub fn set_prompt_cache(&self, on: bool) {
        self.state.caching.store(on, Ordering::Relaxed);
    }

    /// Prompt tokens this mock served from its prompt cache so far.
    pub fn cached_tokens(&self) -> u64 {
        self.state.cached_tokens.load(Ordering::Relaxed)
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

    /// How many streamed responses lost their client before the stream
    /// ended: the client went away while the mock still had something to
    /// send, or while it was delaying, stalled or held at a gate.
    pub fn disconnects(&self) -> u64 {
        self.state.streams.disconnected.load(Ordering::Relaxed)
    }

    /// How many streamed responses reached `[DONE]` or their scripted end
    /// (a [`StreamFault::DropAfter`] abort, a [`StreamFault::MalformedAfter`]
    /// close).
    pub fn streams_completed(&self) -> u64 {
        self.state.streams.completed.load(Ordering::Relaxed)
    }
}

impl State {
    /// Of a prompt with these prefixes, the characters its cache held (the
    /// longest prefix seen before); remembers them all. A cache that grew
    /// past a bound starts over, as a provider's entries expire.
    fn cache_prompt(&self, prefixes: &[(u64, usize)]) -> usize {
        const MAX_ENTRIES: usize = 1 << 20;
        let mut cache = self.prompt_cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = prefixes
            .iter()
            .rev()
            .find(|(hash, _)| cache.contains(hash))
            .map_or(0, |(_, chars)| *chars);
        if cache.len() + prefixes.len() > MAX_ENTRIES {
            cache.clear();
        }
        cache.extend(prefixes.iter().map(|(hash, _)| *hash));
        drop(cache);
        self.cached_tokens
            .fetch_add((hit / 4) as u64, Ordering::Relaxed);
        hit
    }
}

/// Any response body the mock sends: whole, or streamed event by event.
type Body = Either<Full<Bytes>, SseBody>;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let request_no = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers: Vec<(String, String)> = if state.record.load(Ordering::Relaxed) {
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect()
    } else {
        Vec::new()
    };
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
            headers,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
    }
    if !path.ends_with("/chat/completions") {
        return Ok(error(StatusCode::NOT_FOUND, "unknown path", None));
    }
    let fault = state
        .fault
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let scripted = fault.or_else(|| {
        state
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    });
    // Latency models the default upstream; a scripted reply carries its
    // own timing.
    let (mut reply, latency) = match scripted {
        Some(r) => (r, Duration::ZERO),
        None => (
            Reply::Text(String::new()),
            Duration::from_micros(state.latency_us.load(Ordering::Relaxed)),
        ),
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
            Reply::Text(text) => {
                let script = StreamScript {
                    pieces: split_words(&text),
                    ..StreamScript::default()
                };
                return Ok(complete(&state, &body, script, None, latency, request_no).await);
            }
            Reply::Stream(script) => {
                return Ok(complete(&state, &body, script, None, latency, request_no).await)
            }
            Reply::Message(message) => {
                let script = StreamScript::default();
                return Ok(
                    complete(&state, &body, script, Some(message), latency, request_no).await,
                );
            }
            Reply::ContextOverflow => return Ok(context_overflow(4096, 5000)),
        }
    }
}

/// Answers a chat request with `script`'s pieces, or the scripted
/// `message` (what the request calls for when there is neither): as SSE
/// when the request asked to stream, else as one JSON completion.
async fn complete(
    state: &State,
    body: &[u8],
    script: StreamScript,
    message: Option<serde_json::Value>,
    latency: Duration,
    request_no: u64,
) -> Response<Body> {
    let caching = state.caching.load(Ordering::Relaxed);
    let mut request = match ChatRequest::parse(body, caching) {
        Ok(Some(request)) => request,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request body is not a chat request",
                None,
            )
        }
        Err((param, message)) => return invalid(param, &message),
    };
    let limit = state.context_limit.load(Ordering::Relaxed);
    if limit > 0 && request.prompt_tokens > limit {
        return context_overflow(limit, request.prompt_tokens);
    }
    if caching {
        request.cached_chars = state.cache_prompt(&request.prefixes);
    }
    if request.stream {
        let body = Plan::new(&request, script, message, latency, request_no)
            .spawn(Arc::clone(&state.streams));
        let mut resp = Response::new(Either::Right(body));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let scripted = match message {
        Some(m) => Scripted::Message(m),
        None => Scripted::Pieces(script.pieces),
    };
    let answer = request.answer(scripted, request_no);
    json(StatusCode::OK, completion_json(&request, &answer))
}

/// OpenAI's answer to a prompt longer than the context window.
fn context_overflow(limit: u64, tokens: u64) -> Response<Body> {
    let body = serde_json::json!({"error": {
        "message": format!(
            "This model's maximum context length is {limit} tokens. \
             However, your messages resulted in {tokens} tokens. \
             Please reduce the length of the messages."
        ),
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded"
    }});
    json(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()))
}

/// OpenAI's answer to a parameter out of its range.
fn invalid(param: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value"
    }});
    json(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()))
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str, retry_after: Option<u64>) -> Response<Body> {
    // OpenAI's shape; the status as the code, so a test can tell which
    // scripted failure it got.
    let body = serde_json::json!({"error": {"message": message, "type": "mock_error", "param": null, "code": status.as_str()}});
    let mut resp = json(status, Bytes::from(body.to_string()));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
