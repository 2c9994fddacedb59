//! Through the built binary: what stderr shows by default (the startup
//! line, not the traffic), and how the `[log]` keys read: levels, the old
//! booleans, sizes, and refusals that name the key.

use std::process::Output;
use std::time::Duration;

use crate::process::{run, Server};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_stderr_shows_the_startup_line_but_not_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_logging_to_stderr(dir.path(), &[]).await;
    let id = new_session(server.addr).await;
    assert_eq!(
        chat(server.addr, &id, "hello from the test").await.status,
        200
    );
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");

    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap();
    let addr = server.addr.to_string();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" INFO listening") && l.contains(&format!("addr: {addr}"))),
        "no startup line on stderr:\n{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.contains(" INFO stopped")),
        "{stderr}"
    );
    for traffic in [
        " INFO request,",
        "user message",
        "ai response",
        "statement: ",
    ] {
        assert!(
            !stderr.contains(traffic),
            "{traffic:?} on the default stderr:\n{stderr}"
        );
    }
    // app.log still has all of it.
    let log = std::fs::read_to_string(dir.path().join("app.log")).unwrap();
    for wanted in [
        " INFO listening",
        " INFO request,",
        "user message",
        "ai response",
        "statement: ",
    ] {
        assert!(
            log.contains(wanted),
            "{wanted:?} missing from app.log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_at_info_shows_the_traffic_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Server::start_logging_to_stderr(dir.path(), &[("CHATGATE_LOG__STDERR", "info")]).await;
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    server.terminate();
    server.wait_exit(Duration::from_secs(20)).await;
    let stderr = std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" INFO request,") && has_field(l, "path", "/nope")),
        "{stderr}"
    );
}

/// A base URL that is not OpenAI's, so no key is needed.
const LOCAL_URL: (&str, &str) = ("CHATGATE_OPENAI__BASE_URL", "http://127.0.0.1:9/v1");

fn check_config(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![LOCAL_URL];
    all.extend_from_slice(env);
    run(dir.path(), &["check-config"], &all)
}

#[test]
fn log_keys_have_their_defaults_and_read_old_booleans() {
    let out = check_config(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "stderr = \"warning\"",
        "max_content_bytes = 2048",
        "max_size = \"50MiB\"",
        "keep = 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    for (value, shown) in [("true", "info"), ("false", "off"), ("debug", "debug")] {
        let out = check_config(&[("CHATGATE_LOG__STDERR", value)]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("stderr = \"{shown}\"")),
            "{value}: {text}"
        );
    }
    let out = check_config(&[("CHATGATE_LOG__MAX_SIZE", "10MB")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_size = \"10000000B\""), "{text}");
}

#[test]
fn bad_log_values_exit_2_naming_the_key() {
    for (key, value, words) in [
        (
            "CHATGATE_LOG__STDERR",
            "loud",
            &["log.stderr", "\"off\"", "\"warning\""][..],
        ),
        (
            "CHATGATE_LOG__MAX_SIZE",
            "50 parsecs",
            &["log.max_size", "50MiB"][..],
        ),
        (
            "CHATGATE_LOG__MAX_SIZE",
            "100",
            &["log.max_size", "at least 4KiB"][..],
        ),
        ("CHATGATE_LOG__KEEP", "many", &["log.keep"][..]),
        (
            "CHATGATE_LOG__MAX_CONTENT_BYTES",
            "0",
            &["log.max_content_bytes"][..],
        ),
    ] {
        let out = check_config(&[(key, value)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {err}");
        for w in words {
            assert!(err.contains(w), "{key}={value}: {w:?} not in {err}");
        }
    }
}

#[test]
fn the_repository_config_toml_states_every_default() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml");
    let file = file.to_str().expect("a UTF-8 path");
    let dir = tempfile::tempdir().unwrap();
    let with_file = run(
        dir.path(),
        &["--config", file, "check-config"],
        &[LOCAL_URL],
    );
    let without = run(dir.path(), &["check-config"], &[LOCAL_URL]);
    assert!(
        with_file.status.success(),
        "{}",
        String::from_utf8_lossy(&with_file.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&with_file.stdout),
        String::from_utf8_lossy(&without.stdout),
        "config.toml and the built-in defaults differ"
    );
}
