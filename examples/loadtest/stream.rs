//! The stream stage: time to first token at a fixed rate (each latency
//! counts from the request's scheduled start, up to the first body frame
//! that carries reply text), the mock streaming directly and chatgate's
//! streamed `/chat/`, then many streams held open at once.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;

use crate::load::{connect, measured, Make, Phase};
use crate::options::Options;
use crate::procs::{rss_kib, Servers};
use crate::requests::{chat_stream_maker, direct_maker, direct_stream_body};

/// What the stream stage measured.
pub struct Streamed {
    pub direct_ttft: Phase,
    pub chat_ttft: Phase,
    pub held: Held,
}

/// Runs the stream stage on the warmed `sessions` (so chatgate forwards as
/// much history as the direct body carries): time to first token, then
/// every session streaming at once while the mock, told through
/// `mock_ctl`, holds its first chunk.
pub async fn run(
    s: &Servers,
    o: &Options,
    sessions: &Arc<Vec<String>>,
    mock_ctl: &mut impl Write,
) -> Streamed {
    let (mock, gw) = (s.mock, s.gateway);
    let lat = o.latency_duration;
    let chat = chat_stream_maker(Arc::clone(sessions));
    let direct = direct_maker(direct_stream_body());
    let direct_ttft = ttft_open_loop(mock.addr, o.rate, lat, direct, OPENAI).await;
    let chat_ttft = measured(
        gw.pid,
        ttft_open_loop(gw.addr, o.rate, lat, Arc::clone(&chat), GATEWAY),
    )
    .await;
    let hold = Duration::from_secs(5);
    let _ = writeln!(mock_ctl, "latency {}", hold.as_millis());
    let held = hold_open(gw.addr, o.sessions, hold, chat, GATEWAY, || {
        rss_kib(gw.pid, "VmRSS:")
    })
    .await;
    let _ = writeln!(mock_ctl, "latency 0");
    Streamed {
        direct_ttft,
        chat_ttft,
        held,
    }
}

/// How to read one kind of stream: whether a body frame carries reply
/// text, and whether it is the stream's successful end.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub token: fn(&[u8]) -> bool,
    pub done: fn(&[u8]) -> bool,
}

/// chatgate's `/chat/` stream: `event: delta`, ending in `event: done`
/// (sent only once the turn is stored).
pub const GATEWAY: Format = Format {
    token: |f| contains(f, b"event: delta"),
    done: |f| contains(f, b"event: done"),
};

/// OpenAI's stream, ending in `data: [DONE]`.
pub const OPENAI: Format = Format {
    token: openai_token,
    done: |f| contains(f, b"data: [DONE]"),
};

/// An OpenAI chunk with non-empty `content` (the first chunk carries only
/// the role and an empty string).
fn openai_token(frame: &[u8]) -> bool {
    let key = b"\"content\":\"";
    let mut rest = frame;
    while let Some(i) = find(rest, key) {
        let after = &rest[i + key.len()..];
        if after.first().is_some_and(|&c| c != b'"') {
            return true;
        }
        rest = after;
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Sends one streamed request and reads it to its end; returns when its
/// first token arrived, if it then ended well (else `None`).
async fn first_token(
    conn: &mut SendRequest<Full<Bytes>>,
    path: &str,
    body: Bytes,
    format: Format,
) -> Result<Option<Instant>, String> {
    conn.ready().await.map_err(|e| e.to_string())?;
    let req = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let _ = resp.into_body().collect().await;
        return Ok(None);
    }
    let mut body = resp.into_body();
    let mut first = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            if first.is_none() && (format.token)(data) {
                first = Some(Instant::now());
            }
            done |= (format.done)(data);
        }
    }
    Ok(first.filter(|_| done))
}

/// Streams scheduled at `rate` for `duration`; latency = time to first
/// token from the scheduled start. A stream without a token or a good end
/// counts as non-2xx.
pub async fn ttft_open_loop(
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
    make: Make,
    format: Format,
) -> Phase {
    let (pool_tx, pool_rx) = tokio::sync::mpsc::unbounded_channel();
    let pool_rx = Arc::new(tokio::sync::Mutex::new(pool_rx));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + period * i as u32;
        tokio::time::sleep_until(scheduled - Duration::from_millis(2)).await;
        while tokio::time::Instant::now() < scheduled {
            std::hint::spin_loop();
        }
        let (make, pool_tx, pool_rx) = (Arc::clone(&make), pool_tx.clone(), Arc::clone(&pool_rx));
        tasks.push(tokio::spawn(async move {
            let pooled = pool_rx.lock().await.try_recv().ok();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(addr).await.map_err(|e| e.to_string())?,
            };
            let (path, body) = make(i);
            let got = first_token(&mut conn, path, body, format).await;
            let _ = pool_tx.send(conn);
            got.map(|t| t.map(|t| (t - scheduled.into_std()).as_micros() as u32))
        }));
    }
    let mut phase = Phase::default();
    for t in tasks {
        match t.await {
            Ok(Ok(Some(lat))) => {
                phase.ok += 1;
                phase.latencies_us.push(lat);
            }
            Ok(Ok(None)) => phase.non_2xx += 1,
            _ => phase.errors += 1,
        }
    }
    phase.elapsed = start.elapsed();
    phase
}

/// What holding many streams open showed.
#[derive(Debug, Default)]
pub struct Held {
    /// Streams whose headers arrived while the others were still open.
    pub open: usize,
    /// Streams that then ran to their successful end.
    pub completed: usize,
    /// The gateway's RSS with all of them open, in KiB.
    pub rss_kib: u64,
}

/// Opens `n` streams at once (one connection each), waits until all have
/// answered their headers (bounded by `within`), samples `rss()`, then
/// lets them finish.
pub async fn hold_open(
    addr: SocketAddr,
    n: usize,
    within: Duration,
    make: Make,
    format: Format,
    rss: impl Fn() -> u64,
) -> Held {
    let open = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (make, open) = (Arc::clone(&make), Arc::clone(&open));
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr).await.ok()?;
            let (path, body) = make(i as u64);
            conn.ready().await.ok()?;
            let req = Request::post(path)
                .header("host", "127.0.0.1")
                .header("content-type", "application/json")
                .body(Full::new(body))
                .ok()?;
            let resp = conn.send_request(req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let mut body = resp.into_body();
            let mut done = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.ok()?;
                done |= frame.data_ref().is_some_and(|d| (format.done)(d));
            }
            Some(done)
        }));
    }
    let deadline = Instant::now() + within;
    while open.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Held {
        open: open.load(Ordering::Relaxed),
        rss_kib: rss(),
        ..Held::default()
    };
    for t in tasks {
        if let Ok(Some(true)) = t.await {
            held.completed += 1;
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_detection() {
        assert!(!(OPENAI.token)(
            br#"data: {"delta":{"role":"assistant","content":""}}"#
        ));
        assert!((OPENAI.token)(br#"data: {"delta":{"content":"Echo"}}"#));
        assert!((OPENAI.done)(b"data: [DONE]\n\n"));
        assert!((GATEWAY.token)(
            b"event: delta\ndata: {\"content\":\"E\"}\n\n"
        ));
        assert!(!(GATEWAY.token)(b"event: done\ndata: {}\n\n"));
        assert!((GATEWAY.done)(b"event: done\ndata: {}\n\n"));
    }
}
