//! The OpenAI chat-completions adapter: any OpenAI-compatible base URL
//! (OpenAI, vLLM, Ollama, llama.cpp server, Azure-style proxies).
//!
//! One pooled keep-alive client (`TCP_NODELAY`, connect timeout). Every call
//! has a total deadline; connection errors, 429 and 5xx are retried with
//! exponential backoff and jitter (50–100% of each step), honouring `Retry-After`, up to
//! `max_retries`, all inside the deadline. Other 4xx are final. Errors are
//! classified into chatcore kinds and never carry the API key. A reply
//! body larger than [`MAX_REPLY_BYTES`] is refused rather than buffered.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use slog::Logger;
use tokio::time::Instant;

use super::{ChatModel, ChatRequest, Completion, CompletionStream, MAX_REPLY_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, Shape};

mod reader;
mod send;
mod sse;
mod wire;

use reader::SseSource;
use send::{read_capped, timed_out};
use sse::SseParser;

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
    /// The API key, sent as [`OpenAiConfig::key_header`] says; `None`
    /// sends none.
    pub api_key: Option<String>,
    /// How the key is sent: `Authorization: Bearer` (OpenAI and most
    /// servers) or `api-key` (Azure OpenAI).
    pub key_header: KeyHeader,
    /// Other headers sent with every request (an organisation, a proxy's
    /// own credential…).
    pub headers: Vec<(String, String)>,
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
    /// The largest reply held, whole or streamed (its text, refusal and
    /// tool calls together); past it the call fails and nothing is kept.
    pub max_reply_bytes: usize,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("key_header", &self.key_header)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_reply_bytes", &self.max_reply_bytes)
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
            key_header: KeyHeader::Bearer,
            headers: Vec::new(),
            timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 2,
            backoff: Duration::from_millis(200),
            max_reply_bytes: MAX_REPLY_BYTES,
        }
    }
}

/// The header an upstream takes its API key in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    #[default]
    Bearer,
    /// `api-key: <key>`, as Azure OpenAI takes it.
    ApiKey,
}

/// What a router decided for one attempt: the model name the upstream
/// knows, the prompt-cache key, and the deadline of the whole call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub(crate) model: &'a str,
    pub(crate) cache_key: Option<&'a str>,
    pub(crate) deadline: Instant,
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
        let url = chat_url(base)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::invalid("headers", format!("{name:?} is not a header name")))?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                Error::invalid(
                    "headers",
                    format!("the value of header {name} contains characters a header cannot carry"),
                )
            })?;
            // Extra headers often carry credentials: never shown.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(key) = &config.api_key {
            let (name, text) = match config.key_header {
                KeyHeader::Bearer => (AUTHORIZATION, format!("Bearer {key}")),
                KeyHeader::ApiKey => (
                    reqwest::header::HeaderName::from_static("api-key"),
                    key.clone(),
                ),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                Error::invalid(
                    "api_key",
                    "the API key contains characters a header cannot carry",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
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

    fn body(
        &self,
        request: ChatRequest<'_>,
        model: &str,
        cache_key: Option<&str>,
        stream: bool,
    ) -> Vec<u8> {
        // Sized up front: growing the buffer by doubling showed in profiles.
        let estimate = wire::size_hint(model, &request);
        let mut out = Vec::with_capacity(estimate + estimate / 8);
        wire::write_request(
            &mut out,
            model,
            &request,
            self.config.temperature,
            cache_key,
            stream,
        );
        out
    }

    /// The model a request names, else the configured one.
    fn model_of<'r>(&'r self, request: &ChatRequest<'r>) -> &'r str {
        request
            .options
            .model
            .as_deref()
            .unwrap_or(&self.config.model)
    }

    /// One call as a router makes it: `attempt`'s model, no retries of
    /// its own (the router decides what follows a failure), within the
    /// sooner of the router's deadline and this upstream's timeout.
    pub(crate) async fn complete_attempt(
        &self,
        request: ChatRequest<'_>,
        attempt: Attempt<'_>,
    ) -> Result<Completion> {
        let deadline = attempt.deadline.min(Instant::now() + self.config.timeout);
        let body = self.body(request, attempt.model, attempt.cache_key, false);
        let out = self.complete_body(body, deadline, 0).await;
        self.stats.record(&out);
        out
    }

    /// As [`OpenAiChat::complete_attempt`], streamed.
    pub(crate) async fn stream_attempt(
        &self,
        request: ChatRequest<'_>,
        attempt: Attempt<'_>,
    ) -> Result<CompletionStream> {
        let deadline = attempt.deadline.min(Instant::now() + self.config.timeout);
        let raw = request.options.raw_reply;
        let body = self.body(request, attempt.model, attempt.cache_key, true);
        let out = self.stream_body(body, raw, deadline, 0).await;
        if out.is_err() {
            self.stats.record(&out);
        }
        out
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
        let body = self.body(request, self.model_of(&request), None, false);
        self.complete_body(body, deadline, self.config.max_retries)
            .await
    }

    async fn complete_body(
        &self,
        body: Vec<u8>,
        deadline: Instant,
        retries: u32,
    ) -> Result<Completion> {
        let resp = self.send(body, deadline, retries).await?;
        let key = self.config.api_key.as_deref();
        let bytes = match tokio::time::timeout_at(
            deadline,
            read_capped(resp, key, self.config.max_reply_bytes),
        )
        .await
        {
            Err(_) => return Err(timed_out()),
            Ok(result) => result?,
        };
        completion_of(bytes::Bytes::from(bytes))
    }

    async fn stream_start(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        let deadline = Instant::now() + self.config.timeout;
        let raw = request.options.raw_reply;
        let body = self.body(request, self.model_of(&request), None, true);
        self.stream_body(body, raw, deadline, self.config.max_retries)
            .await
    }

    async fn stream_body(
        &self,
        body: Vec<u8>,
        raw: bool,
        deadline: Instant,
        retries: u32,
    ) -> Result<CompletionStream> {
        let resp = self.send(body, deadline, retries).await?;
        Ok(CompletionStream::from_source(SseSource::new(
            resp,
            SseParser::new(raw, self.config.max_reply_bytes),
            deadline,
            self.config.stream_idle_timeout,
            self.config.api_key.clone(),
            Arc::clone(&self.stats),
        ))
        .with_reply_limit(self.config.max_reply_bytes))
    }
}

/// `/chat/completions` under `base`, keeping a query the base URL carries
/// (Azure's `?api-version=`).
fn chat_url(base: &str) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| Error::invalid("base_url", format!("base_url is not a valid URL: {e}")))?;
    let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
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
                    let stored = without_reasoning(message.get());
                    let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
                    let m = Message::from_json(&stored, epoch).map_err(|e| {
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

/// Members of a reply's message that are the model's thinking, not its
/// answer. They reach the client with the reply, but the message kept for
/// the history goes without them, as a streamed reply's does: reasoning
/// models neither need them back nor, some of them, accept them.
const REASONING: [&str; 2] = ["reasoning_content", "reasoning"];

/// `message` without its [`REASONING`] members; borrowed when it has none.
fn without_reasoning(message: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let Ok(mut fields) = crate::json::Fields::parse(message.as_bytes()) else {
        return Cow::Borrowed(message);
    };
    let mut removed = false;
    for key in REASONING {
        removed |= fields.remove(key).is_some();
    }
    if !removed {
        return Cow::Borrowed(message);
    }
    serde_json::to_string(&fields).map_or(Cow::Borrowed(message), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_not_kept_in_the_stored_message() {
        use crate::message::WireMessage;
        let body = bytes::Bytes::from_static(
            br#"{"choices":[{"message":{"role":"assistant","content":"4","reasoning_content":"2+2 is 4","vendor":1},"finish_reason":"stop"}]}"#,
        );
        let c = completion_of(body.clone()).unwrap();
        assert_eq!(c.content, "4");
        assert_eq!(
            c.wire.as_ref().map(WireMessage::as_str),
            Some(r#"{"role":"assistant","content":"4","vendor":1}"#)
        );
        // The client still gets the reply as it came.
        assert_eq!(c.raw.as_deref(), Some(&body[..]));
        let plain = r#"{"role":"assistant","content":null,"refusal":"No."}"#;
        assert!(matches!(
            without_reasoning(plain),
            std::borrow::Cow::Borrowed(_)
        ));
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
