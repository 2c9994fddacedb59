//! The bench's child processes on loopback: the mock upstream (a
//! re-execution of this binary) and the gateways (the shipped `chatgate`
//! binary, or this one's `__gateway`), and what is read of them from
//! `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use crate::load::connect;
use crate::options::Options;

/// A child process killed when dropped, unless it exited.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server the bench measures: where it listens, and its process (whose
/// CPU and RSS are read).
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
}

/// What every phase drives: the mock, the gateway under test, and this
/// binary, to start the other gateways some phases compare against.
pub struct Servers {
    /// This binary: the mocks.
    pub exe: PathBuf,
    /// The gateway binary (see [`gateway_exe`]).
    pub gateway_exe: PathBuf,
    pub mock: Server,
    pub gateway: Server,
}

/// The mock upstream, started from `exe` (see `run_mock` in main.rs): the
/// process, where it listens, and its stdin, which sets its latency.
pub fn start_mock(exe: &Path) -> (Proc, Server, ChildStdin) {
    let mut mock = Command::new(exe)
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
    let pid = mock.id();
    let ctl = mock.stdin.take().expect("mock stdin");
    let addr: SocketAddr = format!("127.0.0.1:{}", line.trim())
        .parse()
        .expect("mock port");
    (Proc(mock), Server { addr, pid }, ctl)
}

/// chatgate as the bench runs it (see the module docs of main.rs), on
/// `gw_addr`, calling the mock at `mock_addr`, in `dir`.
pub fn gateway_command(
    exe: &Path,
    dir: &Path,
    gw_addr: SocketAddr,
    mock_addr: SocketAddr,
    o: &Options,
) -> Command {
    let mut cmd = Command::new(exe);
    let own = std::env::current_exe().is_ok_and(|me| me == exe);
    cmd.args(if own {
        &["__gateway", "serve"][..]
    } else {
        &["serve"][..]
    })
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
    // Every client of the bench is one loopback address.
    .env(
        "CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE",
        "1000000000",
    )
    .env("CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR", "1000000000")
    .env("CHATGATE_RATE_LIMIT__FEEDBACK_PER_HOUR", "1000000000")
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

/// The gateway binary `o` names: `--gateway-exe PATH`, this binary for
/// `--gateway-exe self`, else the shipped `chatgate` of the same build
/// (`target/release/chatgate` beside `target/release/examples/`).
pub fn gateway_exe(o: &Options, me: &Path) -> Result<PathBuf, String> {
    match o.gateway_exe.as_deref() {
        Some(p) if p == Path::new("self") => Ok(me.to_owned()),
        // Absolute: the gateways run in directories of their own.
        Some(p) => {
            std::fs::canonicalize(p).map_err(|e| format!("--gateway-exe {}: {e}", p.display()))
        }
        None => {
            let shipped = me
                .parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("chatgate"))
                .filter(|p| p.is_file());
            shipped.ok_or_else(|| {
                "the chatgate binary is not built beside this bench: run `cargo build --release -p chatgate` first (or pass --gateway-exe PATH, or --gateway-exe self)".to_owned()
            })
        }
    }
}

/// The gateway under test, on a free loopback port, with `env` on top of
/// [`gateway_command`]'s settings.
pub fn start_gateway(
    exe: &Path,
    dir: &Path,
    mock_addr: SocketAddr,
    o: &Options,
    env: Vec<(String, String)>,
) -> (Proc, Server) {
    let addr = free_addr();
    let child = gateway_command(exe, dir, addr, mock_addr, o)
        .envs(env)
        .spawn()
        .expect("start chatgate");
    let pid = child.id();
    (Proc(child), Server { addr, pid })
}

/// Waits (up to 20 s) until the gateway at `addr` answers `/readyz`.
pub async fn wait_ready(addr: SocketAddr) -> bool {
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

/// A loopback address on a port free now, for a gateway to bind.
pub fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    format!("127.0.0.1:{port}").parse().expect("addr")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 once the
/// process is gone.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
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
