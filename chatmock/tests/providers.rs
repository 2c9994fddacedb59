//! The mock as one provider among several: a prompt cache of its own that
//! reports `cached_tokens` for the part of a prompt it has seen before,
//! and a fault it answers every request with until told otherwise.

use bytes::Bytes;
use chatmock::{MockOpenAi, Reply};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// One request over a fresh loopback connection: the status and the body
/// as JSON (`Null` when it is not JSON).
async fn post(mock: &MockOpenAi, body: &Value) -> (u16, Value) {
    let tcp = TcpStream::connect(mock.addr()).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post("/v1/chat/completions")
        .header("host", "mock")
        .header("content-type", "application/json")
        .header("api-key", "k1")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn cached(reply: &Value) -> u64 {
    reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens")
}

#[tokio::test]
async fn a_prompt_prefix_seen_before_is_reported_cached() {
    let mock = MockOpenAi::start().await;
    let system = json!({"role": "system", "content": "x".repeat(400)});
    let first = json!({"model": "m", "messages": [system, {"role": "user", "content": "hi"}]});
    // Off by default: a reply depends on its request alone.
    let (_, reply) = post(&mock, &first).await;
    assert_eq!(cached(&reply), 0);
    let (_, reply) = post(&mock, &first).await;
    assert_eq!(cached(&reply), 0);

    mock.set_prompt_cache(true);
    let (status, reply) = post(&mock, &first).await;
    assert_eq!(status, 200);
    assert_eq!(cached(&reply), 0, "nothing seen yet");
    // The next turn of the conversation starts with the whole first
    // prompt: the system prompt's 400 characters and "hi" are cached.
    let second = json!({"model": "m", "messages": [system, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Echo: hi"}, {"role": "user", "content": "more"}]});
    let (_, reply) = post(&mock, &second).await;
    assert_eq!(cached(&reply), 402 / 4);
    // Another model is another cache; another prefix shares only what it
    // shares.
    let other_model =
        json!({"model": "n", "messages": [system, {"role": "user", "content": "hi"}]});
    let (_, reply) = post(&mock, &other_model).await;
    assert_eq!(cached(&reply), 0);
    let other_turn =
        json!({"model": "m", "messages": [system, {"role": "user", "content": "bye"}]});
    let (_, reply) = post(&mock, &other_turn).await;
    assert_eq!(cached(&reply), 400 / 4);
    assert_eq!(mock.cached_tokens(), 402 / 4 + 400 / 4);
    // Another mock (another provider) has a cache of its own.
    let other = MockOpenAi::start().await;
    other.set_prompt_cache(true);
    let (_, reply) = post(&other, &second).await;
    assert_eq!(cached(&reply), 0);
}

#[tokio::test]
async fn a_fault_answers_every_request_until_lifted() {
    let mock = MockOpenAi::start().await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    mock.push(Reply::Text("scripted".into()));
    mock.fail_all(Some(Reply::Status {
        status: 429,
        retry_after: Some(5),
    }));
    for _ in 0..3 {
        let (status, reply) = post(&mock, &body).await;
        assert_eq!(status, 429);
        assert_eq!(reply["error"]["message"], "scripted failure");
    }
    mock.fail_all(None);
    // The script waited behind the fault.
    let (status, reply) = post(&mock, &body).await;
    assert_eq!(status, 200);
    assert_eq!(reply["choices"][0]["message"]["content"], "scripted");
    assert_eq!(mock.request_count(), 4);
    // Every header is recorded, an `api-key` among them.
    let headers = &mock.recorded()[0].headers;
    assert!(
        headers.iter().any(|(k, v)| k == "api-key" && v == "k1"),
        "{headers:?}"
    );
}
