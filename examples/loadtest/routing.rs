//! `--phases routing`: what routing over several upstreams costs the
//! gateway. `/chat/` in a closed loop through a gateway with one upstream
//! (the `[openai]` section, as configured by default), then through one
//! whose model is a route over two upstreams of equal weight (the bench's
//! mock and a second mock), each in alternating pairs so that both see the
//! same weather; the figure is the gateway's CPU per turn, two upstreams
//! over one.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::load::{closed_loop, measured, Phase};
use crate::options::Options;
use crate::procs::{start_gateway, start_mock, wait_ready, Servers};
use crate::requests::{chat_maker, new_sessions};

/// One gateway configuration's run.
pub struct Run {
    pub label: &'static str,
    pub phase: Phase,
}

/// The settings that make the gateway's default model a route over the
/// bench's mock (`a`) and `second` (`b`), at equal weight.
fn two_upstreams(first: SocketAddr, second: SocketAddr) -> Vec<(String, String)> {
    let model = "gpt-3.5-turbo";
    let targets = format!(
        r#"[{{"upstream": "a", "model": "{model}"}}, {{"upstream": "b", "model": "{model}"}}]"#
    );
    [
        (
            "CHATGATE_UPSTREAMS__A__BASE_URL",
            format!("http://{first}/v1"),
        ),
        ("CHATGATE_UPSTREAMS__A__AUTH", "none".into()),
        (
            "CHATGATE_UPSTREAMS__B__BASE_URL",
            format!("http://{second}/v1"),
        ),
        ("CHATGATE_UPSTREAMS__B__AUTH", "none".into()),
        // A route's name without `-` or `.`, which some shells drop from
        // a variable's name.
        ("CHATGATE_OPENAI__MODEL", "routed".into()),
        ("CHATGATE_MODELS__ROUTED__TARGETS", targets),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Two pairs of runs, one upstream then two, on fresh gateways and
/// sessions; `o.duration` each.
pub async fn run(s: &Servers, o: &Options) -> Vec<Run> {
    let (exe, mock_addr) = (s.gateway_exe.as_path(), s.mock.addr);
    let (second_proc, second, _second_ctl) = start_mock(o.mock_exe.as_deref().unwrap_or(&s.exe));
    let mut runs = Vec::new();
    for _ in 0..2 {
        for (label, env) in [
            ("one upstream", Vec::new()),
            ("two upstreams", two_upstreams(mock_addr, second.addr)),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (proc, gw) = start_gateway(exe, dir.path(), mock_addr, o, env);
            if !wait_ready(gw.addr).await {
                eprintln!("loadtest: a routing gateway did not become ready");
                return runs;
            }
            let sessions = Arc::new(new_sessions(gw.addr, o.sessions).await);
            let phase = measured(
                gw.pid,
                closed_loop(gw.addr, o.connections, o.duration, chat_maker(sessions)),
            )
            .await;
            drop(proc);
            runs.push(Run { label, phase });
        }
    }
    drop(second_proc);
    runs
}

/// The rows and the ratio of each pair.
pub fn print(runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<40} {:>10} {:>10} {:>16}",
        "routing, /chat/ closed loop", "ok/s", "non-2xx", "CPU µs per turn"
    );
    for r in runs {
        println!(
            "{:<40} {:>10.0} {:>10} {:>16.1}",
            r.label,
            r.phase.rate(),
            r.phase.non_2xx,
            r.phase.cpu_us_per_ok()
        );
    }
    for pair in runs.chunks(2) {
        if let [one, two] = pair {
            println!(
                "ratio two upstreams/one, gateway CPU per /chat/ turn: {:.3}",
                two.phase.cpu_us_per_ok() / one.phase.cpu_us_per_ok()
            );
        }
    }
}
