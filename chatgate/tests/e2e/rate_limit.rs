//! docs/api.md, behaviour: the rate limit: 5 per minute per session, exact under concurrency,
//! 429 with `Retry-After`, and only validated turns take a token.

use chatmock::Reply;
use serde_json::json;

use crate::support::*;

const LIMITED: &str = "Rate limit exceeded: 5 messages per minute";

/// Asserts the 429 of docs/api.md: exact detail, `Retry-After` in whole
/// seconds, at least 1.
#[track_caller]
fn assert_limited(r: &Resp) {
    r.assert_error(429, LIMITED);
    let ra = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After"));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {ra:?} is not whole seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_messages_pass_then_429() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    for i in 0..5u32 {
        let r = chat(gw.addr, &id, &format!("m{i}")).await;
        assert_eq!(r.status, 200, "message {i}: {}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
    }
    for _ in 0..3 {
        assert_limited(&chat(gw.addr, &id, "one too many").await);
    }
    // A rejected message is neither forwarded nor stored.
    assert_eq!(gw.mock.request_count(), 5);
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 10);
    assert!(stored
        .iter()
        .all(|m| !m["content"].as_str().unwrap().contains("one too many")));

    // Another session has its own quota.
    let other = new_session(gw.addr).await;
    let r = chat(gw.addr, &other, "fresh").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_20_parallel_messages_exactly_5_pass() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (addr, id) = (gw.addr, id.clone());
            tokio::spawn(async move { chat(addr, &id, &format!("parallel {i}")).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => ok += 1,
            429 => assert_limited(&r),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(ok, 5, "exactly the quota passes");
    assert_eq!(gw.mock.request_count(), 5);
    assert_eq!(messages(gw.addr, &id).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_take_no_token() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    // 422s on this session, more than the quota.
    for _ in 0..7 {
        let body = json!({"session_id": id, "role": "bot", "content": "x"}).to_string();
        assert_eq!(post(gw.addr, "/chat/", &body).await.status, 422);
        let body = json!({"session_id": id, "role": "user", "content": ""}).to_string();
        assert_eq!(post(gw.addr, "/chat/", &body).await.status, 422);
        let body = json!({"session_id": id, "role": "user", "content": "  "}).to_string();
        assert_eq!(post(gw.addr, "/chat/", &body).await.status, 422);
    }
    // 404s never turn into 429s either.
    let unknown = uuid::Uuid::new_v4().to_string();
    for _ in 0..7 {
        chat(gw.addr, &unknown, "hello?")
            .await
            .assert_error(404, "Session not found");
    }
    // The session still has its whole quota.
    for i in 0..5u32 {
        let r = chat(gw.addr, &id, "counted").await;
        assert_eq!(r.status, 200, "message {i}: {}", r.text());
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((4 - i).to_string().as_str())
        );
    }
    assert_limited(&chat(gw.addr, &id, "sixth").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_fails_upstream_has_used_its_token() {
    let gw = Gateway::start_with(|c| c.openai.max_retries = 0).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::status(500));
    assert_eq!(chat(gw.addr, &id, "fails").await.status, 502);
    for i in 0..4u32 {
        let r = chat(gw.addr, &id, "ok").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((3 - i).to_string().as_str())
        );
    }
    assert_limited(&chat(gw.addr, &id, "over").await);
}
