//! The load client: keep-alive HTTP/1.1 connections (hyper), closed-loop
//! and open-loop phases, latency samples.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(tx)
}

pub async fn post(
    tx: &mut SendRequest<Full<Bytes>>,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    tx.ready().await.map_err(|e| e.to_string())?;
    let req = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// What a request generator produces: path and body for request `n`.
pub type Make = Arc<dyn Fn(u64) -> (&'static str, Bytes) + Send + Sync>;

#[derive(Debug, Default)]
pub struct Phase {
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    /// CPU time the measured server process spent during the phase, by
    /// thread kind (see [`cpu_by_thread`]).
    pub cpu: Vec<(String, ThreadUse)>,
}

impl Phase {
    /// A phase that did not run: nothing counted, over a nominal second so
    /// that its rate reads 0 rather than NaN.
    pub fn skipped() -> Phase {
        Phase {
            elapsed: Duration::from_secs(1),
            ..Phase::default()
        }
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Server CPU per successful request, in microseconds.
    pub fn cpu_us_per_ok(&self) -> f64 {
        let total: Duration = self.cpu.iter().map(|(_, u)| u.cpu).sum();
        total.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }

    pub fn pct(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// The slowest answer, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latencies_us
            .iter()
            .max()
            .map_or(f64::NAN, |m| f64::from(*m) / 1000.0)
    }

    /// How many answers took longer than `ms` milliseconds.
    pub fn over_ms(&self, ms: u32) -> usize {
        self.latencies_us.iter().filter(|l| **l > ms * 1000).count()
    }

    /// Adds a later phase of the same requests: its counts, time,
    /// latencies and CPU, thread kind by thread kind.
    pub fn absorb(&mut self, other: Phase) {
        self.elapsed += other.elapsed;
        for (name, used) in &other.cpu {
            match self.cpu.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => {
                    mine.cpu += used.cpu;
                    mine.runs += used.runs;
                }
                None => self.cpu.push((name.clone(), *used)),
            }
        }
        self.merge(other);
    }

    fn merge(&mut self, other: Phase) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Closed loop: `conns` keep-alive connections, each sending its next
/// request as soon as the previous answer arrives, for `duration`.
pub async fn closed_loop(addr: SocketAddr, conns: usize, duration: Duration, make: Make) -> Phase {
    closed_loop_until(addr, conns, duration, u64::MAX, make).await
}

/// As [`closed_loop`], also ending once `total` requests were sent.
pub async fn closed_loop_until(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    total: u64,
    make: Make,
) -> Phase {
    closed_loop_over(&[addr], conns, duration, total, make).await
}

/// As [`closed_loop_until`], connection `i` going to `addrs[i % len]` (a
/// load balancer spreading connections over replicas).
pub async fn closed_loop_over(
    addrs: &[SocketAddr],
    conns: usize,
    duration: Duration,
    total: u64,
    make: Make,
) -> Phase {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (make, counter) = (Arc::clone(&make), Arc::clone(&counter));
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            let Ok(mut tx) = connect(addr).await else {
                phase.errors += 1;
                return phase;
            };
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let (path, body) = make(n);
                let t0 = Instant::now();
                match post(&mut tx, path, body).await {
                    Ok((s, _)) if s.is_success() => {
                        phase.ok += 1;
                        phase.latencies_us.push(t0.elapsed().as_micros() as u32);
                    }
                    Ok(_) => phase.non_2xx += 1,
                    Err(_) => {
                        phase.errors += 1;
                        match connect(addr).await {
                            Ok(c) => tx = c,
                            Err(_) => return phase,
                        }
                    }
                }
            }
            phase
        }));
    }
    let mut total = Phase::default();
    for t in tasks {
        if let Ok(p) = t.await {
            total.merge(p);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Open loop: requests scheduled at a fixed `rate`; each latency counts
/// from its scheduled start (coordinated-omission correction), on a pool
/// of keep-alive connections that grows if every connection is busy.
pub async fn open_loop(addr: SocketAddr, rate: u32, duration: Duration, make: Make) -> Phase {
    let (pool_tx, pool_rx) = tokio::sync::mpsc::unbounded_channel::<SendRequest<Full<Bytes>>>();
    let pool_rx = Arc::new(tokio::sync::Mutex::new(pool_rx));
    for _ in 0..4 {
        if let Ok(c) = connect(addr).await {
            let _ = pool_tx.send(c);
        }
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    // Below this period, spinning to each slot would take a core from the
    // servers measured: requests go out in the timer's millisecond ticks
    // instead (their latencies still count from their own slots).
    let spin = period >= Duration::from_millis(2);
    for i in 0..total {
        let scheduled = start + period * i as u32;
        if spin {
            // The timer wheel has millisecond granularity: sleep to just
            // before the slot, then spin, so latencies are not padded by
            // timer slop.
            tokio::time::sleep_until(scheduled - Duration::from_millis(2)).await;
            while tokio::time::Instant::now() < scheduled {
                std::hint::spin_loop();
            }
        } else if tokio::time::Instant::now() < scheduled {
            tokio::time::sleep_until(scheduled).await;
        }
        let (make, pool_tx, pool_rx) = (Arc::clone(&make), pool_tx.clone(), Arc::clone(&pool_rx));
        tasks.push(tokio::spawn(async move {
            let conn = {
                let mut rx = pool_rx.lock().await;
                rx.try_recv().ok()
            };
            let mut conn = match conn {
                Some(c) => c,
                None => connect(addr).await.map_err(|e| e.to_string())?,
            };
            let (path, body) = make(i);
            let result = post(&mut conn, path, body).await;
            let latency = scheduled.elapsed().as_micros() as u32;
            let _ = pool_tx.send(conn);
            result.map(|(s, _)| (s, latency))
        }));
    }
    let mut phase = Phase::default();
    for t in tasks {
        match t.await {
            Ok(Ok((s, lat))) if s.is_success() => {
                phase.ok += 1;
                phase.latencies_us.push(lat);
            }
            Ok(Ok(_)) => phase.non_2xx += 1,
            _ => phase.errors += 1,
        }
    }
    phase.elapsed = start.elapsed();
    phase
}

/// Runs a load phase and records the CPU process `pid` spent during it.
pub async fn measured(pid: u32, phase: impl Future<Output = Phase>) -> Phase {
    let before = cpu_by_thread(pid);
    let mut p = phase.await;
    p.cpu = cpu_delta(&before, &cpu_by_thread(pid));
    p
}

/// [`measured`] over several processes (replicas): their threads' CPU
/// summed by kind.
pub async fn measured_all(pids: &[u32], phase: impl Future<Output = Phase>) -> Phase {
    let before: Vec<_> = pids.iter().map(|pid| cpu_by_thread(*pid)).collect();
    let mut p = phase.await;
    let mut total: Vec<(String, ThreadUse)> = Vec::new();
    for (pid, before) in pids.iter().zip(&before) {
        for (name, used) in cpu_delta(before, &cpu_by_thread(*pid)) {
            match total.iter_mut().find(|(n, _)| *n == name) {
                Some((_, u)) => {
                    u.cpu += used.cpu;
                    u.runs += used.runs;
                }
                None => total.push((name, used)),
            }
        }
    }
    p.cpu = total;
    p
}

/// [`measured`] if `run`, else [`Phase::skipped`].
pub async fn measured_if(run: bool, pid: u32, phase: impl Future<Output = Phase>) -> Phase {
    if run {
        measured(pid, phase).await
    } else {
        Phase::skipped()
    }
}

/// What the threads of one kind did: on-CPU time, and how many times they
/// were put on a CPU (after a wake-up or a preemption; at low load nearly
/// all are wake-ups, so this counts the hops a request makes).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadUse {
    pub cpu: Duration,
    pub runs: u64,
}

/// [`ThreadUse`] of each thread of process `pid`, summed by thread name
/// with trailing digits and dashes dropped (`tokio-rt-worker`,
/// `chatcore-sqlite`, ...), from `/proc/<pid>/task/*/schedstat` (on-CPU
/// nanoseconds, run-queue wait, timeslices run).
fn cpu_by_thread(pid: u32) -> Vec<(String, ThreadUse)> {
    let mut out: Vec<(String, ThreadUse)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let ns = fields.next().unwrap_or(0);
        let runs = fields.nth(1).unwrap_or(0);
        let used = ThreadUse {
            cpu: Duration::from_nanos(ns),
            runs,
        };
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, u)) => {
                u.cpu += used.cpu;
                u.runs += used.runs;
            }
            None => out.push((name.to_owned(), used)),
        }
    }
    out
}

/// `after - before`, thread kind by thread kind, most CPU first (threads
/// that exited in between are lost; the bench's servers keep theirs).
fn cpu_delta(
    before: &[(String, ThreadUse)],
    after: &[(String, ThreadUse)],
) -> Vec<(String, ThreadUse)> {
    let mut out: Vec<(String, ThreadUse)> = after
        .iter()
        .map(|(n, a)| {
            let b = before
                .iter()
                .find(|(m, _)| m == n)
                .map_or(ThreadUse::default(), |(_, u)| *u);
            let used = ThreadUse {
                cpu: a.cpu.saturating_sub(b.cpu),
                runs: a.runs.saturating_sub(b.runs),
            };
            (n.clone(), used)
        })
        .filter(|(_, u)| !u.cpu.is_zero())
        .collect();
    out.sort_by_key(|(_, u)| std::cmp::Reverse(u.cpu));
    out
}
