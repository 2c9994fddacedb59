//! The upstream side: retries that recover, 502/503/504 when they do not,
//! failed turns storing nothing, and per-session ordering of turns.

use std::collections::BTreeSet;
use std::time::Duration;

use chatmock::Reply;
use serde_json::json;

use crate::support::*;

/// Asserts a turn failed with `status`, and that nothing was stored.
async fn assert_failed_turn(gw: &Gateway, id: &str, status: u16) -> Resp {
    let r = chat(gw.addr, id, "doomed message").await;
    assert_eq!(r.status, status, "{}", r.text());
    assert_json_content_type(&r);
    let detail = r.detail();
    assert!(
        !detail.as_str().unwrap_or("").is_empty(),
        "detail must be a sentence: {detail}"
    );
    assert!(
        messages(gw.addr, id).await.is_empty(),
        "a failed turn stored something"
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_from_one_5xx_or_429() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::status(500));
    let r = chat(gw.addr, &id, "after a 500").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: after a 500");
    assert_eq!(gw.mock.request_count(), 2, "one failure, one retry");

    gw.mock.push(Reply::status(429));
    let r = chat(gw.addr, &id, "after a 429").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: after a 429");
    assert_eq!(gw.mock.request_count(), 4);

    // Each turn was stored once, despite the retries.
    assert_eq!(messages(gw.addr, &id).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_upstream_rate_limiting_is_503() {
    let gw = Gateway::start_with(|c| c.openai.max_retries = 0).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::Status {
        status: 429,
        retry_after: Some(7),
    });
    let r = assert_failed_turn(&gw, &id, 503).await;
    assert_eq!(
        r.header("retry-after"),
        Some("7"),
        "the upstream's Retry-After passes through"
    );

    let gw = Gateway::start_with(|c| c.openai.max_retries = 1).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::status(429));
    gw.mock.push(Reply::status(429));
    assert_failed_turn(&gw, &id, 503).await;
    assert_eq!(gw.mock.request_count(), 2, "one retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_naming_the_cause() {
    let gw = Gateway::start_with(|c| c.openai.max_retries = 1).await;

    // Persistent 5xx: every attempt fails.
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::status(500));
    gw.mock.push(Reply::status(500));
    let r = assert_failed_turn(&gw, &id, 502).await;
    assert!(r.detail().as_str().unwrap().contains("500"), "{}", r.text());
    assert_eq!(gw.mock.request_count(), 2);

    // Malformed JSON in a 200.
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::MalformedJson);
    let r = assert_failed_turn(&gw, &id, 502).await;
    let detail = r.detail().as_str().unwrap().to_ascii_lowercase();
    assert!(
        detail.contains("json") || detail.contains("invalid"),
        "{detail}"
    );

    // Our key refused: final, not retried.
    let id = new_session(gw.addr).await;
    let before = gw.mock.request_count();
    gw.mock.push(Reply::status(401));
    let r = assert_failed_turn(&gw, &id, 502).await;
    assert!(r.detail().as_str().unwrap().contains("401"), "{}", r.text());
    assert_eq!(gw.mock.request_count(), before + 1, "a 401 is not retried");

    // The connection dropped on every attempt.
    let id = new_session(gw.addr).await;
    for _ in 0..10 {
        gw.mock.push(Reply::Drop);
    }
    assert_failed_turn(&gw, &id, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let gw = Gateway::start_with(|c| c.openai.timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;
    gw.mock.push(Reply::Delay(
        Duration::from_secs(5),
        Box::new(Reply::Text("too late".into())),
    ));
    let r = chat(gw.addr, &id, "hurry").await;
    r.assert_error(504, "Upstream timed out");
    assert!(messages(gw.addr, &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_leaves_no_trace_in_later_history() {
    let gw = Gateway::start_with(|c| c.openai.max_retries = 0).await;
    let id = new_session(gw.addr).await;
    assert_eq!(chat(gw.addr, &id, "first").await.status, 200);
    gw.mock.push(Reply::status(503));
    assert_eq!(chat(gw.addr, &id, "lost").await.status, 502);
    assert_eq!(chat(gw.addr, &id, "third").await.status, 200);
    let stored: Vec<String> = messages(gw.addr, &id)
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ["first", "Echo: first", "third", "Echo: third"]);
    let last = gw.mock.recorded().pop().unwrap();
    let sent: Vec<&str> = last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        sent,
        ["first", "Echo: first", "third"],
        "the failed message reached the history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_turns_of_one_session_are_serialized() {
    const N: usize = 8;
    let gw =
        Gateway::start_with(|c| c.rate_limit.messages_per_minute = 50.try_into().unwrap()).await;
    gw.mock.set_latency(Duration::from_millis(40));
    let id = new_session(gw.addr).await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (addr, id) = (gw.addr, id.clone());
            tokio::spawn(async move { chat(addr, &id, &format!("concurrent {i}")).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 2 * N);
    let mut users = BTreeSet::new();
    for pair in stored.chunks(2) {
        assert_eq!(pair[0]["role"], "user", "{stored:?}");
        assert_eq!(pair[1]["role"], "assistant", "{stored:?}");
        let user = pair[0]["content"].as_str().unwrap();
        assert_eq!(
            pair[1]["content"].as_str().unwrap(),
            format!("Echo: {user}")
        );
        users.insert(user.to_owned());
    }
    let sent: BTreeSet<String> = (0..N).map(|i| format!("concurrent {i}")).collect();
    assert_eq!(users, sent);
    // One at a time: each turn saw every earlier turn as history.
    let mut lengths: Vec<usize> = gw
        .mock
        .recorded()
        .iter()
        .map(|r| r.body["messages"].as_array().unwrap().len())
        .collect();
    lengths.sort_unstable();
    let expected: Vec<usize> = (0..N).map(|i| 2 * i + 1).collect();
    assert_eq!(lengths, expected, "turns overlapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502() {
    let port = crate::process::free_port();
    let gw = Gateway::start_with(|c| {
        c.openai.base_url = format!("http://127.0.0.1:{port}/v1");
        c.openai.max_retries = 1;
    })
    .await;
    let id = new_session(gw.addr).await;
    let r = assert_failed_turn(&gw, &id, 502).await;
    assert!(
        !r.text().contains(&port.to_string()),
        "internal address leaked: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_from_the_oldest_end_to_fit_context_tokens() {
    const BUDGET: usize = 120;
    let gw = Gateway::start_with(|c| {
        c.openai.context_tokens = BUDGET.try_into().unwrap();
        c.openai.system_prompt = "Keep me.".into();
        c.rate_limit.messages_per_minute = 20.try_into().unwrap();
    })
    .await;
    let id = new_session(gw.addr).await;
    let turns: Vec<String> = (0..6).map(|i| format!("{i}{}", "x".repeat(60))).collect();
    for t in &turns {
        assert_eq!(chat(gw.addr, &id, t).await.status, 200);
    }
    let stored: Vec<String> = messages(gw.addr, &id)
        .await
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    let last = gw.mock.recorded().pop().unwrap();
    let sent = last.body["messages"].as_array().unwrap();
    assert_eq!(
        sent[0]["role"], "system",
        "the system prompt is always sent"
    );
    assert_eq!(sent[0]["content"], "Keep me.");
    let sent: Vec<&str> = sent[1..]
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        *sent.last().unwrap(),
        turns[5],
        "the new message is always sent"
    );
    let history = &sent[..sent.len() - 1];
    let earlier = &stored[..stored.len() - 2];
    assert!(
        history.len() < earlier.len(),
        "nothing was trimmed: {} messages",
        history.len()
    );
    assert!(
        !history.is_empty(),
        "everything was trimmed although some history fits"
    );
    assert!(
        earlier.ends_with(&history.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        "the history sent is not the newest end of the stored one: {history:?}"
    );
    // Estimated like chatcore does (chars / 4 rounded up, + 4 per message).
    let cost = |s: &str| s.chars().count().div_ceil(4) + 4;
    let total: usize = cost("Keep me.") + sent.iter().map(|s| cost(s)).sum::<usize>();
    assert!(
        total <= BUDGET,
        "{total} estimated tokens over a budget of {BUDGET}"
    );
}

/// A process's resident memory in KiB, and its peak: `VmRSS` and `VmHWM`
/// of `/proc/PID/status`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A hostile upstream: a stream that never ends. The gateway (the shipped
/// binary, on its default `openai.max_reply_bytes`) relays it until the
/// reply would pass the bound, then sends the `error` event, cancels the
/// upstream call and stores nothing; its memory stays bounded throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_streaming_without_end_is_cut_off_in_bounded_memory() {
    let mock = chatmock::MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base_url = mock.base_url();
    let server = crate::process::Server::start_with_args(
        dir.path(),
        &["serve"],
        &[("CHATGATE_OPENAI__BASE_URL", &base_url)],
    )
    .await;
    let pid = server.child.id();
    let id = new_session(server.addr).await;
    // Warm the paths a turn takes, so the idle figure is a working one.
    let r = chat(server.addr, &id, "warm up").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (idle, _) = memory_kib(pid);

    let v1 = json!({"model": "gpt-3.5-turbo", "stream": true,
                    "messages": [{"role": "user", "content": "go on forever"}]});
    let session_header = [("x-session-id", id.as_str())];
    for (path, headers, body) in [
        (
            "/chat/",
            &session_header[..],
            json!({"session_id": id, "role": "user", "content": "go on forever", "stream": true}),
        ),
        ("/v1/chat/completions", &session_header[..], v1.clone()),
        ("/v1/chat/completions", &[][..], v1.clone()),
    ] {
        let piece = "x".repeat(64 * 1024);
        mock.push(
            chatmock::StreamScript::pieces([piece])
                .with_fault(chatmock::StreamFault::Endless)
                .into(),
        );
        let disconnects = mock.disconnects();
        let mut s = open_stream(server.addr, path, headers, &body.to_string()).await;
        assert_eq!(s.status, 200, "{path}");
        let (events, broke) = s.rest().await;
        assert!(broke.is_none(), "{path}: the body ends cleanly: {broke:?}");
        let last = events.last().expect("events");
        if path == "/chat/" {
            assert!(last.is("error"), "{path}: ends with the error event");
            assert_eq!(last.json()["status"], 502, "{path}: {}", last.data);
        } else {
            assert_eq!(
                last.json()["error"]["code"],
                "upstream_error",
                "{}",
                last.data
            );
        }
        assert!(
            events.len() > 200,
            "{path}: the reply flowed until the bound ({} events)",
            events.len()
        );
        wait_until(HANG_GUARD, "the upstream call to be cancelled", || {
            let gone = mock.disconnects() > disconnects;
            async move { gone }
        })
        .await;
    }
    let stored = messages(server.addr, &id).await;
    assert_eq!(
        stored.len(),
        2,
        "only the warm-up turn is stored: {stored:?}"
    );

    let (_, peak) = memory_kib(pid);
    assert!(
        peak.saturating_sub(idle) < 64 * 1024,
        "peak RSS {peak} KiB against {idle} KiB idle"
    );
}
