//! Streaming in chatcore against `chatmock` on loopback: the OpenAI
//! adapter's `stream()` (events in order, usage asked for, each piece
//! handed over as it arrives, failures and the idle timeout as errors,
//! dropping the stream cancels the request) and a facade turn streamed
//! with `ChatCore::prepare(…).stream()` (stored only when it completes).

use std::time::{Duration, Instant};

use chatcore::{
    ChatCore, ChatModel, ChatOptions, ChatRequest, CompletionStream, ErrorKind, History,
    MemoryStore, OpenAiChat, OpenAiConfig, Role, SessionId, StreamEvent, TurnEvent, Usage,
};
use chatmock::{MockOpenAi, Reply, StreamFault, StreamGate, StreamScript};
use serde_json::json;

use crate::support::{assistant, new_session, pairs, user, wait_until};

/// Guards every wait on the network against a hang; never a speed test.
const GUARD: Duration = Duration::from_secs(15);

fn config(mock: &MockOpenAi) -> OpenAiConfig {
    OpenAiConfig {
        base_url: mock.base_url(),
        model: "test-model".into(),
        timeout: Duration::from_secs(5),
        stream_idle_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        max_retries: 2,
        backoff: Duration::from_millis(5),
        ..OpenAiConfig::default()
    }
}

fn adapter_with(mock: &MockOpenAi, edit: impl FnOnce(&mut OpenAiConfig)) -> OpenAiChat {
    let mut c = config(mock);
    edit(&mut c);
    OpenAiChat::new(c).unwrap()
}

fn ask(user: &str) -> ChatRequest<'_> {
    ChatRequest::new(None, History::empty(), user)
}

/// The next event of `stream`, bounded by [`GUARD`].
async fn next(stream: &mut CompletionStream) -> Option<chatcore::Result<StreamEvent>> {
    tokio::time::timeout(GUARD, stream.next())
        .await
        .expect("no stream event within the guard")
}

/// Every remaining event, up to and including the first error.
async fn drain(stream: &mut CompletionStream) -> Vec<chatcore::Result<StreamEvent>> {
    let mut out = Vec::new();
    while let Some(e) = next(stream).await {
        let failed = e.is_err();
        out.push(e);
        if failed {
            break;
        }
    }
    out
}

fn delta(s: &str) -> StreamEvent {
    StreamEvent::Delta(s.to_owned())
}

/// The mock's usage rule: a token per four bytes.
fn tokens(text: &str) -> u32 {
    (text.len() / 4) as u32
}

/// Polls `check` until it holds, for at most [`GUARD`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    wait_until(GUARD, what, || std::future::ready(check())).await;
}

#[tokio::test]
async fn stream_yields_the_pieces_in_order_then_finish_and_usage() {
    let mock = MockOpenAi::start().await;
    let pieces = ["Hel", "lo, ", "world"];
    mock.push(StreamScript::pieces(pieces).into());
    let model = adapter_with(&mock, |_| {});
    let mut stream = model.stream(ask("hi there")).await.unwrap();
    let events: Vec<StreamEvent> = drain(&mut stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        events,
        [
            delta("Hel"),
            delta("lo, "),
            delta("world"),
            StreamEvent::Finish("stop".into()),
            StreamEvent::Usage(Usage {
                prompt_tokens: tokens("hi there"),
                completion_tokens: tokens("Hello, world"),
                cached_tokens: 0,
            }),
        ]
    );
    assert!(next(&mut stream).await.is_none(), "the end stays the end");
    assert_eq!(mock.streams_completed(), 1);

    let rec = mock.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert_eq!(rec[0].body["stream"], json!(true));
    assert_eq!(
        rec[0].body["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(rec[0].body["model"], "test-model");
    assert_eq!(
        rec[0].body["messages"],
        json!([{"role": "user", "content": "hi there"}])
    );
}

#[tokio::test]
async fn a_cut_reply_finishes_with_length_and_options_are_forwarded() {
    let mock = MockOpenAi::start().await;
    let model = adapter_with(&mock, |_| {});
    let options = ChatOptions {
        model: Some("other-model".into()),
        temperature: Some(0.5),
        max_tokens: Some(2),
        stop: vec!["END".into()],
        ..ChatOptions::default()
    };
    let request = ChatRequest {
        options: &options,
        ..ask("a b c d")
    };
    let completion = model
        .stream(request)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(completion.content, "Echo: a ");
    assert_eq!(completion.finish_reason.as_deref(), Some("length"));
    let body = &mock.recorded()[0].body;
    assert_eq!(body["model"], "other-model");
    assert_eq!(body["temperature"], json!(0.5));
    assert_eq!(body["max_tokens"], json!(2));
    assert_eq!(body["stop"], json!(["END"]));
}

#[tokio::test]
async fn each_piece_is_handed_over_before_the_upstream_sends_the_next() {
    let mock = MockOpenAi::start().await;
    let gate = StreamGate::new();
    let pieces = ["one ", "two ", "three"];
    mock.push(StreamScript::pieces(pieces).with_gate(gate.clone()).into());
    let model = adapter_with(&mock, |_| {});
    let mut stream = model.stream(ask("count")).await.unwrap();
    for piece in pieces {
        // The upstream sends piece k only now that piece k - 1 was read.
        gate.release(1);
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), delta(piece));
    }
    let rest: Vec<StreamEvent> = drain(&mut stream)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest.len(), 2, "finish and usage: {rest:?}");
}

#[tokio::test]
async fn a_dropped_connection_mid_stream_is_upstream_failed_after_the_first_pieces() {
    let mock = MockOpenAi::start().await;
    mock.push(
        StreamScript::pieces(["a ", "b ", "c ", "d"])
            .with_fault(StreamFault::DropAfter(2))
            .into(),
    );
    let model = adapter_with(&mock, |_| {});
    let mut stream = model.stream(ask("x")).await.unwrap();
    let events = drain(&mut stream).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].as_ref().unwrap(), &delta("a "));
    assert_eq!(events[1].as_ref().unwrap(), &delta("b "));
    let err = events[2].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed, "{err}");
    assert!(
        next(&mut stream).await.is_none(),
        "an error ends the stream"
    );
    assert_eq!(mock.request_count(), 1, "a stream is not retried mid-way");
    // `collect` reports the same failure.
    mock.push(
        StreamScript::pieces(["a ", "b"])
            .with_fault(StreamFault::DropAfter(1))
            .into(),
    );
    let err = model
        .stream(ask("x"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
}

#[tokio::test]
async fn a_malformed_event_mid_stream_is_upstream_failed() {
    let mock = MockOpenAi::start().await;
    mock.push(
        StreamScript::pieces(["good ", "bad"])
            .with_fault(StreamFault::MalformedAfter(1))
            .into(),
    );
    let model = adapter_with(&mock, |_| {});
    let mut stream = model.stream(ask("x")).await.unwrap();
    let events = drain(&mut stream).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].as_ref().unwrap(), &delta("good "));
    assert_eq!(
        events[1].as_ref().unwrap_err().kind(),
        ErrorKind::UpstreamFailed
    );
}

#[tokio::test]
async fn a_stall_longer_than_the_idle_timeout_is_upstream_timeout() {
    let mock = MockOpenAi::start().await;
    mock.push(
        StreamScript::pieces(["first ", "never"])
            .with_fault(StreamFault::StallAfter(1))
            .into(),
    );
    let model = adapter_with(&mock, |c| {
        c.stream_idle_timeout = Duration::from_millis(200)
    });
    let mut stream = model.stream(ask("x")).await.unwrap();
    let events = drain(&mut stream).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].as_ref().unwrap(), &delta("first "));
    assert_eq!(
        events[1].as_ref().unwrap_err().kind(),
        ErrorKind::UpstreamTimeout
    );
    drop(stream);
    eventually("the stalled request to be dropped", || {
        mock.disconnects() == 1
    })
    .await;
}

#[tokio::test]
async fn timeout_bounds_the_first_byte_but_not_a_flowing_stream() {
    let mock = MockOpenAi::start().await;
    let model = adapter_with(&mock, |c| c.timeout = Duration::from_secs(1));

    // No response head within the deadline: `stream()` itself fails.
    mock.push(Reply::Delay(
        Duration::from_secs(5),
        Box::new(StreamScript::pieces(["late"]).into()),
    ));
    let err = tokio::time::timeout(GUARD, model.stream(ask("x")))
        .await
        .expect("stream() must give up at the deadline")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamTimeout);

    // A head at once but no chunk within the deadline: the first read fails.
    mock.set_latency(Duration::from_secs(30));
    let mut stream = model.stream(ask("x")).await.unwrap();
    let err = next(&mut stream).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamTimeout);
    drop(stream);
    mock.set_latency(Duration::ZERO);

    // Chunks every 100 ms for two seconds: twice the deadline, never a gap
    // near it (a slow machine can delay one by a good part of a second).
    // It completes.
    let pieces: Vec<String> = (0..20).map(|i| format!("p{i} ")).collect();
    mock.push(
        StreamScript::pieces(pieces.clone())
            .with_delay(Duration::from_millis(100))
            .into(),
    );
    let started = Instant::now();
    let completion = model
        .stream(ask("x"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(started.elapsed() > Duration::from_secs(1));
    assert_eq!(completion.content, pieces.concat());
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn dropping_the_stream_mid_way_cancels_the_upstream_request() {
    let mock = MockOpenAi::start().await;
    let gate = StreamGate::new();
    mock.push(
        StreamScript::pieces(["only ", "the ", "start"])
            .with_gate(gate.clone())
            .into(),
    );
    let model = adapter_with(&mock, |_| {});
    let mut stream = model.stream(ask("x")).await.unwrap();
    gate.release(1);
    assert_eq!(next(&mut stream).await.unwrap().unwrap(), delta("only "));
    assert_eq!(mock.disconnects(), 0);
    drop(stream);
    eventually("the mock to see the client leave", || {
        mock.disconnects() == 1
    })
    .await;
    assert_eq!(mock.streams_completed(), 0);
    // The adapter is still usable.
    let completion = model
        .stream(ask("again"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(completion.content, "Echo: again");
}

/// A facade over a memory store and the adapter, with a quota of `per_minute`.
fn core(mock: &MockOpenAi, per_minute: u32) -> ChatCore {
    ChatCore::builder()
        .store(MemoryStore::new())
        .model(adapter_with(mock, |c| {
            c.stream_idle_timeout = Duration::from_millis(300)
        }))
        .messages_per_minute(per_minute)
        .build()
        .unwrap()
}

async fn stored(core: &ChatCore, id: SessionId) -> Vec<(Role, String)> {
    pairs(&core.anyone().messages(id).await.unwrap())
}

#[tokio::test]
async fn a_streamed_turn_is_stored_only_when_the_stream_completes() {
    let mock = MockOpenAi::start().await;
    let core = core(&mock, 5);
    let id = new_session(&core).await;
    let gate = StreamGate::new();
    mock.push(
        StreamScript::pieces(["Fine, ", "thanks."])
            .with_gate(gate.clone())
            .into(),
    );
    let turn = core
        .anyone()
        .prepare(id, "How are you?", ChatOptions::default())
        .await
        .unwrap();
    assert_eq!((turn.limit(), turn.remaining()), (5, 4));
    let mut turn = turn.stream().await.unwrap();
    gate.release(1);
    let first = tokio::time::timeout(GUARD, turn.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap(), TurnEvent::Delta("Fine, ".into()));
    assert!(stored(&core, id).await.is_empty(), "stored mid-stream");

    gate.open();
    let second = tokio::time::timeout(GUARD, turn.next()).await.unwrap();
    assert_eq!(second.unwrap().unwrap(), TurnEvent::Delta("thanks.".into()));
    let done = tokio::time::timeout(GUARD, turn.next()).await.unwrap();
    let usage = Usage {
        prompt_tokens: tokens("How are you?"),
        completion_tokens: tokens("Fine, thanks."),
        cached_tokens: 0,
    };
    match done.unwrap().unwrap() {
        TurnEvent::Done(reply) => {
            assert_eq!(reply.session_id, id);
            assert_eq!(reply.content, "Fine, thanks.");
            assert_eq!(reply.usage, Some(usage));
            assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
            assert_eq!((reply.limit, reply.remaining), (5, 4));
        }
        other => panic!("expected Done, got {other:?}"),
    }
    assert!(turn.next().await.is_none(), "Done is the last item");
    // Stored by the time Done was handed over.
    assert_eq!(
        stored(&core, id).await,
        [user("How are you?"), assistant("Fine, thanks.")]
    );
    assert_eq!(core.anyone().usage(id).await.unwrap(), usage);

    // The next turn, whole, sees the streamed one in its history.
    let reply = core.anyone().chat(id, "Good.").await.unwrap();
    assert_eq!(reply.content, "Echo: Good.");
    assert_eq!(
        mock.recorded().last().unwrap().body["messages"],
        json!([
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Fine, thanks."},
            {"role": "user", "content": "Good."},
        ])
    );
    let mut total = usage;
    total.add(reply.usage.unwrap());
    assert_eq!(core.anyone().usage(id).await.unwrap(), total);
}

#[tokio::test]
async fn a_streamed_turn_that_fails_stores_nothing_and_keeps_its_token_spent() {
    let mock = MockOpenAi::start().await;
    let core = core(&mock, 5);
    let id = new_session(&core).await;
    for fault in [StreamFault::DropAfter(1), StreamFault::StallAfter(1)] {
        mock.push(
            StreamScript::pieces(["part ", "rest"])
                .with_fault(fault)
                .into(),
        );
        let mut turn = core
            .anyone()
            .prepare(id, "try", ChatOptions::default())
            .await
            .unwrap()
            .stream()
            .await
            .unwrap();
        let first = tokio::time::timeout(GUARD, turn.next()).await.unwrap();
        assert_eq!(first.unwrap().unwrap(), TurnEvent::Delta("part ".into()));
        let err = tokio::time::timeout(GUARD, turn.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        let expected = match fault {
            StreamFault::StallAfter(_) => ErrorKind::UpstreamTimeout,
            _ => ErrorKind::UpstreamFailed,
        };
        assert_eq!(err.kind(), expected, "{fault:?}: {err}");
        assert!(turn.next().await.is_none(), "an error ends the turn");
    }
    assert!(stored(&core, id).await.is_empty());
    assert_eq!(core.anyone().usage(id).await.unwrap(), Usage::default());
    // Both failed turns used a token; the session is free for the next.
    let reply = core.anyone().chat(id, "works?").await.unwrap();
    assert_eq!(reply.remaining, 2);
    assert_eq!(
        stored(&core, id).await,
        [user("works?"), assistant("Echo: works?")]
    );
}

#[tokio::test]
async fn dropping_a_streamed_turn_cancels_the_upstream_and_stores_nothing() {
    let mock = MockOpenAi::start().await;
    let core = core(&mock, 5);
    let id = new_session(&core).await;
    let gate = StreamGate::new();
    mock.push(
        StreamScript::pieces(["abandoned ", "reply"])
            .with_gate(gate.clone())
            .into(),
    );
    let mut turn = core
        .anyone()
        .prepare(id, "start", ChatOptions::default())
        .await
        .unwrap()
        .stream()
        .await
        .unwrap();
    gate.release(1);
    let first = tokio::time::timeout(GUARD, turn.next()).await.unwrap();
    assert_eq!(
        first.unwrap().unwrap(),
        TurnEvent::Delta("abandoned ".into())
    );
    drop(turn);
    eventually("the upstream request to be cancelled", || {
        mock.disconnects() == 1
    })
    .await;
    assert!(stored(&core, id).await.is_empty());
    // The session's queue was released: the next turn runs at once, with
    // no trace of the abandoned one in its history.
    let reply = tokio::time::timeout(GUARD, core.anyone().chat(id, "again"))
        .await
        .expect("the dropped turn still holds the session")
        .unwrap();
    assert_eq!(reply.remaining, 3, "the dropped turn's token stays spent");
    assert_eq!(
        mock.recorded().last().unwrap().body["messages"],
        json!([{"role": "user", "content": "again"}])
    );
}
