//! The gateway load bench: chatgate against the mock OpenAI upstream reached
//! directly, in one run, on loopback.
//!
//! Run: `cargo build --release -p chatgate && cargo run --release --example
//! loadtest` (options: `--duration 10` seconds per throughput phase,
//! `--latency-duration 10`, `--connections 64`, `--sessions 2000`, `--rate
//! 50`, `--context-tokens 136`, `--backend sqlite`,
//! `--phases all|chat|latency|stream|replicas|routing|responses`, `--postgres-url`,
//! `--redis-url`, `--gateway-env KEY=VALUE`, repeatable, to run the
//! gateway with other settings: `CHATGATE_LOG__SQL=false`,
//! `TOKIO_WORKER_THREADS=1`, ..., `--gateway-exe PATH` (or `self`), another
//! gateway binary, and `--mock-exe PATH`, another build of this bench to
//! run the mock from, so that two builds of the gateway are compared
//! against the same mock).
//!
//! Three processes share the machine, as in production: this driver (a
//! hyper client), the mock upstream (a re-execution of this binary) and
//! the shipped `chatgate` binary of the same build, `target/release/chatgate`,
//! on its defaults (SQLite on a temp file, logging to a file with
//! `log.content` and `log.sql` on, stderr logging off), so the gateway is
//! measured as shipped, its allocator and build settings its own. The per-session
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
//!
//! The stages (`options::Stage`), each a function in the file of its
//! concern, run in this order: `chat.rs` (with `replicas.rs` inside it),
//! `latency.rs` (with `floor.rs`; it also warms the sessions `stream.rs`
//! uses), `stream.rs`, and on its own `routing.rs` (`--phases routing`:
//! one upstream against a route over two). Around them: `options.rs` (the command line),
//! `procs.rs` (the child processes), `requests.rs` (what is sent),
//! `load.rs` (the load client) and `report.rs` (what is printed, calling
//! on `floor.rs` and `replicas.rs` for their own rows).

use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

mod chat;
mod floor;
mod latency;
mod load;
mod options;
mod procs;
mod replicas;
mod report;
mod requests;
mod routing;
mod stream;

use chat::Chat;
use latency::Latency;
use options::{Options, Stage};
use procs::{rss_kib, wait_ready, Proc, Servers};
use report::{Durability, Memory};

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

async fn drive(o: Options) -> ExitCode {
    let exe = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temp dir");

    let (mock_proc, mock, mut mock_ctl) = procs::start_mock(o.mock_exe.as_deref().unwrap_or(&exe));
    let db = dir.path().join("chatgate.db");
    // The PostgreSQL backend gets a schema of its own, dropped at the end.
    let pg = (o.backend == "postgres").then(|| replicas::Pg::new(&o.postgres_url));
    let backend_env = pg.as_ref().map_or_else(Vec::new, replicas::Pg::env);
    let gateway_exe = match procs::gateway_exe(&o, &exe) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut gateway, gw) =
        procs::start_gateway(&gateway_exe, dir.path(), mock.addr, &o, backend_env);

    if !wait_ready(gw.addr).await {
        eprintln!("loadtest: chatgate did not become ready");
        return ExitCode::from(1);
    }
    let s = Servers {
        exe,
        gateway_exe,
        mock,
        gateway: gw,
    };

    // Sessions, created through the gateway.
    let sessions = Arc::new(requests::new_sessions(gw.addr, o.sessions).await);
    report::header(&o);

    let runs = |stage| o.phases.runs(stage);
    let mut chat = if runs(Stage::Chat) {
        chat::run(&s, &o, &sessions).await
    } else {
        Chat::skipped()
    };
    let peak_after_throughput = rss_kib(gw.pid, "VmHWM:");
    let warmed = if runs(Stage::Latency) || runs(Stage::Stream) {
        Some(latency::warm_sessions(gw.addr, &o).await)
    } else {
        None
    };
    let mut lat = match &warmed {
        Some(w) if runs(Stage::Latency) => latency::run(&s, &o, &w.sessions).await,
        _ => Latency::skipped(),
    };
    let mut streamed = match &warmed {
        Some(w) if runs(Stage::Stream) => {
            Some(stream::run(&s, &o, &w.sessions, &mut mock_ctl).await)
        }
        _ => None,
    };
    let mock_peak = rss_kib(mock.pid, "VmHWM:");

    report::tables(&o, &mut chat, &mut lat, streamed.as_mut());
    if runs(Stage::Routing) {
        routing::print(&routing::run(&s, &o).await);
    }

    let acked = chat.chat.ok
        + chat.responses.ok
        + chat.chat_after.ok
        + chat.responses_paced.ok
        + chat.chat_paced.ok
        + warmed.map_or(0, |w| w.acked)
        + lat.chat_open.ok
        + lat.chat_c1.ok
        + streamed
            .as_ref()
            .map_or(0, |st| st.chat_ttft.ok + st.held.completed as u64);
    let exit = stop(&mut gateway, gw.pid);
    // Nothing on disk to check for the memory backend.
    let stored = match (&pg, o.backend.as_str()) {
        (Some(pg), _) => Some(pg.messages_then_drop().await),
        (None, "sqlite") => Some(sqlite_messages(&db)),
        _ => None,
    };
    let all_there = stored.is_none_or(|n| n == 2 * acked as i64);
    drop(mock_ctl);
    drop(mock_proc);

    let clean = matches!(&exit, Ok(s) if s.success());
    let durability = Durability {
        acked,
        stored,
        all_there,
        exit: exit
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string()),
    };
    let memory = Memory {
        gateway_after_throughput: peak_after_throughput,
        gateway_at_end: rss_kib(gw.pid, "VmHWM:").max(peak_after_throughput),
        mock: mock_peak,
    };
    report::summary(&o, chat, &mut lat, streamed.as_ref(), &memory, &durability);
    if all_there && clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Stops the gateway gracefully (SIGTERM), so that it can finish storing
/// what it acknowledged, and waits for it.
fn stop(gateway: &mut Proc, pid: u32) -> std::io::Result<ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    gateway.0.wait()
}

/// How many messages the gateway's SQLite file holds (-1 if unreadable).
fn sqlite_messages(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT 2 * COUNT(*) FROM turns", [], |r| r.get(0)))
        .unwrap_or(-1)
}
