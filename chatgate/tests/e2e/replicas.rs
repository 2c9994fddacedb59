//! Several chatgate processes on one PostgreSQL and one Redis (docs/operations.md, several replicas):
//! they behave as one. Run when `CHATGATE_TEST_POSTGRES_URL` and
//! `CHATGATE_TEST_REDIS_URL` are set (`.ci/run` sets both); each test has
//! its own PostgreSQL schema and Redis key prefix, and one mock upstream in
//! this process that every replica calls and that records what it was
//! asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatmock::{MockOpenAi, StreamGate, StreamScript, TcpProxy};
use hyper::Method;
use serde_json::Value;

use crate::process::Server;
use crate::support::{chat, get, messages, new_session, open_stream, send, try_send, wait_until};

/// How long a replica may take to recover once a lost service is back.
const RECOVERY: Duration = Duration::from_secs(20);

/// The two service URLs, or `None` (with a note) when either is unset.
fn services() -> Option<(String, String)> {
    let pg = std::env::var("CHATGATE_TEST_POSTGRES_URL").unwrap_or_default();
    let redis = std::env::var("CHATGATE_TEST_REDIS_URL").unwrap_or_default();
    if pg.is_empty() || redis.is_empty() {
        // On the real stderr, once: libtest captures a passing test's
        // `eprintln!`.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: CHATGATE_TEST_POSTGRES_URL and CHATGATE_TEST_REDIS_URL not both set (replica tests)"
            );
        });
        return None;
    }
    Some((pg, redis))
}

/// `url` with its `host:port` replaced by `addr` (to go through a relay).
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
    format!("{scheme}://{user}{addr}{path}")
}

/// The `host:port` of `url`.
fn target(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").expect("a URL").1;
    let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = hostpath.split('/').next().unwrap();
    host.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("a host:port in the test URL")
}

/// Replicas sharing one schema, one key prefix and one mock upstream.
struct Cluster {
    mock: MockOpenAi,
    replicas: Vec<Server>,
    dirs: Vec<tempfile::TempDir>,
    env: Vec<(String, String)>,
    pg: String,
    schema: String,
}

impl Cluster {
    /// `n` replicas with the given PostgreSQL and Redis URLs, started at
    /// once (so their migrations race) and each answering `/healthz`.
    async fn start(n: usize, pg: &str, redis: &str, extra: &[(&str, &str)]) -> Cluster {
        let mock = MockOpenAi::start().await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let schema = format!("replicas_{}", &id[..12]);
        let mut env: Vec<(String, String)> = [
            ("CHATGATE_STORAGE__BACKEND", "postgres"),
            ("CHATGATE_STORAGE__URL", pg),
            ("CHATGATE_STORAGE__SCHEMA", &schema),
            ("CHATGATE_RATE_LIMIT__BACKEND", "redis"),
            ("CHATGATE_RATE_LIMIT__URL", redis),
            (
                "CHATGATE_RATE_LIMIT__KEY_PREFIX",
                &format!("chatgate-test:{id}:"),
            ),
            ("CHATGATE_OPENAI__BASE_URL", &mock.base_url()),
            ("CHATGATE_LOG__SQL", "false"),
            // A loaded machine may answer a check slowly; the outages here
            // are cuts, refused at once, not stalls.
            ("CHATGATE_RATE_LIMIT__TIMEOUT", "10s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let starts: Vec<_> = dirs
            .iter()
            .map(|d| {
                let (dir, env) = (d.path().to_path_buf(), env.clone());
                tokio::spawn(async move { start_replica(dir, env).await })
            })
            .collect();
        let mut replicas = Vec::new();
        for s in starts {
            replicas.push(s.await.expect("a replica started"));
        }
        Cluster {
            mock,
            replicas,
            dirs,
            env,
            pg: pg.to_owned(),
            schema,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.replicas[i % self.replicas.len()].addr
    }

    /// The replica's stderr, for failure messages.
    fn stderr(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].path().join("stderr.txt")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.replicas.clear(); // killed first
        let (pg, schema) = (self.pg.clone(), self.schema.clone());
        // Best effort: the schema is unique, so a leftover harms nothing.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&pg, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
        let _ = &self.env;
    }
}

async fn start_replica(dir: PathBuf, env: Vec<(String, String)>) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with_args(&dir, &["serve"], &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_messages_over_three_replicas_pass_exactly_five() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let c = Cluster::start(3, &pg, &redis, &[]).await;
    let sid = new_session(c.addr(0)).await;
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let (addr, sid) = (c.addr(i), sid.clone());
            tokio::spawn(async move { chat(addr, &sid, &format!("message {i}")).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(s.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, limited), (5, 15), "{statuses:?}\n{}", c.stderr(0));
    assert_eq!(messages(c.addr(2), &sid).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_made_on_one_replica_is_served_by_the_others() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let c = Cluster::start(3, &pg, &redis, &[]).await;
    let sid = new_session(c.addr(0)).await;
    let r = get(c.addr(1), &format!("/session/{sid}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["is_active"], 1);
    let r = chat(c.addr(2), &sid, "Hello from replica 2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let history = messages(c.addr(1), &sid).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["content"], "Hello from replica 2");
    let r = send(c.addr(2), Method::DELETE, &format!("/session/{sid}"), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    for i in 0..3 {
        let r = get(c.addr(i), &format!("/session/{sid}")).await;
        assert_eq!(r.status, 404, "replica {i}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_of_one_session_on_different_replicas_never_interleave() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let c = Cluster::start(
        3,
        &pg,
        &redis,
        &[("CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE", "1000")],
    )
    .await;
    // Slow enough that every turn overlaps others.
    c.mock.set_latency(Duration::from_millis(40));
    c.mock.set_recording(true);
    let sid = new_session(c.addr(0)).await;
    let n = 12;
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let (addr, sid) = (c.addr(i), sid.clone());
            tokio::spawn(async move { chat(addr, &sid, &format!("turn {i}")).await })
        })
        .collect();
    for s in sends {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let history = messages(c.addr(1), &sid).await;
    assert_eq!(history.len(), 2 * n);
    // Stored one turn after another: user, its own reply, user, …
    for (k, pair) in history.chunks(2).enumerate() {
        assert_eq!(pair[0]["role"], "user", "message {}", 2 * k);
        assert_eq!(pair[1]["role"], "assistant", "message {}", 2 * k + 1);
        let asked = pair[0]["content"].as_str().unwrap();
        assert_eq!(pair[1]["content"], format!("Echo: {asked}"));
    }
    // And each model call saw every turn stored before it: the k-th
    // stored turn was asked with 2k earlier messages plus its own.
    let recorded = c.mock.recorded();
    for (k, pair) in history.chunks(2).enumerate() {
        let asked = pair[0]["content"].as_str().unwrap();
        let call = recorded
            .iter()
            .find(|r| {
                r.body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .is_some_and(|m| m["content"] == asked)
            })
            .unwrap_or_else(|| panic!("no model call for {asked:?}"));
        let sent: Vec<&Value> = call.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] != "system")
            .collect();
        assert_eq!(sent.len(), 2 * k + 1, "turn {k} ({asked:?})");
        for (j, m) in sent[..2 * k].iter().enumerate() {
            assert_eq!(m["content"], history[j]["content"], "turn {k}, message {j}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_turn_holds_its_session_on_every_replica_until_stored() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let c = Cluster::start(2, &pg, &redis, &[]).await;
    let sid = new_session(c.addr(0)).await;
    // The first model call streams, and holds its chunks until the gate
    // opens; the next is the usual echo.
    let gate = StreamGate::new();
    c.mock.push(
        StreamScript::pieces(["Hel", "lo"])
            .with_gate(gate.clone())
            .into(),
    );
    c.mock.set_recording(true);
    let body = serde_json::json!({"session_id": sid, "role": "user", "content": "streamed", "stream": true})
        .to_string();
    let mut stream = open_stream(c.addr(0), "/chat/", &[], &body).await;
    // Wait until the streamed turn's model call is under way.
    let mock = &c.mock;
    wait_until(
        Duration::from_secs(20),
        "the streamed turn's model call",
        || async move { mock.request_count() >= 1 },
    )
    .await;
    assert_eq!(c.mock.request_count(), 1);
    let whole = {
        let (addr, sid) = (c.addr(1), sid.clone());
        tokio::spawn(async move { chat(addr, &sid, "whole").await })
    };
    // A real wait: what is under test is that the other replica's turn
    // does NOT run (nor call the model) while the stream holds the
    // session, and nothing observable marks it as waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !whole.is_finished(),
        "a turn on the other replica ran while the stream held the session"
    );
    assert_eq!(c.mock.request_count(), 1, "its model call waited too");
    gate.open();
    let (events, broke) = stream.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert!(events.last().is_some_and(|e| e.is("done")), "{events:?}");
    let r = whole.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = messages(c.addr(1), &sid).await;
    let contents: Vec<&str> = stored
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["streamed", "Hello", "whole", "Echo: whole"]);
    // The second call was sent the streamed turn as history.
    let second = &c.mock.recorded()[1];
    let sent: Vec<&str> = second.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(sent, ["streamed", "Hello", "whole"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_under_load_loses_no_acknowledged_turn() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let mut c = Cluster::start(
        3,
        &pg,
        &redis,
        &[("CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE", "100000")],
    )
    .await;
    c.mock.set_latency(Duration::from_millis(5));
    let mut sessions = Vec::new();
    for i in 0..9 {
        sessions.push(new_session(c.addr(i)).await);
    }
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // What each client has had acknowledged so far, read while they run.
    let progress: Vec<Arc<AtomicUsize>> = sessions.iter().map(|_| Arc::default()).collect();
    // One client per session, each on its own replica, turn after turn:
    // count what each replica acknowledged.
    let clients: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, sid)| {
            let (addr, sid, stop) = (addrs[i % 3], sid.clone(), stop.clone());
            let progress = Arc::clone(&progress[i]);
            tokio::spawn(async move {
                let mut acked = 0usize;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = serde_json::json!({"session_id": sid, "role": "user", "content": format!("m{n}")})
                        .to_string();
                    match try_send(addr, Method::POST, "/chat/", &[], Some(bytes::Bytes::from(body))).await {
                        Ok(r) if r.status == 200 => {
                            acked += 1;
                            progress.store(acked, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        // The killed replica: its clients stop.
                        Err(_) => break,
                    }
                }
                (sid, acked)
            })
        })
        .collect();
    // Under load: every client, on every replica, has had turns
    // acknowledged and goes on sending.
    let acked_by = |i: usize| progress[i].load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(30),
        "three acknowledged turns for every client",
        || {
            let all = (0..progress.len()).all(|i| acked_by(i) >= 3);
            async move { all }
        },
    )
    .await;
    let victim = &mut c.replicas[2];
    victim.child.kill().expect("kill -9 replica 2");
    let _ = victim.child.wait();
    // The survivors carry on after the kill: each of their clients has
    // more turns acknowledged.
    let at_kill: Vec<usize> = (0..progress.len()).map(acked_by).collect();
    wait_until(
        Duration::from_secs(30),
        "three more acknowledged turns for every survivor's client",
        || {
            let all = (0..progress.len())
                .filter(|i| i % 3 != 2)
                .all(|i| acked_by(i) >= at_kill[i] + 3);
            async move { all }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut sessions_left = Vec::new();
    for client in clients {
        let (sid, acked) = client.await.unwrap();
        total += acked;
        // Read through a survivor: every acknowledged turn is there (a turn
        // stored just before the kill, unacknowledged, may be there too).
        let stored = messages(c.addr(0), &sid).await;
        assert_eq!(stored.len() % 2, 0, "turns are stored whole");
        assert!(
            stored.len() / 2 >= acked,
            "session {sid}: {acked} acknowledged, {} stored",
            stored.len() / 2
        );
        sessions_left.push((sid, stored.len()));
    }
    assert!(total > 0, "no turn was acknowledged at all");
    // Every session goes on through the survivors, the killed replica's
    // too: a claim it held when it died lapses (within the claim's 15 s),
    // and the next turn sees the whole history.
    let goes_on: Vec<_> = sessions_left
        .into_iter()
        .enumerate()
        .map(|(i, (sid, before))| {
            let addr = addrs[i % 2];
            tokio::spawn(async move {
                let r = chat(addr, &sid, "still there?").await;
                assert_eq!(r.status, 200, "session {sid}: {}", r.text());
                let after = messages(addr, &sid).await;
                assert_eq!(after.len(), before + 2, "session {sid}");
                assert_eq!(after[before]["content"], "still there?");
            })
        })
        .collect();
    for g in goes_on {
        g.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_redis_or_postgres_answers_503_and_recovers_without_a_restart() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let pg_relay = TcpProxy::start(target(&pg)).await;
    let redis_relay = TcpProxy::start(target(&redis)).await;
    let c = Cluster::start(
        1,
        &via(&pg, pg_relay.addr()),
        &via(&redis, redis_relay.addr()),
        &[("CHATGATE_STORAGE__STATEMENT_TIMEOUT", "1s")],
    )
    .await;
    let addr = c.addr(0);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        ready.json()["dependencies"]["storage"]["backend"],
        "postgres"
    );
    assert_eq!(
        ready.json()["dependencies"]["rate_limiter"]["backend"],
        "redis"
    );
    let sid = new_session(addr).await;

    // Redis goes: messages are refused (the default policy), the rest works.
    redis_relay.cut();
    let r = chat(addr, &sid, "Hello").await;
    r.assert_error(503, "Rate limiter unavailable");
    assert!(r.header("retry-after").is_some());
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["dependencies"]["rate_limiter"]["status"],
        "unavailable"
    );
    assert_eq!(ready.json()["dependencies"]["storage"]["status"], "ok");
    assert_eq!(get(addr, &format!("/session/{sid}")).await.status, 200);
    redis_relay.restore();
    wait_until(RECOVERY, "a turn to pass once Redis is back", || async {
        chat(addr, &sid, "Hello again").await.status == 200
    })
    .await;
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chatgate_rate_limit_unavailable_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // PostgreSQL goes: what needs it answers 503; /healthz still answers.
    pg_relay.cut();
    let r = get(addr, &format!("/session/{sid}")).await;
    r.assert_error(503, "Storage unavailable");
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["dependencies"]["storage"]["status"],
        "unavailable"
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    pg_relay.restore();
    wait_until(
        RECOVERY,
        "/readyz to answer 200 once PostgreSQL is back",
        || async { get(addr, "/readyz").await.status == 200 },
    )
    .await;
    let r = chat(addr, &sid, "Back").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(messages(addr, &sid).await.len(), 4);

    // PostgreSQL goes while a turn waits on the model: the turn answers
    // 503 and stores nothing. Once it returns the session goes on (after
    // the failed turn's claim, which could not be released, lapses).
    // Slow enough that the cut below lands before the reply, however
    // late a loaded machine runs it.
    c.mock.set_latency(Duration::from_secs(4));
    let calls_before = c.mock.request_count();
    let pending = {
        let sid = sid.clone();
        tokio::spawn(async move { chat(addr, &sid, "mid-turn").await })
    };
    // The turn has reached the (slow) model: it waits on it.
    let mock = &c.mock;
    wait_until(
        Duration::from_secs(20),
        "the mid-turn model call",
        || async move { mock.request_count() > calls_before },
    )
    .await;
    pg_relay.cut();
    let r = pending.await.unwrap();
    r.assert_error(503, "Storage unavailable");
    c.mock.set_latency(Duration::ZERO);
    pg_relay.restore();
    wait_until(
        RECOVERY,
        "/readyz to answer 200 once PostgreSQL is back again",
        || async { get(addr, "/readyz").await.status == 200 },
    )
    .await;
    let r = chat(addr, &sid, "After").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = messages(addr, &sid).await;
    assert_eq!(stored.len(), 6);
    assert!(
        stored.iter().all(|m| m["content"] != "mid-turn"),
        "{stored:?}"
    );
}

/// A response made on one replica is continued on another the moment it
/// returns, and two replicas continuing one response at once never share
/// a history (one appends, the other forks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_made_on_one_replica_continues_on_another() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let c = Cluster::start(2, &pg, &redis, &[]).await;
    c.mock.set_recording(true);
    let respond = |i: usize, body: serde_json::Value| {
        let addr = c.addr(i);
        async move {
            let r = crate::support::post(addr, "/v1/responses", &body.to_string()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let first = respond(
        0,
        serde_json::json!({"model": "gpt-3.5-turbo", "input": "one"}),
    )
    .await;
    let second = respond(
        1,
        serde_json::json!({"model": "gpt-3.5-turbo", "input": "two", "previous_response_id": first["id"]}),
    )
    .await;
    let sent = c.mock.recorded().last().unwrap().body["messages"].clone();
    assert_eq!(sent.as_array().unwrap().len(), 3, "{sent}");
    assert_eq!(sent[1]["content"], "Echo: one");
    let got = get(
        c.addr(0),
        &format!("/v1/responses/{}", second["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());

    c.mock.set_latency(Duration::from_millis(200));
    let id = second["id"].clone();
    let (a, b) = tokio::join!(
        respond(
            0,
            serde_json::json!({"model": "gpt-3.5-turbo", "input": "left", "previous_response_id": id})
        ),
        respond(
            1,
            serde_json::json!({"model": "gpt-3.5-turbo", "input": "right", "previous_response_id": id})
        ),
    );
    assert_ne!(a["id"], b["id"]);
    for r in c.mock.recorded().iter().skip(2) {
        let m = r.body["messages"].as_array().unwrap();
        assert_eq!(
            m.len(),
            5,
            "the chain through `two` and one new input: {m:?}"
        );
        assert_eq!(m[3]["content"], "Echo: two");
    }
}
