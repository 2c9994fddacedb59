//! Sending one request: the retry loop (connection errors, 429 and 5xx
//! retried with exponential backoff and jitter, honouring `Retry-After`,
//! all inside the call's deadline), how each answer is classified into
//! chatcore's error kinds (an upstream refusal of the request itself kept
//! with its body), and reading a whole reply within its bound. No error
//! carries the API key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::time::Instant;

use super::OpenAiChat;
use crate::error::{Error, ErrorKind, Result};

impl OpenAiChat {
    /// Sends `body` until a non-retryable outcome, `retries` more attempts
    /// or the deadline ends it; returns the successful response.
    pub(super) async fn send(
        &self,
        body: Vec<u8>,
        deadline: Instant,
        retries: u32,
    ) -> Result<reqwest::Response> {
        // `Bytes` clones are reference-counted: a retry does not copy the body.
        let body = bytes::Bytes::from(body);
        let mut attempt: u32 = 0;
        loop {
            let sent = tokio::time::timeout_at(
                deadline,
                self.client.post(self.url.clone()).body(body.clone()).send(),
            )
            .await;
            let outcome = match sent {
                // Before the upstream's first byte: another may answer.
                Err(_) => return Err(timed_out().with_transient()),
                // Classifying may read an error body, which a stalled
                // upstream could trickle: the same deadline bounds it, and
                // a timeout then is not before the first byte.
                Ok(Ok(resp)) => match tokio::time::timeout_at(deadline, classify(resp)).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(timed_out()),
                },
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
                Attempt::Retry(error, hint) => {
                    // A 5xx's Retry-After counts as a 429's does: the
                    // upstream said when to come back.
                    let error = match hint {
                        Some(h) if error.retry_after().is_none() => error.with_retry_after(h),
                        _ => error,
                    };
                    (error.with_transient(), hint)
                }
            };
            if attempt >= retries {
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
}

pub(super) fn timed_out() -> Error {
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
pub(super) fn scrub(e: reqwest::Error, key: Option<&str>) -> Error {
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

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::UpstreamFailed,
        format!("Upstream reply is larger than {limit} bytes"),
    )
}

/// The whole body of `resp`, refused past `limit` bytes (at once when its
/// `Content-Length` says so).
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    key: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(too_large(limit));
    }
    let mut out = Vec::with_capacity(declared as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(too_large(limit));
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
}
