//! The gateway load bench: chatgate against the mock OpenAI upstream reached
//! directly, in one run, on loopback.
//!
//! Run: `cargo run --release --example loadtest` (options: `--duration 10`
//! seconds per throughput phase, `--latency-duration 10`, `--connections 64`,
//! `--sessions 2000`, `--rate 50`, `--context-tokens 136`, `--backend sqlite`,
//! `--phases all|chat|latency|stream|replicas`, `--postgres-url`,
//! `--redis-url`, `--gateway-env KEY=VALUE`, repeatable, to run the
//! gateway with other settings: `CHATGATE_LOG__SQL=false`,
//! `TOKIO_WORKER_THREADS=1`, ..., and `--mock-exe PATH`, another build of
//! this bench to run the mock from, so that two builds of the gateway are
//! compared against the same mock).
//!
//! Three processes share the machine, as in production: this driver (a
//! hyper client), the mock upstream and chatgate (both re-executions of
//! this binary; the gateway runs `chatgate::cli::main`, the same code as
//! the `chatgate` binary: SQLite on a temp file, logging to a file with
//! `log.content` and `log.sql` on, stderr logging off). The per-session
//! rate limit is raised so the bench measures the gateway, not the quota.
//!
//! The latency phases also run on a "floor" gateway (memory backend,
//! logging off) started for them, so what storage and logging add can be
//! read apart from what any gateway hop adds (`floor.rs`).
//!
//! Phases, each bounded in time: closed-loop throughput with N keep-alive
//! connections (mock direct, `/chat/`, `/session/initialize_session`,
//! `/feedback/`); fixed-rate open-loop latency with coordinated-omission
//! correction (each latency counts from the request's scheduled start);
//! concurrency-1 latency; streaming (`--phases stream`, also in `all`):
//! time to first token at the open-loop rate, streamed from chatgate's
//! `/chat/` and from the mock directly, then `--sessions` streams held
//! open at once with chatgate's RSS sampled while they are. Non-2xx
//! responses are never counted as
//! throughput; they are reported. At the end the gateway is stopped with
//! SIGTERM and the SQLite file is checked: every acknowledged turn stored.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

mod floor;
mod load;
mod replicas;
mod stream;

use load::{
    closed_loop, closed_loop_until, connect, cpu_by_thread, cpu_delta, open_loop, post, Make, Phase,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__mock") => run_mock(),
        Some("__gateway") => chatgate::cli::main(args.into_iter().skip(2)),
        _ => {
            let opts = match Options::parse(&args[1..]) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(drive(opts))
        }
    }
}

/// The mock upstream as a child process: prints its port, serves until
/// its stdin closes (the driver exiting closes it). A line `latency MS` on
/// stdin sets the delay before each default reply (for a stream, before
/// its first chunk), so the driver can hold streams open.
fn run_mock() -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mock = Arc::new(chatmock::MockOpenAi::start().await);
        mock.set_recording(false);
        println!("{}", mock.addr().port());
        // Blocking reads on their own thread: returns when the driver exits.
        let m = Arc::clone(&mock);
        let _ = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
                .is_ok_and(|n| n > 0)
            {
                if let Some(ms) = line
                    .trim()
                    .strip_prefix("latency ")
                    .and_then(|v| v.parse().ok())
                {
                    m.set_latency(Duration::from_millis(ms));
                }
                line.clear();
            }
        })
        .await;
    });
    ExitCode::SUCCESS
}

#[derive(Debug, Clone)]
struct Options {
    duration: Duration,
    latency_duration: Duration,
    connections: usize,
    sessions: usize,
    rate: u32,
    backend: String,
    phases: String,
    context_tokens: u64,
    /// Extra `KEY=VALUE` environment for the gateway (`--gateway-env`).
    gateway_env: Vec<(String, String)>,
    /// PostgreSQL for `--backend postgres` and `--phases replicas`.
    postgres_url: String,
    /// Redis for the replicas' shared limits (`--phases replicas`).
    redis_url: String,
    /// Another build of this bench to run the mock upstream from
    /// (`--mock-exe`): two gateway builds are compared fairly only against
    /// the same mock, which shares the machine's cores with them.
    mock_exe: Option<std::path::PathBuf>,
}

/// Gateway settings the bench itself sets, and relies on (the durability
/// check reads the SQLite file it chose; the rate limit is raised so that
/// the bench measures the gateway, not the quota).
const MANAGED_ENV: &[&str] = &[
    "CHATGATE_SERVER__BIND",
    "CHATGATE_OPENAI__BASE_URL",
    "CHATGATE_OPENAI__CONTEXT_TOKENS",
    "CHATGATE_STORAGE__PATH",
    "CHATGATE_STORAGE__BACKEND",
    "CHATGATE_LOG__FILE",
    "CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE",
    "CHATGATE_STORAGE__URL",
    "CHATGATE_STORAGE__SCHEMA",
    "CHATGATE_RATE_LIMIT__BACKEND",
    "CHATGATE_RATE_LIMIT__URL",
    "CHATGATE_RATE_LIMIT__KEY_PREFIX",
];

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            duration: Duration::from_secs(10),
            latency_duration: Duration::from_secs(10),
            connections: 64,
            sessions: 2000,
            rate: 50,
            backend: "sqlite".into(),
            phases: "all".into(),
            context_tokens: SAME_WORK_CONTEXT_TOKENS,
            gateway_env: Vec::new(),
            postgres_url: std::env::var("CHATGATE_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            redis_url: std::env::var("CHATGATE_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            mock_exe: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || -> Result<u64, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("{flag} needs a whole number"))
            };
            match flag.as_str() {
                "--duration" => o.duration = Duration::from_secs(value()?.clamp(1, 120)),
                "--latency-duration" => {
                    o.latency_duration = Duration::from_secs(value()?.clamp(1, 120))
                }
                "--connections" => o.connections = value()?.clamp(1, 1024) as usize,
                "--sessions" => o.sessions = value()?.clamp(1, 100_000) as usize,
                "--rate" => o.rate = value()?.clamp(1, 10_000) as u32,
                "--backend" => {
                    o.backend = it
                        .next()
                        .cloned()
                        .filter(|b| ["sqlite", "memory", "postgres"].contains(&b.as_str()))
                        .ok_or("--backend needs sqlite, memory or postgres")?
                }
                "--phases" => {
                    o.phases = it
                        .next()
                        .filter(|p| {
                            ["all", "chat", "latency", "stream", "replicas"].contains(&p.as_str())
                        })
                        .cloned()
                        .ok_or("--phases needs all, chat, latency, stream or replicas")?
                }
                "--context-tokens" => o.context_tokens = value()?,
                "--postgres-url" => {
                    o.postgres_url = it.next().cloned().ok_or("--postgres-url needs a URL")?
                }
                "--redis-url" => {
                    o.redis_url = it.next().cloned().ok_or("--redis-url needs a URL")?
                }
                "--mock-exe" => {
                    o.mock_exe = Some(it.next().ok_or("--mock-exe needs a path")?.into());
                }
                "--gateway-env" => {
                    let (k, v) = it
                        .next()
                        .and_then(|kv| kv.split_once('='))
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or("--gateway-env needs KEY=VALUE")?;
                    if MANAGED_ENV.contains(&k) {
                        return Err(format!(
                            "--gateway-env cannot set {k}: the bench sets it (see --backend and --context-tokens)"
                        ));
                    }
                    o.gateway_env.push((k.to_owned(), v.to_owned()));
                }
                "--bench" => {} // passed by `cargo bench`; ignored
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}

/// chatgate as the bench runs it (see the module docs), on `gw_addr`,
/// calling the mock at `mock_addr`, in `dir`.
fn gateway_command(
    exe: &std::path::Path,
    dir: &std::path::Path,
    gw_addr: SocketAddr,
    mock_addr: SocketAddr,
    o: &Options,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["__gateway", "serve"])
        .current_dir(dir)
        .env_remove("OPENAI_API_KEY")
        .env("CHATGATE_SERVER__BIND", gw_addr.to_string())
        .env(
            "CHATGATE_OPENAI__BASE_URL",
            format!("http://{mock_addr}/v1"),
        )
        .env("CHATGATE_STORAGE__PATH", dir.join("chatgate.db"))
        .env("CHATGATE_STORAGE__BACKEND", &o.backend)
        .env("CHATGATE_LOG__FILE", dir.join("app.log"))
        .env("CHATGATE_LOG__STDERR", "false")
        .env("CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE", "1000000000")
        .envs((o.context_tokens > 0).then(|| {
            (
                "CHATGATE_OPENAI__CONTEXT_TOKENS",
                o.context_tokens.to_string(),
            )
        }))
        .envs(o.gateway_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

/// Waits (up to 20 s) until the gateway at `addr` answers `/readyz`.
async fn wait_ready(addr: SocketAddr) -> bool {
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = connect(addr).await {
            let req = Request::get("/readyz")
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .expect("request");
            if matches!(c.send_request(req).await, Ok(r) if r.status().is_success()) {
                return true;
            }
        }
        if Instant::now() > ready_by {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `n` sessions through the gateway; returns their ids.
async fn new_sessions(gw_addr: SocketAddr, n: usize) -> Vec<String> {
    let mut sessions = Vec::with_capacity(n);
    let mut c = connect(gw_addr).await.expect("connect");
    for _ in 0..n {
        let (s, body) = post(&mut c, "/session/initialize_session", Bytes::new())
            .await
            .expect("session");
        assert!(s.is_success(), "initialize_session answered {s}");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        sessions.push(v["session_id"].as_str().expect("session_id").to_owned());
    }
    sessions
}

/// `/chat/` requests over `sessions`, round-robin.
fn chat_maker(sessions: Arc<Vec<String>>) -> Make {
    Arc::new(move |n| {
        let id = &sessions[(n as usize) % sessions.len()];
        let body = format!(
            r#"{{"session_id":"{id}","role":"user","content":"Hello, how are you? #{n}"}}"#
        );
        ("/chat/", Bytes::from(body))
    })
}

/// Runs the load phase `load` if `run` (else an empty phase), recording the
/// CPU process `pid` spent during it when given.
async fn phase(
    run: bool,
    pid: Option<u32>,
    load: impl std::future::Future<Output = Phase>,
) -> Phase {
    match (run, pid) {
        (false, _) => Phase {
            elapsed: Duration::from_secs(1),
            ..Phase::default()
        },
        (true, Some(pid)) => measured(pid, load).await,
        (true, None) => load.await,
    }
}

/// Runs a load phase and records the CPU process `pid` spent during it.
async fn measured(pid: u32, phase: impl std::future::Future<Output = Phase>) -> Phase {
    let before = cpu_by_thread(pid);
    let mut p = phase.await;
    p.cpu = cpu_delta(&before, &cpu_by_thread(pid));
    p
}

/// A child process killed when dropped, unless it exited.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `openai.context_tokens` budget under which chatgate forwards the
/// same upstream request as the direct baseline: with the bench's short
/// messages (about 11 and 12 estimated tokens for a question and its echo)
/// the new message plus the last 10 history messages fit, and an 11th does
/// not. Real chat messages are far longer, so the default budget (3000
/// tokens) holds about as many real messages; with these short ones it
/// would forward up to ~250 messages (see `--context-tokens 0`).
const SAME_WORK_CONTEXT_TOKENS: u64 = 136;

/// How many history messages chatgate forwards with a `context_tokens`
/// budget, for a turn of the bench with 5-digit request numbers (what most
/// of a run's turns have), by chatcore's own trimming rule.
fn forwarded_history(context_tokens: usize) -> usize {
    let at = chrono::Utc::now();
    let history: Vec<chatcore::Message> = (0..400)
        .flat_map(|i| {
            let q = format!("Hello, how are you? #{}", 10_000 + i);
            [
                chatcore::Message::text(chatcore::Role::User, q.clone(), at),
                chatcore::Message::text(chatcore::Role::Assistant, format!("Echo: {q}"), at),
            ]
        })
        .collect();
    chatcore::trim_history(&history, None, "Hello, how are you? #12345", context_tokens).len()
}

fn direct_body() -> Bytes {
    direct_body_with(10)
}

/// [`direct_body`], streamed with usage, as chatgate asks for a stream.
fn direct_stream_body() -> Bytes {
    let mut v: serde_json::Value = serde_json::from_slice(&direct_body()).expect("json");
    v["stream"] = true.into();
    v["stream_options"] = serde_json::json!({"include_usage": true});
    Bytes::from(v.to_string())
}

/// Streamed `/chat/` requests over `sessions`, round-robin.
fn chat_stream_maker(sessions: Arc<Vec<String>>) -> Make {
    Arc::new(move |n| {
        let id = &sessions[(n as usize) % sessions.len()];
        let body = format!(
            r#"{{"session_id":"{id}","role":"user","content":"Hello, how are you? #{n}","stream":true}}"#
        );
        ("/chat/", Bytes::from(body))
    })
}

/// A chat-completions request like chatgate's for a turn with `history`
/// earlier messages.
fn direct_body_with(history: usize) -> Bytes {
    let mut messages = Vec::new();
    for i in 0..history / 2 {
        messages.push(
            serde_json::json!({"role": "user", "content": format!("Hello, how are you? #{i}")}),
        );
        messages.push(serde_json::json!({"role": "assistant", "content": format!("Echo: Hello, how are you? #{i}")}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Hello, how are you? #0"}));
    Bytes::from(
        serde_json::json!({"model": "gpt-3.5-turbo", "messages": messages, "temperature": 0.7})
            .to_string(),
    )
}

async fn drive(o: Options) -> ExitCode {
    let exe = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temp dir");

    let mut mock = Command::new(o.mock_exe.as_ref().unwrap_or(&exe))
        .arg("__mock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the mock upstream");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mock.stdout.take().expect("mock stdout")),
        &mut line,
    )
    .expect("mock port");
    let mock_pid = mock.id();
    let mut mock_ctl = mock.stdin.take().expect("mock stdin");
    let mock = Proc(mock);
    let mock_addr: SocketAddr = format!("127.0.0.1:{}", line.trim())
        .parse()
        .expect("mock port");

    let gw_port = free_port();
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw_port}").parse().expect("addr");
    let db = dir.path().join("chatgate.db");
    // The PostgreSQL backend gets a schema of its own, dropped at the end.
    let pg = (o.backend == "postgres").then(|| replicas::Pg::new(&o.postgres_url));
    let backend_env = pg.as_ref().map_or_else(Vec::new, replicas::Pg::env);
    let gateway = gateway_command(&exe, dir.path(), gw_addr, mock_addr, &o)
        .envs(backend_env)
        .spawn()
        .expect("start chatgate");
    let gw_pid = gateway.id();
    let mut gateway = Proc(gateway);

    if !wait_ready(gw_addr).await {
        eprintln!("loadtest: chatgate did not become ready");
        return ExitCode::from(1);
    }

    // Sessions, created through the gateway.
    let sessions = Arc::new(new_sessions(gw_addr, o.sessions).await);

    let direct = direct_body();
    let make_direct: Make = Arc::new(move |_| ("/v1/chat/completions", direct.clone()));
    let make_chat = chat_maker(Arc::clone(&sessions));
    let make_init: Make = Arc::new(|_| ("/session/initialize_session", Bytes::new()));
    let s2 = Arc::clone(&sessions);
    let make_feedback: Make = Arc::new(move |n| {
        let id = &s2[(n as usize) % s2.len()];
        let body = format!(
            r#"{{"session_id":"{id}","feedback":"The chat was very helpful.","rating":5}}"#
        );
        ("/feedback/", Bytes::from(body))
    });

    println!(
        "chatgate load bench: {} cores, {}s per throughput phase, {} connections, {} sessions; \
         open loop {} req/s for {}s; context_tokens {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.duration.as_secs(),
        o.connections,
        o.sessions,
        o.rate,
        o.latency_duration.as_secs(),
        if o.context_tokens > 0 {
            format!(
                "{} (chatgate forwards {} history messages; the direct body has 10)",
                o.context_tokens,
                forwarded_history(o.context_tokens as usize)
            )
        } else {
            "server default (chatgate forwards each session's whole history)".to_owned()
        }
    );
    if o.backend != "sqlite" || !o.gateway_env.is_empty() {
        // Values of secret-looking keys are not echoed.
        let env: Vec<String> = o
            .gateway_env
            .iter()
            .map(|(k, v)| {
                let secret = ["KEY", "SECRET", "TOKEN", "PASSWORD"]
                    .iter()
                    .any(|s| k.to_ascii_uppercase().contains(s));
                format!("{k}={}", if secret { "(set)" } else { v.as_str() })
            })
            .collect();
        println!("gateway: backend {}; env {}", o.backend, env.join(" "));
    }
    let mut acked_turns = 0u64;

    let throughput = o.phases == "all" || o.phases == "chat" || o.phases == "replicas";
    let others = o.phases == "all";
    let latency = o.phases == "all" || o.phases == "latency";
    let streaming = o.phases == "all" || o.phases == "stream";
    let mut direct_tp = phase(
        throughput,
        Some(mock_pid),
        closed_loop(
            mock_addr,
            o.connections,
            o.duration,
            Arc::clone(&make_direct),
        ),
    )
    .await;
    let mut chat_tp = phase(
        throughput,
        Some(gw_pid),
        closed_loop(gw_addr, o.connections, o.duration, Arc::clone(&make_chat)),
    )
    .await;
    acked_turns += chat_tp.ok;
    let replica_runs = if o.phases == "replicas" {
        replicas::run(&exe, mock_addr, &o).await
    } else {
        Vec::new()
    };
    // Without the same-work budget, chatgate's upstream requests carry each
    // session's growing history (on average half the turns a session got in
    // the phase, two messages each): the same closed loop against the mock
    // with bodies of that average size shows how much of the gap is the
    // heavier upstream work.
    let avg_history = (chat_tp.ok as usize / o.sessions.max(1)).max(10);
    let sized = throughput && o.context_tokens == 0;
    let body = direct_body_with(avg_history);
    let make_sized: Make = Arc::new(move |_| ("/v1/chat/completions", body.clone()));
    let mut direct_eq = phase(
        sized,
        Some(mock_pid),
        closed_loop(mock_addr, o.connections, o.duration, make_sized),
    )
    .await;
    let mut init_tp = phase(
        others,
        Some(gw_pid),
        closed_loop(gw_addr, o.connections, o.duration, make_init),
    )
    .await;
    let mut fb_tp = phase(
        others,
        Some(gw_pid),
        closed_loop(gw_addr, o.connections, o.duration, make_feedback),
    )
    .await;
    let peak_after_throughput = rss_kib(gw_pid, "VmHWM:");

    // The latency phases run on sessions of their own, created now and
    // warmed with 5 turns each (so chatgate forwards 10 history messages,
    // as the direct body has): the initialize_session phase before them
    // made hundreds of thousands of sessions, which crowd the first ones in
    // the hot-session cache.
    let lat = o.latency_duration;
    let mut warm_sessions = Arc::clone(&sessions);
    let make_chat = if latency || streaming {
        warm_sessions = Arc::new(new_sessions(gw_addr, o.sessions).await);
        let make = chat_maker(Arc::clone(&warm_sessions));
        let warm = closed_loop_until(
            gw_addr,
            o.connections,
            Duration::from_secs(60),
            5 * o.sessions as u64,
            Arc::clone(&make),
        )
        .await;
        acked_turns += warm.ok;
        make
    } else {
        make_chat
    };
    let mut direct_open = phase(
        latency,
        None,
        open_loop(mock_addr, o.rate, lat, Arc::clone(&make_direct)),
    )
    .await;
    let mut chat_open = phase(
        latency,
        Some(gw_pid),
        open_loop(gw_addr, o.rate, lat, Arc::clone(&make_chat)),
    )
    .await;
    acked_turns += chat_open.ok;
    let mut direct_c1 = phase(
        latency,
        None,
        closed_loop(mock_addr, 1, lat, Arc::clone(&make_direct)),
    )
    .await;
    let mut chat_c1 = phase(
        latency,
        Some(gw_pid),
        closed_loop(gw_addr, 1, lat, make_chat),
    )
    .await;
    acked_turns += chat_c1.ok;
    // The floor: the same gateway with nothing to store and nothing to
    // log, measured in the same run, so that what storage and logging add
    // can be told from what any gateway hop adds on this machine.
    let mut floor = if latency {
        floor::run(&exe, mock_addr, &o, lat).await
    } else {
        None
    };

    // Streaming: time to first token on the warmed sessions (so chatgate
    // forwards as much history as the direct body carries), then every
    // session streaming at once while the mock holds its first chunk.
    let direct_stream = direct_stream_body();
    let make_direct_stream: Make =
        Arc::new(move |_| ("/v1/chat/completions", direct_stream.clone()));
    let make_chat_stream = chat_stream_maker(Arc::clone(&warm_sessions));
    let mut direct_ttft = phase(
        streaming,
        None,
        stream::ttft_open_loop(mock_addr, o.rate, lat, make_direct_stream, stream::OPENAI),
    )
    .await;
    let mut chat_ttft = phase(
        streaming,
        Some(gw_pid),
        stream::ttft_open_loop(
            gw_addr,
            o.rate,
            lat,
            Arc::clone(&make_chat_stream),
            stream::GATEWAY,
        ),
    )
    .await;
    acked_turns += chat_ttft.ok;
    let held = if streaming {
        let hold = Duration::from_secs(5);
        let _ = writeln!(mock_ctl, "latency {}", hold.as_millis());
        let held = stream::hold_open(
            gw_addr,
            o.sessions,
            hold,
            make_chat_stream,
            stream::GATEWAY,
            || rss_kib(gw_pid, "VmRSS:"),
        )
        .await;
        let _ = writeln!(mock_ctl, "latency 0");
        acked_turns += held.completed as u64;
        Some(held)
    } else {
        None
    };
    let mock_peak = rss_kib(mock_pid, "VmHWM:");

    println!();
    println!(
        "{:<44} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10}",
        "closed loop",
        "ok/s",
        "non-2xx",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        ">50 ms",
        "CPU µs/ok"
    );
    for (name, p) in [
        ("mock direct  POST /v1/chat/completions", &mut direct_tp),
        ("chatgate     POST /chat/", &mut chat_tp),
        ("mock direct, chatgate-sized bodies", &mut direct_eq),
        (
            "chatgate     POST /session/initialize_session",
            &mut init_tp,
        ),
        ("chatgate     POST /feedback/", &mut fb_tp),
    ] {
        let (p50, p99, p999) = (p.pct(0.5), p.pct(0.99), p.pct(0.999));
        println!(
            "{:<44} {:>10.0} {:>8} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.1} {:>7} {:>10.1}",
            name,
            p.rate(),
            p.non_2xx,
            p.errors,
            p50,
            p99,
            p999,
            p.max_ms(),
            p.over_ms(50),
            p.cpu_us_per_ok()
        );
    }
    println!();
    println!(
        "server CPU by thread kind, µs per ok request [times on a CPU per ok request] (the server answering each phase):"
    );
    for (name, p) in [
        ("mock direct", &direct_tp),
        ("chatgate /chat/", &chat_tp),
        ("chatgate initialize_session", &init_tp),
        ("chatgate feedback", &fb_tp),
        ("chatgate /chat/, open loop", &chat_open),
        ("chatgate /chat/, concurrency 1", &chat_c1),
    ] {
        if p.ok == 0 {
            continue;
        }
        let per: Vec<String> = p
            .cpu
            .iter()
            .map(|(n, u)| {
                let ok = p.ok as f64;
                format!(
                    "{n} {:.1} [{:.1}]",
                    u.cpu.as_secs_f64() * 1e6 / ok,
                    u.runs as f64 / ok
                )
            })
            .collect();
        println!("  {name:<30} {}", per.join(", "));
    }
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency (ms)", "p50", "p99", "p99.9", "non-2xx", "CPU µs/ok"
    );
    let rows: [(&str, &mut Phase, &mut Phase); 2] = [
        ("open loop", &mut direct_open, &mut chat_open),
        ("concurrency 1", &mut direct_c1, &mut chat_c1),
    ];
    let mut added = Vec::new();
    for (name, d, g) in rows {
        let (dp50, dp99, dp999) = (d.pct(0.5), d.pct(0.99), d.pct(0.999));
        let (gp50, gp99, gp999) = (g.pct(0.5), g.pct(0.99), g.pct(0.999));
        println!(
            "{:<44} {:>10.3} {:>10.3} {:>10.3} {:>10}",
            format!("{name}: mock direct"),
            dp50,
            dp99,
            dp999,
            d.non_2xx + d.errors
        );
        println!(
            "{:<44} {:>10.3} {:>10.3} {:>10.3} {:>10} {:>10.1}",
            format!("{name}: chatgate /chat/"),
            gp50,
            gp99,
            gp999,
            g.non_2xx + g.errors,
            g.cpu_us_per_ok()
        );
        println!(
            "{:<44} {:>+10.3} {:>+10.3} {:>+10.3}",
            format!("{name}: added by chatgate"),
            gp50 - dp50,
            gp99 - dp99,
            gp999 - dp999
        );
        added.push((name, gp50 - dp50, gp99 - dp99));
    }
    if let Some(f) = &mut floor {
        floor::report(
            f,
            &mut direct_open,
            &mut chat_open,
            &mut direct_c1,
            &mut chat_c1,
        );
    }

    if streaming {
        let (d50, d99) = (direct_ttft.pct(0.5), direct_ttft.pct(0.99));
        let (g50, g99) = (chat_ttft.pct(0.5), chat_ttft.pct(0.99));
        println!();
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>10}",
            "time to first token (ms), open loop", "p50", "p99", "non-2xx", "errors"
        );
        println!(
            "{:<44} {:>10.3} {:>10.3} {:>10} {:>10}",
            "mock direct, stream", d50, d99, direct_ttft.non_2xx, direct_ttft.errors
        );
        println!(
            "{:<44} {:>10.3} {:>10.3} {:>10} {:>10}",
            "chatgate /chat/, stream", g50, g99, chat_ttft.non_2xx, chat_ttft.errors
        );
        println!(
            "{:<44} {:>+10.3} {:>+10.3}",
            "added by chatgate",
            g50 - d50,
            g99 - d99
        );
        if let Some(h) = &held {
            println!(
                "{} streams at once: {} open together, {} completed; chatgate RSS with all open {:.1} MiB",
                o.sessions,
                h.open,
                h.completed,
                h.rss_kib as f64 / 1024.0
            );
        }
    }

    // Stop the gateway gracefully and check what it acknowledged is stored.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(gw_pid.to_string())
        .status();
    let exit = gateway.0.wait();
    // Nothing on disk to check for the memory backend.
    let stored: Option<i64> = match (&pg, o.backend.as_str()) {
        (Some(pg), _) => Some(pg.messages_then_drop().await),
        (None, "sqlite") => Some(
            rusqlite::Connection::open(&db)
                .and_then(|c| c.query_row("SELECT 2 * COUNT(*) FROM turns", [], |r| r.get(0)))
                .unwrap_or(-1),
        ),
        _ => None,
    };
    let all_there = stored.is_none_or(|n| n == 2 * acked_turns as i64);
    drop(mock_ctl);
    drop(mock);

    println!();
    replicas::report(&mut direct_tp, &mut chat_tp, &o, replica_runs);
    println!(
        "ratio chatgate/direct, /chat/ throughput: {:.3} ({:.0} vs {:.0} turns/s)",
        chat_tp.rate() / direct_tp.rate(),
        chat_tp.rate(),
        direct_tp.rate()
    );
    if sized {
        println!(
            "ratio chatgate/direct with chatgate-sized upstream bodies ({avg_history} history messages): {:.3} ({:.0} vs {:.0})",
            chat_tp.rate() / direct_eq.rate(),
            chat_tp.rate(),
            direct_eq.rate()
        );
    }
    println!(
        "ratio chatgate/direct, initialize_session: {:.3}; feedback: {:.3}",
        init_tp.rate() / direct_tp.rate(),
        fb_tp.rate() / direct_tp.rate()
    );
    for (name, p50, p99) in added {
        println!(
            "added latency, {name}: p50 {:+.3} ms, p99 {:+.3} ms",
            p50, p99
        );
    }
    println!(
        "peak RSS: chatgate {:.1} MiB after the throughput phases ({:.1} MiB at the end); mock {:.1} MiB",
        peak_after_throughput as f64 / 1024.0,
        rss_kib(gw_pid, "VmHWM:").max(peak_after_throughput) as f64 / 1024.0,
        mock_peak as f64 / 1024.0
    );
    let clean = matches!(&exit, Ok(s) if s.success());
    let exit = exit
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    match stored {
        Some(n) => println!(
            "durability: {acked_turns} turns acknowledged, {n} messages stored ({}); gateway exit {exit}",
            if all_there { "all there" } else { "MISMATCH" },
        ),
        None => println!(
            "durability: {acked_turns} turns acknowledged, not checked ({} backend); gateway exit {exit}",
            o.backend
        ),
    }
    let non_2xx = chat_tp.non_2xx
        + init_tp.non_2xx
        + fb_tp.non_2xx
        + chat_open.non_2xx
        + chat_c1.non_2xx
        + chat_ttft.non_2xx;
    println!("non-2xx through chatgate: {non_2xx}");
    if all_there && clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
