//! docs/api.md, streaming: on `POST /chat/`, read event by event over a real
//! socket. Deltas are forwarded as the upstream produces them (a gated
//! upstream proves it: each chunk is let through only once the previous
//! delta has reached the client), `done` comes only once the turn is
//! stored, failures mid-stream are an `error` event that stores nothing,
//! a client that leaves cancels the upstream request, the idle timeout
//! cuts a stalled stream but no total deadline cuts a flowing one, and
//! usage is summed per session.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use chatmock::{Reply, StreamFault, StreamGate, StreamScript};
use serde_json::{json, Value};

use crate::support::*;

/// A `rate_limit.messages_per_minute` value.
fn per_minute(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("nonzero")
}

/// A `/chat/` body; `stream` is left out when `None`.
fn chat_body(id: &str, content: &str, stream: Option<bool>) -> String {
    let mut body = json!({"session_id": id, "role": "user", "content": content});
    if let Some(s) = stream {
        body["stream"] = json!(s);
    }
    body.to_string()
}

/// Opens a `/chat/` stream and asserts its head: 200, `text/event-stream`,
/// the rate-limit headers.
async fn stream_chat(gw: &Gateway, id: &str, content: &str) -> EventStream {
    let s = open_stream(gw.addr, "/chat/", &[], &chat_body(id, content, Some(true))).await;
    assert_stream_head(&s);
    s
}

#[track_caller]
fn assert_stream_head(s: &EventStream) {
    assert_eq!(s.status, 200, "a stream answers 200");
    let ct = s.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    assert!(s.header("x-ratelimit-limit").is_some(), "{:?}", s.headers);
    assert!(
        s.header("x-ratelimit-remaining").is_some(),
        "{:?}",
        s.headers
    );
}

/// Asserts `e` is `event: delta` carrying exactly `piece`.
#[track_caller]
fn assert_delta(e: &SseEvent, piece: &str) {
    assert!(e.is("delta"), "expected a delta, got {e:?}");
    assert_eq!(e.json(), json!({ "content": piece }));
}

/// Asserts `e` is `event: error` with exactly `detail` (a non-empty
/// sentence) and `status`.
#[track_caller]
fn assert_error_event(e: &SseEvent, status: u16) {
    assert!(e.is("error"), "expected an error event, got {e:?}");
    let v = e.json();
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 2, "error event is {{detail, status}}: {v}");
    assert_eq!(v["status"], status, "{v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(!detail.is_empty(), "{v}");
}

/// The mock's usage rule: a token per four bytes.
fn tokens(text: &str) -> u64 {
    (text.len() / 4) as u64
}

async fn usage_of(gw: &Gateway, id: &str) -> Value {
    let r = get(gw.addr, &format!("/session/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["usage"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_reach_the_client_before_the_upstream_sends_the_next_piece() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let pieces = ["Once ", "upon ", "a ", "time."];
    let gate = StreamGate::new();
    gw.mock
        .push(StreamScript::pieces(pieces).with_gate(gate.clone()).into());

    let mut s = stream_chat(&gw, &id, "Tell me a story").await;
    assert_eq!(s.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(s.header("x-ratelimit-remaining"), Some("4"));
    // The head is out, but the upstream has not sent a piece: no delta.
    assert!(
        s.quiet_for(Duration::from_millis(200)).await,
        "a delta arrived before the upstream sent one"
    );
    for (k, piece) in pieces.iter().enumerate() {
        // Piece k is let out of the upstream only now that delta k - 1
        // has been read by the client: a gateway that buffers hangs here.
        gate.release(1);
        assert_delta(&s.expect_event().await, piece);
        if k == 1 {
            assert!(
                messages(gw.addr, &id).await.is_empty(),
                "a turn in flight is not stored"
            );
        }
    }
    let done = s.expect_event().await;
    assert!(done.is("done"), "{done:?}");
    let whole = pieces.concat();
    assert_eq!(
        done.json(),
        json!({
            "session_id": id,
            "role": "assistant",
            "content": whole,
            "usage": {
                "prompt_tokens": tokens("Tell me a story"),
                "completion_tokens": tokens(&whole),
                "cached_tokens": 0,
            },
        })
    );
    // `done` is the last event and the body ends cleanly.
    let (rest, broke) = s.rest().await;
    assert!(rest.is_empty() && broke.is_none(), "{rest:?} {broke:?}");
    // `done` was sent only once the turn was stored: it is visible at once.
    let stored = messages(gw.addr, &id).await;
    let pairs: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [("user", "Tell me a story"), ("assistant", whole.as_str())]
    );
    // The upstream was asked to stream, with usage.
    let rec = gw.mock.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].body["stream"], json!(true));
    assert_eq!(
        rec[0].body["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(gw.mock.streams_completed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_event_stream_streams_without_the_stream_field() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let mut s = open_stream(
        gw.addr,
        "/chat/",
        &[("accept", "application/json, text/event-stream")],
        &chat_body(&id, "via accept", None),
    )
    .await;
    assert_stream_head(&s);
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    let deltas: String = events
        .iter()
        .filter(|e| e.is("delta"))
        .map(|e| e.json()["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, "Echo: via accept");
    let last = events.last().expect("events");
    assert!(last.is("done"), "{events:?}");
    assert_eq!(last.json()["content"], "Echo: via accept");

    // An explicit `"stream": false` wins over the header: a whole answer.
    let r = post_with(
        gw.addr,
        "/chat/",
        &[("accept", "text/event-stream")],
        &chat_body(&id, "not streamed", Some(false)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_content_type(&r);
    assert_eq!(
        r.json(),
        json!({"session_id": id, "role": "assistant", "content": "Echo: not streamed"})
    );
    // And without either, a plain turn is whole JSON too.
    let r = chat(gw.addr, &id, "plain").await;
    assert_json_content_type(&r);
    assert_eq!(messages(gw.addr, &id).await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_the_first_byte_are_ordinary_json_errors() {
    let gw = Gateway::start_with(|c| c.rate_limit.messages_per_minute = per_minute(1)).await;
    let stream_err = |body: String| {
        let addr = gw.addr;
        async move {
            open_stream(addr, "/chat/", &[], &body)
                .await
                .into_resp()
                .await
        }
    };
    // 404: unknown session, and an id that is not a UUID.
    let unknown = uuid::Uuid::new_v4().to_string();
    for sid in [unknown.as_str(), "not-a-uuid"] {
        stream_err(chat_body(sid, "hi", Some(true)))
            .await
            .assert_error(404, "Session not found");
    }
    // 422: empty content, FastAPI-style list.
    let id = new_session(gw.addr).await;
    let r = stream_err(chat_body(&id, "", Some(true))).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_json_content_type(&r);
    assert!(r.detail().is_array(), "{}", r.text());
    // 502: the upstream fails at the start, after the retries.
    for _ in 0..3 {
        gw.mock.push(Reply::status(500));
    }
    let r = stream_err(chat_body(&id, "hi", Some(true))).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_json_content_type(&r);
    assert!(r.detail().as_str().unwrap().contains("500"), "{}", r.text());
    assert_eq!(gw.mock.request_count(), 3, "first try plus two retries");
    // 429: that turn used the session's only token.
    let r = stream_err(chat_body(&id, "again", Some(true))).await;
    r.assert_error(429, "Rate limit exceeded: 1 messages per minute");
    let ra: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(ra >= 1);
    assert_eq!(gw.mock.request_count(), 3, "a 429 is not forwarded");
    assert!(messages(gw.addr, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_410_before_any_stream() {
    let gw = Gateway::start_with(|c| c.session.idle_timeout = Duration::from_secs(1)).await;
    let id = new_session(gw.addr).await;
    let addr = gw.addr;
    let path = format!("/session/{id}");
    wait_until(Duration::from_secs(10), "the session to expire", || {
        let path = path.clone();
        async move { get(addr, &path).await.json()["is_active"] == 0 }
    })
    .await;
    open_stream(gw.addr, "/chat/", &[], &chat_body(&id, "hi", Some(true)))
        .await
        .into_resp()
        .await
        .assert_error(410, "Session expired");
    assert_eq!(gw.mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_drop_mid_stream_is_an_error_event_and_stores_nothing() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    gw.mock.push(
        StreamScript::pieces(["one ", "two ", "three"])
            .with_fault(StreamFault::DropAfter(2))
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "count").await;
    let (events, broke) = s.rest().await;
    assert!(
        broke.is_none(),
        "the gateway ends its own body cleanly: {broke:?}"
    );
    assert_eq!(events.len(), 3, "{events:?}");
    assert_delta(&events[0], "one ");
    assert_delta(&events[1], "two ");
    assert_error_event(&events[2], 502);
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
    assert_eq!(
        usage_of(&gw, &id).await,
        json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0})
    );

    // The session goes on, and the failed turn is in no later history.
    let r = chat(gw.addr, &id, "still there?").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("3"),
        "the token stays spent"
    );
    let rec = gw.mock.recorded();
    assert_eq!(
        rec.last().unwrap().body["messages"],
        json!([{"role": "user", "content": "still there?"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_mid_stream_is_an_error_event_and_stores_nothing() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    gw.mock.push(
        StreamScript::pieces(["fine ", "then ", "broken"])
            .with_fault(StreamFault::MalformedAfter(1))
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "go").await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_delta(&events[0], "fine ");
    assert_error_event(&events[1], 502);
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_the_upstream_and_stores_nothing() {
    let gw = Gateway::start_with(|c| c.rate_limit.messages_per_minute = per_minute(3)).await;
    let id = new_session(gw.addr).await;
    let gate = StreamGate::new();
    gw.mock.push(
        StreamScript::pieces(["never ", "finished ", "story"])
            .with_gate(gate.clone())
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "start").await;
    assert_eq!(s.header("x-ratelimit-remaining"), Some("2"));
    gate.release(1);
    assert_delta(&s.expect_event().await, "never ");
    assert_eq!(gw.mock.disconnects(), 0);
    s.disconnect();

    let mock = &gw.mock;
    wait_until(
        Duration::from_secs(10),
        "the upstream request to be cancelled",
        || {
            let n = mock.disconnects();
            async move { n == 1 }
        },
    )
    .await;
    assert_eq!(gw.mock.streams_completed(), 0);
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");

    // The session is free for its next turn; the cancelled turn's token
    // stays spent, and the cancelled turn is in no history.
    let r = chat(gw.addr, &id, "next").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        gw.mock.recorded().last().unwrap().body["messages"],
        json!([{"role": "user", "content": "next"}])
    );
    assert_eq!(messages(gw.addr, &id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_is_cut_by_the_idle_timeout_with_504() {
    let gw =
        Gateway::start_with(|c| c.openai.stream_idle_timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(
        StreamScript::pieces(["first ", "second"])
            .with_fault(StreamFault::StallAfter(1))
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "stall").await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_delta(&events[0], "first ");
    assert_error_event(&events[1], 504);
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
    // The gateway let go of the stalled upstream request.
    let mock = &gw.mock;
    wait_until(
        Duration::from_secs(10),
        "the stalled upstream to be dropped",
        || {
            let n = mock.disconnects();
            async move { n == 1 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_flowing_outlives_openai_timeout() {
    let gw = Gateway::start_with(|c| c.openai.timeout = Duration::from_secs(1)).await;
    let id = new_session(gw.addr).await;
    let pieces: Vec<String> = (0..10).map(|i| format!("p{i} ")).collect();
    gw.mock.push(
        StreamScript::pieces(pieces.clone())
            .with_delay(Duration::from_millis(150))
            .into(),
    );
    let started = Instant::now();
    let mut s = stream_chat(&gw, &id, "slowly").await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the scenario must outlast openai.timeout"
    );
    assert_eq!(events.len(), 11, "{events:?}");
    for (e, piece) in events.iter().zip(&pieces) {
        assert_delta(e, piece);
    }
    let done = &events[10];
    assert!(done.is("done"), "{done:?}");
    assert_eq!(done.json()["content"], pieces.concat());
    assert_eq!(messages(gw.addr, &id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_the_first_upstream_byte_is_bounded_by_openai_timeout() {
    let gw = Gateway::start_with(|c| c.openai.timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;
    // No response head within the deadline: an ordinary 504.
    gw.mock.push(Reply::Delay(
        Duration::from_secs(3),
        Box::new(StreamScript::pieces(["late"]).into()),
    ));
    open_stream(
        gw.addr,
        "/chat/",
        &[],
        &chat_body(&id, "hello?", Some(true)),
    )
    .await
    .into_resp()
    .await
    .assert_error(504, "Upstream timed out");
    assert!(messages(gw.addr, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_usage_sums_streamed_and_whole_turns() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    assert_eq!(
        usage_of(&gw, &id).await,
        json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0})
    );

    // Turn 1, streamed on /chat/.
    let mut s = stream_chat(&gw, &id, "hello there").await;
    let (events, _) = s.rest().await;
    let done = events.last().expect("events").json();
    let first = done["usage"].clone();
    assert_eq!(
        first,
        json!({
            "prompt_tokens": tokens("hello there"),
            "completion_tokens": tokens("Echo: hello there"),
            "cached_tokens": 0,
        })
    );

    // A failed stream in between costs nothing stored.
    gw.mock.push(
        StreamScript::pieces(["lost ", "words"])
            .with_fault(StreamFault::DropAfter(1))
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "this one fails").await;
    let (events, _) = s.rest().await;
    assert!(events.last().expect("events").is("error"), "{events:?}");

    // Turn 2, whole on /v1 bound to the session: the history is prompt.
    let r = post_with(
        gw.addr,
        "/v1/chat/completions",
        &[("x-session-id", &id)],
        &json!({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "and again"}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json()["usage"].clone();
    let prompt2 = tokens(&["hello there", "Echo: hello there", "and again"].concat());
    let completion2 = tokens("Echo: and again");
    // The upstream's usage, relayed as it came.
    assert_eq!(
        second,
        json!({
            "prompt_tokens": prompt2,
            "completion_tokens": completion2,
            "total_tokens": prompt2 + completion2,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    );

    let sum = |k: &str| first[k].as_u64().unwrap() + second[k].as_u64().unwrap();
    assert_eq!(
        usage_of(&gw, &id).await,
        json!({
            "prompt_tokens": sum("prompt_tokens"),
            "completion_tokens": sum("completion_tokens"),
            "cached_tokens": 0,
        })
    );

    // Turn 3, streamed on /v1 without `stream_options`: the client gets no
    // usage chunk, but the gateway asked the upstream for usage and stores it.
    let body = json!({"model": "gpt-3.5-turbo", "stream": true,
                      "messages": [{"role": "user", "content": "last one"}]});
    let mut s = open_stream(
        gw.addr,
        "/v1/chat/completions",
        &[("x-session-id", &id)],
        &body.to_string(),
    )
    .await;
    assert_eq!(s.status, 200);
    let (events, _) = s.rest().await;
    assert_eq!(events.last().expect("events").data, "[DONE]");
    let prompt3 = tokens(
        &[
            "hello there",
            "Echo: hello there",
            "and again",
            "Echo: and again",
            "last one",
        ]
        .concat(),
    );
    let completion3 = tokens("Echo: last one");
    assert_eq!(
        usage_of(&gw, &id).await,
        json!({
            "prompt_tokens": sum("prompt_tokens") + prompt3,
            "completion_tokens": sum("completion_tokens") + completion3,
            "cached_tokens": 0,
        })
    );
    assert_eq!(messages(gw.addr, &id).await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_turn_waits_sends_nothing_upstream() {
    // Two connections at most: the held stream's and one more. A new
    // connection is served only once the one before it has closed on the
    // gateway's side, which happens only after the gateway has dropped
    // that connection's turn: a request answered proves that the client
    // before it was let go.
    let gw = Gateway::start_with(|c| {
        c.server.max_connections = std::num::NonZeroUsize::new(2).expect("nonzero");
    })
    .await;
    let id = new_session(gw.addr).await;
    let gate = StreamGate::new();
    gw.mock.push(
        StreamScript::pieces(["held ", "turn"])
            .with_gate(gate.clone())
            .into(),
    );
    let mut first = stream_chat(&gw, &id, "first").await;
    gate.release(1);
    assert_delta(&first.expect_event().await, "held ");

    // Two more turns of the session queue behind the held stream, one
    // streamed and one whole; their clients give up before their turn.
    for (content, stream) in [("gave up streaming", true), ("gave up waiting", false)] {
        let addr = gw.addr;
        let body = chat_body(&id, content, Some(stream));
        let waiting =
            tokio::spawn(async move { open_stream(addr, "/chat/", &[], &body).await.status });
        // A real wait: what is under test is that the turn is NOT answered
        // before the one ahead of it ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "{content}: answered before its turn"
        );
        waiting.abort();
    }
    // The gateway has let go of both abandoned turns once a new connection
    // is served (see the connection cap above).
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);

    gate.open();
    let (events, _) = first.rest().await;
    assert!(events.last().expect("events").is("done"), "{events:?}");
    // The next turn runs at once; nothing of the abandoned ones went
    // upstream or into the history.
    let r = chat(gw.addr, &id, "still here").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gw.mock.request_count(),
        2,
        "an abandoned turn was forwarded"
    );
    let contents: Vec<String> = messages(gw.addr, &id)
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contents,
        ["first", "held turn", "still here", "Echo: still here"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_whole_turns_of_a_session_stay_in_order() {
    let gw = Gateway::start_with(|c| c.rate_limit.messages_per_minute = per_minute(30)).await;
    let id = new_session(gw.addr).await;
    let v1 = |text: &str, stream: bool| {
        json!({"model": "gpt-3.5-turbo", "stream": stream,
               "messages": [{"role": "user", "content": text}]})
        .to_string()
    };
    let mut expected: Vec<(String, String)> = Vec::new();
    for i in 0..8 {
        let text = format!("turn {i}");
        let reply = match i % 4 {
            0 => {
                let r = chat(gw.addr, &id, &text).await;
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["content"].as_str().unwrap().to_owned()
            }
            1 => {
                let mut s = stream_chat(&gw, &id, &text).await;
                let (events, _) = s.rest().await;
                let done = events.last().expect("events");
                assert!(done.is("done"), "{events:?}");
                done.json()["content"].as_str().unwrap().to_owned()
            }
            2 => {
                let mut s = open_stream(
                    gw.addr,
                    "/v1/chat/completions",
                    &[("x-session-id", &id)],
                    &v1(&text, true),
                )
                .await;
                assert_eq!(s.status, 200);
                let (events, _) = s.rest().await;
                assert_eq!(events.last().expect("events").data, "[DONE]");
                events[..events.len() - 1]
                    .iter()
                    .filter_map(|e| {
                        e.json()["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .collect()
            }
            _ => {
                let r = post_with(
                    gw.addr,
                    "/v1/chat/completions",
                    &[("x-session-id", &id)],
                    &v1(&text, false),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        assert_eq!(reply, format!("Echo: {text}"));
        expected.push(("user".into(), text));
        expected.push(("assistant".into(), reply));
    }
    let stored: Vec<(String, String)> = messages(gw.addr, &id)
        .await
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(stored, expected);
    // The last turn was sent the whole history, oldest first.
    let sent: Vec<(String, String)> = gw.mock.recorded().last().unwrap().body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(sent, expected[..expected.len() - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_turn_waits_for_the_streamed_turn_before_it() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let gate = StreamGate::new();
    gw.mock.push(
        StreamScript::pieces(["first ", "answer"])
            .with_gate(gate.clone())
            .into(),
    );
    let mut s = stream_chat(&gw, &id, "first").await;
    gate.release(1);
    assert_delta(&s.expect_event().await, "first ");

    // A second turn of the session arrives while the stream is held.
    let addr = gw.addr;
    let sid = id.clone();
    let second = tokio::spawn(async move { chat(addr, &sid, "second").await });
    // A real wait: what is under test is that the second turn does NOT
    // overtake the held stream (nor reach the upstream) meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second turn overtook the stream");
    assert_eq!(gw.mock.request_count(), 1, "the second turn waits its turn");

    gate.open();
    let (events, _) = s.rest().await;
    assert!(events.last().expect("events").is("done"), "{events:?}");
    let r = second.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let contents: Vec<String> = messages(gw.addr, &id)
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contents,
        ["first", "first answer", "second", "Echo: second"]
    );
    assert_eq!(
        gw.mock.recorded().last().unwrap().body["messages"],
        json!([
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second"},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_chunk_later_than_openai_timeout_is_504_and_cancels_the_upstream() {
    let gw = Gateway::start_with(|c| c.openai.timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;
    // The upstream's head comes at once; its first chunk would come after
    // 30 s. Whether the gateway has answered 200 by then or not, the turn
    // ends with a 504 long before the chunk, and the upstream is let go.
    gw.mock.set_latency(Duration::from_secs(30));
    let started = Instant::now();
    let s = open_stream(
        gw.addr,
        "/chat/",
        &[],
        &chat_body(&id, "hello?", Some(true)),
    )
    .await;
    if s.status == 200 {
        let mut s = s;
        let (events, broke) = s.rest().await;
        assert!(broke.is_none(), "{broke:?}");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_error_event(&events[0], 504);
    } else {
        s.into_resp().await.assert_error(504, "Upstream timed out");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "openai.timeout did not bound the wait for the first chunk"
    );
    assert!(messages(gw.addr, &id).await.is_empty());
    let mock = &gw.mock;
    wait_until(
        Duration::from_secs(10),
        "the upstream request to be cancelled",
        || {
            let n = mock.disconnects();
            async move { n == 1 }
        },
    )
    .await;
}
