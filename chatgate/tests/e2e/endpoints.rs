//! docs/api.md: every endpoint's exact shape, with and without the trailing
//! slash, plus health, the OpenAPI document and CORS (the pages a browser
//! opens, `/docs` and `/`, are in `pages`).

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use crate::support::*;

/// The keys of a session object, exactly.
#[track_caller]
/// The shape of a session; `GET /session/{id}` adds `usage`, checked here
/// when present.
fn assert_session_shape(v: &Value, active: i64) {
    if let Some(usage) = v.get("usage") {
        assert!(usage["prompt_tokens"].is_u64(), "{v}");
        assert!(usage["completion_tokens"].is_u64(), "{v}");
    }
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "usage")
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["created_at", "is_active", "last_active", "session_id"],
        "{v}"
    );
    assert_uuid_v4(v["session_id"].as_str().expect("session_id string"));
    assert_timestamp(&v["created_at"]);
    assert_timestamp(&v["last_active"]);
    assert!(v["is_active"].is_i64(), "is_active must be an integer: {v}");
    assert_eq!(v["is_active"].as_i64(), Some(active), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_session_accepts_no_body_empty_object_and_extensions() {
    let gw = Gateway::start_with(|c| c.openai.system_prompt = "Default prompt".into()).await;
    let mut ids = Vec::new();
    for body in [
        None,
        Some("{}"),
        Some("  "),
        Some(r#"{"system_prompt":"Be terse.","metadata":{"user":"u1","n":[1,2]}}"#),
    ] {
        let r = send(gw.addr, Method::POST, "/session/initialize_session", body).await;
        assert_eq!(r.status, 200, "body {body:?}: {}", r.text());
        assert_json_content_type(&r);
        let v = r.json();
        assert_session_shape(&v, 1);
        assert_eq!(
            v["created_at"], v["last_active"],
            "a new session's last_active is its creation"
        );
        let created =
            chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str().unwrap()).unwrap();
        let skew = (chrono::Utc::now() - created.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs();
        assert!(skew < 3600, "created_at {created} is not now (UTC)");
        ids.push(v["session_id"].as_str().unwrap().to_owned());
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "session ids repeat: {ids:?}");

    // The session's own prompt replaces the configured one; others get the default.
    assert_eq!(chat(gw.addr, &ids[3], "hi").await.status, 200);
    assert_eq!(chat(gw.addr, &ids[0], "hi").await.status, 200);
    let rec = gw.mock.recorded();
    assert_eq!(rec.len(), 2);
    assert_eq!(
        rec[0].body["messages"][0],
        json!({"role": "system", "content": "Be terse."})
    );
    assert_eq!(
        rec[1].body["messages"][0],
        json!({"role": "system", "content": "Default prompt"})
    );
    assert_eq!(
        rec[1].body["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_session_matches_initialize_with_and_without_slash() {
    let gw = Gateway::start().await;
    let created = send(gw.addr, Method::POST, "/session/initialize_session/", None).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let created = created.json();
    let id = created["session_id"].as_str().unwrap();
    for path in [format!("/session/{id}"), format!("/session/{id}/")] {
        let r = get(gw.addr, &path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_json_content_type(&r);
        assert_session_shape(&r.json(), 1);
        let mut shown = r.json();
        let usage = shown.as_object_mut().unwrap().remove("usage");
        assert_eq!(
            usage,
            Some(json!({"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0})),
            "{path}"
        );
        assert_eq!(shown, created, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_replies_with_echo_and_rate_limit_headers() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    for (i, path) in ["/chat/", "/chat"].into_iter().enumerate() {
        let msg = format!("Hello, how are you? #{i}");
        let body = json!({"session_id": id, "role": "user", "content": msg});
        let r = post(gw.addr, path, &body.to_string()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_json_content_type(&r);
        assert_eq!(
            r.json(),
            json!({"session_id": id, "role": "assistant", "content": format!("Echo: {msg}")})
        );
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        let remaining = (4 - i).to_string();
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining.as_str()));
    }
    // One more turn, answered over a second later (the upstream's delay):
    // last_active moves to its reply's time, a later second than creation.
    gw.mock.set_latency(Duration::from_millis(1100));
    assert_eq!(chat(gw.addr, &id, "a slow one").await.status, 200);
    let s = get(gw.addr, &format!("/session/{id}")).await.json();
    assert_session_shape(&s, 1);
    let stored = messages(gw.addr, &id).await;
    let reply = stored.last().expect("messages");
    assert_eq!(reply["content"], "Echo: a slow one");
    assert_eq!(
        s["last_active"], reply["created_at"],
        "last_active is the latest reply's time"
    );
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("timestamp")).expect("RFC 3339")
    };
    assert!(
        time(&s["last_active"]) > time(&s["created_at"]),
        "last_active did not move: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_oldest_first() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    assert!(messages(gw.addr, &id).await.is_empty());
    for m in ["one", "two", "three"] {
        assert_eq!(chat(gw.addr, &id, m).await.status, 200);
    }
    for path in [
        format!("/session/{id}/messages"),
        format!("/session/{id}/messages/"),
    ] {
        let r = get(gw.addr, &path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_json_content_type(&r);
        let v = r.json();
        assert_eq!(
            v.as_object().unwrap().len(),
            2,
            "only session_id and messages: {v}"
        );
        let list = v["messages"].as_array().unwrap();
        let pairs: Vec<(&str, &str)> = list
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("user", "one"),
                ("assistant", "Echo: one"),
                ("user", "two"),
                ("assistant", "Echo: two"),
                ("user", "three"),
                ("assistant", "Echo: three"),
            ]
        );
        for m in list {
            assert_eq!(
                m.as_object().unwrap().len(),
                3,
                "role, content, created_at: {m}"
            );
            assert_timestamp(&m["created_at"]);
        }
        let times: Vec<&str> = list
            .iter()
            .map(|m| m["created_at"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "not oldest first: {times:?}"
        );
    }
    // History is sent to the model oldest first, ending with the new message.
    let last = gw.mock.recorded().pop().unwrap();
    let sent: Vec<&str> = last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["one", "Echo: one", "two", "Echo: two", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_received_with_and_without_rating() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let bodies = [
        (
            json!({"session_id": id, "feedback": "The chat was very helpful."}),
            "/feedback/",
        ),
        (
            json!({"session_id": id, "feedback": "Good", "rating": 5}),
            "/feedback",
        ),
        (
            json!({"session_id": id, "feedback": "Meh", "rating": 1, "extra": true}),
            "/feedback/",
        ),
    ];
    for (body, path) in bodies {
        let r = post(gw.addr, path, &body.to_string()).await;
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
        assert_json_content_type(&r);
        assert_eq!(r.json(), json!({"detail": "Feedback received"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let gw = Gateway::start().await;
    for path in ["/healthz", "/healthz/", "/readyz", "/readyz/"] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_json_content_type(&r);
        assert!(r.json().is_object());
    }
    let r = send(gw.addr, Method::HEAD, "/healthz", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD answered with a body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_path() {
    let gw = Gateway::start().await;
    let r = get(gw.addr, "/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_json_content_type(&r);
    let doc = r.json();
    let version = doc["openapi"].as_str().expect("openapi version string");
    assert!(version.starts_with("3."), "openapi {version}");
    let paths = doc["paths"].as_object().expect("paths object");
    let expected = [
        ("/session/initialize_session", "post"),
        ("/session/{session_id}", "get"),
        ("/session/{session_id}/messages", "get"),
        ("/chat/", "post"),
        ("/feedback/", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ];
    for (path, method) in expected {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from /openapi.json"))[method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    // The chat operation documents its errors.
    let chat = &paths["/chat/"]["post"]["responses"];
    for code in ["200", "404", "410", "422", "429", "502", "503", "504"] {
        assert!(
            chat.get(code).is_some(),
            "POST /chat/ does not document {code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_allow_origin() {
    let gw = Gateway::start().await;
    let origin = [("origin", "http://app.example")];
    let preflight = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let r = try_send(gw.addr, Method::OPTIONS, "/chat/", &preflight, None)
        .await
        .unwrap();
    assert!(
        r.status == 200 || r.status == 204,
        "preflight status {}",
        r.status
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let methods = r.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "allow-methods {methods:?}");
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("content-type"),
        "allow-headers {headers:?}"
    );

    let r = try_send(gw.addr, Method::GET, "/healthz", &origin, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = try_send(gw.addr, Method::GET, "/nope", &origin, None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "errors carry CORS too"
    );
    // A preflight for a path we do not serve is refused like the path.
    let r = try_send(gw.addr, Method::OPTIONS, "/nope", &preflight, None)
        .await
        .unwrap();
    r.assert_error(404, "Not Found");
    // HEAD works on the read-only documents.
    for path in ["/docs", "/openapi.json", "/healthz"] {
        let r = try_send(gw.addr, Method::HEAD, path, &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "HEAD {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_with_listed_origins_echoes_only_those() {
    let gw =
        Gateway::start_with(|c| c.server.cors_origins = vec!["http://allowed.test".into()]).await;
    let ok = [("origin", "http://allowed.test")];
    let r = try_send(gw.addr, Method::GET, "/healthz", &ok, None)
        .await
        .unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://allowed.test")
    );
    let other = [("origin", "http://evil.test")];
    let r = try_send(gw.addr, Method::GET, "/healthz", &other, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_serves_the_same_contract() {
    let gw = Gateway::start_with(|c| c.storage.backend = chatgate::config::Backend::Memory).await;
    let id = new_session(gw.addr).await;
    assert_session_shape(&get(gw.addr, &format!("/session/{id}")).await.json(), 1);
    let r = chat(gw.addr, &id, "in memory").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: in memory");
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["role"], "user");
    assert_eq!(stored[1]["content"], "Echo: in memory");
    let fb = json!({"session_id": id, "feedback": "fine", "rating": 4}).to_string();
    assert_eq!(
        post(gw.addr, "/feedback/", &fb).await.json(),
        json!({"detail": "Feedback received"})
    );
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
    assert!(
        !gw.dir_path().join("chatgate.db").exists(),
        "the memory backend wrote a database"
    );
}
