//! A streamed reply being read, chunk by chunk, as its reader asks: the
//! first chunk within the call's deadline, each later one within the idle
//! timeout, decoded by the SSE parser.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::send::{scrub, timed_out};
use super::sse::{SseEvent, SseParser};
use super::UpstreamStats;
use crate::error::{Error, ErrorKind, Result};
use crate::llm::stream::EventSource;
use crate::llm::StreamEvent;

/// A streamed reply being read: polled by whoever reads the
/// [`CompletionStream`], so each chunk is read only when the previous one
/// has been taken, and dropping the stream drops the connection (the
/// upstream sees the request cancelled).
pub(super) struct SseSource {
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

impl SseSource {
    /// A reader of `resp`, whose first chunk is due by `first_by` and each
    /// later one within `idle`.
    pub(super) fn new(
        resp: reqwest::Response,
        parser: SseParser,
        first_by: Instant,
        idle: Duration,
        key: Option<String>,
        stats: Arc<UpstreamStats>,
    ) -> SseSource {
        SseSource {
            resp,
            parser,
            events: VecDeque::new(),
            first_by: Some(first_by),
            idle,
            key,
            ended: false,
            stats,
        }
    }
}

impl fmt::Debug for SseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseSource")
            .field("idle", &self.idle)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EventSource for SseSource {
    fn next(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Result<StreamEvent>>> + Send + '_>>
    {
        Box::pin(self.read())
    }

    fn relays_raw(&self) -> bool {
        self.parser.raw()
    }
}

impl SseSource {
    async fn read(&mut self) -> Option<Result<StreamEvent>> {
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
