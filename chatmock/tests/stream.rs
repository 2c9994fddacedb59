//! The mock's streaming mode over real loopback sockets: event order and
//! shape, the usage chunk, `max_tokens`, scripted pieces, the gate, the
//! faults, and the tally of how streams ended. Two clients: a hyper client
//! for what an OpenAI client sees, and a raw TCP exchange for the chunked
//! framing itself (one event per chunk, a terminating chunk or none).

use std::time::{Duration, Instant};

use bytes::Bytes;
use chatmock::{MockOpenAi, Reply, StreamFault, StreamGate, StreamScript};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Long enough that an event that was going to come has come on loopback.
const QUIET: Duration = Duration::from_millis(150);
/// Bound on waiting for anything that should happen.
const PATIENCE: Duration = Duration::from_secs(5);

fn request(stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello big world"}
        ]
    })
}

/// A response whose connection is driven by its own task; aborting the task
/// closes the socket, which is how a client goes away.
struct Client {
    response: Response<Incoming>,
    conn: JoinHandle<()>,
}

async fn post(mock: &MockOpenAi, body: &Value) -> Client {
    let tcp = TcpStream::connect(mock.addr()).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post("/v1/chat/completions")
        .header("host", "mock")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = send.send_request(req).await.expect("response head");
    Client { response, conn }
}

impl Client {
    fn events(self) -> (Events, JoinHandle<()>) {
        let events = Events {
            body: self.response.into_body(),
            buf: Vec::new(),
        };
        (events, self.conn)
    }

    async fn json(self) -> Value {
        let bytes = self
            .response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("JSON body")
    }
}

/// Reads SSE events off a response body as a client would.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    /// The next event's data; `Ok(None)` at a clean end, `Err` when the
    /// transport failed.
    async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..at + 2).collect();
                let text = String::from_utf8(event).expect("UTF-8 event");
                let data = text.strip_prefix("data: ").expect("a data line");
                return Ok(Some(data.trim_end().to_owned()));
            }
            match self.body.frame().await {
                None => {
                    assert!(self.buf.is_empty(), "stream ended mid-event");
                    return Ok(None);
                }
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event, which must come.
    async fn expect(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.next())
            .await
            .expect("an event in time")
            .expect("no transport error")
            .expect("an event, not the end")
    }

    /// Asserts that no event arrives for a while.
    async fn expect_quiet(&mut self) {
        if let Ok(got) = tokio::time::timeout(QUIET, self.next()).await {
            panic!("expected nothing yet, got {got:?}");
        }
    }

    /// Everything up to a clean end.
    async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(event) = tokio::time::timeout(PATIENCE, self.next())
            .await
            .expect("the stream ends in time")
            .expect("no transport error")
        {
            out.push(event);
        }
        out
    }
}

fn parse(event: &str) -> Value {
    serde_json::from_str(event).unwrap_or_else(|e| panic!("{e}: {event}"))
}

/// The content of a content chunk.
fn content(event: &str) -> String {
    let chunk = parse(event);
    assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null, "{event}");
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {event}"))
        .to_owned()
}

/// The contents of these content chunks.
fn contents(events: &[String]) -> Vec<String> {
    events.iter().map(|e| content(e)).collect()
}

/// One raw HTTP/1.1 exchange: the response head, the chunks of its chunked
/// body, and whether the body ended with the terminating chunk.
async fn raw_exchange(mock: &MockOpenAi, body: &Value) -> (String, Vec<String>, bool) {
    let body = body.to_string();
    let mut tcp = TcpStream::connect(mock.addr()).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes, cleanly or not.
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await {
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut chunks = Vec::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return (head.to_owned(), chunks, false);
        };
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        if size == 0 {
            return (head.to_owned(), chunks, true);
        }
        let Some(chunk) = after.get(..size) else {
            return (head.to_owned(), chunks, false);
        };
        chunks.push(chunk.to_owned());
        rest = after[size..].strip_prefix("\r\n").unwrap_or("");
    }
}

/// Polls `check` every 10 ms until it holds, for at most [`PATIENCE`]:
/// the one poll of these tests, a wait on a condition.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_event_is_its_own_chunk_in_upstream_order() {
    let mock = MockOpenAi::start().await;
    let (head, chunks, clean) = raw_exchange(&mock, &request(true)).await;
    assert!(clean, "a complete stream ends with the terminating chunk");
    assert!(head.contains("text/event-stream"), "{head}");
    for chunk in &chunks {
        assert!(
            chunk.starts_with("data: ") && chunk.ends_with("\n\n"),
            "{chunk:?}"
        );
        assert_eq!(
            chunk.matches("\n\n").count(),
            1,
            "one event per chunk: {chunk:?}"
        );
    }
    let events: Vec<String> = chunks
        .iter()
        .map(|c| c["data: ".len()..].trim_end().to_owned())
        .collect();
    assert_eq!(events.len(), 7, "{events:#?}");
    let role = parse(&events[0]);
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(
        contents(&events[1..5]),
        ["Echo: ", "hello ", "big ", "world"]
    );
    let finish = parse(&events[5]);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[6], "[DONE]");
    for event in &events[..6] {
        let chunk = parse(event);
        assert_eq!(chunk["id"], "chatcmpl-mock");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["created"].is_u64(), "{event}");
        assert_eq!(chunk["model"], "gpt-test");
        assert!(
            chunk.get("usage").is_none(),
            "no usage unless asked: {event}"
        );
    }
    eventually("the stream counts as completed", || {
        mock.streams_completed() == 1
    })
    .await;
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn usage_chunk_comes_only_when_asked_and_matches_the_json_answer() {
    let mock = MockOpenAi::start().await;
    let mut with_usage = request(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let (mut events, _conn) = post(&mock, &with_usage).await.events();
    let events = events.rest().await;
    assert_eq!(events.len(), 8, "{events:#?}");
    assert_eq!(parse(&events[5])["choices"][0]["finish_reason"], "stop");
    for event in &events[..6] {
        assert_eq!(parse(event)["usage"], Value::Null, "{event}");
        assert!(
            parse(event).get("usage").is_some(),
            "usage: null is spelled out"
        );
    }
    let usage = parse(&events[6]);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["model"], "gpt-test");
    assert_eq!(usage["object"], "chat.completion.chunk");
    // 8 + 15 prompt bytes and 21 reply bytes, a token per four.
    let expected = json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}});
    assert_eq!(usage["usage"], expected);
    assert_eq!(events[7], "[DONE]");

    let answer = post(&mock, &request(false)).await.json().await;
    assert_eq!(answer["usage"], expected, "both modes count alike");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Echo: hello big world"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let mut without = request(true);
    without["stream_options"] = json!({"include_usage": false});
    let (mut events, _conn) = post(&mock, &without).await.events();
    let events = events.rest().await;
    assert_eq!(events.len(), 7, "{events:#?}");
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:#?}");
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_and_finishes_with_length() {
    let mock = MockOpenAi::start().await;
    let mut cut = request(true);
    cut["max_tokens"] = json!(2);
    cut["stream_options"] = json!({"include_usage": true});
    let (mut events, _conn) = post(&mock, &cut).await.events();
    let events = events.rest().await;
    assert_eq!(contents(&events[1..3]), ["Echo: ", "hello "]);
    assert_eq!(parse(&events[3])["choices"][0]["finish_reason"], "length");
    assert_eq!(parse(&events[4])["usage"]["completion_tokens"], 3);
    assert_eq!(events[5], "[DONE]");

    let mut cut = request(false);
    cut["max_tokens"] = json!(2);
    let answer = post(&mock, &cut).await.json().await;
    assert_eq!(answer["choices"][0]["message"]["content"], "Echo: hello ");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 3);

    // The newer name wins over the deprecated one.
    let mut both = request(false);
    both["max_tokens"] = json!(5);
    both["max_completion_tokens"] = json!(1);
    let answer = post(&mock, &both).await.json().await;
    assert_eq!(answer["choices"][0]["message"]["content"], "Echo: ");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");

    // A limit the reply fits in is no cut.
    let mut roomy = request(true);
    roomy["max_completion_tokens"] = json!(4);
    let (mut events, _conn) = post(&mock, &roomy).await.events();
    let events = events.rest().await;
    assert_eq!(contents(&events[1..5]).concat(), "Echo: hello big world");
    assert_eq!(parse(&events[5])["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn scripted_pieces_and_texts_stream_in_order() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Stream(StreamScript::pieces(["Hel", "lo"])));
    mock.push(Reply::Text("one two".into()));
    mock.push(StreamScript::pieces(["jo", "ined"]).into());
    mock.push(Reply::Delay(
        Duration::from_millis(10),
        Box::new(Reply::Stream(StreamScript::default())),
    ));

    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    let events = events.rest().await;
    assert_eq!(contents(&events[1..3]), ["Hel", "lo"]);
    assert_eq!(events.len(), 5, "{events:#?}");

    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    let events = events.rest().await;
    assert_eq!(contents(&events[1..3]), ["one ", "two"]);

    let answer = post(&mock, &request(false)).await.json().await;
    assert_eq!(answer["choices"][0]["message"]["content"], "joined");

    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    let events = events.rest().await;
    assert_eq!(contents(&events[1..5]).concat(), "Echo: hello big world");

    eventually("three streams completed", || mock.streams_completed() == 3).await;
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn gated_chunks_reach_the_client_one_at_a_time() {
    let mock = MockOpenAi::start().await;
    let gate = StreamGate::new();
    mock.push(Reply::Stream(
        StreamScript::pieces(["a ", "b ", "c"]).with_gate(gate.clone()),
    ));
    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    assert_eq!(
        parse(&events.expect().await)["choices"][0]["delta"]["role"],
        "assistant"
    );
    events.expect_quiet().await;
    gate.release(1);
    assert_eq!(content(&events.expect().await), "a ");
    events.expect_quiet().await;
    gate.release(1);
    assert_eq!(content(&events.expect().await), "b ");
    events.expect_quiet().await;
    assert_eq!(mock.streams_completed(), 0, "the stream is still open");
    gate.open();
    let rest = events.rest().await;
    assert_eq!(content(&rest[0]), "c");
    assert_eq!(rest[2], "[DONE]");
    eventually("the gated stream completed", || {
        mock.streams_completed() == 1
    })
    .await;
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn drop_after_aborts_the_connection_mid_stream() {
    let mock = MockOpenAi::start().await;
    let script = StreamScript::pieces(["a ", "b ", "c"]).with_fault(StreamFault::DropAfter(2));
    mock.push(Reply::Stream(script.clone()));
    mock.push(Reply::Stream(script));

    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    events.expect().await;
    assert_eq!(content(&events.expect().await), "a ");
    assert_eq!(content(&events.expect().await), "b ");
    let end = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("the abort in time");
    assert!(
        end.is_err(),
        "a dropped stream is a transport error, got {end:?}"
    );

    let (_, chunks, clean) = raw_exchange(&mock, &request(true)).await;
    assert!(!clean, "no terminating chunk after a drop");
    assert_eq!(
        chunks.len(),
        3,
        "role and two pieces, all flushed: {chunks:#?}"
    );
    eventually("both drops are scripted ends", || {
        mock.streams_completed() == 2
    })
    .await;
    assert_eq!(mock.disconnects(), 0);
}

#[tokio::test]
async fn malformed_after_sends_a_bad_event_then_ends_cleanly() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Stream(
        StreamScript::pieces(["a ", "b"]).with_fault(StreamFault::MalformedAfter(1)),
    ));
    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    let events = events.rest().await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(content(&events[1]), "a ");
    assert_eq!(events[2], "{not json");
    eventually("a malformed stream is a scripted end", || {
        mock.streams_completed() == 1
    })
    .await;
}

#[tokio::test]
async fn a_client_leaving_a_stalled_stream_counts_as_a_disconnect() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Stream(
        StreamScript::pieces(["a ", "b"]).with_fault(StreamFault::StallAfter(1)),
    ));
    let (mut events, conn) = post(&mock, &request(true)).await.events();
    events.expect().await;
    assert_eq!(content(&events.expect().await), "a ");
    events.expect_quiet().await;
    assert_eq!(mock.disconnects(), 0, "the client is still there");
    drop(events);
    conn.abort();
    eventually("the stalled stream sees its client leave", || {
        mock.disconnects() == 1
    })
    .await;
    assert_eq!(mock.streams_completed(), 0);
}

#[tokio::test]
async fn a_client_leaving_at_a_gate_or_during_latency_counts_as_a_disconnect() {
    let mock = MockOpenAi::start().await;
    let gate = StreamGate::new();
    mock.push(Reply::Stream(
        StreamScript::pieces(["a"]).with_gate(gate.clone()),
    ));
    let (mut events, conn) = post(&mock, &request(true)).await.events();
    events.expect().await;
    drop(events);
    conn.abort();
    eventually("the gated stream sees its client leave", || {
        mock.disconnects() == 1
    })
    .await;

    // With latency the headers come at once and the wait precedes the first
    // chunk, so a client can leave a stream that has not started.
    mock.set_latency(Duration::from_secs(60));
    let client = tokio::time::timeout(PATIENCE, post(&mock, &request(true)))
        .await
        .expect("headers before the latency");
    assert_eq!(client.response.status(), 200);
    let (events, conn) = client.events();
    drop(events);
    conn.abort();
    eventually("the waiting stream sees its client leave", || {
        mock.disconnects() == 2
    })
    .await;
    // Releasing the gate later finds nobody to send to.
    gate.open();
    assert_eq!(mock.streams_completed(), 0);
}

#[tokio::test]
async fn latency_and_delay_pace_the_stream() {
    let mock = MockOpenAi::start().await;
    mock.set_latency(Duration::from_millis(200));
    let start = Instant::now();
    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    events.expect().await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "latency precedes the first chunk"
    );
    events.rest().await;

    let start = Instant::now();
    post(&mock, &request(false)).await.json().await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "latency precedes a JSON answer"
    );

    mock.set_latency(Duration::ZERO);
    mock.push(Reply::Stream(
        StreamScript::pieces(["a ", "b ", "c"]).with_delay(Duration::from_millis(100)),
    ));
    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    events.expect().await;
    let start = Instant::now();
    assert_eq!(content(&events.expect().await), "a ");
    let rest = events.rest().await;
    assert_eq!(content(&rest[1]), "c");
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "a delay before each piece"
    );
}

#[tokio::test]
async fn stream_requests_are_recorded_whole() {
    let mock = MockOpenAi::start().await;
    let mut body = request(true);
    body["stream_options"] = json!({"include_usage": true});
    let (mut events, _conn) = post(&mock, &body).await.events();
    events.rest().await;
    let recorded = mock.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].body["stream_options"]["include_usage"], true);
    assert_eq!(recorded[0].body["temperature"], 0.5);
    assert_eq!(mock.request_count(), 1);
}

/// A request offering one tool, ending with a user message.
fn with_tool(stream: bool) -> Value {
    let mut body = request(stream);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]);
    body
}

/// Joins streamed chunks back into each choice's message, as an SDK does:
/// content, reasoning and refusal by concatenation, tool calls by index.
fn reassemble(events: &[String]) -> Vec<Value> {
    let mut choices: Vec<Value> = Vec::new();
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk = parse(event);
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            while choices.len() <= i {
                choices.push(json!({"content": null, "tool_calls": []}));
            }
            let m = &mut choices[i];
            for key in ["content", "reasoning_content", "refusal"] {
                if let Some(piece) = c["delta"][key].as_str() {
                    let so_far = m[key].as_str().unwrap_or("").to_owned();
                    m[key] = json!(so_far + piece);
                }
            }
            for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let at = call["index"].as_u64().unwrap() as usize;
                let calls = m["tool_calls"].as_array_mut().unwrap();
                while calls.len() <= at {
                    calls.push(json!({"function": {"arguments": ""}}));
                }
                let slot = &mut calls[at];
                for key in ["id", "type"] {
                    if let Some(v) = call.get(key) {
                        slot[key] = v.clone();
                    }
                }
                if let Some(name) = call["function"].get("name") {
                    slot["function"]["name"] = name.clone();
                }
                let so_far = slot["function"]["arguments"].as_str().unwrap().to_owned();
                slot["function"]["arguments"] =
                    json!(so_far + call["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(reason) = c["finish_reason"].as_str() {
                m["finish_reason"] = json!(reason);
            }
        }
    }
    choices
}

#[tokio::test]
async fn offered_tools_it_calls_one_whole_and_in_pieces() {
    let mock = MockOpenAi::start().await;
    let whole = post(&mock, &with_tool(false)).await.json().await;
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "hello big world", "unit": "celsius"}));

    let (mut events, _conn) = post(&mock, &with_tool(true)).await.events();
    let events = events.rest().await;
    let pieces = events
        .iter()
        .filter(|e| e.contains("\"arguments\""))
        .count();
    assert!(pieces > 3, "arguments arrive in pieces: {events:#?}");
    let streamed = reassemble(&events);
    assert_eq!(streamed[0]["tool_calls"][0]["function"], call["function"]);
    assert_eq!(streamed[0]["finish_reason"], "tool_calls");
    assert!(streamed[0]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));

    // Told not to, it answers; given the results, it uses them.
    let mut none = with_tool(false);
    none["tool_choice"] = json!("none");
    let answer = post(&mock, &none).await.json().await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Echo: hello big world"
    );
    let mut results = with_tool(false);
    results["messages"] = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [message["tool_calls"][0].clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    ]);
    let answer = post(&mock, &results).await.json().await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Tool results: sunny"
    );
}

#[tokio::test]
async fn scripted_messages_stream_as_openai_sends_them() {
    let mock = MockOpenAi::start().await;
    let message = json!({"content": null, "reasoning_content": "thinking it over",
    "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "first", "arguments": "{\"x\": \"a long enough argument\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "second", "arguments": "{}"}}
    ]});
    mock.push(Reply::Message(message.clone()));
    let (mut events, _conn) = post(&mock, &request(true)).await.events();
    let streamed = reassemble(&events.rest().await);
    assert_eq!(streamed[0]["reasoning_content"], "thinking it over");
    assert_eq!(streamed[0]["content"], Value::Null);
    assert_eq!(streamed[0]["tool_calls"][0]["id"], "call_a");
    assert_eq!(
        streamed[0]["tool_calls"][0]["function"]["arguments"],
        "{\"x\": \"a long enough argument\"}"
    );
    assert_eq!(streamed[0]["tool_calls"][1]["function"]["name"], "second");

    mock.push(Reply::Message(
        json!({"content": null, "refusal": "I can't help with that."}),
    ));
    let answer = post(&mock, &request(false)).await.json().await;
    assert_eq!(
        answer["choices"][0]["message"]["refusal"],
        "I can't help with that."
    );
    assert_eq!(answer["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(answer["system_fingerprint"], "fp_mock");
}

#[tokio::test]
async fn n_choices_logprobs_and_json_schemas() {
    let mock = MockOpenAi::start().await;
    let mut body = request(false);
    body["n"] = json!(2);
    body["logprobs"] = json!(true);
    let answer = post(&mock, &body).await.json().await;
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[1]["message"]["content"], "Echo: hello big world");
    assert_eq!(choices[0]["logprobs"]["content"][0]["token"], "Echo: ");
    body["stream"] = json!(true);
    let (mut events, _conn) = post(&mock, &body).await.events();
    let events = events.rest().await;
    let streamed = reassemble(&events);
    assert_eq!(streamed.len(), 2);
    assert_eq!(streamed[1]["content"], "Echo: hello big world");
    assert!(events.iter().any(|e| e.contains("\"logprobs\"")));

    let mut structured = request(false);
    structured["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}});
    let answer = post(&mock, &structured).await.json().await;
    let content: Value =
        serde_json::from_str(answer["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"name": "hello big world", "age": 1}));
}
