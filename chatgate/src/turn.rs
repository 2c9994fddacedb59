//! The one place a turn is served: the content lines, the model call whole
//! or streamed, time to first token, tokens, the time spent upstream, and
//! `X-RateLimit-*`, for every API alike. Each API differs only in how it
//! reads its request (its handler) and how it shows the reply (its
//! [`Framing`]).
//!
//! A streamed reply is produced by the response body itself, polled by
//! hyper as it writes: each upstream piece is read only once the previous
//! frame has been taken, and a client that goes away drops the body, which
//! drops the upstream request (and a session's turn, storing nothing).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatcore::{
    ChatReply, Completion, CompletionStream, FunctionCallDelta, PreparedTurn, RawChunk, SessionId,
    StreamEvent, ToolCallDelta, TurnEvent, TurnStream, Usage,
};
use hyper::header::HeaderValue;
use hyper::Response;
use slog::error;

use crate::body::{event_stream, Body, UpstreamTarget, UpstreamTime};
use crate::error::ApiError;
use crate::framing::{Framing, Piece, Reply};
use crate::handlers::HandlerResult;
use crate::App;

/// Who a turn is served for, and under which model name its tokens count.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The gateway.
    pub app: &'a Arc<App>,
    /// The request's id.
    pub rid: &'a str,
    /// The model name the metrics count tokens under.
    pub model: &'a str,
}

/// Serves a session's turn with the whole reply.
///
/// # Errors
/// The model's and storage's errors; nothing is stored then.
pub async fn whole<F: Framing>(
    at: Served<'_>,
    turn: PreparedTurn<'_>,
    mut framing: F,
) -> HandlerResult {
    at.app
        .content_log
        .user(turn.session_id(), &turn.content(), at.rid);
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let reply = turn.complete().await?;
    if let Some(t) = &reply.target {
        framing.answered_by(t);
    }
    let shown = Reply::from(&reply);
    answered(at, &shown);
    let mut resp = framing.whole(&shown);
    resp.extensions_mut().insert(UpstreamTime(reply.upstream));
    if let Some(t) = &reply.target {
        resp.extensions_mut().insert(UpstreamTarget(Arc::clone(t)));
    }
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}

/// Serves a session's turn streamed: 200 once the upstream has accepted
/// the request (failures before that are ordinary errors), then the
/// framing's frames as the pieces arrive, closed once the turn is stored.
///
/// # Errors
/// The model's errors before its first piece; nothing is stored then.
pub async fn streamed<F: Framing>(
    at: Served<'_>,
    turn: PreparedTurn<'static>,
    mut framing: F,
) -> HandlerResult {
    at.app
        .content_log
        .user(turn.session_id(), &turn.content(), at.rid);
    let (limit, remaining) = (turn.limit(), turn.remaining());
    let stream = turn.stream().await?;
    if let Some(t) = stream.target() {
        framing.answered_by(t);
    }
    let mut resp = stream_response(at, Source::Turn(Box::new(stream)), framing);
    rate_headers(&mut resp, limit, remaining);
    Ok(resp)
}

/// Answers a stateless call whose model call took `upstream` and gave
/// `completion`; `user` is the request's user text, for the content line.
pub fn stateless_whole<F: Framing>(
    at: Served<'_>,
    user: &str,
    completion: &Completion,
    upstream: Duration,
    mut framing: F,
) -> Response<Body> {
    at.app.content_log.user("-", user, at.rid);
    if let Some(t) = &completion.target {
        framing.answered_by(t);
    }
    let shown = Reply::from(completion);
    answered(at, &shown);
    let mut resp = framing.whole(&shown);
    resp.extensions_mut().insert(UpstreamTime(upstream));
    if let Some(t) = &completion.target {
        resp.extensions_mut().insert(UpstreamTarget(Arc::clone(t)));
    }
    resp
}

/// Answers a stateless call whose model accepted a streamed request.
pub fn stateless_stream<F: Framing>(
    at: Served<'_>,
    user: &str,
    stream: CompletionStream,
    mut framing: F,
) -> Response<Body> {
    at.app.content_log.user("-", user, at.rid);
    if let Some(t) = stream.target() {
        framing.answered_by(t);
    }
    stream_response(at, Source::Stateless(stream, 0), framing)
}

/// The reply's content line and its tokens.
fn answered(at: Served<'_>, reply: &Reply<'_>) {
    match reply.session_id {
        Some(id) => at.app.content_log.reply(id, reply.content, at.rid),
        None => at.app.content_log.reply("-", reply.content, at.rid),
    }
    at.app.metrics.tokens(at.model, reply.usage);
}

/// `X-RateLimit-Limit` and `X-RateLimit-Remaining`.
pub fn rate_headers(resp: &mut Response<Body>, limit: u32, remaining: u32) {
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

/// Where a stream's pieces come from: a session's turn (stored at its
/// end, and bounded by the turn as it puts the reply together) or the
/// model directly, with the bytes of reply relayed so far: a stateless
/// reply is held nowhere, but is cut at the same bound as a whole one.
enum Source {
    Turn(Box<TurnStream<'static>>),
    Stateless(CompletionStream, usize),
}

enum Item {
    Text(String),
    ToolCall(ToolCallDelta),
    FunctionCall(FunctionCallDelta),
    Refusal(String),
    Raw(RawChunk),
    Usage(Usage),
    Finish(String),
    Stored(ChatReply),
}

impl Item {
    /// What this piece adds to the reply: its text, and for a call piece
    /// its bookkeeping too, so pieces that carry nothing still count.
    fn reply_bytes(&self) -> usize {
        const PIECE_BYTES: usize = 64;
        match self {
            Item::Text(t) | Item::Refusal(t) => t.len(),
            Item::ToolCall(d) => {
                PIECE_BYTES
                    + d.arguments.len()
                    + d.name.as_ref().map_or(0, String::len)
                    + d.id.as_ref().map_or(0, String::len)
            }
            Item::FunctionCall(d) => {
                PIECE_BYTES + d.arguments.len() + d.name.as_ref().map_or(0, String::len)
            }
            Item::Raw(_) | Item::Usage(_) | Item::Finish(_) | Item::Stored(_) => 0,
        }
    }

    /// What this item relays as sent: an upstream chunk's bytes.
    fn raw_bytes(&self) -> usize {
        match self {
            Item::Raw(c) => c.data.len(),
            _ => 0,
        }
    }
}

impl Source {
    fn target(&self) -> Option<&Arc<str>> {
        match self {
            Source::Turn(t) => t.target(),
            Source::Stateless(s, _) => s.target(),
        }
    }

    fn relays_raw(&self) -> bool {
        match self {
            Source::Turn(t) => t.relays_raw(),
            Source::Stateless(s, _) => s.relays_raw(),
        }
    }

    async fn next(&mut self) -> Option<chatcore::Result<Item>> {
        loop {
            let item = match self {
                Source::Turn(t) => match t.next().await? {
                    Err(e) => return Some(Err(e)),
                    Ok(TurnEvent::Delta(t)) => Item::Text(t),
                    Ok(TurnEvent::ToolCall(d)) => Item::ToolCall(d),
                    Ok(TurnEvent::FunctionCall(d)) => Item::FunctionCall(d),
                    Ok(TurnEvent::Refusal(r)) => Item::Refusal(r),
                    Ok(TurnEvent::Raw(c)) => Item::Raw(c),
                    Ok(TurnEvent::Done(reply)) => Item::Stored(reply),
                    // A kind of event this gateway does not show.
                    Ok(_) => continue,
                },
                Source::Stateless(s, relayed) => {
                    let item = match s.next().await? {
                        Err(e) => return Some(Err(e)),
                        Ok(StreamEvent::Delta(t)) => Item::Text(t),
                        Ok(StreamEvent::ToolCall(d)) => Item::ToolCall(d),
                        Ok(StreamEvent::FunctionCall(d)) => Item::FunctionCall(d),
                        Ok(StreamEvent::Refusal(r)) => Item::Refusal(r),
                        Ok(StreamEvent::Raw(c)) => Item::Raw(c),
                        Ok(StreamEvent::Usage(u)) => Item::Usage(u),
                        Ok(StreamEvent::Finish(r)) => Item::Finish(r),
                        Ok(_) => continue,
                    };
                    // What goes out: the upstream's own chunks when they are
                    // relayed as sent, else the pieces.
                    *relayed += if s.relays_raw() {
                        item.raw_bytes()
                    } else {
                        item.reply_bytes()
                    };
                    if *relayed > s.reply_limit() {
                        return Some(Err(chatcore::Error::new(
                            chatcore::ErrorKind::UpstreamFailed,
                            format!("Upstream reply is larger than {} bytes", s.reply_limit()),
                        )));
                    }
                    item
                }
            };
            return Some(Ok(item));
        }
    }
}

/// A streamed reply while hyper writes it.
struct Live<F> {
    app: Arc<App>,
    source: Source,
    framing: F,
    rid: String,
    model: String,
    /// Frames to send before reading the source again.
    queued: VecDeque<Bytes>,
    /// The start of a stateless reply's text, as much as the content line
    /// shows, and its whole length; a session's reply comes whole with
    /// its `Done`.
    text: String,
    text_len: usize,
    usage: Option<Usage>,
    finish: Option<String>,
    /// When the request started, until its first piece arrives.
    waiting_since: Option<Instant>,
    over: bool,
    /// The upstream and model answering, for its cached-token count.
    target: Option<Arc<str>>,
}

impl<F: Framing> Live<F> {
    /// The first piece of the reply has come: time to first token.
    fn first_piece(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.app.metrics.first_token(since.elapsed());
        }
    }

    /// Keeps the start of a stateless reply's text for its content line:
    /// no further than the line shows, so a long reply costs no memory.
    fn collect(&mut self, piece: &str) {
        let log = &self.app.content_log;
        if log.enabled() {
            self.text_len += piece.len();
            if self.text.len() < log.max_bytes() {
                self.text.push_str(piece);
            }
        }
    }

    /// The frames that end the stream well, after its content line and
    /// tokens.
    fn close(&mut self, reply: &Reply<'_>) {
        self.over = true;
        self.app.metrics.tokens(&self.model, reply.usage);
        if let (Some(t), Some(u)) = (&self.target, reply.usage) {
            self.app.router.count_cached(t, u.cached_tokens);
        }
        let log = &self.app.content_log;
        match reply.session_id {
            Some(id) => log.reply(id, reply.content, &self.rid),
            None => log.reply_collected("-", &self.text, self.text_len, &self.rid),
        }
        self.queued.extend(self.framing.closing(reply));
    }

    /// The frame that ends the stream with `e` (logged here, once).
    fn fail(&mut self, e: chatcore::Error, session: Option<SessionId>) -> Bytes {
        self.over = true;
        let e = ApiError::from(e);
        error!(self.app.log, "stream failed";
            "request_id" => &self.rid,
            "session_id" => session.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            "status" => e.status.as_u16(),
            "error" => e.cause.as_deref().unwrap_or("-"));
        self.framing.failure(&e)
    }
}

/// Answers 200 with a body that hyper drives: the framing's opening frame,
/// a frame per piece as it arrives, and its closing frames; a failure
/// after the first byte ends the stream with the framing's failure frame
/// instead, never a clean end.
fn stream_response<F: Framing>(at: Served<'_>, source: Source, mut framing: F) -> Response<Body> {
    let opening = framing.opening(source.relays_raw());
    let target = source.target().cloned();
    let live = Live {
        app: Arc::clone(at.app),
        source,
        framing,
        rid: at.rid.to_owned(),
        model: at.model.to_owned(),
        queued: opening.into_iter().collect(),
        text: String::new(),
        text_len: 0,
        usage: None,
        finish: None,
        waiting_since: Some(Instant::now()),
        over: false,
        target: target.clone(),
    };
    let body = Body::unfold(live, |mut live| async move {
        loop {
            if let Some(frame) = live.queued.pop_front() {
                return Some((frame, live));
            }
            if live.over {
                return None;
            }
            let frame = match live.source.next().await {
                Some(Ok(Item::Text(text))) => {
                    live.first_piece();
                    live.collect(&text);
                    live.framing.piece(Piece::Text(&text))
                }
                Some(Ok(Item::Refusal(text))) => {
                    live.first_piece();
                    live.collect(&text);
                    live.framing.piece(Piece::Refusal(&text))
                }
                Some(Ok(Item::ToolCall(call))) => {
                    live.first_piece();
                    live.framing.piece(Piece::ToolCall(&call))
                }
                Some(Ok(Item::FunctionCall(call))) => {
                    live.first_piece();
                    live.framing.piece(Piece::FunctionCall(&call))
                }
                Some(Ok(Item::Raw(chunk))) => live.framing.piece(Piece::Raw(&chunk)),
                Some(Ok(Item::Usage(u))) => {
                    live.usage = Some(u);
                    None
                }
                Some(Ok(Item::Finish(r))) => {
                    live.finish = Some(r);
                    None
                }
                Some(Ok(Item::Stored(reply))) => {
                    live.close(&Reply::from(&reply));
                    None
                }
                Some(Err(e)) => {
                    let session = match &live.source {
                        Source::Turn(t) => Some(t.session_id()),
                        Source::Stateless(..) => None,
                    };
                    Some(live.fail(e, session))
                }
                None => {
                    // A stateless stream's end (a session's ends with
                    // `Stored`).
                    let finish = live.finish.take();
                    let reply = Reply {
                        session_id: None,
                        content: "",
                        wire: None,
                        usage: live.usage,
                        finish_reason: finish.as_deref(),
                        raw: None,
                    };
                    live.close(&reply);
                    None
                }
            };
            if let Some(frame) = frame {
                return Some((frame, live));
            }
        }
    });
    let mut resp = event_stream(body);
    if let Some(t) = target {
        resp.extensions_mut().insert(UpstreamTarget(t));
    }
    resp
}
