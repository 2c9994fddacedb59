//! The Responses API over sessions (SPEC §12, docs/openai.md): what a
//! chain sends upstream (every earlier turn, tool calls included, never an
//! earlier response's instructions), forks that leave a chain intact, two
//! continuations of one response that never share a history, ownership,
//! expiry, and streams that store nothing when they fail or the client
//! leaves.

use std::time::Duration;

use chatgate::config::AuthMode;
use chatmock::{StreamFault, StreamGate, StreamScript};
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;
use crate::support::*;

const MODEL: &str = "gpt-3.5-turbo";

async fn create_as(gw: &Gateway, bearer: Option<&str>, body: Value) -> Resp {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    post_with(gw.addr, "/v1/responses", &headers, &body.to_string()).await
}

/// A response made whole, which must succeed; its object.
async fn respond(gw: &Gateway, body: Value) -> Value {
    let r = create_as(gw, None, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The messages of the last request the mock was sent.
fn last_upstream_messages(gw: &Gateway) -> Value {
    gw.mock.recorded().last().expect("a request upstream").body["messages"].clone()
}

fn text(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_sends_every_earlier_turn_and_never_an_earlier_instruction() {
    let gw = Gateway::start().await;
    gw.mock.set_recording(true);
    let first = respond(
        &gw,
        json!({"model": MODEL, "input": "one", "instructions": "FIRST RULES"}),
    )
    .await;
    assert_eq!(
        last_upstream_messages(&gw),
        json!([text("system", "FIRST RULES"), text("user", "one")])
    );
    // Continued the moment it returned.
    let second = respond(
        &gw,
        json!({"model": MODEL, "input": "two", "previous_response_id": first["id"]}),
    )
    .await;
    let third = respond(
        &gw,
        json!({"model": MODEL, "input": "three", "previous_response_id": second["id"], "instructions": "THIRD RULES"}),
    )
    .await;
    assert_eq!(
        last_upstream_messages(&gw),
        json!([
            text("system", "THIRD RULES"),
            text("user", "one"),
            text("assistant", "Echo: one"),
            text("user", "two"),
            text("assistant", "Echo: two"),
            text("user", "three"),
        ])
    );
    assert_eq!(third["previous_response_id"], second["id"]);
    assert_eq!(third["output"][0]["content"][0]["text"], "Echo: three");
    // What was returned is what is stored.
    let got = get(
        gw.addr,
        &format!("/v1/responses/{}", third["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_shares_the_prefix_and_leaves_the_chain_intact() {
    let gw = Gateway::start().await;
    gw.mock.set_recording(true);
    let first = respond(&gw, json!({"model": MODEL, "input": "one"})).await;
    let second = respond(
        &gw,
        json!({"model": MODEL, "input": "two", "previous_response_id": first["id"]}),
    )
    .await;
    let fork = respond(
        &gw,
        json!({"model": MODEL, "input": "other", "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(
        last_upstream_messages(&gw),
        json!([
            text("user", "one"),
            text("assistant", "Echo: one"),
            text("user", "other")
        ])
    );
    respond(
        &gw,
        json!({"model": MODEL, "input": "more", "previous_response_id": fork["id"]}),
    )
    .await;
    assert_eq!(
        last_upstream_messages(&gw),
        json!([
            text("user", "one"),
            text("assistant", "Echo: one"),
            text("user", "other"),
            text("assistant", "Echo: other"),
            text("user", "more"),
        ])
    );
    respond(
        &gw,
        json!({"model": MODEL, "input": "three", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(
        last_upstream_messages(&gw),
        json!([
            text("user", "one"),
            text("assistant", "Echo: one"),
            text("user", "two"),
            text("assistant", "Echo: two"),
            text("user", "three"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_continuations_of_one_response_never_share_a_history() {
    let gw = Gateway::start().await;
    gw.mock.set_recording(true);
    let first = respond(&gw, json!({"model": MODEL, "input": "one"})).await;
    // Both find the response at its session's head; one appends there,
    // the other must see that under its hold on the session and fork.
    gw.mock.set_latency(Duration::from_millis(200));
    let id = first["id"].clone();
    let (a, b) = tokio::join!(
        respond(
            &gw,
            json!({"model": MODEL, "input": "left", "previous_response_id": id})
        ),
        respond(
            &gw,
            json!({"model": MODEL, "input": "right", "previous_response_id": id})
        ),
    );
    assert_ne!(a["id"], b["id"]);
    let continuations: Vec<Value> = gw
        .mock
        .recorded()
        .iter()
        .skip(1)
        .map(|r| r.body["messages"].clone())
        .collect();
    assert_eq!(continuations.len(), 2, "one upstream call each");
    for messages in &continuations {
        let m = messages.as_array().unwrap();
        assert_eq!(
            m.len(),
            3,
            "only the shared prefix and its own input: {messages}"
        );
        assert_eq!(
            m[..2],
            [text("user", "one"), text("assistant", "Echo: one")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_call_in_the_middle_of_a_chain_goes_upstream_again() {
    let gw = Gateway::start().await;
    gw.mock.set_recording(true);
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let first = respond(
        &gw,
        json!({"model": MODEL, "input": "Paris", "tools": tools}),
    )
    .await;
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call", "{first}");
    assert_eq!(last_upstream_messages(&gw), json!([text("user", "Paris")]),);
    assert_eq!(
        gw.mock.recorded().last().unwrap().body["tools"][0]["function"]["name"],
        "get_weather",
        "a function tool goes upstream in the chat-completions shape"
    );
    let call_id = call["call_id"].as_str().unwrap();
    let second = respond(
        &gw,
        json!({"model": MODEL, "previous_response_id": first["id"], "tools": tools,
               "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]}),
    )
    .await;
    assert_eq!(
        second["output"][0]["content"][0]["text"],
        "Tool results: sunny"
    );
    respond(
        &gw,
        json!({"model": MODEL, "input": "thanks", "previous_response_id": second["id"]}),
    )
    .await;
    let sent = last_upstream_messages(&gw);
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant", "user"]);
    assert_eq!(sent[1]["tool_calls"][0]["id"], call_id);
    assert_eq!(sent[2]["tool_call_id"], call_id);
    assert_eq!(sent[2]["content"], "sunny");
    // Each reads back as it was returned, its items as they were sent.
    for r in [&first, &second] {
        let got = get(
            gw.addr,
            &format!("/v1/responses/{}", r["id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(got.json(), *r);
    }
    let items = get(
        gw.addr,
        &format!(
            "/v1/responses/{}/input_items",
            second["id"].as_str().unwrap()
        ),
    )
    .await
    .json();
    assert_eq!(items["data"][0]["type"], "function_call_output");
    assert_eq!(items["data"][0]["call_id"], call_id);
    assert_eq!(items["data"][0]["output"], "sunny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_response_repeats_neither_text_of_its_turn() {
    let mut gw = Gateway::start().await;
    let input = "a question only the turn's own row should hold";
    let first = respond(
        &gw,
        json!({"model": MODEL, "input": input, "metadata": {"k": "v"}, "temperature": 0.25}),
    )
    .await;
    let id = first["id"].as_str().unwrap().to_owned();
    let reply = first["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(reply.contains(input), "the mock echoes: {first}");
    let got = get(gw.addr, &format!("/v1/responses/{id}")).await;
    assert_eq!(got.json(), first);
    let items = get(gw.addr, &format!("/v1/responses/{id}/input_items"))
        .await
        .json();
    assert_eq!(items["data"][0]["content"][0]["text"], input);
    assert_eq!(items["data"][0]["role"], "user");
    gw.trigger_shutdown();
    gw.wait_stopped().await;
    // What the store keeps beside the turn's messages, read from the file.
    let store = chatcore::SqliteStore::open(gw.dir_path().join("chatgate.db")).expect("open");
    let stored = chatcore::ResponseStore::get_response(&store, &id)
        .await
        .unwrap()
        .expect("stored");
    assert!(!stored.document.contains(input), "{}", stored.document);
    assert!(stored.document.len() < 200, "{}", stored.document);
    assert_eq!(stored.messages.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_finds_no_response() {
    let gw = gateway(AuthMode::Required, |_| {}).await;
    let (alice, bob) = (user_jwt("alice"), user_jwt("bob"));
    let r = create_as(&gw, Some(&alice), json!({"model": MODEL, "input": "mine"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let as_ = |token: &str| vec![("authorization".to_owned(), format!("Bearer {token}"))];
    for (method, path) in [
        (Method::GET, format!("/v1/responses/{id}")),
        (Method::GET, format!("/v1/responses/{id}/input_items")),
        (Method::DELETE, format!("/v1/responses/{id}")),
    ] {
        let headers = as_(&bob);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = try_send(gw.addr, method.clone(), &path, &headers, None)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        let headers = as_(&alice);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if method == Method::GET {
            let r = try_send(gw.addr, method, &path, &headers, None)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
    }
    let r = create_as(
        &gw,
        Some(&bob),
        json!({"model": MODEL, "input": "hers?", "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "previous_response_not_found");
    // Without a credential there is no caller at all.
    let r = create_as(&gw, None, json!({"model": MODEL, "input": "x"})).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_expires_with_its_session() {
    let gw = Gateway::start_with(|c| c.session.idle_timeout = Duration::from_secs(1)).await;
    let first = respond(&gw, json!({"model": MODEL, "input": "one"})).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = create_as(
        &gw,
        None,
        json!({"model": MODEL, "input": "late", "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(r.status, 410, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_shares_its_sessions_rate_limit() {
    let gw = Gateway::start_with(|c| {
        c.rate_limit.messages_per_minute = std::num::NonZeroU32::new(2).unwrap()
    })
    .await;
    let first = respond(&gw, json!({"model": MODEL, "input": "one"})).await;
    let second = respond(
        &gw,
        json!({"model": MODEL, "input": "two", "previous_response_id": first["id"]}),
    )
    .await;
    let r = create_as(
        &gw,
        None,
        json!({"model": MODEL, "input": "three", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
}

async fn stream_response(gw: &Gateway, body: Value) -> EventStream {
    let mut body = body;
    body["stream"] = json!(true);
    let s = open_stream(gw.addr, "/v1/responses", &[], &body.to_string()).await;
    assert_eq!(s.status, 200);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_stores_nothing() {
    let gw = Gateway::start().await;
    let gate = StreamGate::new();
    gw.mock.push(
        StreamScript::pieces(["never ", "finished"])
            .with_gate(gate.clone())
            .into(),
    );
    let mut s = stream_response(&gw, json!({"model": MODEL, "input": "go"})).await;
    let created = s.expect_event().await;
    assert!(created.is("response.created"), "{created:?}");
    let id = created.json()["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gate.release(1);
    loop {
        let e = s.expect_event().await;
        if e.is("response.output_text.delta") {
            break;
        }
    }
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
    let r = get(gw.addr, &format!("/v1/responses/{id}")).await;
    assert_eq!(r.status, 404, "nothing stored: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_mid_stream_is_response_failed_and_stores_nothing() {
    let gw = Gateway::start().await;
    gw.mock.push(
        StreamScript::pieces(["fine ", "then ", "broken"])
            .with_fault(StreamFault::MalformedAfter(1))
            .into(),
    );
    let mut s = stream_response(&gw, json!({"model": MODEL, "input": "go"})).await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    let last = events.last().expect("events");
    assert!(last.is("response.failed"), "{events:?}");
    let failed = last.json();
    assert_eq!(failed["response"]["status"], "failed");
    assert!(failed["response"]["error"]["message"].is_string());
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e.json()["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    let id = failed["response"]["id"].as_str().unwrap();
    assert_eq!(
        get(gw.addr, &format!("/v1/responses/{id}")).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_stream_completes_only_once_stored() {
    let gw = Gateway::start().await;
    let mut s = stream_response(&gw, json!({"model": MODEL, "input": "hello"})).await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    let done = events.last().unwrap();
    assert!(done.is("response.completed"), "{events:?}");
    let object = done.json()["response"].clone();
    // Whoever reads it next (another client) finds it, as completed.
    let got = get(
        gw.addr,
        &format!("/v1/responses/{}", object["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), object);
    let items = get(
        gw.addr,
        &format!(
            "/v1/responses/{}/input_items",
            object["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(items.json()["data"][0]["content"][0]["text"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_requests_say_so() {
    let gw = Gateway::start().await;
    for (body, param) in [
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "file_search"}]}),
            "tools",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_x", "conversation": "conv_x"}),
            "conversation",
        ),
    ] {
        let r = create_as(&gw, None, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
    }
    let r = create_as(
        &gw,
        None,
        json!({"model": MODEL, "input": "x", "previous_response_id": "resp_unknown"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = get(gw.addr, "/v1/responses/resp_unknown").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}
