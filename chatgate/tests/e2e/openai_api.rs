//! docs/openai.md: the OpenAI-compatible API. `POST /v1/chat/completions`
//! stateless and bound to a session (`X-Session-Id`), whole and streamed
//! as the upstream's `chat.completion.chunk` events ending in
//! `data: [DONE]`; `model` checked against `openai.models`;
//! `GET /v1/models`; errors in OpenAI's shape; and the session's rate
//! limit shared with `/chat/`. What is forwarded and relayed as it came
//! (tools, parts, every field) is in `openai_fidelity`.

use std::num::NonZeroU32;
use std::time::Duration;

use chatmock::{Reply, StreamFault, StreamGate, StreamScript};
use serde_json::{json, Value};

use crate::support::*;

/// The model the base configuration allows (`openai.model`'s default).
const MODEL: &str = "gpt-3.5-turbo";

const COMPLETIONS: &str = "/v1/chat/completions";

fn user_only(text: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

async fn completions(gw: &Gateway, session: Option<&str>, body: &Value) -> Resp {
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    post_with(gw.addr, COMPLETIONS, &headers, &body.to_string()).await
}

async fn open_completions(gw: &Gateway, session: Option<&str>, body: &Value) -> EventStream {
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    open_stream(gw.addr, COMPLETIONS, &headers, &body.to_string()).await
}

/// Asserts an OpenAI-shaped error: the status, exactly the four keys,
/// and the type and code.
#[track_caller]
fn assert_openai_error(r: &Resp, status: u16, kind: &str, code: &str) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_json_content_type(r);
    let v = r.json();
    let e = &v["error"];
    let mut keys: Vec<&str> = e
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "only `error`: {v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert_eq!(e["code"], code, "{v}");
    e.clone()
}

/// The `data:` events of a `/v1` stream, until and without `[DONE]`,
/// asserting there is exactly one `[DONE]`, last, and a clean end.
async fn chunks_until_done(s: &mut EventStream) -> Vec<Value> {
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert!(
        events.iter().all(|e| e.name.is_none()),
        "OpenAI events have no name: {events:?}"
    );
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(last.data, "[DONE]", "{events:?}");
    chunks.iter().map(SseEvent::json).collect()
}

/// The text of the content chunks.
fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Asserts `chunks` are one response's `chat.completion.chunk`s, as the
/// upstream (the mock) sent them: a role chunk, content chunks carrying
/// `pieces`, a finish chunk, and a usage chunk when `usage` is given.
#[track_caller]
fn assert_chunk_sequence(chunks: &[Value], pieces: &[&str], finish: &str, usage: Option<Value>) {
    let expected_len = 2 + pieces.len() + usize::from(usage.is_some());
    assert_eq!(chunks.len(), expected_len, "{chunks:#?}");
    for c in chunks {
        assert_eq!(c["id"], "chatcmpl-mock", "the upstream's own id: {c}");
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["model"], MODEL, "{c}");
        assert_eq!(c["system_fingerprint"], "fp_mock", "{c}");
        assert!(c["created"].as_i64().is_some(), "{c}");
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
    );
    for (c, piece) in chunks[1..].iter().zip(pieces) {
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}])
        );
    }
    let finish_chunk = &chunks[1 + pieces.len()];
    assert_eq!(
        finish_chunk["choices"],
        json!([{"index": 0, "delta": {}, "finish_reason": finish}])
    );
    match usage {
        Some(u) => {
            let last = chunks.last().unwrap();
            assert_eq!(last["choices"], json!([]), "{last}");
            assert_eq!(last["usage"], u, "{last}");
        }
        None => assert!(
            chunks
                .iter()
                .all(|c| c.get("usage").is_none_or(Value::is_null)),
            "no usage chunk unless asked for: {chunks:#?}"
        ),
    }
}

/// The mock's usage rule: a token per four bytes.
fn tokens(text: &str) -> u64 {
    (text.len() / 4) as u64
}

/// The mock's usage, with the details it reports as OpenAI does.
fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_completion_forwards_the_request_and_relays_the_answer() {
    let gw = Gateway::start().await;
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]},
        ],
        "temperature": 0.5,
        "top_p": 0.75,
        "max_tokens": 50,
        "stop": ["END"],
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 7,
        "user": "u-1",
    });
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_content_type(&r);
    // The upstream's answer, as it sent it (the text parts reach it as
    // parts, and it reads them joined by a newline).
    let prompt = tokens("Be brieffirstoksec\nond");
    assert_eq!(
        r.json(),
        json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Echo: sec\nond", "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage(prompt, tokens("Echo: sec\nond")),
            "system_fingerprint": "fp_mock",
        })
    );
    // Stateless: no session, so no quota headers.
    assert_eq!(r.header("x-ratelimit-remaining"), None);

    let rec = gw.mock.recorded();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].body, body, "forwarded as sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_cuts_the_reply_with_finish_reason_length() {
    let gw = Gateway::start().await;
    // The mock streams a word piece per token: "Echo: ", "a ", "b ", "c".
    let mut body = user_only("a b c");
    body["max_completion_tokens"] = json!(2);
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: a ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let sent = &gw.mock.recorded()[0].body;
    assert_eq!(
        sent["max_completion_tokens"],
        json!(2),
        "under the client's name"
    );
    assert!(sent.get("max_tokens").is_none(), "{sent}");

    let mut s = open_completions(&gw, None, &streamed(body)).await;
    assert_eq!(s.status, 200);
    let chunks = chunks_until_done(&mut s).await;
    assert_chunk_sequence(&chunks, &["Echo: ", "a "], "length", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_stream_is_chunks_then_done_with_usage_only_when_asked() {
    let gw = Gateway::start().await;
    // Without stream_options: no usage chunk for the client, but usage is
    // still asked of the upstream.
    let mut s = open_completions(&gw, None, &streamed(user_only("hi there"))).await;
    assert_eq!(s.status, 200);
    let ct = s.header("content-type").unwrap_or("").to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let chunks = chunks_until_done(&mut s).await;
    assert_chunk_sequence(&chunks, &["Echo: ", "hi ", "there"], "stop", None);
    let sent = &gw.mock.recorded()[0].body;
    assert_eq!(sent["stream"], json!(true));
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    // With it: a last chunk with no choices and the usage.
    let mut body = streamed(user_only("hi there"));
    body["stream_options"] = json!({"include_usage": true});
    let mut s = open_completions(&gw, None, &body).await;
    let chunks = chunks_until_done(&mut s).await;
    assert_chunk_sequence(
        &chunks,
        &["Echo: ", "hi ", "there"],
        "stop",
        Some(usage(tokens("hi there"), tokens("Echo: hi there"))),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_chunks_reach_the_client_before_the_upstream_sends_the_next_piece() {
    let gw = Gateway::start().await;
    let pieces = ["Alpha ", "beta ", "gamma"];
    let gate = StreamGate::new();
    gw.mock
        .push(StreamScript::pieces(pieces).with_gate(gate.clone()).into());
    let mut s = open_completions(&gw, None, &streamed(user_only("greek"))).await;
    assert_eq!(s.status, 200);
    let role = s.expect_event().await.json();
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(
        s.quiet_for(Duration::from_millis(200)).await,
        "a content chunk arrived before the upstream sent one"
    );
    for piece in pieces {
        // Released only once the previous chunk has been read.
        gate.release(1);
        let c = s.expect_event().await.json();
        assert_eq!(c["choices"][0]["delta"], json!({ "content": piece }), "{c}");
    }
    let rest = chunks_until_done(&mut s).await;
    assert_eq!(rest.len(), 1, "only the finish chunk is left: {rest:?}");
    assert_eq!(rest[0]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_turn_gets_the_history_and_is_stored() {
    let gw = Gateway::start().await;
    let r = post(
        gw.addr,
        "/session/initialize_session",
        r#"{"system_prompt": "Be terse."}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(chat(gw.addr, &id, "first").await.status, 200);

    // Whole.
    let r = completions(&gw, Some(&id), &user_only("second")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("3"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: second");
    let history = json!([
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Echo: first"},
        {"role": "user", "content": "second"},
    ]);
    assert_eq!(gw.mock.recorded()[1].body["messages"], history);

    // Streamed, with usage.
    let mut body = streamed(user_only("third"));
    body["stream_options"] = json!({"include_usage": true});
    let mut s = open_completions(&gw, Some(&id), &body).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-ratelimit-remaining"), Some("2"));
    let chunks = chunks_until_done(&mut s).await;
    let prompt = tokens("Be terse.firstEcho: firstsecondEcho: secondthird");
    assert_chunk_sequence(
        &chunks,
        &["Echo: ", "third"],
        "stop",
        Some(usage(prompt, tokens("Echo: third"))),
    );
    let sent = &gw.mock.recorded()[2].body;
    assert_eq!(sent["messages"].as_array().unwrap().len(), 6, "{sent}");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

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
    let expected: Vec<(String, String)> = [
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second"),
        ("assistant", "Echo: second"),
        ("user", "third"),
        ("assistant", "Echo: third"),
    ]
    .iter()
    .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_bound_requests_are_checked_before_anything_is_sent() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    // Not exactly one user message.
    for messages in [
        json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        json!([{"role": "system", "content": "s"}, {"role": "user", "content": "b"}]),
        json!([{"role": "assistant", "content": "a"}]),
    ] {
        let body = json!({"model": MODEL, "messages": messages});
        let r = completions(&gw, Some(&id), &body).await;
        let e = assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
        assert_eq!(e["param"], "messages", "{e}");
    }
    // Unknown sessions, and ids that are not UUIDs.
    let unknown = uuid::Uuid::new_v4().to_string();
    for sid in [unknown.as_str(), "nope"] {
        for body in [user_only("hi"), streamed(user_only("hi"))] {
            let r = completions(&gw, Some(sid), &body).await;
            assert_openai_error(&r, 404, "invalid_request_error", "session_not_found");
        }
    }
    assert_eq!(gw.mock.request_count(), 0);
    assert!(messages(gw.addr, &id).await.is_empty());
    // None of that took a token.
    let r = completions(&gw, Some(&id), &user_only("fine")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_request_goes_upstream_whatever_its_last_message() {
    let gw = Gateway::start().await;
    // An assistant prefill, and a conversation of a system prompt alone:
    // the upstream judges them, not the gateway.
    for messages in [
        json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
        json!([{"role": "system", "content": "only a system prompt"}]),
    ] {
        let body = json!({"model": MODEL, "messages": messages});
        let r = completions(&gw, None, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(gw.mock.recorded().last().unwrap().body, body);
    }
    assert_eq!(gw.mock.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_invalid_request_error() {
    let gw = Gateway::start().await;
    // Only what the gateway acts on is checked; values it forwards (a
    // temperature out of range, `n`, tools, parts) are the upstream's to
    // judge (see `openai_fidelity`).
    let cases = [
        r#"{"model":"gpt-3.5-turbo"}"#,
        r#"{"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"gpt-3.5-turbo","messages":[]}"#,
        r#"{"model":"gpt-3.5-turbo","messages":"hi"}"#,
        r#"{"model":"gpt-3.5-turbo","messages":[{"content":"x"}]}"#,
        r#"{"model":"gpt-3.5-turbo","messages":[{"role":1,"content":"x"}]}"#,
        r#"{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        r#"{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"x"}],"stream_options":[]}"#,
        r#"{"model": "gpt-3.5-turbo", "messages": [{"role": "user""#,
        r#"[]"#,
    ];
    for body in cases {
        let r = post(gw.addr, COMPLETIONS, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = r.json()["error"].clone();
        assert_eq!(e["type"], "invalid_request_error", "{body}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
    }
    assert_eq!(gw.mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_model_not_found() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let mut body = user_only("hi");
    body["model"] = json!("gpt-4o");
    for (session, b) in [
        (None, body.clone()),
        (None, streamed(body.clone())),
        (Some(id.as_str()), body.clone()),
    ] {
        let r = completions(&gw, session, &b).await;
        let e = assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");
        assert!(e["message"].as_str().unwrap().contains("gpt-4o"), "{e}");
    }
    assert_eq!(gw.mock.request_count(), 0);
    // The model check comes first: the session's quota is untouched.
    let r = completions(&gw, Some(&id), &user_only("hi")).await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_default_model() {
    let gw = Gateway::start().await;
    let r = get(gw.addr, "/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_content_type(&r);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["id"], MODEL);
    assert_eq!(data[0]["object"], "model");
    let one = get(gw.addr, &format!("/v1/models/{MODEL}")).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json(), data[0]);
    let missing = get(gw.addr, "/v1/models/gpt-4o").await;
    assert_openai_error(&missing, 404, "invalid_request_error", "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_models_are_listed_and_forwarded() {
    let gw = Gateway::start_with(|c| {
        c.openai.models = vec!["local-llama".into(), "gpt-4o-mini".into()];
    })
    .await;
    let v = get(gw.addr, "/v1/models").await.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["local-llama", "gpt-4o-mini"]);
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));
    let one = get(gw.addr, "/v1/models/gpt-4o-mini").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "gpt-4o-mini");
    // `openai.models` replaces the default list.
    let r = get(gw.addr, &format!("/v1/models/{MODEL}")).await;
    assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");
    let r = completions(&gw, None, &user_only("hi")).await;
    assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");

    // A listed model is what goes upstream, and what the answer names.
    let mut body = user_only("hi");
    body["model"] = json!("local-llama");
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "local-llama");
    assert_eq!(gw.mock.recorded()[0].body["model"], "local-llama");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_rate_limit_covers_chat_and_v1() {
    let gw = Gateway::start_with(|c| {
        c.rate_limit.messages_per_minute = NonZeroU32::new(3).expect("nonzero");
    })
    .await;
    let id = new_session(gw.addr).await;

    let r = chat(gw.addr, &id, "one").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    let r = completions(&gw, Some(&id), &user_only("two")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    let mut s = open_completions(&gw, Some(&id), &streamed(user_only("three"))).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-ratelimit-remaining"), Some("0"));
    chunks_until_done(&mut s).await;

    // The fourth is refused on either API, streamed or not.
    let limited = "Rate limit exceeded: 3 messages per minute";
    let retry_after = |r: &Resp| {
        let secs: u64 = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"))
            .parse()
            .expect("whole seconds");
        assert!(secs >= 1);
    };
    let r = chat(gw.addr, &id, "four").await;
    r.assert_error(429, limited);
    retry_after(&r);
    let r = open_stream(
        gw.addr,
        "/chat/",
        &[],
        &json!({"session_id": id, "role": "user", "content": "four", "stream": true}).to_string(),
    )
    .await
    .into_resp()
    .await;
    r.assert_error(429, limited);
    retry_after(&r);
    for body in [user_only("four"), streamed(user_only("four"))] {
        let r = completions(&gw, Some(&id), &body).await;
        assert_openai_error(&r, 429, "requests", "rate_limit_exceeded");
        retry_after(&r);
    }
    assert_eq!(
        gw.mock.request_count(),
        3,
        "refused turns are not forwarded"
    );
    assert_eq!(messages(gw.addr, &id).await.len(), 6);
    // The limit is per session: stateless requests are not counted
    // against it, and another session has its own.
    assert_eq!(completions(&gw, None, &user_only("free")).await.status, 200);
    let other = new_session(gw.addr).await;
    let r = completions(&gw, Some(&other), &user_only("mine")).await;
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_is_an_error_chunk_without_done_and_stores_nothing() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    for (session, fault) in [
        (None, StreamFault::DropAfter(2)),
        (Some(id.as_str()), StreamFault::DropAfter(2)),
        (Some(id.as_str()), StreamFault::MalformedAfter(2)),
    ] {
        gw.mock.push(
            StreamScript::pieces(["one ", "two ", "three"])
                .with_fault(fault)
                .into(),
        );
        let mut s = open_completions(&gw, session, &streamed(user_only("count"))).await;
        assert_eq!(s.status, 200);
        let (events, broke) = s.rest().await;
        assert!(broke.is_none(), "{fault:?}: {broke:?}");
        assert!(
            events.iter().all(|e| e.data != "[DONE]"),
            "{fault:?}: a cut answer must not end in [DONE]: {events:?}"
        );
        assert_eq!(events.len(), 4, "{fault:?}: {events:?}");
        let chunks: Vec<Value> = events.iter().map(SseEvent::json).collect();
        assert_eq!(content_of(&chunks[..3]), "one two ");
        let last = &chunks[3];
        assert_eq!(last.as_object().unwrap().len(), 1, "{last}");
        let e = &last["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{last}"
        );
        assert_eq!(e["type"], "server_error", "{last}");
        assert_eq!(e["code"], "upstream_error", "{last}");
    }
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
    assert_eq!(
        get(gw.addr, &format!("/session/{id}")).await.json()["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_before_the_stream_is_an_ordinary_openai_error() {
    let gw = Gateway::start().await;
    for _ in 0..3 {
        gw.mock.push(Reply::status(503));
    }
    let r = open_completions(&gw, None, &streamed(user_only("x")))
        .await
        .into_resp()
        .await;
    let e = assert_openai_error(&r, 502, "server_error", "upstream_error");
    assert!(e["message"].as_str().unwrap().contains("503"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_client_that_leaves_cancels_the_upstream_and_stores_nothing() {
    let gw = Gateway::start_with(|c| {
        c.rate_limit.messages_per_minute = NonZeroU32::new(3).expect("nonzero");
    })
    .await;
    let id = new_session(gw.addr).await;
    // Stateless first: nothing to store, but the upstream must be let go.
    gw.mock.push(
        StreamScript::pieces(["left ", "behind"])
            .with_fault(StreamFault::StallAfter(1))
            .into(),
    );
    let mut s = open_completions(&gw, None, &streamed(user_only("bye"))).await;
    assert_eq!(s.status, 200);
    s.expect_event().await; // the role chunk
    let c = s.expect_event().await.json();
    assert_eq!(c["choices"][0]["delta"]["content"], "left ");
    s.disconnect();
    let mock = &gw.mock;
    wait_until(
        Duration::from_secs(10),
        "the stateless upstream request to be cancelled",
        || {
            let n = mock.disconnects();
            async move { n == 1 }
        },
    )
    .await;

    // Session-bound.
    gw.mock.push(
        StreamScript::pieces(["half ", "an ", "answer"])
            .with_fault(StreamFault::StallAfter(1))
            .into(),
    );
    let mut s = open_completions(&gw, Some(&id), &streamed(user_only("go"))).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-ratelimit-remaining"), Some("2"));
    s.expect_event().await; // the role chunk
    let c = s.expect_event().await.json();
    assert_eq!(c["choices"][0]["delta"]["content"], "half ");
    s.disconnect();
    wait_until(
        Duration::from_secs(10),
        "the upstream request to be cancelled",
        || {
            let n = mock.disconnects();
            async move { n == 2 }
        },
    )
    .await;
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
    let r = completions(&gw, Some(&id), &user_only("again")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("1"),
        "the token stays spent"
    );
    assert_eq!(
        gw.mock.recorded().last().unwrap().body["messages"],
        json!([{"role": "user", "content": "again"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_on_v1_take_the_openai_shape_too() {
    let gw = Gateway::start_with(|c| {
        c.server.max_v1_body_bytes = std::num::NonZeroUsize::new(1024).expect("nonzero");
    })
    .await;
    let big = user_only(&"x".repeat(2000));
    let r = completions(&gw, None, &big).await;
    assert_openai_error(&r, 413, "invalid_request_error", "invalid_request");
    let r = get(gw.addr, COMPLETIONS).await;
    assert_openai_error(&r, 405, "invalid_request_error", "method_not_allowed");
    assert_eq!(gw.mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_12_parallel_turns_on_both_apis_exactly_5_pass() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let id = id.clone();
            tokio::spawn(async move {
                let text = format!("parallel {i}");
                let (path, headers, body, stream) = match i % 4 {
                    0 => (
                        "/chat/",
                        vec![],
                        json!({"session_id": id, "role": "user", "content": text}),
                        false,
                    ),
                    1 => (
                        "/chat/",
                        vec![],
                        json!({"session_id": id, "role": "user", "content": text, "stream": true}),
                        true,
                    ),
                    2 => (
                        COMPLETIONS,
                        vec![("x-session-id", id.clone())],
                        user_only(&text),
                        false,
                    ),
                    _ => (
                        COMPLETIONS,
                        vec![("x-session-id", id.clone())],
                        streamed(user_only(&text)),
                        true,
                    ),
                };
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut s = open_stream(addr, path, &headers, &body.to_string()).await;
                if s.status == 200 && stream {
                    // A stream that passed must run to its proper end.
                    let (events, broke) = s.rest().await;
                    assert!(broke.is_none(), "{broke:?}");
                    let last = events.last().expect("events");
                    assert!(last.is("done") || last.data == "[DONE]", "{events:?}");
                    200
                } else {
                    s.into_resp().await.status
                }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(gw.mock.request_count(), 5);
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 10);
    // Turns were never interleaved: each user message is followed by its
    // own reply.
    for pair in stored.chunks(2) {
        assert_eq!(pair[0]["role"], "user");
        assert_eq!(pair[1]["role"], "assistant");
        assert_eq!(
            pair[1]["content"],
            format!("Echo: {}", pair[0]["content"].as_str().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_model_with_a_slash_in_its_id_can_be_retrieved() {
    // vLLM and other OpenAI-compatible servers name models after their
    // Hugging Face repository, so `openai.models` holds ids with a slash.
    let model = "meta-llama/Llama-3-8B-Instruct";
    let gw = Gateway::start_with(|c| c.openai.models = vec![model.into()]).await;
    let listed = get(gw.addr, "/v1/models").await.json();
    assert_eq!(listed["data"][0]["id"], model);
    // As SDKs send it (the id percent-encoded as one path segment), and as
    // written by hand.
    for path in [
        "/v1/models/meta-llama%2FLlama-3-8B-Instruct",
        "/v1/models/meta-llama/Llama-3-8B-Instruct",
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), listed["data"][0], "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_v1_stream_ends_with_an_upstream_timeout_error_chunk() {
    let gw =
        Gateway::start_with(|c| c.openai.stream_idle_timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(
        StreamScript::pieces(["so ", "far"])
            .with_fault(StreamFault::StallAfter(1))
            .into(),
    );
    let mut s = open_completions(&gw, Some(&id), &streamed(user_only("wait"))).await;
    assert_eq!(s.status, 200);
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert!(events.iter().all(|e| e.data != "[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events.iter().map(SseEvent::json).collect();
    assert_eq!(chunks.len(), 3, "{chunks:#?}");
    assert_eq!(content_of(&chunks[..2]), "so ");
    assert_eq!(chunks[2]["error"]["type"], "server_error", "{}", chunks[2]);
    assert_eq!(
        chunks[2]["error"]["code"], "upstream_timeout",
        "{}",
        chunks[2]
    );
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
}
