//! `GET /metrics` after a scripted run of the real binary: the counts
//! match what was done, labels carry route templates (never ids), and the
//! figures read at scrape time (upstream outcomes, storage commits,
//! cached sessions, build info) are there.

use hyper::Method;
use serde_json::json;

use crate::process::Server;
use crate::support::*;

/// The value of the sample `name{labels}` (labels as they appear, in the
/// exposition's order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[("CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE", "3")],
    )
    .await;
    let addr = server.addr;
    let id = new_session(addr).await;
    for m in ["one", "two"] {
        assert_eq!(chat(addr, &id, m).await.status, 200);
    }
    let body = json!({"session_id": id, "role": "user", "content": "three", "stream": true});
    let r = post(addr, "/chat/", &body.to_string()).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("event: done"), "{}", r.text());
    assert_eq!(chat(addr, &id, "four").await.status, 429);
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(chat(addr, unknown, "hi").await.status, 404);
    assert_eq!(get(addr, &format!("/session/{id}")).await.status, 200);

    let r = send(addr, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text();
    let chat_ok = r#"chatgate_requests_total{route="/chat/",method="POST",status="200"}"#;
    assert_eq!(sample(&text, chat_ok), Some(3.0), "{text}");
    let limited = r#"chatgate_requests_total{route="/chat/",method="POST",status="429"}"#;
    assert_eq!(sample(&text, limited), Some(1.0));
    let missing = r#"chatgate_requests_total{route="/chat/",method="POST",status="404"}"#;
    assert_eq!(sample(&text, missing), Some(1.0));
    let shown =
        r#"chatgate_requests_total{route="/session/{session_id}",method="GET",status="200"}"#;
    assert_eq!(sample(&text, shown), Some(1.0));
    assert_eq!(
        sample(&text, r#"chatgate_rate_limited_total{scope="session"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "chatgate_sessions_created_total"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"chatgate_upstream_calls_total{upstream="openai",outcome="ok"}"#
        ),
        Some(3.0)
    );
    assert_eq!(sample(&text, "chatgate_upstream_retries_total"), Some(0.0));
    assert_eq!(
        sample(&text, "chatgate_time_to_first_token_seconds_count"),
        Some(1.0)
    );
    // Two whole turns: their overhead is observed; the stream's is not.
    assert_eq!(
        sample(
            &text,
            r#"chatgate_gateway_overhead_seconds_count{route="/chat/"}"#
        ),
        Some(2.0)
    );
    let prompt = sample(
        &text,
        r#"chatgate_tokens_total{model="gpt-3.5-turbo",kind="prompt"}"#,
    );
    assert!(prompt.is_some_and(|n| n > 0.0), "{text}");
    assert!(sample(&text, "chatgate_storage_commits_total").is_some_and(|n| n >= 3.0));
    // A few turns leave the WAL far below a checkpoint; both kinds are
    // exported from the first scrape, at zero.
    for by in ["background", "writer"] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"chatgate_storage_checkpoints_total{{by="{by}"}}"#)
            ),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(
        sample(&text, "chatgate_storage_checkpoint_failures_total"),
        Some(0.0)
    );
    assert!(sample(&text, "chatgate_sessions_cached").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&text, "chatgate_log_records_dropped_total"),
        Some(0.0)
    );
    assert!(text.contains("chatgate_build_info{version="), "{text}");
    // No id reaches a label.
    assert!(!text.contains(&id), "a session id in the metrics");
    assert!(!text.contains(unknown));
    drop(server);
}
