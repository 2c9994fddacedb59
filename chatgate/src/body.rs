//! The one response body type: a whole buffer, or a stream of frames
//! (server-sent events) produced by an async step function that hyper
//! itself drives.
//!
//! A streamed body is polled by the connection that writes it, with no task
//! or channel between: the next frame (and so the next upstream chunk) is
//! produced only once hyper has taken the previous one, and when the
//! client goes away hyper drops the body, which drops the step's state and
//! with it the upstream request.
//!
//! A streamed body can carry an end hook, run once when the stream ends or
//! when the body is dropped first (the client went away), so the access
//! line of a streamed response reports its real latency and how it ended,
//! not the moment its headers went out.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::Response;
use serde::Serialize;

/// The time a response's model call took, attached by the turn it
/// answers (for the gateway-overhead histogram).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub std::time::Duration);

/// The upstream and model a response's model call went to
/// (`upstream:model`), for the request's log line.
#[derive(Debug, Clone)]
pub struct UpstreamTarget(pub std::sync::Arc<str>);

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
        frames: Pin<Box<dyn Frames>>,
        on_end: Option<EndHook>,
    },
}

/// What a streamed body polls for its next frame.
trait Frames: Send {
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

/// Runs `step(state)` to get each frame and the state for the next one,
/// until it answers `None`: a stream written as one async function.
struct Unfold<S, F, Fut> {
    state: Option<S>,
    step: F,
    pending: Option<Pin<Box<Fut>>>,
}

// Nothing in it is ever pinned in place: the state and step are moved and
// called by value or `&mut`, and the future is boxed.
impl<S, F, Fut> Unpin for Unfold<S, F, Fut> {}

impl<S, F, Fut> Frames for Unfold<S, F, Fut>
where
    S: Send,
    F: FnMut(S) -> Fut + Send,
    Fut: Future<Output = Option<(Bytes, S)>> + Send,
{
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = Pin::into_inner(self);
        if this.pending.is_none() {
            let Some(state) = this.state.take() else {
                return Poll::Ready(None);
            };
            this.pending = Some(Box::pin((this.step)(state)));
        }
        let Some(fut) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(next) => {
                this.pending = None;
                Poll::Ready(next.map(|(frame, state)| {
                    this.state = Some(state);
                    frame
                }))
            }
        }
    }
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

    /// A streamed body: `step(state)` yields each frame with the state for
    /// the next, and `None` to end. It runs only when hyper asks for a
    /// frame, so a slow client slows the producer down instead of growing
    /// memory; dropping the body drops the state.
    pub fn unfold<S, F, Fut>(state: S, step: F) -> Body
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = Option<(Bytes, S)>> + Send + 'static,
    {
        Body {
            kind: Kind::Stream {
                frames: Box::pin(Unfold {
                    state: Some(state),
                    step,
                    pending: None,
                }),
                on_end: None,
            },
        }
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
            Kind::Stream { frames, .. } => match frames.as_mut().poll_next(cx) {
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

    fn counting(n: u32) -> Body {
        Body::unfold(0u32, move |i| async move {
            tokio::task::yield_now().await;
            (i < n).then(|| (Bytes::from(i.to_string()), i + 1))
        })
    }

    #[tokio::test]
    async fn a_stream_reports_how_it_ended() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut body = counting(3);
        let s = Arc::clone(&seen);
        body.on_end(move |how| s.lock().unwrap().push(how));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "012");
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::Complete]);

        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut body = counting(3);
        let s = Arc::clone(&seen);
        body.on_end(move |how| s.lock().unwrap().push(how));
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "0"
        );
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [StreamEnd::ClientGone]);
    }

    #[tokio::test]
    async fn dropping_a_stream_drops_its_state() {
        struct Flag(Arc<Mutex<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let dropped = Arc::new(Mutex::new(false));
        let mut body = Body::unfold(Flag(Arc::clone(&dropped)), |flag| async move {
            // Never ready after the first frame: a stalled upstream.
            if *flag.0.lock().unwrap() {
                return None;
            }
            std::future::pending::<()>().await;
            Some((Bytes::new(), flag))
        });
        let polled = tokio::time::timeout(std::time::Duration::from_millis(20), body.frame()).await;
        assert!(polled.is_err(), "the step is still waiting");
        assert!(!*dropped.lock().unwrap());
        drop(body);
        assert!(
            *dropped.lock().unwrap(),
            "the client going away cancels the step"
        );
    }
}
