//! What the bench prints: the header, the tables once every stage ran, and
//! the closing ratios and checks (the floor's and the replicas' rows are
//! printed by `floor.rs` and `replicas.rs`). benches/README.md documents
//! this output and people compare it across runs, so its lines keep their
//! shape.

use crate::chat::Chat;
use crate::floor;
use crate::latency::Latency;
use crate::load::Phase;
use crate::options::Options;
use crate::replicas;
use crate::requests::forwarded_history;
use crate::stream::Streamed;

/// The run's settings, before any stage runs.
pub fn header(o: &Options) {
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
}

/// Every stage's table. The closed-loop and latency tables are printed
/// whether or not their stage ran, so that every run has the same shape;
/// the streaming one only when it ran.
pub fn tables(o: &Options, chat: &mut Chat, lat: &mut Latency, streamed: Option<&mut Streamed>) {
    closed_loop_table(chat);
    cpu_table(chat, lat);
    latency_table(lat);
    if let Some(f) = &mut lat.floor {
        floor::report(
            f,
            &mut lat.direct_open,
            &mut lat.chat_open,
            &mut lat.direct_c1,
            &mut lat.chat_c1,
        );
    }
    if let Some(st) = streamed {
        stream_table(o, st);
    }
}

fn closed_loop_table(c: &mut Chat) {
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
        ("mock direct  POST /v1/chat/completions", &mut c.direct),
        ("chatgate     POST /chat/", &mut c.chat),
        ("chatgate     POST /v1/responses (stored)", &mut c.responses),
        (
            "chatgate     POST /chat/, between responses",
            &mut c.chat_after,
        ),
        ("mock direct, chatgate-sized bodies", &mut c.direct_sized),
        ("chatgate     POST /session/initialize_session", &mut c.init),
        ("chatgate     POST /feedback/", &mut c.feedback),
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
}

fn cpu_table(c: &Chat, lat: &Latency) {
    println!();
    println!(
        "server CPU by thread kind, µs per ok request [times on a CPU per ok request] (the server answering each phase):"
    );
    for (name, p) in [
        ("mock direct", &c.direct),
        ("chatgate /chat/", &c.chat),
        ("chatgate /v1/responses", &c.responses),
        ("chatgate /chat/, between responses", &c.chat_after),
        ("chatgate initialize_session", &c.init),
        ("chatgate feedback", &c.feedback),
        ("chatgate /chat/, open loop", &lat.chat_open),
        ("chatgate /chat/, concurrency 1", &lat.chat_c1),
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
}

/// The latency rows: each mode's mock-direct phase and chatgate's.
fn latency_rows(lat: &mut Latency) -> [(&'static str, &mut Phase, &mut Phase); 2] {
    [
        ("open loop", &mut lat.direct_open, &mut lat.chat_open),
        ("concurrency 1", &mut lat.direct_c1, &mut lat.chat_c1),
    ]
}

fn latency_table(lat: &mut Latency) {
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency (ms)", "p50", "p99", "p99.9", "non-2xx", "CPU µs/ok"
    );
    for (name, d, g) in latency_rows(lat) {
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
    }
}

fn stream_table(o: &Options, st: &mut Streamed) {
    let (d, g) = (&mut st.direct_ttft, &mut st.chat_ttft);
    let (d50, d99) = (d.pct(0.5), d.pct(0.99));
    let (g50, g99) = (g.pct(0.5), g.pct(0.99));
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10}",
        "time to first token (ms), open loop", "p50", "p99", "non-2xx", "errors"
    );
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>10} {:>10}",
        "mock direct, stream", d50, d99, d.non_2xx, d.errors
    );
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>10} {:>10}",
        "chatgate /chat/, stream", g50, g99, g.non_2xx, g.errors
    );
    println!(
        "{:<44} {:>+10.3} {:>+10.3}",
        "added by chatgate",
        g50 - d50,
        g99 - d99
    );
    let h = &st.held;
    println!(
        "{} streams at once: {} open together, {} completed; chatgate RSS with all open {:.1} MiB",
        o.sessions,
        h.open,
        h.completed,
        h.rss_kib as f64 / 1024.0
    );
}

/// Peak RSS of the servers, in KiB.
pub struct Memory {
    pub gateway_after_throughput: u64,
    pub gateway_at_end: u64,
    pub mock: u64,
}

/// How the gateway ended and whether it kept what it acknowledged.
pub struct Durability {
    pub acked: u64,
    /// Messages stored; `None` where there is nothing to count.
    pub stored: Option<i64>,
    pub all_there: bool,
    /// The gateway's exit status, or why it could not be had.
    pub exit: String,
}

/// The closing lines, once the gateway stopped: the replicas, the ratios
/// to the mock direct, memory, durability, and the non-2xx answers.
pub fn summary(
    o: &Options,
    mut chat: Chat,
    lat: &mut Latency,
    streamed: Option<&Streamed>,
    mem: &Memory,
    d: &Durability,
) {
    println!();
    let runs = std::mem::take(&mut chat.replicas);
    replicas::report(&mut chat.direct, &mut chat.chat, o, runs);
    ratios(&mut chat);
    for (name, dir, g) in latency_rows(lat) {
        println!(
            "added latency, {name}: p50 {:+.3} ms, p99 {:+.3} ms",
            g.pct(0.5) - dir.pct(0.5),
            g.pct(0.99) - dir.pct(0.99)
        );
    }
    println!(
        "peak RSS: chatgate {:.1} MiB after the throughput phases ({:.1} MiB at the end); mock {:.1} MiB",
        mem.gateway_after_throughput as f64 / 1024.0,
        mem.gateway_at_end as f64 / 1024.0,
        mem.mock as f64 / 1024.0
    );
    let (acked, exit) = (d.acked, &d.exit);
    match d.stored {
        Some(n) => println!(
            "durability: {acked} turns acknowledged, {n} messages stored ({}); gateway exit {exit}",
            if d.all_there { "all there" } else { "MISMATCH" },
        ),
        None => println!(
            "durability: {acked} turns acknowledged, not checked ({} backend); gateway exit {exit}",
            o.backend
        ),
    }
    let non_2xx = chat.chat.non_2xx
        + chat.responses.non_2xx
        + chat.chat_after.non_2xx
        + chat.responses_paced.non_2xx
        + chat.chat_paced.non_2xx
        + chat.init.non_2xx
        + chat.feedback.non_2xx
        + lat.chat_open.non_2xx
        + lat.chat_c1.non_2xx
        + streamed.map_or(0, |st| st.chat_ttft.non_2xx);
    println!("non-2xx through chatgate: {non_2xx}");
}

/// chatgate's throughput over the mock's, endpoint by endpoint.
fn ratios(c: &mut Chat) {
    let (chat, direct) = (c.chat.rate(), c.direct.rate());
    println!(
        "ratio chatgate/direct, /chat/ throughput: {:.3} ({:.0} vs {:.0} turns/s)",
        chat / direct,
        chat,
        direct
    );
    if let Some(history) = c.sized_history {
        println!(
            "ratio chatgate/direct with chatgate-sized upstream bodies ({history} history messages): {:.3} ({:.0} vs {:.0})",
            chat / c.direct_sized.rate(),
            chat,
            c.direct_sized.rate()
        );
    }
    if c.responses.ok > 0 {
        // Against the /chat/ turns interleaved with them.
        let turn = c.chat_after.cpu_us_per_ok();
        let response = c.responses.cpu_us_per_ok();
        println!(
            "stored response vs /chat/ turn (interleaved R C C R R C), gateway CPU per request: {response:.1} vs {turn:.1} µs ({:+.1}%; /chat/ {:.1} in the first phase); throughput {:.0} vs {:.0}/s",
            (response / turn - 1.0) * 100.0,
            c.chat.cpu_us_per_ok(),
            c.responses.rate(),
            c.chat_after.rate()
        );
    }
    if c.responses_paced.ok > 0 {
        let turn = c.chat_paced.cpu_us_per_ok();
        let response = c.responses_paced.cpu_us_per_ok();
        println!(
            "stored response vs /chat/ turn at one fixed rate ({}/s, interleaved R C C R R C), gateway CPU per request: {response:.1} vs {turn:.1} µs ({:+.1}%); p99 {:.1} vs {:.1} ms",
            c.paced_rate,
            (response / turn - 1.0) * 100.0,
            c.responses_paced.pct(0.99),
            c.chat_paced.pct(0.99)
        );
    }
    println!(
        "ratio chatgate/direct, initialize_session: {:.3}; feedback: {:.3}",
        c.init.rate() / direct,
        c.feedback.rate() / direct
    );
}
