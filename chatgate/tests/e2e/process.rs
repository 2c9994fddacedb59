//! Running the built `chatgate` binary: a clean environment, a free
//! loopback port, readiness polling, and a guard that always kills it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::support::{try_send, wait_for, wait_until};

/// How long a started binary may take to answer `/healthz`.
const READY_LIMIT: Duration = Duration::from_secs(10);

/// The built binary, run in `dir` with an empty environment (so neither
/// the developer's `OPENAI_API_KEY` nor any `CHATGATE_*` leaks in).
pub fn chatgate(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.current_dir(dir).env_clear();
    cmd
}

/// Runs `chatgate <args>` in `dir` with `env` and collects its output.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = chatgate(dir);
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run the chatgate binary")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `chatgate --mock-upstream serve` in `dir` on a free port and
    /// waits until `/healthz` answers.
    pub async fn start(dir: &Path) -> Server {
        Server::start_with_env(dir, &[]).await
    }

    /// Like [`Server::start`], with extra environment variables.
    pub async fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::spawn(dir, &["--mock-upstream", "serve"], env, true).await
    }

    /// Like [`Server::start_with_env`], but stderr logs as configured
    /// (by default: the startup line, warnings and errors) instead of
    /// not at all. It goes to `stderr.txt` in `dir`.
    pub async fn start_logging_to_stderr(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::spawn(dir, &["--mock-upstream", "serve"], env, false).await
    }

    /// `chatgate <args>` in `dir` on a free port, with extra environment
    /// variables, once `/healthz` answers.
    pub async fn start_with_args(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(dir, args, env, true).await
    }

    async fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)], quiet: bool) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.txt"))
            .expect("stderr file");
        let mut cmd = chatgate(dir);
        cmd.args(args)
            .env("CHATGATE_SERVER__BIND", addr.to_string());
        if quiet {
            cmd.env("CHATGATE_LOG__STDERR", "off");
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn chatgate");
        let mut server = Server { child, addr };
        server.wait_ready(dir).await;
        server
    }

    async fn wait_ready(&mut self, dir: &Path) {
        let (child, addr) = (&mut self.child, self.addr);
        wait_until(READY_LIMIT, "chatgate to answer /healthz", || {
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
                panic!("chatgate exited early with {status}: {err}");
            }
            async move {
                try_send(addr, hyper::Method::GET, "/healthz", &[], None)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
    }

    /// Sends SIGTERM through `kill(1)` (libc is not a dependency).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for(limit, "chatgate to exit", || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
