//! The harness: the mock OpenAI server and the real gateway in-process on
//! loopback, driven over real HTTP by a one-connection-per-request client,
//! plus small assertion helpers shared by every module.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatgate::config::{Config, StderrLevel};
use chatgate::logging::Logs;
use chatmock::MockOpenAi;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Guards every network wait against a hang; never an assertion on speed.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body's `detail`, which every error carries.
    pub fn detail(&self) -> Value {
        let v = self.json();
        v.get("detail")
            .cloned()
            .unwrap_or_else(|| panic!("no `detail` in {v}"))
    }

    /// Asserts the status and that the body is `{"detail": "<detail>"}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, detail: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.json(), serde_json::json!({ "detail": detail }));
        assert_json_content_type(self);
    }
}

/// Asserts the response says it is JSON.
#[track_caller]
pub fn assert_json_content_type(resp: &Resp) {
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
}

/// Sends one request on a fresh connection and reads the whole answer.
///
/// # Errors
/// When the connection cannot be made or breaks (e.g. after shutdown).
pub async fn try_send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<Resp, Box<dyn std::error::Error + Send + Sync>> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string());
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(HANG_GUARD, work)
        .await
        .map_err(|_| format!("no answer from {addr} within {HANG_GUARD:?}"))?
}

/// Like [`try_send`], panicking on a transport error.
pub async fn send(addr: SocketAddr, method: Method, path: &str, body: Option<&str>) -> Resp {
    let body = body.map(|b| Bytes::from(b.to_owned()));
    try_send(addr, method.clone(), path, &[], body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// GET `path`.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, Method::GET, path, None).await
}

/// POST `path` with a raw body.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Resp {
    send(addr, Method::POST, path, Some(body)).await
}

/// Creates a session and returns its id.
pub async fn new_session(addr: SocketAddr) -> String {
    let r = send(addr, Method::POST, "/session/initialize_session", None).await;
    assert_eq!(r.status, 200, "initialize_session: {}", r.text());
    r.json()["session_id"]
        .as_str()
        .expect("session_id is a string")
        .to_owned()
}

/// One chat turn.
pub async fn chat(addr: SocketAddr, session_id: &str, content: &str) -> Resp {
    let body = serde_json::json!({"session_id": session_id, "role": "user", "content": content});
    post(addr, "/chat/", &body.to_string()).await
}

/// The session's stored messages, asserting the endpoint answers 200.
pub async fn messages(addr: SocketAddr, session_id: &str) -> Vec<Value> {
    let r = get(addr, &format!("/session/{session_id}/messages")).await;
    assert_eq!(r.status, 200, "messages: {}", r.text());
    let v = r.json();
    assert_eq!(v["session_id"], session_id);
    v["messages"]
        .as_array()
        .expect("messages is a list")
        .clone()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, and a real time.
#[track_caller]
pub fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp {v} is not a string"));
    let b = s.as_bytes();
    let shape = b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "timestamp {s:?} is not YYYY-MM-DDTHH:MM:SSZ");
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
}

/// A hyphenated, lowercase UUID v4.
#[track_caller]
pub fn assert_uuid_v4(s: &str) {
    let u = uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s:?} is not a UUID: {e}"));
    assert_eq!(u.get_version_num(), 4, "{s} is not v4");
    assert_eq!(
        u.hyphenated().to_string(),
        s,
        "{s} is not hyphenated lowercase"
    );
}

/// Whether a log line carries `key` with `value` (`key: value` as slog-term
/// writes it, or `key=value`).
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    let colon = format!("{key}: {value}");
    let eq = format!("{key}={value}");
    [colon, eq].iter().any(|f| {
        line.match_indices(f.as_str()).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + f.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

/// The gateway configuration every in-process test starts from: the mock
/// upstream, storage and log in `dir`, nothing on stderr.
pub fn base_config(mock: &MockOpenAi, dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".parse().expect("address");
    c.openai.base_url = mock.base_url();
    c.storage.path = dir.join("chatgate.db");
    c.log.file = dir.join("app.log");
    c.log.stderr = StderrLevel::Off;
    c
}

/// Raises the quotas counted per client address, for a test whose volume
/// from its one loopback address is the point, not the quota.
pub fn one_address_is_many_clients(c: &mut Config) {
    let many = std::num::NonZeroU32::new(1_000_000).expect("nonzero");
    c.rate_limit.address_messages_per_minute = many;
    c.rate_limit.sessions_per_hour = many;
    c.rate_limit.feedback_per_hour = many;
}

/// The same, as environment variables for the binary.
pub const ONE_ADDRESS_IS_MANY_CLIENTS: [(&str, &str); 3] = [
    (
        "CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE",
        "1000000",
    ),
    ("CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR", "1000000"),
    ("CHATGATE_RATE_LIMIT__FEEDBACK_PER_HOUR", "1000000"),
];

/// A running in-process gateway in front of its own mock upstream.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub mock: MockOpenAi,
    dir: TempDir,
    pub log_file: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    logs: Option<Logs>,
}

impl Gateway {
    /// A gateway with the base configuration.
    pub async fn start() -> Gateway {
        Gateway::start_with(|_| {}).await
    }

    /// A gateway whose configuration `edit` adjusts.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Gateway {
        let mock = MockOpenAi::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = base_config(&mock, dir.path());
        edit(&mut config);
        let logs = chatgate::logging::build(&config).expect("open app.log");
        let parts = chatgate::build(&config, &logs.logger)
            .await
            .expect("build chatcore");
        let app = chatgate::App::from_parts(parts, &config, logs.logger.clone());
        app.metrics.watch_log_drops(logs.dropped_counter());
        let app = Arc::new(app);
        let listener = tokio::net::TcpListener::bind(config.server.bind)
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(chatgate::run(listener, app, async move {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            mock,
            log_file: config.log.file.clone(),
            dir,
            shutdown: Some(tx),
            server: Some(server),
            logs: Some(logs),
        }
    }

    /// The temporary directory holding the database and `app.log`.
    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    /// Resolves the shutdown future given to `chatgate::run`.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) for `chatgate::run` to return.
    pub async fn wait_stopped(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(HANG_GUARD, server)
                .await
                .expect("chatgate::run did not return after shutdown")
                .expect("chatgate::run panicked");
        }
    }

    /// Shuts down, waits for `run` to return, flushes the log and returns
    /// the whole of `app.log`.
    pub async fn stop(mut self) -> String {
        self.trigger_shutdown();
        self.wait_stopped().await;
        if let Some(logs) = self.logs.take() {
            logs.flush();
        }
        std::fs::read_to_string(&self.log_file).expect("read app.log")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// How often [`wait_for`] and [`wait_until`] look again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `check` every few milliseconds until it yields a value, and
/// returns that value; panics naming `what` once `limit` has passed. The
/// limit only guards against a hang (make it generous, so a slow machine
/// does not fail): it is never an assertion on speed.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        // The one poll interval of these tests: waits on a condition, not
        // a guess at how long something takes.
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` every few milliseconds until it holds, for at most
/// `limit` (see [`wait_for`]).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(limit, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// Waits until the wall clock has moved past the current millisecond, so
/// whatever the gateway stamps next (a session's `last_active`, kept in
/// milliseconds) is strictly later than what it stamped before this call.
pub async fn next_millisecond() {
    let now = || chrono::Utc::now().timestamp_millis();
    let start = now();
    wait_until(
        Duration::from_secs(10),
        "the clock to move on a millisecond",
        || async move { now() > start },
    )
    .await;
}

/// One server-sent event: its `event:` name, if it has one, and its
/// `data:` (lines joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON; panics (showing the event) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// Whether this is a named event (`event: NAME`).
    pub fn is(&self, name: &str) -> bool {
        self.name.as_deref() == Some(name)
    }
}

/// How long one event may take to arrive before a test gives up on it.
pub const EVENT_GUARD: Duration = Duration::from_secs(15);

/// A response whose body is read as it arrives, event by event, over its
/// own connection. Dropping it (or [`EventStream::disconnect`]) closes the
/// connection, as a client that goes away does.
#[derive(Debug)]
pub struct EventStream {
    pub status: u16,
    pub headers: HeaderMap,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    ended: bool,
    conn: JoinHandle<()>,
}

impl EventStream {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next event; `Ok(None)` when the body ended cleanly, `Err` when
    /// the connection broke. Panics when nothing arrives within
    /// [`EVENT_GUARD`].
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, String> {
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            if self.ended {
                let rest = String::from_utf8_lossy(&self.buf).trim().to_owned();
                assert!(rest.is_empty(), "stream ended inside an event: {rest:?}");
                return Ok(None);
            }
            let frame = tokio::time::timeout(EVENT_GUARD, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event within {EVENT_GUARD:?}"));
            match frame {
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(e.to_string());
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event, which must exist (no end, no transport error).
    pub async fn expect_event(&mut self) -> SseEvent {
        match self.next_event().await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the stream ended; an event was expected"),
            Err(e) => panic!("the stream broke ({e}); an event was expected"),
        }
    }

    /// Every remaining event, and how the body ended: `None` cleanly,
    /// `Some(error)` when the connection broke.
    pub async fn rest(&mut self) -> (Vec<SseEvent>, Option<String>) {
        let mut events = Vec::new();
        loop {
            match self.next_event().await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => return (events, None),
                Err(e) => return (events, Some(e)),
            }
        }
    }

    /// Whether no event arrives within `wait` (the stream is held back).
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match tokio::time::timeout(wait, self.body.frame()).await {
            Err(_) => true,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
                false
            }
            Ok(_) => {
                self.ended = true;
                false
            }
        }
    }

    /// Reads the rest of the body as a whole response (for answers that
    /// are not streams, such as JSON errors).
    pub async fn into_resp(mut self) -> Resp {
        let mut body = std::mem::take(&mut self.buf);
        while !self.ended {
            match tokio::time::timeout(HANG_GUARD, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        body.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(e))) => panic!("the body broke: {e}"),
                Ok(None) => self.ended = true,
                Err(_) => panic!("no end of body within {HANG_GUARD:?}"),
            }
        }
        Resp {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: Bytes::from(body),
        }
    }

    /// Closes the connection now, mid-stream.
    pub fn disconnect(self) {
        drop(self);
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block[..end]).into_owned();
            let mut name = None;
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim_start().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if name.is_some() || !data.is_empty() {
                return Some(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
            // A comment or keep-alive block: not an event.
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // The task owns the socket: ending it closes the connection.
        self.conn.abort();
    }
}

/// POSTs `body` (JSON) to `path` on a connection of its own and returns
/// once the response head has arrived, leaving the body to be read event
/// by event.
pub async fn open_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> EventStream {
    let work = async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, addr.to_string())
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response head");
        let (parts, body) = resp.into_parts();
        EventStream {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            buf: Vec::new(),
            ended: false,
            conn,
        }
    };
    tokio::time::timeout(HANG_GUARD, work)
        .await
        .unwrap_or_else(|_| panic!("POST {path}: no response head within {HANG_GUARD:?}"))
}

/// POSTs `body` to `path` with extra `headers` and reads the whole answer.
pub async fn post_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_send(
        addr,
        Method::POST,
        path,
        headers,
        Some(Bytes::from(body.to_owned())),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}
