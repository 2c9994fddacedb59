//! `app.log` content (access lines, message lines, SQL, the `log.*`
//! switches) and the API key: sent upstream, shown nowhere.

use chatgate::config::Secret;
use chatmock::Reply;
use hyper::Method;

use crate::support::*;

const KEY: &str = "sk-e2e-Zq7VxT3mLp9Rw2Kd8Hn4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_upstream_and_shown_nowhere() {
    let gw = Gateway::start_with(|c| {
        c.secrets.openai_api_key = Some(Secret::new(KEY));
        c.openai.max_retries = 1;
    })
    .await;
    let mut responses = Vec::new();
    let id = new_session(gw.addr).await;
    let ok = chat(gw.addr, &id, "hello").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let rec = gw.mock.recorded();
    assert_eq!(
        rec[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    responses.push(ok);

    let failures: Vec<(Vec<Reply>, u16)> = vec![
        (vec![Reply::status(401)], 502),
        (vec![Reply::status(403)], 502),
        (vec![Reply::status(500), Reply::status(500)], 502),
        (vec![Reply::MalformedJson], 502),
        (
            vec![
                Reply::Status {
                    status: 429,
                    retry_after: Some(0),
                },
                Reply::Status {
                    status: 429,
                    retry_after: Some(0),
                },
            ],
            503,
        ),
        // Last: how many drops an attempt consumes is the transport's business.
        (vec![Reply::Drop; 6], 502),
    ];
    for (script, status) in failures {
        let id = new_session(gw.addr).await;
        for reply in script {
            gw.mock.push(reply);
        }
        let r = chat(gw.addr, &id, "trigger").await;
        assert_eq!(r.status, status, "{}", r.text());
        responses.push(r);
    }
    for r in &responses {
        assert!(
            !r.text().contains(KEY),
            "key in a response body: {}",
            r.text()
        );
        for (name, value) in &r.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(KEY),
                "key in response header {name}"
            );
        }
    }
    let log = gw.stop().await;
    assert!(
        log.lines()
            .any(|l| l.contains("error") && l.contains("401")),
        "the upstream 401 was not logged with its cause:\n{log}"
    );
    assert!(!log.contains(KEY), "the API key is in app.log");
    assert!(
        !log.contains(&KEY[7..]),
        "part of the API key is in app.log"
    );
}

/// The lines of `log` whose message is `msg` (slog-term: `TIME LEVEL msg, k: v…`).
fn lines_with<'a>(log: &'a str, msg: &str) -> Vec<&'a str> {
    let needle = format!(" {msg}");
    log.lines()
        .filter(|l| {
            l.match_indices(&needle).any(|(i, _)| {
                let rest = &l[i + needle.len()..];
                rest.is_empty() || rest.starts_with(',') || rest.starts_with(' ')
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_log_records_requests_messages_and_sql() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let body = serde_json::json!({"session_id": id, "role": "user", "content": "log me please"});
    let rid = [("x-request-id", "e2e-rid-0001")];
    let r = try_send(
        gw.addr,
        Method::POST,
        "/chat/",
        &rid,
        Some(body.to_string().into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("e2e-rid-0001"));
    let missing = get(gw.addr, "/nope").await;
    let generated = missing
        .header("x-request-id")
        .expect("a generated request id")
        .to_owned();
    assert!(!generated.is_empty());
    let r = get(gw.addr, &format!("/session/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = gw.stop().await;

    let access = lines_with(&log, "request");
    let chat_line = access
        .iter()
        .find(|l| has_field(l, "request_id", "e2e-rid-0001"))
        .unwrap_or_else(|| panic!("no access line for the chat:\n{log}"));
    for (k, v) in [("method", "POST"), ("path", "/chat/"), ("status", "200")] {
        assert!(has_field(chat_line, k, v), "{k}={v} missing: {chat_line}");
    }
    assert!(chat_line.contains("latency"), "no latency: {chat_line}");
    let miss_line = access
        .iter()
        .find(|l| has_field(l, "request_id", &generated))
        .unwrap_or_else(|| panic!("no access line for /nope:\n{log}"));
    for (k, v) in [("method", "GET"), ("path", "/nope"), ("status", "404")] {
        assert!(has_field(miss_line, k, v), "{k}={v} missing: {miss_line}");
    }

    let user = lines_with(&log, "user message");
    assert!(
        user.iter()
            .any(|l| has_field(l, "session_id", &id) && l.contains("log me please")),
        "no user message line:\n{log}"
    );
    let ai = lines_with(&log, "ai response");
    assert!(
        ai.iter()
            .any(|l| has_field(l, "session_id", &id) && l.contains("Echo: log me please")),
        "no ai response line:\n{log}"
    );
    let sql: Vec<&str> = log.lines().filter(|l| l.contains("statement")).collect();
    assert!(
        sql.iter()
            .any(|l| l.to_ascii_uppercase().contains("INSERT")),
        "no SQL statements logged:\n{log}"
    );
    // Creating the session and storing the turn both write.
    let inserts = sql
        .iter()
        .filter(|l| l.to_ascii_uppercase().contains("INSERT"))
        .count();
    assert!(inserts >= 2, "{inserts} INSERT statements logged:\n{log}");
    // Reads are logged at debug, below the default level.
    assert!(
        !sql.iter().any(|l| l.contains("statement: SELECT")),
        "a read-only statement logged at the default level:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_and_sql_logging_can_be_switched_off() {
    let gw = Gateway::start_with(|c| {
        c.log.content = false;
        c.log.sql = false;
    })
    .await;
    let id = new_session(gw.addr).await;
    let r = chat(gw.addr, &id, "a very private message").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = gw.stop().await;
    assert!(
        lines_with(&log, "request")
            .iter()
            .any(|l| has_field(l, "path", "/chat/")),
        "the access line is still written:\n{log}"
    );
    assert!(lines_with(&log, "user message").is_empty(), "{log}");
    assert!(lines_with(&log, "ai response").is_empty(), "{log}");
    assert!(
        !log.contains("a very private message"),
        "content logged with log.content = false"
    );
    assert!(
        !log.contains("statement"),
        "SQL logged with log.sql = false:\n{log}"
    );
}

/// The `content` field of a content line, unquoted (no escapes in these tests).
fn content_field(line: &str) -> &str {
    let start = line.find("content: \"").expect("a content field") + "content: \"".len();
    let len = line[start..].find('"').expect("a closing quote");
    &line[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_lines_are_capped_at_a_char_boundary_with_the_length_noted() {
    let gw = Gateway::start_with(|c| {
        c.log.max_content_bytes = std::num::NonZeroUsize::new(101).unwrap();
    })
    .await;
    let id = new_session(gw.addr).await;
    let long = "é".repeat(300); // 600 bytes
    assert_eq!(chat(gw.addr, &id, &long).await.status, 200);
    assert_eq!(chat(gw.addr, &id, "short one").await.status, 200);
    // A stateless stream: the reply is collected piece by piece, no
    // further than the line shows, but its whole length is noted.
    let words = "word ".repeat(100);
    let body = serde_json::json!({
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": words}],
        "stream": true,
    });
    let mut s = open_stream(gw.addr, "/v1/chat/completions", &[], &body.to_string()).await;
    assert_eq!(s.status, 200);
    let (events, broke) = s.rest().await;
    assert!(broke.is_none() && events.last().is_some_and(|e| e.data == "[DONE]"));
    let log = gw.stop().await;

    let user = lines_with(&log, "user message");
    let ai = lines_with(&log, "ai response");
    assert_eq!((user.len(), ai.len()), (3, 3), "{log}");
    // 101 bytes would split an "é": 50 of them (100 bytes) are shown.
    assert_eq!(content_field(user[0]), "é".repeat(50));
    assert!(has_field(user[0], "content_len", "600") && has_field(user[0], "truncated", "true"));
    let echo = format!("Echo: {long}");
    assert_eq!(content_field(ai[0]), &echo[..100]);
    assert!(
        has_field(ai[0], "content_len", &echo.len().to_string()),
        "{}",
        ai[0]
    );
    assert!(has_field(ai[0], "truncated", "true"), "{}", ai[0]);
    assert_eq!(content_field(user[1]), "short one");
    assert!(has_field(user[1], "content_len", "9") && has_field(user[1], "truncated", "false"));
    assert!(has_field(user[2], "session_id", "-") && content_field(user[2]) == &words[..101]);
    let streamed = format!("Echo: {words}");
    assert_eq!(content_field(ai[2]), &streamed[..101]);
    assert!(
        has_field(ai[2], "content_len", &streamed.len().to_string()),
        "{}",
        ai[2]
    );
    assert!(
        !log.contains(&"é".repeat(51)),
        "more than the cap was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_leave_their_access_line_not_their_body() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let cases = [
        (
            "/chat/",
            serde_json::json!({"session_id": unknown, "role": "user", "content": "secret-404-body"}),
            404,
        ),
        (
            "/chat/",
            serde_json::json!({"session_id": id, "role": "assistant", "content": "secret-422-body"}),
            422,
        ),
        (
            "/chat/",
            serde_json::json!({"session_id": "not-a-uuid", "role": "user", "content": "secret-bad-id"}),
            404,
        ),
        (
            "/feedback/",
            serde_json::json!({"session_id": unknown, "feedback": "secret-feedback-body"}),
            404,
        ),
    ];
    for (path, body, status) in &cases {
        let r = post(gw.addr, path, &body.to_string()).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.text());
    }
    let log = gw.stop().await;
    for secret in [
        "secret-404-body",
        "secret-422-body",
        "secret-bad-id",
        "secret-feedback-body",
    ] {
        assert!(!log.contains(secret), "{secret} is in app.log:\n{log}");
    }
    let access = lines_with(&log, "request");
    for status in ["404", "422"] {
        assert!(
            access.iter().any(|l| has_field(l, "status", status)),
            "no {status} access line:\n{log}"
        );
    }
    assert!(lines_with(&log, "user message").is_empty(), "{log}");
}

/// A flood of large bodies aimed at sessions that do not exist, on the
/// default configuration: each refusal costs app.log its access line and
/// little more (no SQL for the read that found nothing, no content of a
/// message that was never sent), so the log cannot be made to grow faster
/// than the requests arrive. 5,000 bodies of 60 KiB: the bound scales to
/// 10 MB for 50,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_aimed_at_unknown_sessions_barely_grows_app_log() {
    const REQUESTS: usize = 5_000;
    const TASKS: usize = 8;
    let gw = Gateway::start().await;
    // One real turn first, so the log's fixed start is behind us.
    let id = new_session(gw.addr).await;
    assert_eq!(chat(gw.addr, &id, "hello").await.status, 200);
    let before = std::fs::metadata(&gw.log_file).map_or(0, |m| m.len());
    // 60,000 bytes in 30,000 characters: under both the body and the
    // message limits, so each is refused for its session alone.
    let content = "é".repeat(30_000);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (addr, content) = (gw.addr, content.clone());
        tasks.spawn(async move {
            for _ in 0..REQUESTS / TASKS {
                let body = serde_json::json!({
                    "session_id": uuid::Uuid::new_v4().to_string(),
                    "role": "user",
                    "content": content,
                });
                let r = post(addr, "/chat/", &body.to_string()).await;
                assert_eq!(r.status, 404, "{}", r.text());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("flood task");
    }
    let log = gw.stop().await;
    let grown = log.len() as u64 - before;
    let per_request = grown / REQUESTS as u64;
    println!("app.log grew {grown} bytes for {REQUESTS} refused requests ({per_request} each)");
    assert!(
        grown < 1_000_000,
        "app.log grew {grown} bytes ({per_request} per refused request); last lines:\n{}",
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
