//! docs/openai.md, faithful by default: `/v1` forwards what a client sent and
//! relays what the upstream answered, tools, parts, reasoning models and
//! vendor fields included; a session runs an agent's tool loop and stores
//! it whole; upstream refusals of the request keep their status and body;
//! bodies up to `server.max_v1_body_bytes`.

use std::num::NonZeroUsize;

use chatmock::Reply;
use serde_json::{json, Value};

use crate::support::*;

const MODEL: &str = "gpt-3.5-turbo";
const COMPLETIONS: &str = "/v1/chat/completions";

async fn completions(gw: &Gateway, session: Option<&str>, body: &Value) -> Resp {
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    post_with(gw.addr, COMPLETIONS, &headers, &body.to_string()).await
}

/// The `data:` payloads of a `/v1` stream up to `[DONE]`, which must end it.
async fn chunks(gw: &Gateway, session: Option<&str>, body: &Value) -> Vec<Value> {
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    let mut s = open_stream(gw.addr, COMPLETIONS, &headers, &body.to_string()).await;
    assert_eq!(s.status, 200);
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(last.data, "[DONE]", "{events:?}");
    rest.iter().map(SseEvent::json).collect()
}

/// The same request sent to the mock directly: what the upstream itself
/// answers, to compare with what the gateway relays.
async fn direct(gw: &Gateway, body: &Value) -> Vec<u8> {
    let body = bytes::Bytes::from(body.to_string());
    try_send(
        gw.mock.addr(),
        hyper::Method::POST,
        "/v1/chat/completions",
        &[],
        Some(body),
    )
    .await
    .expect("the mock answers")
    .body
    .to_vec()
}

/// Joins streamed chunks back into choice 0's message, as an SDK does.
fn reassemble(chunks: &[Value]) -> Value {
    let mut m = json!({"role": "assistant", "content": null});
    let mut calls: Vec<Value> = Vec::new();
    for c in chunks {
        let Some(choice) = c["choices"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["index"] == 0))
        else {
            continue;
        };
        let d = &choice["delta"];
        for key in ["content", "refusal", "reasoning_content"] {
            if let Some(piece) = d[key].as_str() {
                let so_far = m[key].as_str().unwrap_or("").to_owned();
                m[key] = json!(so_far + piece);
            }
        }
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            let at = call["index"].as_u64().unwrap() as usize;
            while calls.len() <= at {
                calls.push(json!({"function": {"arguments": ""}}));
            }
            for key in ["id", "type"] {
                if let Some(v) = call.get(key) {
                    calls[at][key] = v.clone();
                }
            }
            if let Some(name) = call["function"].get("name") {
                calls[at]["function"]["name"] = name.clone();
            }
            let so_far = calls[at]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned();
            calls[at]["function"]["arguments"] =
                json!(so_far + call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    if !calls.is_empty() {
        m["tool_calls"] = json!(calls);
    }
    m
}

/// A data URL of about `bytes` bytes.
fn image(bytes: usize) -> String {
    format!("data:image/png;base64,{}", "A".repeat(bytes))
}

/// A request with every field docs/openai.md lists and messages of every role
/// and shape.
fn everything() -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Prefer metric units."}]},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is in this picture, and what do you hear?"},
                {"type": "image_url", "image_url": {"url": image(64), "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
            ]},
            {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "function", "name": "legacy", "content": "{}"},
            {"role": "assistant", "content": "It is sunny.", "name": "bot"},
            {"role": "user", "content": "And tomorrow?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "functions": [{"name": "legacy", "parameters": {"type": "object"}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true,
            "schema": {"type": "object", "properties": {"forecast": {"type": "string"}}, "required": ["forecast"], "additionalProperties": false}}},
        "logprobs": true,
        "top_logprobs": 2,
        "n": 2,
        "seed": 42,
        "stop": ["\n\n"],
        "logit_bias": {"50256": -100},
        "reasoning_effort": "low",
        "max_completion_tokens": 300,
        "modalities": ["text"],
        "audio": null,
        "prediction": {"type": "content", "content": "Sunny"},
        "metadata": {"app": "tests"},
        "store": false,
        "service_tier": "auto",
        "user": "user-1",
        "top_k": 40,
        "repetition_penalty": 1.1,
        "chat_template_kwargs": {"enable_thinking": false},
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "top_p": 0.9
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_reaches_the_upstream_as_sent_whole_and_streamed() {
    let gw = Gateway::start().await;
    let body = everything();
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = gw.mock.recorded()[0].body.clone();
    assert_eq!(
        sent, body,
        "byte for byte as JSON: nothing dropped, renamed or added"
    );
    assert!(
        sent.get("temperature").is_none(),
        "no default temperature on /v1"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    chunks(&gw, None, &streamed).await;
    let sent = gw.mock.recorded()[1].body.clone();
    let mut expected = streamed;
    // The one addition the contract names: usage asked of a stream.
    expected["stream_options"] = json!({"include_usage": true});
    assert_eq!(sent, expected);

    // The client's own stream options are kept beside it.
    let mut own = body;
    own["stream"] = json!(true);
    own["stream_options"] = json!({"include_usage": false, "include_obfuscation": false});
    chunks(&gw, None, &own).await;
    assert_eq!(
        gw.mock.recorded()[2].body["stream_options"],
        json!({"include_usage": true, "include_obfuscation": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_back_as_the_upstream_sent_them_whole_and_streamed() {
    let gw = Gateway::start().await;
    let reply = json!({
        "content": null,
        "reasoning_content": "The user wants the weather; call the tool.",
        "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}},
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": "{\"zone\": \"Europe/Paris\"}"}}
        ]
    });
    let mut body = json!({"model": MODEL, "n": 2, "logprobs": true,
        "messages": [{"role": "user", "content": "Weather and time in Paris?"}]});

    // Whole: the very bytes the upstream sent (every choice, logprobs,
    // reasoning, usage details, fingerprint), `content: null` a success.
    gw.mock.push(Reply::Message(reply.clone()));
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.mock.push(Reply::Message(reply.clone()));
    assert_eq!(r.body.to_vec(), direct(&gw, &body).await);
    let v = r.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["tool_calls"][1]["id"], "call_t");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(v["usage"]["completion_tokens_details"].is_object(), "{v}");

    // Streamed: the upstream's chunks, each relayed as it came.
    body["stream"] = json!(true);
    gw.mock.push(Reply::Message(reply.clone()));
    let relayed = chunks(&gw, None, &body).await;
    gw.mock.push(Reply::Message(reply.clone()));
    let own: Vec<Value> = String::from_utf8(direct(&gw, &body).await)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(relayed, own);
    let message = reassemble(&relayed);
    assert_eq!(
        message["tool_calls"], reply["tool_calls"],
        "split calls join up"
    );
    assert_eq!(message["reasoning_content"], reply["reasoning_content"]);
    assert!(
        relayed.iter().any(|c| c["choices"][0]["index"] == 1),
        "both choices"
    );

    // A refusal, whole and streamed.
    let refusal = json!({"content": null, "refusal": "I can't help with that."});
    gw.mock.push(Reply::Message(refusal.clone()));
    body["stream"] = json!(false);
    let v = completions(&gw, None, &body).await.json();
    assert_eq!(
        v["choices"][0]["message"]["refusal"],
        "I can't help with that."
    );
    gw.mock.push(Reply::Message(refusal));
    body["stream"] = json!(true);
    let message = reassemble(&chunks(&gw, None, &body).await);
    assert_eq!(message["refusal"], "I can't help with that.");
}

/// A session-bound tool loop, as an agent runs it: the question with
/// tools, the model's call, the tool's result, the final answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_runs_through_a_session_and_is_stored_whole() {
    let gw = Gateway::start().await;
    let r = post(
        gw.addr,
        "/session/initialize_session",
        r#"{"system_prompt": "You are a weather bot."}"#,
    )
    .await;
    let id = r.json()["session_id"].as_str().unwrap().to_owned();
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Paris"});

    // 1: the question, streamed; the model calls the tool.
    let first = json!({"model": MODEL, "stream": true, "tools": tools, "messages": [question]});
    let call = reassemble(&chunks(&gw, Some(&id), &first).await);
    let calls = call["tool_calls"].as_array().expect("a tool call").clone();
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let call_id = calls[0]["id"].as_str().unwrap().to_owned();

    // Before its result, nothing else is taken: a user message, a result
    // for another call.
    for messages in [
        json!([{"role": "user", "content": "never mind"}]),
        json!([{"role": "tool", "tool_call_id": "call_other", "content": "?"}]),
        json!([{"role": "system", "content": "new rules"}]),
    ] {
        let body = json!({"model": MODEL, "tools": tools, "messages": messages});
        let r = completions(&gw, Some(&id), &body).await;
        assert_eq!(r.status, 400, "{messages}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], "messages");
    }
    assert_eq!(gw.mock.request_count(), 1, "nothing was forwarded");

    // 2: the result; the model answers.
    let result = json!({"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"});
    let second = json!({"model": MODEL, "tools": tools, "messages": [result]});
    let r = completions(&gw, Some(&id), &second).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Tool results: sunny, 21 C"
    );

    // The second call saw the whole loop, and per-request fields went
    // with each request without being stored.
    let sent = &gw.mock.recorded()[1].body;
    let stored_call = json!({"role": "assistant", "content": null, "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]});
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "You are a weather bot."}, question, stored_call, result])
    );
    assert_eq!(sent["tools"], tools);

    // Four messages, in order: text ones in the seed's shape, the others
    // with their extra fields.
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 4, "{stored:#?}");
    let without_time = |m: &Value| {
        let mut m = m.clone();
        assert_timestamp(&m["created_at"]);
        m.as_object_mut().unwrap().remove("created_at");
        m
    };
    assert_eq!(without_time(&stored[0]), question);
    assert_eq!(without_time(&stored[1]), stored_call);
    assert_eq!(without_time(&stored[2]), result);
    assert_eq!(
        without_time(&stored[3]),
        json!({"role": "assistant", "content": "Tool results: sunny, 21 C"})
    );

    // And the seed API carries on the same conversation.
    let r = chat(gw.addr, &id, "thanks").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = &gw.mock.recorded()[2].body["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 6, "{sent}");
    assert_eq!(sent[2], stored_call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_parts_a_tool_call_from_its_results() {
    let gw = Gateway::start_with(|c| {
        c.openai.context_tokens = NonZeroUsize::new(200).unwrap();
        c.rate_limit.messages_per_minute = std::num::NonZeroU32::new(100).unwrap();
    })
    .await;
    let id = new_session(gw.addr).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    // A question and a call (whose arguments quote it) that each cost
    // nearly the whole budget, then its result, then talk.
    let long = "x".repeat(700);
    let ask =
        json!({"model": MODEL, "tools": tools, "messages": [{"role": "user", "content": long}]});
    let call = completions(&gw, Some(&id), &ask).await.json();
    let call_id = call["choices"][0]["message"]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let result = json!({"model": MODEL, "messages": [
        {"role": "tool", "tool_call_id": call_id, "content": "found it"}]});
    let r = completions(&gw, Some(&id), &result).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The call and the question cost more than the budget: the second
    // request still carried the call its result answers.
    let sent = &gw.mock.recorded()[1].body["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 2, "{sent}");
    assert_eq!(sent[0]["tool_calls"][0]["id"], call_id.as_str());
    // A later turn cannot fit the call: the result goes with it.
    let r = chat(gw.addr, &id, "and now?").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = gw.mock.recorded()[2].body["messages"].clone();
    assert!(
        sent.as_array().unwrap().iter().all(|m| m["role"] != "tool"),
        "no result without its call: {sent}"
    );
    assert_eq!(
        sent.as_array().unwrap().last().unwrap()["content"],
        "and now?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusals_of_the_request_keep_their_status_and_body() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    for status in [400, 404, 413, 422] {
        for session in [None, Some(id.as_str())] {
            gw.mock.push(Reply::status(status));
            let before = gw.mock.request_count();
            let r = completions(&gw, session, &body).await;
            assert_eq!(r.status, status, "{}", r.text());
            assert_eq!(
                r.json(),
                json!({"error": {"message": "scripted failure", "type": "mock_error", "param": null,
                    "code": status.to_string()}}),
                "the upstream's body, as it came"
            );
            assert_eq!(gw.mock.request_count(), before + 1, "not retried");
        }
    }
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
    // Streamed too: before the first byte, an ordinary error.
    gw.mock.push(Reply::status(400));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = open_stream(gw.addr, COMPLETIONS, &[], &streamed.to_string())
        .await
        .into_resp()
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "scripted failure");
    // The upstream refusing the gateway's own key is the gateway's
    // problem, said as such.
    gw.mock.push(Reply::status(401));
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("credentials"), "{message}");
    // On /chat/ the gateway wrote the request, so a refusal of it is the
    // gateway's problem: 502, naming what the upstream said.
    gw.mock.push(Reply::status(404));
    let r = chat(gw.addr, &id, "hello").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let detail = r.detail().as_str().unwrap().to_owned();
    assert!(detail.contains("status 404"), "{detail}");
    assert!(messages(gw.addr, &id).await.is_empty(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_turn_spends_no_token_and_legacy_functions_loop_too() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    // The older `functions` API: the reply calls a function ...
    let functions = json!([{"name": "add", "parameters": {"type": "object"}}]);
    gw.mock.push(Reply::Message(json!({"content": null,
        "function_call": {"name": "add", "arguments": "{\"a\":1}"}})));
    // (streamed, so its pieces are put back together to be stored) ...
    let ask = json!({"model": MODEL, "functions": functions, "stream": true,
        "messages": [{"role": "user", "content": "1+1?"}]});
    let mut s = open_stream(
        gw.addr,
        COMPLETIONS,
        &[("x-session-id", &id)],
        &ask.to_string(),
    )
    .await;
    assert_eq!(s.status, 200);
    let left: u32 = s.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let name = events.iter().filter(|e| e.data != "[DONE]").find_map(|e| {
        e.json()["choices"][0]["delta"]["function_call"]["name"]
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(name.as_deref(), Some("add"), "{events:?}");
    // ... which only its result may follow; refusing anything else spends
    // no token and forwards nothing.
    for wrong in [
        json!([{"role": "user", "content": "never mind"}]),
        json!([{"role": "function", "name": "other", "content": "2"}]),
    ] {
        let body = json!({"model": MODEL, "messages": wrong});
        let r = completions(&gw, Some(&id), &body).await;
        assert_eq!(r.status, 400, "{wrong}: {}", r.text());
    }
    assert_eq!(gw.mock.request_count(), 1);
    let answer = json!({"role": "function", "name": "add", "content": "2"});
    let body = json!({"model": MODEL, "functions": functions, "messages": [answer]});
    let r = completions(&gw, Some(&id), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let now: u32 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert_eq!(now, left - 1, "only the turns that ran took a token");
    let sent = &gw.mock.recorded()[1].body["messages"];
    assert_eq!(sent.as_array().unwrap().len(), 3, "{sent}");
    assert_eq!(
        sent[1],
        json!({"role": "assistant", "content": null,
            "function_call": {"name": "add", "arguments": "{\"a\":1}"}})
    );
    assert_eq!(sent[2], answer);
    assert_eq!(messages(gw.addr, &id).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_reaches_the_client_but_not_the_history() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let ask = json!({"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}]});
    for stream in [false, true] {
        gw.mock.push(Reply::Message(json!({"content": "4",
            "reasoning_content": "two and two make four"})));
        let mut body = ask.clone();
        body["stream"] = json!(stream);
        let said = if stream {
            reassemble(&chunks(&gw, Some(&id), &body).await)
        } else {
            let r = completions(&gw, Some(&id), &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["choices"][0]["message"].clone()
        };
        assert_eq!(said["reasoning_content"], "two and two make four", "{said}");
    }
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 4);
    for reply in [&stored[1], &stored[3]] {
        assert_eq!(reply["content"], "4");
        assert!(reply.get("reasoning_content").is_none(), "{reply}");
    }
    // With `n` > 1, every choice comes back and one reply is stored.
    let mut body = ask.clone();
    body["n"] = json!(2);
    let r = completions(&gw, Some(&id), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 2);
    assert_eq!(messages(gw.addr, &id).await.len(), 6);
    let sent = &gw.mock.recorded()[2].body["messages"];
    assert!(
        sent.as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("reasoning_content").is_none()),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_image_passes_and_17_mib_is_413() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let with_image = |bytes: usize| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image(bytes)}}]}]})
    };
    let r = completions(&gw, None, &with_image(5 << 20)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.mock.recorded()[0].body, with_image(5 << 20));
    // In a session, stored whole and sent again with the next turn.
    let r = completions(&gw, Some(&id), &with_image(5 << 20)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat(gw.addr, &id, "and?").await.status, 200);
    let sent = &gw.mock.recorded()[2].body["messages"];
    assert_eq!(sent[0], with_image(5 << 20)["messages"][0]);

    let (status, answer) = refused_while_sending(&gw, &with_image(17 << 20).to_string()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("invalid_request_error"), "{answer}");
    assert_eq!(gw.mock.request_count(), 3);
    // The seed API keeps its own, smaller bound.
    let big = json!({"session_id": id, "role": "user", "content": "x".repeat(70_000)});
    assert_eq!(post(gw.addr, "/chat/", &big.to_string()).await.status, 413);
}

/// Posts `body` to `/v1/chat/completions` over a raw connection, reading
/// the answer while the body is still being written: a gateway that
/// refuses a body by its declared length answers before it has read it,
/// and may close the connection on the rest. The status and the answer.
async fn refused_while_sending(gw: &Gateway, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {COMPLETIONS} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let payload = [head.into_bytes(), body.as_bytes().to_vec()].concat();
    let writer = tokio::spawn(async move {
        // The gateway may stop reading: that is the point.
        let _ = write.write_all(&payload).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok());
                if length.is_some_and(|n| rest.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read_all)
        .await
        .expect("an answer in time");
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_reply_in_a_session_is_502_and_stores_nothing() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    gw.mock.push(Reply::Message(json!({"content": null})));
    let r = completions(&gw, Some(&id), &body).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(messages(gw.addr, &id).await.is_empty());
    // Streamed: the error event, never [DONE].
    gw.mock.push(Reply::Message(json!({"content": null})));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut s = open_stream(
        gw.addr,
        COMPLETIONS,
        &[("x-session-id", &id)],
        &streamed.to_string(),
    )
    .await;
    let (events, _) = s.rest().await;
    assert!(events.iter().all(|e| e.data != "[DONE]"), "{events:?}");
    assert!(
        events.last().unwrap().json()["error"].is_object(),
        "{events:?}"
    );
    assert!(messages(gw.addr, &id).await.is_empty());
    // Stateless, the same reply is the client's to read.
    gw.mock.push(Reply::Message(json!({"content": null})));
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drop_and_deny_params() {
    let gw = Gateway::start_with(|c| {
        c.openai.drop_params = vec!["logit_bias".into(), "top_k".into()];
        c.openai.deny_params = vec!["service_tier".into()];
    })
    .await;
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"1": 1}, "top_k": 3, "seed": 1});
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = &gw.mock.recorded()[0].body;
    assert!(
        sent.get("logit_bias").is_none() && sent.get("top_k").is_none(),
        "{sent}"
    );
    assert_eq!(sent["seed"], 1);
    body["service_tier"] = json!("flex");
    let r = completions(&gw, None, &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "service_tier");
    assert_eq!(gw.mock.request_count(), 1);
    // The seed API's turns carry the configured temperature; /v1 none.
    let id = new_session(gw.addr).await;
    assert_eq!(chat(gw.addr, &id, "warm?").await.status, 200);
    assert_eq!(gw.mock.recorded()[1].body["temperature"], json!(0.7));
}
