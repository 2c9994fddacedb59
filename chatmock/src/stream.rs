//! Streaming answers: the scripts a test can give a stream
//! ([`StreamScript`], [`StreamFault`], [`StreamGate`]), the task that
//! produces the SSE events, and the response body that hands each event to
//! hyper as its own frame the moment it is produced.
//!
//! The body, not the producer, keeps the tally of how streams ended: it is
//! the body that hyper drops when the client goes away, and the body that
//! yields the last frame, so counting there cannot race with the client
//! seeing the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::{mpsc, Semaphore};

use crate::chat::{event, Answer, ChatRequest, Chunks, Scripted};

/// How long a stream stays open after its malformed event before it ends,
/// so a client sees the bad event on a live connection, not at its close.
const MALFORMED_LINGER: Duration = Duration::from_millis(50);

/// A scripted streaming reply (see [`crate::Reply::Stream`]).
///
/// To a request with `"stream": true` the mock sends a role chunk, one
/// chunk per piece, then a finish chunk, the usage chunk if asked for, and
/// `data: [DONE]`, unless `fault` ends it otherwise. To a request without
/// `stream` it answers plain JSON with the pieces joined; `delay`, `gate`
/// and `fault` then play no part.
#[derive(Debug, Clone, Default)]
pub struct StreamScript {
    /// The content pieces, one chunk each; empty means the echo reply, split
    /// into words.
    pub pieces: Vec<String>,
    /// How long to wait before each content chunk.
    pub delay: Duration,
    /// How the stream goes wrong, if it does.
    pub fault: Option<StreamFault>,
    /// A gate each content chunk must pass before it is sent.
    pub gate: Option<StreamGate>,
}

impl StreamScript {
    /// A script that streams exactly these pieces.
    pub fn pieces<I, S>(pieces: I) -> StreamScript
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StreamScript {
            pieces: pieces.into_iter().map(Into::into).collect(),
            ..StreamScript::default()
        }
    }

    /// This script, waiting `delay` before each content chunk.
    #[must_use]
    pub fn with_delay(self, delay: Duration) -> StreamScript {
        StreamScript { delay, ..self }
    }

    /// This script, going wrong as `fault` says.
    #[must_use]
    pub fn with_fault(self, fault: StreamFault) -> StreamScript {
        StreamScript {
            fault: Some(fault),
            ..self
        }
    }

    /// This script, holding each content chunk until `gate` lets it pass.
    #[must_use]
    pub fn with_gate(self, gate: StreamGate) -> StreamScript {
        StreamScript {
            gate: Some(gate),
            ..self
        }
    }
}

/// How a scripted stream goes wrong. Each fault strikes after N content
/// chunks (after all of them when there are fewer), so no finish chunk,
/// usage chunk or `[DONE]` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// Aborts the connection: no terminating chunk of the chunked body, so
    /// the client reads a transport error, not a clean end.
    DropAfter(usize),
    /// Sends `data: {not json`, keeps the connection open briefly, then
    /// ends the body cleanly.
    MalformedAfter(usize),
    /// Sends nothing more, ever, until the client goes away.
    StallAfter(usize),
    /// After the scripted pieces, sends the last one again and again,
    /// without pause or end, until the client goes away: an upstream whose
    /// reply never stops growing.
    Endless,
}

impl StreamFault {
    fn after(self) -> usize {
        match self {
            StreamFault::DropAfter(n)
            | StreamFault::MalformedAfter(n)
            | StreamFault::StallAfter(n) => n,
            StreamFault::Endless => usize::MAX,
        }
    }
}

/// A handle that holds back a gated stream's content chunks: each needs
/// one permit, and there are none until the test releases them. Clones
/// share the permits.
///
/// This is how a test proves that deltas reach the client while the
/// upstream is still producing: release one, see it arrive, release the
/// next.
#[derive(Debug, Clone)]
pub struct StreamGate {
    permits: Arc<Semaphore>,
}

impl Default for StreamGate {
    fn default() -> StreamGate {
        StreamGate::new()
    }
}

impl StreamGate {
    /// A closed gate: no chunk passes until [`StreamGate::release`] or
    /// [`StreamGate::open`].
    pub fn new() -> StreamGate {
        StreamGate {
            permits: Arc::new(Semaphore::new(0)),
        }
    }

    /// Lets `n` more content chunks through.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Lets every chunk through from now on.
    pub fn open(&self) {
        // A closed semaphore fails every acquire at once, which `pass` reads
        // as "go"; adding `MAX_PERMITS` instead could overflow and panic.
        self.permits.close();
    }

    async fn pass(&self) {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

/// How many streams ended which way; shared by the server and its bodies.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Streams whose client went away before the stream ended.
    pub(crate) disconnected: AtomicU64,
    /// Streams that reached `[DONE]` or their scripted end.
    pub(crate) completed: AtomicU64,
}

/// One item from the producer to the body.
#[derive(Debug)]
enum Item {
    /// An event, more to come.
    Event(Bytes),
    /// The last event (possibly empty): the stream is complete.
    Last(Bytes),
    /// Abort the connection: the stream's scripted end.
    Abort,
}

/// Everything the producer needs for one stream.
#[derive(Debug)]
pub(crate) struct Plan {
    chunks: Chunks,
    answer: Answer,
    latency: Duration,
    delay: Duration,
    fault: Option<StreamFault>,
    gate: Option<StreamGate>,
}

/// One event of a stream, in order.
enum Step {
    /// A choice's role chunk.
    Role(Bytes),
    /// A piece of a reply (text, reasoning, refusal, tool-call arguments):
    /// what delays, gates and faults count.
    Piece(Bytes),
    /// A choice's finish chunk.
    Finish(Bytes),
}

impl Plan {
    /// The plan for `script` (or, with `message`, that scripted assistant
    /// message) answering `request`, after `latency`.
    pub(crate) fn new(
        request: &ChatRequest,
        script: StreamScript,
        message: Option<serde_json::Value>,
        latency: Duration,
        request_no: u64,
    ) -> Plan {
        let scripted = match message {
            Some(m) => Scripted::Message(m),
            None => Scripted::Pieces(script.pieces),
        };
        Plan {
            chunks: Chunks::new(request),
            answer: request.answer(scripted, request_no),
            latency,
            delay: script.delay,
            fault: script.fault,
            gate: script.gate,
        }
    }

    /// Every event of the answer, in the order OpenAI sends them: per
    /// choice its role chunk, reasoning, content, refusal and tool-call
    /// pieces, then its finish chunk.
    fn steps(&self) -> Vec<Step> {
        let c = &self.chunks;
        let mut out = Vec::new();
        for (i, choice) in self.answer.choices.iter().enumerate() {
            out.push(Step::Role(c.role(i, choice)));
            out.extend(
                choice
                    .reasoning
                    .iter()
                    .map(|p| Step::Piece(c.reasoning(i, p))),
            );
            out.extend(choice.content.iter().map(|p| Step::Piece(c.content(i, p))));
            out.extend(choice.refusal.iter().map(|p| Step::Piece(c.refusal(i, p))));
            for (position, call) in choice.tool_calls.iter().enumerate() {
                for piece in 0..call.arguments.len().max(1) {
                    out.push(Step::Piece(c.tool_call(i, position, call, piece)));
                }
            }
            if let Some(call) = &choice.function_call {
                for piece in 0..call.arguments.len().max(1) {
                    out.push(Step::Piece(c.function_call(i, call, piece)));
                }
            }
            out.push(Step::Finish(c.finish(i, choice.finish_reason)));
        }
        out
    }

    /// Starts producing on its own task; the returned body yields the events.
    pub(crate) fn spawn(self, tally: Arc<Tally>) -> SseBody {
        // One slot: the producer runs at most one event ahead of the
        // client's connection, as a model does of its network.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(produce(self, tx));
        SseBody {
            rx,
            tally,
            finished: false,
            abort_now: false,
        }
    }
}

/// Sends the events of `plan`; returns early when the client goes away.
async fn produce(plan: Plan, tx: mpsc::Sender<Item>) -> Option<()> {
    let steps = plan.steps();
    let Plan {
        chunks,
        answer,
        latency,
        delay,
        fault,
        gate,
    } = plan;
    if !latency.is_zero() {
        unless_closed(&tx, tokio::time::sleep(latency)).await?;
    }
    let mut pieces = 0;
    for step in steps {
        let bytes = match step {
            Step::Role(bytes) => bytes,
            Step::Piece(bytes) => {
                if fault.is_some_and(|f| pieces == f.after()) {
                    break;
                }
                pieces += 1;
                if let Some(gate) = &gate {
                    unless_closed(&tx, gate.pass()).await?;
                }
                if !delay.is_zero() {
                    unless_closed(&tx, tokio::time::sleep(delay)).await?;
                }
                bytes
            }
            // A fault strikes before the first finish chunk.
            Step::Finish(_) if fault.is_some() => break,
            Step::Finish(bytes) => bytes,
        };
        send(&tx, Item::Event(bytes)).await?;
    }
    match fault {
        Some(StreamFault::DropAfter(_)) => send(&tx, Item::Abort).await,
        Some(StreamFault::MalformedAfter(_)) => {
            send(&tx, Item::Event(event("{not json"))).await?;
            unless_closed(&tx, tokio::time::sleep(MALFORMED_LINGER)).await?;
            send(&tx, Item::Last(Bytes::new())).await
        }
        Some(StreamFault::Endless) => {
            let last = answer.choices.first().and_then(|c| c.content.last());
            let piece = chunks.content(0, last.map_or("x", String::as_str));
            loop {
                send(&tx, Item::Event(piece.clone())).await?;
            }
        }
        Some(StreamFault::StallAfter(_)) => {
            // Holding `tx` keeps the body pending; returning once the body
            // is gone lets the task end with its client.
            tx.closed().await;
            None
        }
        None => {
            if let Some(usage) = chunks.usage(answer.usage) {
                send(&tx, Item::Event(usage)).await?;
            }
            send(&tx, Item::Last(event("[DONE]"))).await
        }
    }
}

async fn send(tx: &mpsc::Sender<Item>, item: Item) -> Option<()> {
    tx.send(item).await.ok()
}

/// Runs `wait` unless the body is dropped first, which is how the producer
/// notices a client that leaves while it delays, stalls or waits at a gate.
async fn unless_closed<F: Future>(tx: &mpsc::Sender<Item>, wait: F) -> Option<F::Output> {
    tokio::select! {
        out = wait => Some(out),
        () = tx.closed() => None,
    }
}

/// A streamed response body: each event from the producer is one frame.
#[derive(Debug)]
pub(crate) struct SseBody {
    rx: mpsc::Receiver<Item>,
    tally: Arc<Tally>,
    /// The stream reached its end (or its scripted abort).
    finished: bool,
    /// The next poll returns the abort error.
    abort_now: bool,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.abort_now {
            self.abort_now = false;
            return Poll::Ready(Some(Err(std::io::Error::other("scripted stream drop"))));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Item::Event(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Item::Last(bytes))) => {
                self.finish();
                if bytes.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
            }
            Poll::Ready(Some(Item::Abort)) => {
                self.finish();
                // hyper drops what it buffered but has not flushed when a body
                // fails, so pend once: it flushes the events before it polls
                // again and gets the error.
                self.abort_now = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            // The producer never ends without a last item or an abort unless
            // it panicked; end the body rather than hang the client.
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && !self.abort_now
    }
}

impl SseBody {
    fn finish(&mut self) {
        self.finished = true;
        self.tally.completed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if !self.finished {
            self.tally.disconnected.fetch_add(1, Ordering::Relaxed);
        }
    }
}
