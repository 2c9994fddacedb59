//! `--phases replicas` and `--backend postgres`: `/chat/` throughput with
//! one and with three gateways on one PostgreSQL (and one Redis for the
//! shared limits), in the same run as the mock direct and the gateway on
//! its configured backend (SQLite by default). Each PostgreSQL run has a
//! schema of its own, dropped at the end once its messages are counted
//! against the turns acknowledged. When PostgreSQL and Redis run on this
//! machine, their processes' CPU per turn is reported too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::load::{closed_loop_over, measured_all, Phase};
use crate::options::Options;
use crate::procs::{free_addr, gateway_command, wait_ready, Proc};
use crate::requests::{chat_maker, new_sessions};

/// A PostgreSQL schema for one gateway configuration.
pub struct Pg {
    url: String,
    schema: String,
}

impl Pg {
    pub fn new(url: &str) -> Pg {
        let id = chatcore::SessionId::new_v4().to_string().replace('-', "");
        Pg {
            url: url.to_owned(),
            schema: format!("loadtest_{}", &id[..16]),
        }
    }

    /// The gateway's settings for this schema.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CHATGATE_STORAGE__BACKEND".into(), "postgres".into()),
            ("CHATGATE_STORAGE__URL".into(), self.url.clone()),
            ("CHATGATE_STORAGE__SCHEMA".into(), self.schema.clone()),
        ]
    }

    /// How many messages the schema holds (-1 when it cannot be read),
    /// then drops it.
    pub async fn messages_then_drop(&self) -> i64 {
        let Ok((client, conn)) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
        else {
            return -1;
        };
        tokio::spawn(conn);
        let n = client
            .query_one(
                &format!("SELECT COUNT(*) FROM {}.messages", self.schema),
                &[],
            )
            .await
            .map_or(-1, |r| r.get::<_, i64>(0));
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await;
        n
    }
}

/// One PostgreSQL configuration's result.
pub struct Run {
    pub replicas: usize,
    pub phase: Phase,
    pub acked: u64,
    pub stored: i64,
    /// On-CPU time of this machine's PostgreSQL and Redis processes during
    /// the run (zero when they run elsewhere).
    pub postgres: Duration,
    pub redis: Duration,
}

/// On-CPU time so far of each process on this machine named `name`, from
/// `/proc/<pid>/schedstat`: its main thread, which is all of a PostgreSQL
/// process and, on Redis's defaults, all of Redis's work per command.
/// Every such process counts (autovacuum, the WAL writer: the server's
/// work too), so run nothing else on them.
fn cpu_of(name: &str) -> HashMap<u32, Duration> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let sched = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
        if let Some(ns) = sched.split_whitespace().next().and_then(|n| n.parse().ok()) {
            out.insert(pid, Duration::from_nanos(ns));
        }
    }
    out
}

/// The CPU `name`'s processes used since `before` (processes started since
/// count whole; those that ended are not counted).
fn cpu_since(name: &str, before: &HashMap<u32, Duration>) -> Duration {
    cpu_of(name)
        .into_iter()
        .map(|(pid, now)| now.saturating_sub(before.get(&pid).copied().unwrap_or_default()))
        .sum()
}

/// Runs `/chat/` for `o.duration` on one, then three, gateways sharing a
/// fresh schema and Redis key prefix; connections spread evenly.
pub async fn run(exe: &Path, mock_addr: SocketAddr, o: &Options) -> Vec<Run> {
    let mut runs = Vec::new();
    for n in [1usize, 3] {
        let pg = Pg::new(&o.postgres_url);
        let dirs: Vec<_> = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let mut procs = Vec::new();
        let mut addrs = Vec::new();
        for dir in &dirs {
            let addr = free_addr();
            let child = gateway_command(exe, dir.path(), addr, mock_addr, o)
                .envs(pg.env())
                .env("CHATGATE_RATE_LIMIT__BACKEND", "redis")
                .env("CHATGATE_RATE_LIMIT__URL", &o.redis_url)
                .env("CHATGATE_RATE_LIMIT__KEY_PREFIX", format!("{}:", pg.schema))
                .spawn()
                .expect("start a replica");
            procs.push(Proc(child));
            addrs.push(addr);
        }
        for addr in &addrs {
            if !wait_ready(*addr).await {
                eprintln!("loadtest: a replica did not become ready");
                return runs;
            }
        }
        let sessions = Arc::new(new_sessions(addrs[0], o.sessions).await);
        let pids: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();
        let (pg_before, redis_before) = (cpu_of("postgres"), cpu_of("redis-server"));
        let phase = measured_all(
            &pids,
            closed_loop_over(
                &addrs,
                o.connections,
                o.duration,
                u64::MAX,
                chat_maker(sessions),
            ),
        )
        .await;
        let postgres = cpu_since("postgres", &pg_before);
        let redis = cpu_since("redis-server", &redis_before);
        drop(procs); // killed: what they acknowledged must be stored
        let acked = phase.ok;
        let stored = pg.messages_then_drop().await;
        runs.push(Run {
            replicas: n,
            phase,
            acked,
            stored,
            postgres,
            redis,
        });
    }
    runs
}

/// Prints the replica runs against the direct and single-gateway phases.
pub fn report(direct: &mut Phase, single: &mut Phase, o: &Options, runs: Vec<Run>) {
    if runs.is_empty() {
        return;
    }
    println!(
        "replicas: /chat/ closed loop, {} connections spread over the replicas, {}s each; PostgreSQL storage, Redis limits; replicas killed with SIGKILL after each run",
        o.connections,
        o.duration.as_secs()
    );
    println!(
        "  {:<34} {:>10} {:>9} {:>9} {:>10}",
        "path", "turns/s", "× direct", "p99 ms", "CPU µs/ok"
    );
    let direct_rate = direct.rate();
    println!(
        "  {:<34} {:>10.0} {:>9.3} {:>9.2} {:>10.1}",
        "mock direct",
        direct_rate,
        1.0,
        direct.pct(0.99),
        direct.cpu_us_per_ok()
    );
    println!(
        "  {:<34} {:>10.0} {:>9.3} {:>9.2} {:>10.1}",
        format!("chatgate, {}, 1 replica", o.backend),
        single.rate(),
        single.rate() / direct_rate,
        single.pct(0.99),
        single.cpu_us_per_ok()
    );
    for mut r in runs {
        let ok = r.phase.ok.max(1) as f64;
        let per_turn = |d: Duration| d.as_secs_f64() * 1e6 / ok;
        println!(
            "  {:<34} {:>10.0} {:>9.3} {:>9.2} {:>10.1}   PostgreSQL {:.0} µs/turn, Redis {:.0}; non-2xx {} errors {}; {} turns acknowledged, {} messages stored ({})",
            format!("chatgate, postgres, {} replica{}", r.replicas, if r.replicas > 1 { "s" } else { "" }),
            r.phase.rate(),
            r.phase.rate() / direct_rate,
            r.phase.pct(0.99),
            r.phase.cpu_us_per_ok(),
            per_turn(r.postgres),
            per_turn(r.redis),
            r.phase.non_2xx,
            r.phase.errors,
            r.acked,
            r.stored,
            if r.stored >= 2 * r.acked as i64 { "all there" } else { "MISSING" }
        );
    }
}
