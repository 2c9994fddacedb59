//! The one response body type: a whole buffer, or a stream of frames fed
//! by a task through a channel (server-sent events).
//!
//! A streamed body can carry an end hook, run once when the stream ends or
//! when hyper drops the body (the client went away), so the access line of
//! a streamed response reports its real latency and how it ended, not the
//! moment its headers went out. Dropping the body also closes the channel,
//! which is how the producing task learns that its client is gone and
//! cancels its upstream request.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::Response;
use serde::Serialize;
use tokio::sync::mpsc;

/// How a streamed body ended, for its end hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every frame the producer sent was handed to hyper.
    Complete,
    /// The body was dropped first: the client went away.
    ClientGone,
}

impl StreamEnd {
    /// A word for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Complete => "complete",
            StreamEnd::ClientGone => "client_gone",
        }
    }
}

type EndHook = Box<dyn FnOnce(StreamEnd) + Send>;

/// A response body: whole, or streamed.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<Bytes>,
        on_end: Option<EndHook>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("Body::Full")
                .field("len", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { .. } => f.write_str("Body::Stream"),
        }
    }
}

impl Body {
    /// A whole body.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Body {
        Body {
            kind: Kind::Full(None),
        }
    }

    /// A streamed body and the sender that feeds it. Each `Bytes` sent is
    /// one frame; the body ends when every sender is dropped. The channel
    /// holds `buffer` frames, so a slow client slows the producer down
    /// instead of growing memory.
    pub fn channel(buffer: usize) -> (mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        (
            tx,
            Body {
                kind: Kind::Stream { rx, on_end: None },
            },
        )
    }

    /// Whether this body is streamed.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }

    /// Runs `hook` once when a streamed body ends or is dropped; a whole
    /// body runs it at once (it has already ended, as far as the caller
    /// can tell).
    pub fn on_end(&mut self, hook: impl FnOnce(StreamEnd) + Send + 'static) {
        match &mut self.kind {
            Kind::Stream { on_end, .. } => *on_end = Some(Box::new(hook)),
            Kind::Full(_) => hook(StreamEnd::Complete),
        }
    }

    fn end(&mut self, how: StreamEnd) {
        if let Kind::Stream { on_end, .. } = &mut self.kind {
            if let Some(hook) = on_end.take() {
                hook(how);
            }
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.end(StreamEnd::ClientGone);
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { rx, .. } => match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(None) => {
                    this.end(StreamEnd::Complete);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

/// Serializes `value` to JSON bytes (serialization of our own types cannot
/// fail; a failure would be a bug and yields `{}`).
pub fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    if serde_json::to_writer(&mut out, value).is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
    out
}

/// A `200 application/json` response.
pub fn json<T: Serialize>(value: &T) -> Response<Body> {
    let mut resp = Response::new(Body::full(json_bytes(value)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `200 text/event-stream` response around a streamed body, with the
/// headers that keep proxies from buffering or caching it.
pub fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told otherwise.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_full_body_has_an_exact_length() {
        let body = Body::full(&b"hello"[..]);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_stream_reports_how_it_ended() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut body) = Body::channel(4);
        let s = Arc::clone(&seen);
        body.on_end(move |how| s.lock().unwrap().push(how));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "a");
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::Complete]);

        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut body) = Body::channel(4);
        let s = Arc::clone(&seen);
        body.on_end(move |how| s.lock().unwrap().push(how));
        drop(body);
        assert!(tx.is_closed(), "the producer learns the client is gone");
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::ClientGone]);
    }
}
