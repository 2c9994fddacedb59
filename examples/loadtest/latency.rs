//! The latency stage: fixed-rate open loop with coordinated-omission
//! correction (each latency counts from the request's scheduled start) and
//! concurrency 1, the mock reached directly and chatgate's `/chat/`, then
//! both again on the floor gateway (`floor.rs`). Also the warmed sessions
//! it shares with the stream stage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::floor::{self, Floor};
use crate::load::{closed_loop, closed_loop_until, measured, open_loop, Phase};
use crate::options::Options;
use crate::procs::Servers;
use crate::requests::{chat_maker, direct_body, direct_maker, new_sessions};

/// Sessions made and warmed for the latency and stream stages.
pub struct Warmed {
    pub sessions: Arc<Vec<String>>,
    /// The turns the warming acknowledged.
    pub acked: u64,
}

/// The latency and stream stages run on sessions of their own, created
/// now and warmed with 5 turns each (so chatgate forwards 10 history
/// messages, as the direct body has): the initialize_session phase before
/// them made hundreds of thousands of sessions, which crowd the first ones
/// in the hot-session cache.
pub async fn warm_sessions(gw_addr: SocketAddr, o: &Options) -> Warmed {
    let sessions = Arc::new(new_sessions(gw_addr, o.sessions).await);
    let warm = closed_loop_until(
        gw_addr,
        o.connections,
        Duration::from_secs(60),
        5 * o.sessions as u64,
        chat_maker(Arc::clone(&sessions)),
    )
    .await;
    Warmed {
        sessions,
        acked: warm.ok,
    }
}

/// What the latency stage measured.
pub struct Latency {
    pub direct_open: Phase,
    pub chat_open: Phase,
    pub direct_c1: Phase,
    pub chat_c1: Phase,
    /// `None` when the stage did not run or the floor gateway did not start.
    pub floor: Option<Floor>,
}

impl Latency {
    pub fn skipped() -> Latency {
        Latency {
            direct_open: Phase::skipped(),
            chat_open: Phase::skipped(),
            direct_c1: Phase::skipped(),
            chat_c1: Phase::skipped(),
            floor: None,
        }
    }
}

/// Runs the latency stage, chatgate's side on the warmed `sessions`.
pub async fn run(s: &Servers, o: &Options, sessions: &Arc<Vec<String>>) -> Latency {
    let (mock, gw) = (s.mock, s.gateway);
    let lat = o.latency_duration;
    let direct = direct_maker(direct_body());
    let chat = chat_maker(Arc::clone(sessions));
    let direct_open = open_loop(mock.addr, o.rate, lat, Arc::clone(&direct)).await;
    let chat_open = measured(gw.pid, open_loop(gw.addr, o.rate, lat, Arc::clone(&chat))).await;
    let direct_c1 = closed_loop(mock.addr, 1, lat, direct).await;
    let chat_c1 = measured(gw.pid, closed_loop(gw.addr, 1, lat, chat)).await;
    // The floor: the same gateway with nothing to store and nothing to
    // log, measured in the same run, so that what storage and logging add
    // can be told from what any gateway hop adds on this machine.
    let floor = floor::run(&s.gateway_exe, mock.addr, o, lat).await;
    Latency {
        direct_open,
        chat_open,
        direct_c1,
        chat_c1,
        floor,
    }
}
