//! The OpenAI chat-completions adapter: any OpenAI-compatible base URL
//! (OpenAI, vLLM, Ollama, llama.cpp server, Azure-style proxies).
//!
//! One pooled keep-alive client (`TCP_NODELAY`, connect timeout). Every call
//! has a total deadline; connection errors, 429 and 5xx are retried with
//! exponential backoff and jitter (50–100% of each step), honouring `Retry-After`, up to
//! `max_retries`, all inside the deadline. Other 4xx are final. Errors are
//! classified into chatcore kinds and never carry the API key. A reply
//! body larger than [`MAX_REPLY_BYTES`] is refused rather than buffered.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use slog::Logger;
use tokio::time::Instant;

use super::{ChatModel, ChatRequest, Completion, CompletionStream, StreamEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, Shape};

mod sse;
mod wire;

use sse::{SseEvent, SseParser};

/// The largest reply the adapter reads (16 MiB): a whole non-streamed
/// body, or one line of a streamed one.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// OpenAI's public endpoint, the default base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Settings of the OpenAI adapter.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL; `/chat/completions` is appended.
    pub base_url: String,
    /// Model name, e.g. `gpt-3.5-turbo`.
    pub model: String,
    /// The sampling temperature sent when a request sets none; `None`
    /// sends none, leaving the upstream model's own default.
    pub temperature: Option<f32>,
    /// The API key, sent as `Authorization: Bearer`; `None` sends none.
    pub api_key: Option<String>,
    /// Total deadline for one call, retries included; for a stream, the
    /// deadline for its first byte of content.
    pub timeout: Duration,
    /// For a stream, the longest gap allowed between two chunks once the
    /// first has arrived (an answer that keeps flowing is never cut off).
    pub stream_idle_timeout: Duration,
    /// Deadline for opening one connection.
    pub connect_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it (before jitter).
    pub backoff: Duration,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: OPENAI_BASE_URL.to_owned(),
            model: "gpt-3.5-turbo".to_owned(),
            temperature: None,
            api_key: None,
            timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 2,
            backoff: Duration::from_millis(200),
        }
    }
}

/// A [`ChatModel`] speaking OpenAI chat completions over HTTP.
pub struct OpenAiChat {
    client: reqwest::Client,
    /// Parsed once: parsing it per request showed up in profiles.
    url: reqwest::Url,
    config: OpenAiConfig,
    log: Option<Logger>,
    stats: Arc<UpstreamStats>,
}

/// How the adapter's calls have ended, counted since it was made (for an
/// operator's metrics). A streamed call counts when its stream ends; one
/// its reader abandoned counts nowhere.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Calls answered.
    pub ok: AtomicU64,
    /// Calls the upstream kept rate-limiting (429) after every retry.
    pub busy: AtomicU64,
    /// Calls that failed: 5xx, connection errors, bad replies, our key
    /// refused.
    pub failed: AtomicU64,
    /// Calls the upstream refused as the request's own fault (400, 404,
    /// 413, 422).
    pub rejected: AtomicU64,
    /// Calls past their deadline, or streams stalled past their idle time.
    pub timeout: AtomicU64,
    /// Attempts retried after a connection error, 429 or 5xx.
    pub retries: AtomicU64,
}

impl UpstreamStats {
    fn record<T>(&self, outcome: &Result<T>) {
        let counter = match outcome {
            Ok(_) => &self.ok,
            Err(e) => match e.kind() {
                ErrorKind::UpstreamBusy => &self.busy,
                ErrorKind::UpstreamTimeout => &self.timeout,
                ErrorKind::UpstreamRejected => &self.rejected,
                _ => &self.failed,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for OpenAiChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiChat")
            .field("url", &self.url)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpenAiChat {
    /// An adapter with `config`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the base URL is not http(s) or the
    /// key cannot be sent as a header; [`ErrorKind::Internal`] when the HTTP
    /// client cannot be built.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(
                "base_url",
                format!("base_url must start with http:// or https://, got {base:?}"),
            ));
        }
        let url = reqwest::Url::parse(&format!("{base}/chat/completions"))
            .map_err(|e| Error::invalid("base_url", format!("base_url is not a valid URL: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Error::invalid(
                    "api_key",
                    "the API key contains characters a header cannot carry",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("chatcore/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(Error::internal)?;
        Ok(OpenAiChat {
            client,
            url,
            config,
            log: None,
            stats: Arc::default(),
        })
    }

    /// An adapter configured from the environment: `OPENAI_API_KEY`, and
    /// `OPENAI_BASE_URL` (default: OpenAI's) and `OPENAI_MODEL` when set.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the base URL is OpenAI's and
    /// `OPENAI_API_KEY` is unset; otherwise as [`OpenAiChat::new`].
    pub fn from_env() -> Result<Self> {
        let mut config = OpenAiConfig::default();
        if let Ok(url) = std::env::var("OPENAI_BASE_URL") {
            config.base_url = url;
        }
        if let Ok(model) = std::env::var("OPENAI_MODEL") {
            config.model = model;
        }
        config.api_key = std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        if config.api_key.is_none() && config.base_url.trim_end_matches('/') == OPENAI_BASE_URL {
            return Err(Error::invalid(
                "api_key",
                "OPENAI_API_KEY is not set (required for api.openai.com)",
            ));
        }
        OpenAiChat::new(config)
    }

    /// Reports retries to `log` (the only thing the adapter logs: what it
    /// swallows).
    #[must_use]
    pub fn with_logger(mut self, log: Logger) -> Self {
        self.log = Some(log);
        self
    }

    /// The settings in use.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// How its calls have ended so far (shared: the counts keep moving).
    pub fn stats(&self) -> Arc<UpstreamStats> {
        Arc::clone(&self.stats)
    }

    /// Sends `body` until a non-retryable outcome, the retry budget or the
    /// deadline ends it; returns the successful response.
    async fn send(&self, body: Vec<u8>, deadline: Instant) -> Result<reqwest::Response> {
        // `Bytes` clones are reference-counted: a retry does not copy the body.
        let body = bytes::Bytes::from(body);
        let mut attempt: u32 = 0;
        loop {
            let outcome = match tokio::time::timeout_at(
                deadline,
                self.client.post(self.url.clone()).body(body.clone()).send(),
            )
            .await
            {
                Err(_) => return Err(timed_out()),
                Ok(Ok(resp)) => classify(resp).await,
                Ok(Err(e)) if e.is_timeout() => Attempt::Retry(
                    Error::new(ErrorKind::UpstreamFailed, "Upstream connection timed out")
                        .with_source(scrub(e, self.config.api_key.as_deref())),
                    None,
                ),
                Ok(Err(e)) => Attempt::Retry(
                    Error::new(ErrorKind::UpstreamFailed, "Upstream connection error")
                        .with_source(scrub(e, self.config.api_key.as_deref())),
                    None,
                ),
            };
            let (error, hint) = match outcome {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(error, hint) => (error, hint),
            };
            if attempt >= self.config.max_retries {
                return Err(error);
            }
            let wait = backoff(self.config.backoff, attempt, hint);
            if Instant::now() + wait >= deadline {
                // Waiting would overrun the deadline: report what we know.
                return Err(error);
            }
            if let Some(log) = &self.log {
                slog::warn!(log, "retrying upstream";
                    "attempt" => attempt + 1,
                    "wait_ms" => wait.as_millis() as u64,
                    "error" => error.chain());
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn body(&self, request: ChatRequest<'_>, stream: bool) -> Vec<u8> {
        let model = request
            .options
            .model
            .as_deref()
            .unwrap_or(&self.config.model);
        // Sized up front: growing the buffer by doubling showed in profiles.
        let estimate = wire::size_hint(model, &request);
        let mut out = Vec::with_capacity(estimate + estimate / 8);
        wire::write_request(&mut out, model, &request, self.config.temperature, stream);
        out
    }
}

fn timed_out() -> Error {
    Error::new(ErrorKind::UpstreamTimeout, "Upstream timed out")
}

/// What one attempt came to.
enum Attempt {
    Done(reqwest::Response),
    /// Worth another try, with the upstream's `Retry-After` if it gave one.
    Retry(Error, Option<Duration>),
    Fail(Error),
}

async fn classify(resp: reqwest::Response) -> Attempt {
    let status = resp.status();
    if status.is_success() {
        return Attempt::Done(resp);
    }
    let hint = retry_after(resp.headers());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let mut e = Error::new(
            ErrorKind::UpstreamBusy,
            "Upstream is rate limiting requests (429)",
        );
        if let Some(wait) = hint {
            e = e.with_retry_after(wait);
        }
        return Attempt::Retry(e, hint);
    }
    if status.is_server_error() {
        let e = Error::new(
            ErrorKind::UpstreamFailed,
            format!("Upstream error: status {}", status.as_u16()),
        );
        return Attempt::Retry(e, hint);
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        // The body may quote part of the key: it is not read, not logged.
        return Attempt::Fail(Error::new(
            ErrorKind::UpstreamFailed,
            format!(
                "The upstream refused the gateway's own credentials (status {}): \
                 check the gateway's API key",
                status.as_u16()
            ),
        ));
    }
    // The request's own fault (a parameter the model does not take, a
    // prompt too long): the upstream's answer is kept for the client, and
    // trying again, here or elsewhere, would get the same answer.
    if matches!(status.as_u16(), 400 | 404 | 413 | 422) {
        let body = read_error_body(resp).await;
        let mut message = format!("Upstream rejected the request: status {}", status.as_u16());
        if let Some(said) = error_message(&body) {
            message.push_str(": ");
            message.push_str(&said);
        }
        let mut e = Error::new(ErrorKind::UpstreamRejected, message);
        if says_context_overflow(&body) {
            e = e.with_context_overflow();
        }
        return Attempt::Fail(e.with_upstream_reply(status.as_u16(), body));
    }
    Attempt::Fail(Error::new(
        ErrorKind::UpstreamFailed,
        format!("Upstream rejected the request: status {}", status.as_u16()),
    ))
}

/// Up to 64 KiB of an error body (the upstream's explanation; it quotes
/// our request at most).
async fn read_error_body(mut resp: reqwest::Response) -> bytes::Bytes {
    const MAX: usize = 64 * 1024;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX {
            break;
        }
    }
    bytes::Bytes::from(body)
}

/// What an error body says, in OpenAI's shape (`{"error": {"message"}}`)
/// or the other common ones (`{"error": "…"}`, `{"message"}`,
/// `{"detail"}`), cut to 500 characters.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let said = v
        .pointer("/error/message")
        .or_else(|| v.get("error"))
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))?
        .as_str()?;
    Some(said.chars().take(500).collect())
}

/// Whether an error body says the prompt exceeds the context window, in
/// the words of OpenAI (`context_length_exceeded`), vLLM ("maximum context
/// length") or llama.cpp ("exceeds the available context size").
fn says_context_overflow(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context size",
        "context window",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// `Retry-After` in seconds, or OpenAI's `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(3600.0)));
        }
    }
    let secs = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Exponential backoff with jitter (a random 50–100% of the step, so
/// retries from many requests spread out), never shorter than the upstream's
/// `Retry-After`.
fn backoff(base: Duration, attempt: u32, hint: Option<Duration>) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16));
    let jittered = ceiling.mul_f64(0.5 + fastrand::f64() * 0.5);
    match hint {
        Some(h) => h.max(jittered),
        None => jittered,
    }
}

/// Removes the key from an error's text, should a transport error quote it.
fn scrub(e: reqwest::Error, key: Option<&str>) -> Error {
    let e = e.without_url();
    let mut chain = e.to_string();
    let mut next = std::error::Error::source(&e);
    while let Some(cause) = next {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        next = cause.source();
    }
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        chain = chain.replace(key, "<redacted>");
    }
    Error::new(ErrorKind::UpstreamFailed, chain)
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::UpstreamFailed,
        format!("Upstream reply is larger than {MAX_REPLY_BYTES} bytes"),
    )
}

/// The whole body of `resp`, refused past [`MAX_REPLY_BYTES`] (at once
/// when its `Content-Length` says so).
async fn read_capped(mut resp: reqwest::Response, key: Option<&str>) -> Result<Vec<u8>> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > MAX_REPLY_BYTES as u64 {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(too_large());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::UpstreamFailed, "Upstream connection error")
                        .with_source(scrub(e, key)),
                )
            }
        }
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion> {
        let out = self.complete_once(request).await;
        self.stats.record(&out);
        out
    }

    async fn stream(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        let out = self.stream_start(request).await;
        if out.is_err() {
            self.stats.record(&out);
        }
        out
    }
}

impl OpenAiChat {
    async fn complete_once(&self, request: ChatRequest<'_>) -> Result<Completion> {
        let deadline = Instant::now() + self.config.timeout;
        let body = self.body(request, false);
        let resp = self.send(body, deadline).await?;
        let key = self.config.api_key.as_deref();
        let bytes = match tokio::time::timeout_at(deadline, read_capped(resp, key)).await {
            Err(_) => return Err(timed_out()),
            Ok(result) => result?,
        };
        completion_of(bytes::Bytes::from(bytes))
    }

    async fn stream_start(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        let deadline = Instant::now() + self.config.timeout;
        let raw = request.options.raw_reply;
        let body = self.body(request, true);
        let resp = self.send(body, deadline).await?;
        Ok(CompletionStream::sse(SseSource {
            resp,
            parser: SseParser::new(raw),
            events: VecDeque::new(),
            first_by: Some(deadline),
            idle: self.config.stream_idle_timeout,
            key: self.config.api_key.clone(),
            ended: false,
            stats: Arc::clone(&self.stats),
        }))
    }
}

/// Reads a whole reply: the first choice's message (plain text, or kept
/// whole), its finish reason and the usage; the body itself is kept as it
/// came. A reply with no message at all is an empty one (the turn decides
/// what that means), not a broken one.
fn completion_of(body: bytes::Bytes) -> Result<Completion> {
    let parsed: wire::ResponseBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::UpstreamFailed,
            "Upstream sent an invalid response (bad JSON)",
        )
        .with_source(e)
    })?;
    let usage = parsed.usage.as_ref().map(wire::WireUsage::usage);
    let mut out = Completion {
        usage,
        ..Completion::default()
    };
    if let Some(choice) = parsed.choices.into_iter().next() {
        out.finish_reason = choice.finish_reason;
        match choice.message.map(Shape::into_text) {
            None => {}
            Some(Some((_, text))) => out.content = text.into_owned(),
            // More than text: the message is kept whole, read again raw.
            Some(None) => {
                let raw: wire::RawResponse<'_> = serde_json::from_slice(&body).map_err(|e| {
                    Error::new(
                        ErrorKind::UpstreamFailed,
                        "Upstream sent an invalid response (bad JSON)",
                    )
                    .with_source(e)
                })?;
                let message = raw.choices.into_iter().next().and_then(|c| c.message);
                if let Some(message) = message {
                    let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
                    let m = Message::from_json(message.get(), epoch).map_err(|e| {
                        Error::new(
                            ErrorKind::UpstreamFailed,
                            "Upstream sent an invalid response (a message that is not one)",
                        )
                        .with_source(e)
                    })?;
                    out.content = m.display_text().into_owned();
                    out.wire = m.wire;
                }
            }
        }
    }
    out.raw = Some(body);
    Ok(out)
}

/// A streamed reply being read: polled by whoever reads the
/// [`CompletionStream`], so each chunk is read only when the previous one
/// has been taken, and dropping the stream drops the connection (the
/// upstream sees the request cancelled).
pub(crate) struct SseSource {
    resp: reqwest::Response,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    /// Until the first chunk: the call's deadline. Then each gap is
    /// bounded by `idle` instead.
    first_by: Option<Instant>,
    idle: Duration,
    key: Option<String>,
    ended: bool,
    stats: Arc<UpstreamStats>,
}

impl fmt::Debug for SseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseSource")
            .field("idle", &self.idle)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SseSource {
    /// Whether it hands back the upstream's own chunks.
    pub(crate) fn relays_raw(&self) -> bool {
        self.parser.raw()
    }

    pub(crate) async fn next(&mut self) -> Option<Result<StreamEvent>> {
        loop {
            if self.ended {
                return None;
            }
            match self.events.pop_front() {
                Some(SseEvent::Event(e)) => return Some(Ok(e)),
                Some(SseEvent::Done) => {
                    self.ended = true;
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some(SseEvent::Bad(e)) => {
                    self.ended = true;
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Some(Err(e));
                }
                None => {}
            }
            let wait = match self.first_by {
                Some(deadline) => tokio::time::timeout_at(deadline, self.resp.chunk()).await,
                None => tokio::time::timeout(self.idle, self.resp.chunk()).await,
            };
            let bytes = match wait {
                Err(_) => Err(if self.first_by.is_some() {
                    timed_out()
                } else {
                    Error::new(ErrorKind::UpstreamTimeout, "Upstream stream stalled")
                }),
                Ok(Err(e)) => Err(Error::new(
                    ErrorKind::UpstreamFailed,
                    "Upstream connection error",
                )
                .with_source(scrub(e, self.key.as_deref()))),
                Ok(Ok(None)) => Err(Error::new(
                    ErrorKind::UpstreamFailed,
                    "Upstream closed the stream before [DONE]",
                )),
                Ok(Ok(Some(bytes))) => Ok(bytes),
            };
            match bytes {
                Ok(bytes) => {
                    self.first_by = None;
                    self.parser.feed(&bytes, &mut self.events);
                }
                Err(e) => {
                    self.ended = true;
                    let e: Result<()> = Err(e);
                    self.stats.record(&e);
                    return e.err().map(Err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        for attempt in 0..4 {
            let b = backoff(base, attempt, None);
            let ceiling = base * (1 << attempt);
            assert!(b >= ceiling / 2 && b <= ceiling, "{b:?} vs {ceiling:?}");
        }
        assert!(backoff(base, 0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
    }

    #[test]
    fn retry_after_reads_seconds_and_ms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.insert("retry-after-ms", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
        let mut bad = HeaderMap::new();
        bad.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&bad), None);
    }

    #[test]
    fn base_url_must_be_http() {
        let cfg = OpenAiConfig {
            base_url: "ftp://example".into(),
            ..OpenAiConfig::default()
        };
        assert_eq!(
            OpenAiChat::new(cfg).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let cfg = OpenAiConfig {
            api_key: Some("sk-secret-123".into()),
            ..OpenAiConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("sk-secret-123"));
    }
}
