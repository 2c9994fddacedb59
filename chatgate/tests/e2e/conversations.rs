//! Conversations on sessions (SPEC §12): a conversation's items go
//! upstream before each response that joins it, in order; a deleted item
//! is gone from the next request (the hot history forgets it); items
//! added without a reply keep the session's order; another principal
//! finds nothing; purge and delete take a conversation whole.

use chatgate::config::AuthMode;
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;
use crate::support::*;

const MODEL: &str = "gpt-3.5-turbo";

async fn call(gw: &Gateway, method: Method, path: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| bytes::Bytes::from(b.to_string()));
    try_send(
        gw.addr,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("an answer")
}

fn sent(gw: &Gateway) -> Vec<String> {
    gw.mock.recorded().last().expect("a request upstream").body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_items_go_upstream_in_order_and_deleted_ones_do_not() {
    let gw = Gateway::start().await;
    gw.mock.set_recording(true);
    let c = call(
        &gw,
        Method::POST,
        "/v1/conversations",
        Some(json!({"items": [{"role": "user", "content": "seed"}], "metadata": {"k": "v"}})),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text());
    let conv = c.json()["id"].as_str().unwrap().to_owned();
    let r = call(
        &gw,
        Method::POST,
        "/v1/responses",
        Some(json!({"model": MODEL, "input": "one", "conversation": conv})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sent(&gw), ["seed", "one"]);
    assert_eq!(r.json()["conversation"]["id"], conv.as_str());

    let added = call(
        &gw,
        Method::POST,
        &format!("/v1/conversations/{conv}/items"),
        Some(json!({"items": [{"role": "user", "content": "aside"}]})),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let aside = added.json()["data"][0]["id"].as_str().unwrap().to_owned();

    let r = call(
        &gw,
        Method::POST,
        "/v1/responses",
        Some(json!({"model": MODEL, "input": "two", "conversation": conv})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sent(&gw), ["seed", "one", "Echo: one", "aside", "two"]);

    let gone = call(
        &gw,
        Method::DELETE,
        &format!("/v1/conversations/{conv}/items/{aside}"),
        None,
    )
    .await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    let again = call(
        &gw,
        Method::DELETE,
        &format!("/v1/conversations/{conv}/items/{aside}"),
        None,
    )
    .await;
    assert_eq!(again.status, 404);
    let r = call(
        &gw,
        Method::POST,
        "/v1/responses",
        Some(json!({"model": MODEL, "input": "three", "conversation": conv})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        sent(&gw),
        ["seed", "one", "Echo: one", "two", "Echo: two", "three"],
        "the deleted item is gone from the history sent"
    );

    // Paged newest first by default, oldest first on request.
    let page = call(
        &gw,
        Method::GET,
        &format!("/v1/conversations/{conv}/items?limit=2"),
        None,
    )
    .await
    .json();
    assert_eq!(page["data"][0]["content"][0]["text"], "Echo: three");
    assert_eq!(page["has_more"], true);
    let next = call(
        &gw,
        Method::GET,
        &format!(
            "/v1/conversations/{conv}/items?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        ),
        None,
    )
    .await
    .json();
    assert_eq!(next["data"][0]["content"][0]["text"], "Echo: two");
    // The same history through the seed API: one session underneath.
    let session = uuid::Uuid::parse_str(conv.strip_prefix("conv_").unwrap()).unwrap();
    assert_eq!(messages(gw.addr, &session.to_string()).await.len(), 7);

    let d = call(
        &gw,
        Method::DELETE,
        &format!("/v1/conversations/{conv}"),
        None,
    )
    .await;
    assert_eq!(d.json()["deleted"], true);
    assert_eq!(
        call(&gw, Method::GET, &format!("/v1/conversations/{conv}"), None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_finds_no_conversation() {
    let gw = gateway(AuthMode::Required, |_| {}).await;
    let (alice, bob) = (user_jwt("alice"), user_jwt("bob"));
    let with = |t: &str| format!("Bearer {t}");
    let (a, b) = (with(&alice), with(&bob));
    let c = try_send(
        gw.addr,
        Method::POST,
        "/v1/conversations",
        &[("authorization", &a)],
        Some("{}".into()),
    )
    .await
    .unwrap();
    assert_eq!(c.status, 200, "{}", c.text());
    let conv = c.json()["id"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (Method::GET, format!("/v1/conversations/{conv}"), None),
        (Method::GET, format!("/v1/conversations/{conv}/items"), None),
        (
            Method::POST,
            format!("/v1/conversations/{conv}"),
            Some(r#"{"metadata": {}}"#),
        ),
        (
            Method::POST,
            format!("/v1/conversations/{conv}/items"),
            Some(r#"{"items": [{"role": "user", "content": "x"}]}"#),
        ),
        (Method::DELETE, format!("/v1/conversations/{conv}"), None),
    ] {
        let r = try_send(
            gw.addr,
            method.clone(),
            &path,
            &[("authorization", &b)],
            body.map(bytes::Bytes::from),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    let r = post_with(
        gw.addr,
        "/v1/responses",
        &[("authorization", &b)],
        &json!({"model": MODEL, "input": "x", "conversation": conv}).to_string(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = try_send(
        gw.addr,
        Method::GET,
        &format!("/v1/conversations/{conv}"),
        &[("authorization", &a)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_conversation_requests_say_what_is_wrong() {
    let gw = Gateway::start().await;
    for (path, body, status) in [
        ("/v1/conversations", json!({"metadata": [1]}), 400),
        ("/v1/conversations", json!({"items": "x"}), 400),
        (
            "/v1/conversations",
            json!({"items": [{"type": "web_search_call"}]}),
            400,
        ),
        ("/v1/conversations/conv_nope", json!({"metadata": {}}), 404),
        (
            "/v1/conversations/conv_00000000000000000000000000000000/items",
            json!({"items": []}),
            400,
        ),
    ] {
        let r = call(&gw, Method::POST, path, Some(body.clone())).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string());
    }
}
