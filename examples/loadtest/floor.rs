//! The same-run floor: a second gateway with the memory backend and
//! logging off (only errors, nothing per request), measured with the same
//! open-loop and concurrency-1 latency phases as the full build, in the
//! same run. "full − floor" is then what storage and logging add to a
//! lightly loaded turn, apart from what any extra process hop costs on
//! this machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{closed_loop, closed_loop_until, open_loop, Phase};
use crate::options::Options;
use crate::procs::{free_addr, gateway_command, wait_ready, Proc};
use crate::requests::{chat_maker, new_sessions};

/// The floor gateway's two latency phases.
pub struct Floor {
    pub open: Phase,
    pub c1: Phase,
}

/// Starts the floor gateway, warms its sessions as the full build's were
/// (5 turns each), and runs the two latency phases on it.
pub async fn run(exe: &Path, mock_addr: SocketAddr, o: &Options, lat: Duration) -> Option<Floor> {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = free_addr();
    let child = gateway_command(exe, dir.path(), addr, mock_addr, o)
        .env("CHATGATE_STORAGE__BACKEND", "memory")
        .env("CHATGATE_LOG__LEVEL", "error")
        .env("CHATGATE_LOG__CONTENT", "false")
        .env("CHATGATE_LOG__SQL", "false")
        .spawn()
        .expect("start the floor gateway");
    let _floor = Proc(child);
    if !wait_ready(addr).await {
        eprintln!("loadtest: the floor gateway did not become ready");
        return None;
    }
    let sessions = Arc::new(new_sessions(addr, o.sessions).await);
    let make = chat_maker(sessions);
    closed_loop_until(
        addr,
        o.connections,
        Duration::from_secs(60),
        5 * o.sessions as u64,
        Arc::clone(&make),
    )
    .await;
    let open = open_loop(addr, o.rate, lat, Arc::clone(&make)).await;
    let c1 = closed_loop(addr, 1, lat, make).await;
    Some(Floor { open, c1 })
}

/// Prints the floor's latencies and the full build's, each as added to the
/// mock reached directly and as added to the floor.
pub fn report(
    f: &mut Floor,
    direct_open: &mut Phase,
    full_open: &mut Phase,
    direct_c1: &mut Phase,
    full_c1: &mut Phase,
) {
    println!();
    println!(
        "{:<50} {:>10} {:>10} {:>10} {:>10}",
        "floor (memory, logging off), ms", "p50", "p99", "p99.9", "non-2xx"
    );
    let rows: [(&str, &mut Phase, &mut Phase, &mut Phase); 2] = [
        ("open loop", &mut f.open, direct_open, full_open),
        ("concurrency 1", &mut f.c1, direct_c1, full_c1),
    ];
    for (name, floor, direct, full) in rows {
        let (f50, f99, f999) = (floor.pct(0.5), floor.pct(0.99), floor.pct(0.999));
        let (d50, d99) = (direct.pct(0.5), direct.pct(0.99));
        let (g50, g99) = (full.pct(0.5), full.pct(0.99));
        println!(
            "{:<50} {:>10.3} {:>10.3} {:>10.3} {:>10}",
            format!("{name}: floor gateway"),
            f50,
            f99,
            f999,
            floor.non_2xx + floor.errors
        );
        println!(
            "{:<50} {:>+10.3} {:>+10.3}",
            format!("{name}: added by the floor (floor − direct)"),
            f50 - d50,
            f99 - d99
        );
        println!(
            "{:<50} {:>+10.3} {:>+10.3}",
            format!("{name}: full − floor"),
            g50 - f50,
            g99 - f99
        );
        // A ratio only means something when the floor added anything:
        // on a noisy machine its p99 can come out below the direct one's.
        if f99 > d99 && g99 > d99 {
            println!(
                "{:<50} {:>10.2}",
                format!("{name}: added p99, full / floor"),
                (g99 - d99) / (f99 - d99)
            );
        } else {
            println!(
                "{:<50} {:>10}",
                format!("{name}: added p99, full / floor"),
                "n/a"
            );
        }
    }
}
