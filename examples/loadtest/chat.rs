//! The chat stage: closed-loop throughput with N keep-alive connections,
//! the mock reached directly, then chatgate's `/chat/`; in a full run also
//! `/session/initialize_session` and `/feedback/`.

use std::sync::Arc;

use crate::load::{closed_loop, measured, measured_if, open_loop, Phase};
use crate::options::{Options, Stage};
use crate::procs::Servers;
use crate::replicas;
use crate::requests::{
    chat_maker, direct_body, direct_body_with, direct_maker, feedback_maker, init_maker,
    responses_maker,
};

/// What the chat stage measured; every phase it did not run is skipped.
pub struct Chat {
    pub direct: Phase,
    pub chat: Phase,
    /// Stored responses joining the same sessions as conversations.
    pub responses: Phase,
    /// `/chat/` again, interleaved with the responses (when they ran), so
    /// a response is read against turns made over the same stretch: the
    /// sessions' histories and the database grow all along.
    pub chat_after: Phase,
    /// Stored responses and `/chat/` turns again, interleaved the same
    /// way, both sent at one fixed rate (`paced_rate`): in a closed loop
    /// the slower of the two also runs at a lower rate, with fewer
    /// requests sharing each wake-up, so its CPU per request is not its
    /// work alone.
    pub responses_paced: Phase,
    pub chat_paced: Phase,
    pub paced_rate: u32,
    /// The mock with bodies of chatgate's average upstream size.
    pub direct_sized: Phase,
    /// How many history messages those bodies carried, when they ran.
    pub sized_history: Option<usize>,
    pub init: Phase,
    pub feedback: Phase,
    pub replicas: Vec<replicas::Run>,
}

impl Chat {
    pub fn skipped() -> Chat {
        Chat {
            direct: Phase::skipped(),
            chat: Phase::skipped(),
            responses: Phase::skipped(),
            chat_after: Phase::skipped(),
            responses_paced: Phase::skipped(),
            chat_paced: Phase::skipped(),
            paced_rate: 0,
            direct_sized: Phase::skipped(),
            sized_history: None,
            init: Phase::skipped(),
            feedback: Phase::skipped(),
            replicas: Vec::new(),
        }
    }
}

/// Runs the chat stage on `sessions`. The replica stage, when selected,
/// runs inside it, right after the `/chat/` loop its figures are read
/// against.
pub async fn run(s: &Servers, o: &Options, sessions: &Arc<Vec<String>>) -> Chat {
    let (mock, gw) = (s.mock, s.gateway);
    let others = o.phases.is_all();
    let direct = measured(
        mock.pid,
        closed_loop(
            mock.addr,
            o.connections,
            o.duration,
            direct_maker(direct_body()),
        ),
    )
    .await;
    // `/chat/` on the gateway, measured, when `run`.
    let chat_loop = |run: bool| {
        measured_if(
            run,
            gw.pid,
            closed_loop(
                gw.addr,
                o.connections,
                o.duration,
                chat_maker(Arc::clone(sessions)),
            ),
        )
    };
    let chat = chat_loop(true).await;
    // After `/chat/` (which also brings the database past what fits in
    // SQLite's page cache: a step in the cost of every later turn), on the
    // same sessions: stored responses, each that turn through the
    // Responses API, interleaved with more `/chat/` turns in the order
    // R C C R R C, so that the growth of the histories and the database
    // falls on both alike. Each part runs a sixth of three durations.
    let (mut responses, mut chat_after) = (Phase::skipped(), Phase::skipped());
    let (mut responses_paced, mut chat_paced) = (Phase::skipped(), Phase::skipped());
    // A third of the `/chat/` loop's rate: both kinds keep up with it
    // (at half, answers queue up on this two-core machine).
    let paced_rate = (chat.rate() / 3.0) as u32;
    if o.phases.runs(Stage::Responses) {
        let part = o.duration / 2;
        (responses, chat_after) = interleaved(sessions, |make| {
            measured(gw.pid, closed_loop(gw.addr, o.connections, part, make))
        })
        .await;
        if paced_rate > 0 {
            (responses_paced, chat_paced) = interleaved(sessions, |make| {
                measured(gw.pid, open_loop(gw.addr, paced_rate, part, make))
            })
            .await;
        }
    }
    let replicas = if o.phases.runs(Stage::Replicas) {
        replicas::run(&s.gateway_exe, mock.addr, o).await
    } else {
        Vec::new()
    };
    // Without the same-work budget, chatgate's upstream requests carry each
    // session's growing history (on average half the turns a session got in
    // the phase, two messages each): the same closed loop against the mock
    // with bodies of that average size shows how much of the gap is the
    // heavier upstream work.
    let avg_history = (chat.ok as usize / o.sessions.max(1)).max(10);
    let sized = o.context_tokens == 0;
    let direct_sized = measured_if(
        sized,
        mock.pid,
        closed_loop(
            mock.addr,
            o.connections,
            o.duration,
            direct_maker(direct_body_with(avg_history)),
        ),
    )
    .await;
    let init = measured_if(
        others,
        gw.pid,
        closed_loop(gw.addr, o.connections, o.duration, init_maker()),
    )
    .await;
    let feedback = measured_if(
        others,
        gw.pid,
        closed_loop(
            gw.addr,
            o.connections,
            o.duration,
            feedback_maker(Arc::clone(sessions)),
        ),
    )
    .await;
    Chat {
        direct,
        chat,
        responses,
        chat_after,
        responses_paced,
        chat_paced,
        paced_rate,
        direct_sized,
        sized_history: sized.then_some(avg_history),
        init,
        feedback,
        replicas,
    }
}

/// Stored responses and `/chat/` turns, each part run by `run`, in the
/// order R C C R R C, so that the growth of the histories and the database
/// falls on both alike: (the responses, the turns).
async fn interleaved<F, Fut>(sessions: &Arc<Vec<String>>, run: F) -> (Phase, Phase)
where
    F: Fn(crate::load::Make) -> Fut,
    Fut: std::future::Future<Output = Phase>,
{
    let (mut r, mut c) = (Vec::new(), Vec::new());
    for response_first in [true, false, true] {
        for response in [response_first, !response_first] {
            if response {
                r.push(run(responses_maker(Arc::clone(sessions))).await);
            } else {
                c.push(run(chat_maker(Arc::clone(sessions))).await);
            }
        }
    }
    let joined = |parts: Vec<Phase>| {
        let mut parts = parts.into_iter();
        let mut all = parts.next().unwrap_or_else(Phase::skipped);
        for p in parts {
            all.absorb(p);
        }
        all
    };
    (joined(r), joined(c))
}
