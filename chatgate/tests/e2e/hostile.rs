//! Clients that misbehave, over raw sockets: bodies that stall, thousands
//! of them at once, connections that idle, a stream nobody reads; and the
//! edges of the contract: pagination of `GET /session/{id}/messages`,
//! shapes it does not allow, the storage-unavailable row of the status map,
//! and the mode of the files that hold conversations.
//!
//! Every bound is configured small here, so a test waits for the bound
//! itself; the only time assertions are generous upper bounds on those
//! waits (the timeouts are the feature).

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use chatmock::{StreamGate, StreamScript};
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::support::*;

/// An answer to a stalled body must come within this (the body timeout in
/// these tests is 300 ms; this only guards against "never").
const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads one response with a `Content-Length` body from `stream`; bytes
/// after it stay in `buf`. Panics if the connection ends first.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawResp {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < head_end + len {
        fill(stream, buf).await;
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    RawResp {
        status,
        headers,
        body,
    }
}

/// Reads more bytes into `buf`; panics on end of stream, error or a hang.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut chunk))
        .await
        .expect("no bytes within the hang guard")
        .expect("read failed");
    assert!(
        n > 0,
        "the connection closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads (and discards) until the peer closes, for at most `limit`;
/// returns how many bytes came first. `Err` on a timeout or a reset.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<usize, String> {
    let work = async {
        let mut total = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(format!("read failed after {total} bytes: {e}")),
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(format!("the connection was still open after {limit:?}")))
}

/// Looks, with one system call and without waiting, at whether `stream`
/// has something to read: `Ok(0)` closed, `Ok(n)` data, `WouldBlock`
/// nothing yet (open and quiet). Unlike `try_read`, this does not depend
/// on the reactor having seen the event yet.
fn peek_now(stream: TcpStream) -> (TcpStream, io::Result<usize>) {
    let std = stream.into_std().expect("into_std");
    let mut one = [0u8; 1];
    let seen = std.peek(&mut one);
    (TcpStream::from_std(std).expect("from_std"), seen)
}

/// The head of a request whose body is `len` bytes long.
fn head_with_length(method: &str, path: &str, len: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// `{`, spaces, `}`: a valid (empty) JSON object of exactly `len` bytes.
fn padded_empty_object(len: usize) -> Vec<u8> {
    let mut body = vec![b' '; len];
    body[0] = b'{';
    body[len - 1] = b'}';
    body
}

/// Connects and sends a request head announcing a 100-byte body, then
/// only the first 10 bytes of it.
async fn stalled_body(addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = head_with_length("POST", path, 100).into_bytes();
    out.extend_from_slice(&padded_empty_object(100)[..10]);
    s.write_all(&out).await?;
    Ok(s)
}

/// Asserts a 408 that closes its connection, with a JSON `detail`.
#[track_caller]
fn assert_body_timeout(r: &RawResp) {
    assert_eq!(r.status, 408, "{:?}", String::from_utf8_lossy(&r.body));
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(!detail.is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_and_the_connection_closes() {
    let gw = Gateway::start_with(|c| c.server.body_timeout = Duration::from_millis(300)).await;
    let id = new_session(gw.addr).await;

    // Content-Length 100, 10 bytes sent, then nothing.
    let mut s = stalled_body(gw.addr, "/chat/").await.expect("send head");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(ANSWER_BOUND, read_response(&mut s, &mut buf))
        .await
        .expect("no answer to a stalled body within 5 s");
    assert_body_timeout(&r);
    assert!(buf.is_empty(), "bytes after the 408: {buf:?}");
    let after = read_until_closed(&mut s, ANSWER_BOUND).await;
    assert_eq!(after, Ok(0), "the connection was not closed after the 408");

    // A chunked body: one chunk, then nothing (no terminating chunk).
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "POST /chat/ HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let chunk = format!("{{\"session_id\": \"{id}\"");
    let out = format!("{head}{:x}\r\n{chunk}\r\n", chunk.len());
    s.write_all(out.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(ANSWER_BOUND, read_response(&mut s, &mut buf))
        .await
        .expect("no answer to a never-ending chunked body within 5 s");
    assert_body_timeout(&r);
    let after = read_until_closed(&mut s, ANSWER_BOUND).await;
    assert_eq!(after, Ok(0), "the connection was not closed after the 408");

    // Neither reached the model or the store.
    assert_eq!(gw.mock.request_count(), 0);
    assert!(messages(gw.addr, &id).await.is_empty());
}

/// The soft limit on open files, where the system says it (Linux).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_stalled_bodies_do_not_starve_other_clients() {
    const STALLED: usize = 5_000;
    // Each stalled request is two descriptors in this process (client and
    // server side), plus the gateway's, the mock's and other tests'.
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= 2 * STALLED as u64 + 2_000,
            "this test needs `ulimit -n` of at least {} (it is {limit})",
            2 * STALLED + 2_000
        );
    }
    let gw = Gateway::start_with(|c| {
        c.server.body_timeout = Duration::from_secs(60);
        c.rate_limit.messages_per_minute = std::num::NonZeroU32::new(100).expect("nonzero");
        one_address_is_many_clients(c);
    })
    .await;
    let addr = gw.addr;

    // Open them with bounded concurrency (the listen backlog is finite).
    let gate = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    for _ in 0..STALLED {
        let gate = Arc::clone(&gate);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            stalled_body(addr, "/session/initialize_session").await
        });
    }
    let mut stalled = Vec::with_capacity(STALLED);
    while let Some(opened) = opening.join_next().await {
        let s = opened
            .expect("opening task")
            .unwrap_or_else(|e| panic!("opening stalled connection {}: {e}", stalled.len()));
        stalled.push(s);
    }
    assert_eq!(stalled.len(), STALLED);

    // A normal client is served meanwhile.
    let id = new_session(addr).await;
    for n in 0..3 {
        let r = chat(addr, &id, &format!("still there {n}?")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(messages(addr, &id).await.len(), 6);
    assert_eq!(get(addr, "/healthz").await.status, 200);

    // Every stalled connection is still open and unanswered: none was
    // dropped or answered early to make room.
    let mut held = Vec::with_capacity(STALLED);
    for (i, s) in stalled.into_iter().enumerate() {
        let (s, seen) = peek_now(s);
        match seen {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(0) => panic!("stalled connection {i} was closed"),
            Ok(_) => panic!("stalled connection {i} was answered before its body came"),
            Err(e) => panic!("stalled connection {i}: {e}"),
        }
        held.push(s);
    }

    // And every one of them was accepted and is being served: the rest of
    // its body completes it with a new session.
    let gate = Arc::new(Semaphore::new(64));
    let mut finishing = JoinSet::new();
    for mut s in held {
        let gate = Arc::clone(&gate);
        finishing.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            s.write_all(&padded_empty_object(100)[10..])
                .await
                .expect("send the rest of the body");
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf).await;
            (r.status, r.json())
        });
    }
    let mut finished = 0;
    while let Some(done) = finishing.join_next().await {
        let (status, body) = done.expect("finishing task");
        assert_eq!(status, 200, "{body}");
        assert!(body["session_id"].is_string(), "{body}");
        finished += 1;
    }
    assert_eq!(finished, STALLED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_bodys_connection_slot_is_freed_by_its_408() {
    let gw = Gateway::start_with(|c| {
        c.server.max_connections = NonZeroUsize::new(2).expect("nonzero");
        c.server.body_timeout = Duration::from_millis(300);
    })
    .await;
    // Both slots taken by bodies that never finish.
    let first = stalled_body(gw.addr, "/session/initialize_session")
        .await
        .expect("first");
    let second = stalled_body(gw.addr, "/session/initialize_session")
        .await
        .expect("second");

    // A third client waits in the backlog until a slot is free: once a
    // 408 has closed a stalled connection. Were slots leaked, it would
    // wait for ever.
    let third = tokio::time::timeout(
        Duration::from_secs(10),
        try_send(
            gw.addr,
            Method::POST,
            "/session/initialize_session",
            &[],
            None,
        ),
    )
    .await
    .expect("no slot was freed within 10 s of two 300 ms body timeouts")
    .expect("third request");
    assert_eq!(third.status, 200, "{}", third.text());

    // It was served only after a stalled one had been answered (a slot is
    // freed after the 408 is written): at least one 408 is already here.
    let (mut first, seen_first) = peek_now(first);
    let (mut second, seen_second) = peek_now(second);
    let answered = [&seen_first, &seen_second]
        .iter()
        .filter(|s| matches!(s, Ok(n) if *n > 0))
        .count();
    assert!(
        answered >= 1,
        "the third client was served while both slots were held \
         ({seen_first:?}, {seen_second:?}): max_connections is not enforced"
    );
    for s in [&mut first, &mut second] {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(ANSWER_BOUND, read_response(s, &mut buf))
            .await
            .expect("no 408");
        assert_body_timeout(&r);
        assert_eq!(read_until_closed(s, ANSWER_BOUND).await, Ok(0));
    }
    // And the slots stay usable.
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let gw = Gateway::start_with(|c| c.server.header_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("send");
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_ne!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close"),
        "the connection should be kept alive after a good request"
    );
    // Then nothing: the server must hang up on its own.
    let closed = read_until_closed(&mut s, ANSWER_BOUND).await;
    assert_eq!(
        closed,
        Ok(0),
        "an idle keep-alive connection outlived a 300 ms header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_cut_and_cancels_the_upstream() {
    const PIECES: usize = 20_000;
    let gw = Gateway::start_with(|c| {
        c.server.write_timeout = Duration::from_millis(500);
        // Far beyond the waits below, so only the write timeout can end
        // the upstream request.
        c.openai.stream_idle_timeout = Duration::from_secs(300);
    })
    .await;
    let id = new_session(gw.addr).await;
    let piece = "x".repeat(1023) + " ";
    // All but the last piece may go at once (no delay): the upstream is
    // still mid-stream however much the sockets buffer, so only a
    // cancelled request can end it.
    let gate = StreamGate::new();
    gate.release(PIECES - 1);
    gw.mock.push(
        StreamScript::pieces(vec![piece; PIECES])
            .with_gate(gate.clone())
            .into(),
    );

    // A client with a small receive buffer, so the gateway's writes
    // block soon after it stops reading.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut s = socket.connect(gw.addr).await.expect("connect");
    let body =
        json!({"session_id": id, "role": "user", "content": "Go on forever", "stream": true})
            .to_string();
    let head = head_with_length("POST", "/chat/", body.len());
    s.write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("send");
    // Read the head and the first event, then stop reading.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(&mut s, &mut buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    while !buf[head_end..].windows(2).any(|w| w == b"\n\n") {
        fill(&mut s, &mut buf).await;
    }
    assert!(
        String::from_utf8_lossy(&buf[head_end..]).contains("event: delta"),
        "{:?}",
        String::from_utf8_lossy(&buf[head_end..])
    );

    // The gateway gives up on the stalled write and cancels upstream.
    let mock = &gw.mock;
    wait_until(
        Duration::from_secs(10),
        "the upstream stream to be cancelled",
        || async { mock.disconnects() >= 1 },
    )
    .await;
    assert_eq!(mock.streams_completed(), 0);

    // The client's connection was closed, long before the reply was all
    // sent: what it can still read is what the sockets had buffered.
    let mut tail = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    tail.extend_from_slice(&chunk[..n]);
                    // Keep only the end, to look for `done` there.
                    if tail.len() > 1 << 20 {
                        tail.drain(..tail.len() - 4096);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(
        matches!(drained, Ok(Ok(()))),
        "the stalled connection was not closed: {drained:?}"
    );
    let tail = String::from_utf8_lossy(&tail);
    assert!(!tail.contains("event: done"), "the stream was completed");

    // Nothing was stored, and the session takes its next turn.
    assert!(messages(gw.addr, &id).await.is_empty());
    let r = chat(gw.addr, &id, "Shorter this time").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = messages(gw.addr, &id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["content"], "Shorter this time");
}

/// One page: its messages as `(role, content)` and its `next_cursor`.
/// Asserts 200, the session id, and that the only keys are the contract's
/// (`next_cursor` absent, not null, on the last page).
async fn page(addr: SocketAddr, id: &str, query: &str) -> (Vec<(String, String)>, Option<String>) {
    let r = get(addr, &format!("/session/{id}/messages?{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    let v = r.json();
    assert_eq!(v["session_id"], id);
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let next = match v.get("next_cursor") {
        None => {
            assert_eq!(keys, ["messages", "session_id"], "{v}");
            None
        }
        Some(c) => {
            assert_eq!(keys, ["messages", "next_cursor", "session_id"], "{v}");
            Some(
                c.as_str()
                    .unwrap_or_else(|| panic!("cursor {c}"))
                    .to_owned(),
            )
        }
    };
    let messages = v["messages"]
        .as_array()
        .expect("messages is a list")
        .iter()
        .map(|m| {
            assert_timestamp(&m["created_at"]);
            (
                m["role"].as_str().expect("role").to_owned(),
                m["content"].as_str().expect("content").to_owned(),
            )
        })
        .collect();
    (messages, next)
}

/// Every page of size `limit`, following `next_cursor`.
async fn all_pages(addr: SocketAddr, id: &str, limit: usize) -> Vec<Vec<(String, String)>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            None => format!("limit={limit}"),
            Some(c) => format!("limit={limit}&after={c}"),
        };
        let (messages, next) = page(addr, id, &query).await;
        pages.push(messages);
        assert!(pages.len() <= 100, "pagination does not end");
        match next {
            None => return pages,
            Some(c) => after = Some(c),
        }
    }
}

/// Asserts a 422 whose one item is about query parameter `name`.
#[track_caller]
fn assert_query_rejected(r: &Resp, name: &str) {
    assert_eq!(r.status, 422, "{}", r.text());
    assert_json_content_type(r);
    let items = r.detail();
    let items = items.as_array().unwrap_or_else(|| panic!("{items}"));
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["loc"], json!(["query", name]), "{items:?}");
}

async fn pages_walk_the_history_in_order(gw: &Gateway) {
    let addr = gw.addr;
    let id = new_session(addr).await;
    let mut expected = Vec::new();
    for n in 1..=7 {
        let text = format!("message {n}");
        let r = chat(addr, &id, &text).await;
        assert_eq!(r.status, 200, "{}", r.text());
        expected.push(("user".to_owned(), text.clone()));
        expected.push(("assistant".to_owned(), format!("Echo: {text}")));
    }

    let pages = all_pages(addr, &id, 5).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 4]);
    assert_eq!(pages.concat(), expected);
    // A page that ends exactly at the newest message is the last one.
    let pages = all_pages(addr, &id, 7).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [7, 7]);
    assert_eq!(pages.concat(), expected);
    for limit in [1, 2, 3, 13, 14, 15, 1000] {
        let pages = all_pages(addr, &id, limit).await;
        assert_eq!(pages.concat(), expected, "limit={limit}");
        assert_eq!(pages.len(), 14usize.div_ceil(limit), "limit={limit}");
    }
    // No query at all: one page, the original shape.
    let (whole, next) = page(addr, &id, "").await;
    assert_eq!((whole, next), (expected.clone(), None));

    let bad = |q: &'static str| {
        let path = format!("/session/{id}/messages?{q}");
        async move { get(addr, &path).await }
    };
    for q in ["limit=0", "limit=1001", "limit=abc", "limit=", "limit=-1"] {
        assert_query_rejected(&bad(q).await, "limit");
    }
    for q in ["after=-1", "after=xyz", "after=", "after=1.5"] {
        assert_query_rejected(&bad(q).await, "after");
    }
    let unknown = uuid::Uuid::new_v4();
    let r = get(addr, &format!("/session/{unknown}/messages?limit=5")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.detail().is_string(), "{}", r.text());
}

fn generous_rate_limit(c: &mut chatgate::config::Config) {
    c.rate_limit.messages_per_minute = std::num::NonZeroU32::new(100).expect("nonzero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_follows_next_cursor_on_sqlite() {
    let gw = Gateway::start_with(generous_rate_limit).await;
    pages_walk_the_history_in_order(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_follows_next_cursor_on_memory() {
    let gw = Gateway::start_with(|c| {
        generous_rate_limit(c);
        c.storage.backend = chatgate::config::Backend::Memory;
    })
    .await;
    pages_walk_the_history_in_order(&gw).await;
}

/// Asserts a FastAPI-style 422 about the body.
#[track_caller]
fn assert_body_rejected(r: &Resp, what: &str) {
    assert_eq!(r.status, 422, "{what}: {}", r.text());
    assert_json_content_type(r);
    let items = r.detail();
    let items = items
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {items}"));
    assert!(!items.is_empty(), "{what}");
    for item in items {
        assert_eq!(item["loc"][0], "body", "{what}: {item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_outside_the_contract_are_422() {
    let gw = Gateway::start().await;
    let addr = gw.addr;
    for body in [
        "[]",
        r#"["x"]"#,
        r#"["Be brief", {}]"#,
        r#"{"metadata": null}"#,
        r#"{"system_prompt": null}"#,
        r#"{"metadata": [1]}"#,
        r#"{"metadata": "x"}"#,
        r#"{"system_prompt": 5}"#,
    ] {
        let r = post(addr, "/session/initialize_session", body).await;
        assert_body_rejected(&r, body);
    }

    let id = new_session(addr).await;
    for body in [
        json!([id, "user", "Hi"]).to_string(),
        json!([]).to_string(),
        json!({"session_id": id, "role": "user", "content": "Hi", "stream": null}).to_string(),
        json!({"session_id": id, "role": "user", "content": "Hi", "stream": "true"}).to_string(),
        json!({"session_id": id, "role": "user", "content": null}).to_string(),
    ] {
        let r = post(addr, "/chat/", &body).await;
        assert_body_rejected(&r, &body);
    }
    for body in [
        json!({"session_id": id, "feedback": "ok", "rating": null}).to_string(),
        json!([id, "ok"]).to_string(),
        json!({"session_id": id, "feedback": null}).to_string(),
    ] {
        let r = post(addr, "/feedback/", &body).await;
        assert_body_rejected(&r, &body);
    }
    // None of them reached the model or the store.
    assert_eq!(gw.mock.request_count(), 0);
    assert!(messages(addr, &id).await.is_empty());
    // And the well-formed versions pass.
    let ok = json!({"session_id": id, "role": "user", "content": "Hi", "stream": false});
    assert_eq!(post(addr, "/chat/", &ok.to_string()).await.status, 200);
    let ok = json!({"session_id": id, "feedback": "ok", "rating": 5});
    assert_eq!(post(addr, "/feedback/", &ok.to_string()).await.status, 200);
    let ok = r#"{"system_prompt": "Be brief", "metadata": {"a": [1]}}"#;
    assert_eq!(
        post(addr, "/session/initialize_session", ok).await.status,
        200
    );
}

#[test]
fn storage_unavailable_is_503_without_its_cause() {
    use chatgate::error::ApiError;
    let e = ApiError::from(chatcore::Error::storage_unavailable(
        "database or disk is full at /var/lib/secret/chat.db",
    ));
    assert_eq!(e.status.as_u16(), 503);
    assert_eq!(
        serde_json::to_value(&e.detail).expect("detail"),
        json!("Storage unavailable")
    );
    assert!(e.is_server_side());
    // The cause goes to the log, never to the client.
    let cause = e.cause.clone().expect("the cause is kept for the log");
    assert!(cause.contains("/var/lib/secret"), "{cause}");
    let resp = e.into_response();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_holding_conversations_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    let r = chat(gw.addr, &id, "keep this private").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let db = gw.dir_path().join("chatgate.db");
    let mut checked = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let path = std::path::PathBuf::from(path);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        checked.push(suffix);
    }
    // The database and, with the store open in WAL mode, its log.
    assert!(
        checked.contains(&"") && checked.contains(&"-wal"),
        "checked {checked:?}"
    );
}
