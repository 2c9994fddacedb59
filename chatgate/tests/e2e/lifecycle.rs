//! Shutdown and durability: graceful drain in-process, SIGTERM to the
//! built binary, and `kill -9` losing no acknowledged turn.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use crate::process::{run, Server};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_turn_in_flight_then_refuses_connections() {
    let mut gw = Gateway::start().await;
    gw.mock.set_latency(Duration::from_millis(500));
    let id = new_session(gw.addr).await;
    let (addr, sid) = (gw.addr, id.clone());
    let in_flight = tokio::spawn(async move { chat(addr, &sid, "finish me").await });
    // The turn has reached the (slow) upstream: it is in flight.
    let mock = &gw.mock;
    let mock_requests = move || async move { mock.request_count() >= 1 };
    wait_until(
        Duration::from_secs(10),
        "the turn to reach the mock",
        mock_requests,
    )
    .await;

    gw.trigger_shutdown();
    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "in-flight turn: {}", r.text());
    assert_eq!(r.json()["content"], "Echo: finish me");
    gw.wait_stopped().await;

    let err = tokio::net::TcpStream::connect(addr).await;
    assert!(err.is_err(), "a new connection was accepted after shutdown");
    let log = gw.stop().await;
    assert!(
        log.lines()
            .any(|l| has_field(l, "path", "/chat/") && has_field(l, "status", "200")),
        "the drained request was not logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_with_exit_0_and_a_flushed_log() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("OPENAI_API_KEY", "sk-binary-Qm4Tz8Wv1Ny6"),
        ("SECRET_KEY", "signing-Hb5Rk2Xc7Jd3"),
    ];
    let mut server = Server::start_with_env(dir.path(), &secrets).await;
    let id = new_session(server.addr).await;
    let r = chat(server.addr, &id, "before the signal").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: before the signal");

    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let err = tokio::net::TcpStream::connect(server.addr).await;
    assert!(err.is_err(), "still accepting after SIGTERM");

    let log = std::fs::read_to_string(dir.path().join("app.log")).expect("app.log");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("stopped"),
        "the last log line is not `stopped`: {last:?}\n{log}"
    );
    assert!(
        log.contains("before the signal"),
        "content not flushed:\n{log}"
    );
    for (name, value) in secrets {
        assert!(!log.contains(value), "{name} is in app.log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_turn_and_purge_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let id = new_session(server.addr).await;
    let mut expected = Vec::new();
    for i in 0..4 {
        let msg = format!("durable {i}");
        let r = chat(server.addr, &id, &msg).await;
        assert_eq!(r.status, 200, "{}", r.text());
        expected.push(("user".to_owned(), msg.clone()));
        expected.push(("assistant".to_owned(), format!("Echo: {msg}")));
    }
    let fb = serde_json::json!({"session_id": id, "feedback": "kept"}).to_string();
    assert_eq!(post(server.addr, "/feedback/", &fb).await.status, 200);

    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reap");
    drop(server);

    let server = Server::start(dir.path()).await;
    let stored: Vec<(String, String)> = messages(server.addr, &id)
        .await
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap().to_owned();
            (role, m["content"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(stored, expected, "acknowledged turns lost across kill -9");
    let s = send(server.addr, Method::GET, &format!("/session/{id}"), None).await;
    assert_eq!(s.json()["is_active"], 1);
    drop(server);

    let out = run(
        dir.path(),
        &["--mock-upstream", "purge"],
        &[("CHATGATE_LOG__STDERR", "false")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "purge failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("purged 0 sessions, ")),
        "purge printed {stdout:?}"
    );
}

/// What one client task of the load test sent.
#[derive(Debug, Default)]
struct ClientLog {
    /// `(session index, content)` of every message answered 200, in order.
    acked: Vec<(usize, String)>,
    /// The message whose request broke when the server died, if any.
    broken: Option<(usize, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_turn() {
    const SESSIONS: usize = 8;
    const CLIENTS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![("CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE", "100000")];
    env.extend(ONE_ADDRESS_IS_MANY_CLIENTS);
    let mut server = Server::start_with_env(dir.path(), &env).await;
    let addr = server.addr;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        ids.push(new_session(addr).await);
    }
    let ids = Arc::new(ids);

    // Each client sends one message at a time, round-robin over the
    // sessions (two clients start on each), until a request breaks.
    let killed = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (ids, killed) = (Arc::clone(&ids), Arc::clone(&killed));
        let (successes, in_flight) = (Arc::clone(&successes), Arc::clone(&in_flight));
        clients.spawn(async move {
            let mut log = ClientLog::default();
            let mut n = 0;
            loop {
                let s = (c + n) % SESSIONS;
                let content = format!("client {c} message {n}");
                let body = serde_json::json!({
                    "session_id": ids[s], "role": "user", "content": content,
                })
                .to_string();
                in_flight.fetch_add(1, Ordering::SeqCst);
                let sent = try_send(addr, Method::POST, "/chat/", &[], Some(body.into())).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match sent {
                    Ok(r) => {
                        assert_eq!(r.status, 200, "{content}: {}", r.text());
                        assert_eq!(r.json()["content"], format!("Echo: {content}"));
                        log.acked.push((s, content));
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "{content} failed before the kill: {e}"
                        );
                        log.broken = Some((s, content));
                        return log;
                    }
                }
                n += 1;
            }
        });
    }

    // Load until a good number of turns are acknowledged; then kill -9
    // with requests in flight.
    let ok = &successes;
    wait_until(
        Duration::from_secs(60),
        "200 acknowledged turns",
        || async move { ok.load(Ordering::SeqCst) >= 200 },
    )
    .await;
    let busy = &in_flight;
    wait_until(
        Duration::from_secs(10),
        "a request in flight",
        || async move { busy.load(Ordering::SeqCst) > 0 },
    )
    .await;
    killed.store(true, Ordering::SeqCst);
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reap");
    drop(server);
    let mut logs = Vec::new();
    while let Some(done) = clients.join_next().await {
        logs.push(done.expect("client task"));
    }
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    assert!(acked >= 200, "only {acked} acknowledged");

    let server = Server::start_with_env(dir.path(), &env).await;
    let broken: HashSet<&str> = logs
        .iter()
        .filter_map(|l| l.broken.as_ref().map(|(_, m)| m.as_str()))
        .collect();
    let mut stored = Vec::new();
    for id in ids.iter() {
        let list = messages(server.addr, id).await;
        let pairs: Vec<(String, String)> = list
            .iter()
            .map(|m| {
                let role = m["role"].as_str().unwrap().to_owned();
                (role, m["content"].as_str().unwrap().to_owned())
            })
            .collect();
        // Whole turns only: each user message followed by its own reply.
        assert_eq!(pairs.len() % 2, 0, "a half turn in {id}: {pairs:?}");
        for turn in pairs.chunks(2) {
            assert_eq!(turn[0].0, "user", "{id}: {turn:?}");
            assert_eq!(turn[1].0, "assistant", "{id}: {turn:?}");
            assert_eq!(
                turn[1].1,
                format!("Echo: {}", turn[0].1),
                "interleaved in {id}"
            );
        }
        let users: Vec<String> = pairs.into_iter().step_by(2).map(|(_, c)| c).collect();
        stored.push(users);
    }
    // Each session's position of every stored message; nothing twice.
    let mut position: HashMap<&str, (usize, usize)> = HashMap::new();
    for (s, users) in stored.iter().enumerate() {
        for (i, m) in users.iter().enumerate() {
            let dup = position.insert(m.as_str(), (s, i));
            assert!(dup.is_none(), "{m:?} stored twice");
            let acked = logs.iter().any(|l| l.acked.iter().any(|(_, a)| a == m));
            assert!(
                acked || broken.contains(m.as_str()),
                "{m:?} is stored but was never sent"
            );
        }
    }
    // Every acknowledged message is stored, in its session, and each
    // client's messages to a session are in the order they were sent.
    for log in &logs {
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (s, m) in &log.acked {
            let Some(&(at_s, at_i)) = position.get(m.as_str()) else {
                panic!("acknowledged {m:?} was lost across kill -9");
            };
            assert_eq!(at_s, *s, "{m:?} is stored in another session");
            if let Some(prev) = last.insert(*s, at_i) {
                assert!(prev < at_i, "{m:?} is stored before an earlier message");
            }
        }
    }
    let broken_stored = broken.iter().filter(|m| position.contains_key(*m)).count();
    eprintln!(
        "{acked} acknowledged; {} broken by the kill, {broken_stored} of them stored",
        broken.len()
    );
    // The restarted server carries on with every session.
    for id in ids.iter() {
        let r = chat(server.addr, id, "after the crash").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_the_background_sweep_delete_sessions_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    // Retention may not be shorter than the idle timeout (config refuses it).
    // Both long enough for a loaded machine to run the steps that must
    // find the session alive.
    let retention = [
        ("CHATGATE_SESSION__RETENTION", "3s"),
        ("CHATGATE_SESSION__IDLE_TIMEOUT", "3s"),
    ];
    let server = Server::start_with_env(dir.path(), &retention).await;
    let id = new_session(server.addr).await;
    for m in ["a", "b"] {
        assert_eq!(chat(server.addr, &id, m).await.status, 200);
    }
    let fb = serde_json::json!({"session_id": id, "feedback": "bye"}).to_string();
    assert_eq!(post(server.addr, "/feedback/", &fb).await.status, 200);
    let idle_since = std::time::Instant::now();
    drop(server);

    // `chatgate purge` runs one sweep and says what it deleted. It runs as
    // soon as the session can be past retention, and again until it is
    // (the session's age is read against the wall clock by another
    // process: real time must pass).
    let env = [
        retention[0],
        retention[1],
        ("CHATGATE_LOG__STDERR", "false"),
    ];
    let app_log = dir.path().join("app.log");
    let (stdout, log_before) = wait_for(
        Duration::from_secs(30),
        "`chatgate purge` to delete the session past retention",
        || {
            let mut purged = None;
            if idle_since.elapsed() >= Duration::from_secs(3) {
                let log_before = std::fs::metadata(&app_log).map_or(0, |m| m.len() as usize);
                let out = run(dir.path(), &["--mock-upstream", "purge"], &env);
                assert!(
                    out.status.success(),
                    "purge failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                if !stdout.contains("purged 0 sessions") {
                    purged = Some((stdout, log_before));
                }
            }
            async move { purged }
        },
    )
    .await;
    assert!(
        stdout.contains("purged 1 sessions, 4 messages, 1 feedback entries"),
        "purge printed {stdout:?}"
    );
    // Its statements are logged (after it answered, before the log closed),
    // the transaction's COMMIT last.
    let log = std::fs::read_to_string(&app_log).unwrap();
    // Only what the purge that deleted it wrote.
    let log = &log[log_before..];
    let purge_sql: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("DELETE FROM turns"))
        .filter(|l| l.contains("statement"))
        .collect();
    assert!(
        purge_sql.iter().any(|l| l.contains("DELETE FROM sessions")),
        "purge statements missing from app.log:\n{log}"
    );
    assert!(
        purge_sql.last().is_some_and(|l| l.contains("COMMIT")),
        "the purge's COMMIT is not logged: {purge_sql:?}"
    );
    let server = Server::start(dir.path()).await;
    get(server.addr, &format!("/session/{id}"))
        .await
        .assert_error(404, "Session not found");
    drop(server);

    // The server's own sweep (every `session.sweep_interval`) does the same.
    let env = [
        retention[0],
        retention[1],
        ("CHATGATE_SESSION__SWEEP_INTERVAL", "100ms"),
    ];
    let server = Server::start_with_env(dir.path(), &env).await;
    let id = new_session(server.addr).await;
    assert_eq!(chat(server.addr, &id, "soon gone").await.status, 200);
    let path = format!("/session/{id}/messages");
    let addr = server.addr;
    let gone = || {
        let path = path.clone();
        async move { get(addr, &path).await.status == 404 }
    };
    wait_until(Duration::from_secs(30), "the sweep to delete it", gone).await;
    let r = get(addr, &format!("/session/{id}")).await;
    r.assert_error(404, "Session not found");
    // A purged session is gone for chat too (no cached copy answers).
    let r = chat(addr, &id, "still there?").await;
    r.assert_error(404, "Session not found");
}

/// `chatgate purge` run beside a live gateway (from cron, say) deletes a
/// session the gateway still holds in its hot cache: the gateway then
/// answers 404 for it everywhere, `/chat/` included, never 410 from its
/// cached copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_purged_beside_a_live_gateway_is_404_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let retention = [
        ("CHATGATE_SESSION__RETENTION", "3s"),
        ("CHATGATE_SESSION__IDLE_TIMEOUT", "3s"),
    ];
    let server = Server::start_with_env(dir.path(), &retention).await;
    let id = new_session(server.addr).await;
    assert_eq!(chat(server.addr, &id, "cache me").await.status, 200);
    let idle_since = std::time::Instant::now();

    let env = [retention[0], retention[1], ("CHATGATE_LOG__STDERR", "off")];
    wait_until(
        Duration::from_secs(30),
        "`chatgate purge` to delete it",
        || {
            let mut purged = false;
            if idle_since.elapsed() >= Duration::from_secs(3) {
                let out = run(dir.path(), &["--mock-upstream", "purge"], &env);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                purged = String::from_utf8_lossy(&out.stdout).contains("purged 1 sessions");
            }
            async move { purged }
        },
    )
    .await;

    chat(server.addr, &id, "still there?")
        .await
        .assert_error(404, "Session not found");
    get(server.addr, &format!("/session/{id}"))
        .await
        .assert_error(404, "Session not found");
    chat(server.addr, &id, "and now?")
        .await
        .assert_error(404, "Session not found");
}
