//! the error table of docs/api.md, row by row: 422 lists, 413, 404, 410, unknown
//! paths and wrong methods. (Upstream rows live in `upstream.rs`, 429 in
//! `rate_limit.rs`.)

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Asserts a FastAPI-style 422 and returns its items.
#[track_caller]
fn assert_validation(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 422, "body: {}", r.text());
    assert_json_content_type(r);
    let v = r.json();
    assert_eq!(v.as_object().unwrap().len(), 1, "only `detail`: {v}");
    let items = v["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("detail is not a list: {v}"));
    assert!(!items.is_empty(), "empty detail list");
    for item in items {
        let obj = item.as_object().unwrap_or_else(|| panic!("item {item}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["loc", "msg", "type"], "{item}");
        let loc = item["loc"]
            .as_array()
            .unwrap_or_else(|| panic!("loc {item}"));
        assert_eq!(loc.first(), Some(&json!("body")), "{item}");
        assert!(!item["msg"].as_str().unwrap_or("").is_empty(), "{item}");
        assert!(!item["type"].as_str().unwrap_or("").is_empty(), "{item}");
    }
    items.clone()
}

/// Whether some item is about body field `field`.
fn names(items: &[Value], field: &str) -> bool {
    items.iter().any(|i| i["loc"] == json!(["body", field]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_validation_errors_are_fastapi_lists() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    // Malformed JSON: the location is a byte offset into the body.
    let items = assert_validation(&post(gw.addr, "/chat/", r#"{"session_id": "#).await);
    assert_eq!(items[0]["type"], "json_invalid");
    assert!(items[0]["loc"][1].is_u64(), "offset expected: {}", items[0]);
    assert_validation(&post(gw.addr, "/chat/", "").await);
    assert_validation(&post(gw.addr, "/chat/", "[1, 2]").await);

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"session_id": id, "role": "user", "content": 5}),
            "content",
        ),
        (
            json!({"session_id": 42, "role": "user", "content": "hi"}),
            "session_id",
        ),
        (json!({"session_id": id, "role": "user"}), "content"),
        (json!({"role": "user", "content": "hi"}), "session_id"),
        (json!({"session_id": id, "content": "hi"}), "role"),
        (
            json!({"session_id": id, "role": "assistant", "content": "hi"}),
            "role",
        ),
        (
            json!({"session_id": id, "role": "system", "content": "hi"}),
            "role",
        ),
        (
            json!({"session_id": id, "role": "user", "content": ""}),
            "content",
        ),
        (
            json!({"session_id": id, "role": "user", "content": "   \n"}),
            "content",
        ),
    ];
    for (body, field) in cases {
        let r = post(gw.addr, "/chat/", &body.to_string()).await;
        let items = assert_validation(&r);
        assert!(
            names(&items, field),
            "{body}: expected an item about {field}: {items:?}"
        );
    }
    let missing =
        assert_validation(&post(gw.addr, "/chat/", &json!({"session_id": id}).to_string()).await);
    assert!(
        names(&missing, "role") && names(&missing, "content"),
        "{missing:?}"
    );
    assert!(
        missing.iter().all(|i| i["type"] == "missing"),
        "{missing:?}"
    );

    // Nothing reached the model, nothing was stored.
    assert_eq!(gw.mock.request_count(), 0);
    assert!(messages(gw.addr, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_and_initialize_validation_errors() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"session_id": id}), "feedback"),
        (json!({"session_id": id, "feedback": ""}), "feedback"),
        (json!({"session_id": id, "feedback": 3}), "feedback"),
        (
            json!({"session_id": id, "feedback": "ok", "rating": 6}),
            "rating",
        ),
        (
            json!({"session_id": id, "feedback": "ok", "rating": 0}),
            "rating",
        ),
        (
            json!({"session_id": id, "feedback": "ok", "rating": "5"}),
            "rating",
        ),
        (json!({"feedback": "ok"}), "session_id"),
    ];
    for (body, field) in cases {
        let items = assert_validation(&post(gw.addr, "/feedback/", &body.to_string()).await);
        assert!(
            names(&items, field),
            "{body}: expected an item about {field}: {items:?}"
        );
    }
    assert_validation(&post(gw.addr, "/feedback/", "{nope").await);

    let init = "/session/initialize_session";
    let items = assert_validation(&post(gw.addr, init, r#"{"metadata": [1]}"#).await);
    assert!(names(&items, "metadata"), "{items:?}");
    let items = assert_validation(&post(gw.addr, init, r#"{"system_prompt": 5}"#).await);
    assert!(names(&items, "system_prompt"), "{items:?}");
    assert_validation(&post(gw.addr, init, "{").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_within_the_body_limit_are_422() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let long = "y".repeat(33_000);
    let body = json!({"session_id": id, "role": "user", "content": long}).to_string();
    let items = assert_validation(&post(gw.addr, "/chat/", &body).await);
    assert!(names(&items, "content"), "{items:?}");
    let init = "/session/initialize_session";
    let items =
        assert_validation(&post(gw.addr, init, &json!({"system_prompt": long}).to_string()).await);
    assert!(names(&items, "system_prompt"), "{items:?}");
    let meta = json!({"metadata": {"blob": "z".repeat(20_000)}}).to_string();
    let items = assert_validation(&post(gw.addr, init, &meta).await);
    assert!(names(&items, "metadata"), "{items:?}");
    assert_eq!(gw.mock.request_count(), 0);
    assert!(messages(gw.addr, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_are_413() {
    let gw = Gateway::start_with(|c| c.server.max_body_bytes = 512.try_into().unwrap()).await;
    let id = new_session(gw.addr).await;
    // Under the limit is fine.
    assert_eq!(chat(gw.addr, &id, &"a".repeat(100)).await.status, 200);

    let big = "b".repeat(4096);
    let chat_body = json!({"session_id": id, "role": "user", "content": big}).to_string();
    let feedback_body = json!({"session_id": id, "feedback": big}).to_string();
    let init_body = json!({"system_prompt": big}).to_string();
    for (path, body) in [
        ("/chat/", &chat_body),
        ("/feedback/", &feedback_body),
        ("/session/initialize_session", &init_body),
    ] {
        let r = post(gw.addr, path, body).await;
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        assert_json_content_type(&r);
        assert!(r.detail().is_string(), "{path}: {}", r.text());
    }

    // A chunked body declares no length: the limit still holds.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /chat/ HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let raw = format!("{head}{:x}\r\n{chat_body}\r\n0\r\n\r\n", chat_body.len());
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "chunked answer: {answer}"
    );
    assert!(answer.contains("\"detail\""), "chunked answer: {answer}");

    // Only the small turn was forwarded and stored.
    assert_eq!(gw.mock.request_count(), 1);
    assert_eq!(messages(gw.addr, &id).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_malformed_session_ids_are_404() {
    let gw = Gateway::start().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "12345"] {
        get(gw.addr, &format!("/session/{id}"))
            .await
            .assert_error(404, "Session not found");
        get(gw.addr, &format!("/session/{id}/messages"))
            .await
            .assert_error(404, "Session not found");
        chat(gw.addr, id, "hello")
            .await
            .assert_error(404, "Session not found");
        let fb = json!({"session_id": id, "feedback": "hi"}).to_string();
        post(gw.addr, "/feedback/", &fb)
            .await
            .assert_error(404, "Session not found");
    }
    assert_eq!(gw.mock.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_with_410_and_are_never_revived() {
    let gw = Gateway::start_with(|c| c.session.idle_timeout = Duration::from_secs(1)).await;
    let id = new_session(gw.addr).await;
    let before = get(gw.addr, &format!("/session/{id}")).await.json();
    let addr = gw.addr;
    let path = format!("/session/{id}");
    wait_until(Duration::from_secs(10), "is_active to turn 0", || {
        let path = path.clone();
        async move { get(addr, &path).await.json()["is_active"] == 0 }
    })
    .await;
    // More than the quota of attempts: an expired session takes no token.
    for _ in 0..7 {
        chat(gw.addr, &id, "are you there?")
            .await
            .assert_error(410, "Session expired");
    }
    let after = get(gw.addr, &path).await;
    assert_eq!(after.status, 200);
    let after = after.json();
    assert_eq!(after["is_active"], 0, "chat revived the session: {after}");
    assert_eq!(
        after["last_active"], before["last_active"],
        "a 410 moved last_active"
    );
    assert_eq!(after["created_at"], before["created_at"]);
    assert!(messages(gw.addr, &id).await.is_empty());
    assert_eq!(
        gw.mock.request_count(),
        0,
        "an expired session reached the model"
    );
    // Feedback is still accepted while the data is retained.
    let fb = json!({"session_id": id, "feedback": "too late", "rating": 2}).to_string();
    let r = post(gw.addr, "/feedback/", &fb).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"detail": "Feedback received"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    for path in ["/nope", "/chat/extra", "/session", "/session/a/b/c"] {
        get(gw.addr, path).await.assert_error(404, "Not Found");
        post(gw.addr, path, "{}")
            .await
            .assert_error(404, "Not Found");
    }
    let wrong: Vec<(Method, String)> = vec![
        (Method::GET, "/chat/".into()),
        (Method::PUT, "/chat".into()),
        (Method::GET, "/feedback/".into()),
        (Method::GET, "/session/initialize_session".into()),
        (Method::PUT, format!("/session/{id}")),
        (Method::POST, format!("/session/{id}/messages")),
        (Method::POST, "/healthz".into()),
        (Method::POST, "/openapi.json".into()),
        (Method::DELETE, "/docs".into()),
    ];
    for (method, path) in wrong {
        let r = send(gw.addr, method.clone(), &path, None).await;
        r.assert_error(405, "Method Not Allowed");
        assert!(
            r.header("allow").is_some(),
            "{method} {path}: 405 without Allow"
        );
    }
    // Under /v1 the same errors take OpenAI's shape.
    for (method, path, status, code) in [
        (Method::GET, "/v1/nope", 404, "not_found"),
        (
            Method::GET,
            "/v1/chat/completions",
            405,
            "method_not_allowed",
        ),
        (Method::POST, "/v1/models", 405, "method_not_allowed"),
    ] {
        let r = send(gw.addr, method.clone(), path, None).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{method} {path}");
        assert!(r.json()["error"]["message"].is_string());
    }
}
