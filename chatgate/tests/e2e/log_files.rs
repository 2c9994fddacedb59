//! `app.log` on disk: rotation at `log.max_size`, `log.keep` honoured,
//! rotated files past `session.retention` deleted (at start and at
//! rotation), owner-only files, and a flood of refused bodies that leaves
//! the log small.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chatgate::config::ByteSize;
use hyper::Method;

use crate::support::*;

fn numbered(log: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", log.display()))
}

/// The request ids (`rot-NNNN`) of the access lines in `text`.
fn request_numbers(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.split("request_id: rot-").nth(1))
        .map(|rest| rest[..4].parse().expect("four digits"))
        .collect()
}

/// Sends `GET /nope` `count` times with request ids `rot-<from>`… (one
/// access line each, about 130 bytes).
async fn miss(gw: &Gateway, from: u32, count: u32) {
    for n in from..from + count {
        let rid = format!("rot-{n:04}");
        let r = try_send(
            gw.addr,
            Method::GET,
            "/nope",
            &[("x-request-id", &rid)],
            None,
        )
        .await
        .expect("request");
        assert_eq!(r.status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_log_rotates_at_max_size_and_keeps_log_keep_files() {
    const MAX: u64 = 16 * 1024;
    // The gateway's own directory goes when it stops; the log outlives it.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("app.log");
    let path = log.clone();
    let gw = Gateway::start_with(|c| {
        c.log.file = path;
        c.log.max_size = ByteSize(MAX);
        c.log.keep = 2;
    })
    .await;
    miss(&gw, 0, 500).await;
    gw.stop().await;

    let files = [log.clone(), numbered(&log, 1), numbered(&log, 2)];
    let mut numbers = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let len = text.len() as u64;
        assert!(len <= MAX, "{} has {len} bytes", f.display());
        if i > 0 {
            assert!(
                len > MAX - 300,
                "{} was rotated early, at {len} bytes",
                f.display()
            );
        }
        assert!(
            text.lines().all(|l| l.as_bytes()[..27].ends_with(b"Z")),
            "a cut line in {}",
            f.display()
        );
        numbers.push(request_numbers(&text));
    }
    assert!(
        !numbered(&log, 3).exists(),
        "log.keep = 2, but app.log.3 exists"
    );
    // Newest last: .2 holds older lines than .1, .1 older than app.log,
    // and the last request is the last line.
    assert!(numbers[2].last() < numbers[1].first() && numbers[1].last() < numbers[0].first());
    assert_eq!(numbers[0].last(), Some(&499));
    // 500 lines of ~130 bytes rotated about 4 times: the oldest are gone.
    assert!(numbers[2][0] > 0, "nothing was dropped past keep");

    #[cfg(unix)]
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
    }
}

fn set_age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_older_than_retention_are_deleted_at_start_and_at_rotation() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("app.log");
    // Left by an earlier run: one written long ago, one just now.
    std::fs::write(numbered(&log, 4), "old conversation\n").unwrap();
    set_age(&numbered(&log, 4), Duration::from_secs(86_400));
    std::fs::write(numbered(&log, 1), "recent\n").unwrap();
    let path = log.clone();
    let gw = Gateway::start_with(move |c| {
        c.log.file = path;
        c.log.max_size = ByteSize(4096);
        // Only access lines: 40 of them fill a 4 KiB file once.
        c.log.sql = false;
        c.session.idle_timeout = Duration::from_secs(1);
        c.session.retention = Duration::from_secs(3);
    })
    .await;
    assert!(
        !numbered(&log, 4).exists(),
        "a rotated file past retention survived the start"
    );
    assert!(
        numbered(&log, 1).exists(),
        "a recent rotated file was deleted at start"
    );

    // One rotation: the recent file moves to .2 and is kept.
    miss(&gw, 0, 40).await;
    wait_until(Duration::from_secs(10), "a rotation", || {
        let two = numbered(&log, 2);
        async move { two.exists() }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(numbered(&log, 2)).unwrap(),
        "recent\n"
    );
    // Past retention, the next rotation deletes every older file. Real
    // time must pass for that (age is the files' modification time, read
    // by the gateway against the wall clock): wait until both rotated
    // files are older than the 3 s retention.
    let retention = Duration::from_secs(3);
    wait_until(
        Duration::from_secs(30),
        "app.log.1 and app.log.2 to pass retention",
        || {
            let aged = [1, 2].iter().all(|n| {
                let modified = std::fs::metadata(numbered(&log, *n))
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|e| panic!("app.log.{n}: {e}"));
                SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age > retention)
            });
            async move { aged }
        },
    )
    .await;
    miss(&gw, 100, 40).await;
    gw.stop().await;
    let left: Vec<u32> = (1..=5).filter(|n| numbered(&log, *n).exists()).collect();
    assert_eq!(left, [1], "only the file just rotated may stay");
    let newest = std::fs::read_to_string(numbered(&log, 1)).unwrap();
    assert!(request_numbers(&newest).contains(&100), "{newest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_bodies_leaves_app_log_small() {
    // Scaled down from "50,000 bodies grow app.log by under 10 MB".
    // Without the SQL lines: chatcore's session lookup logs three
    // statements (~350 bytes) per request, which alone would be 17 MB at
    // full scale; what is measured here is what the gateway writes about
    // a refused body.
    const BODIES: usize = 2_000;
    const BODY_BYTES: usize = 64 * 1024;
    let gw = Gateway::start_with(|c| c.log.sql = false).await;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..BODIES / 4 {
                    let head = serde_json::json!({
                        "session_id": uuid::Uuid::new_v4().to_string(),
                        "role": "user",
                        "content": "",
                    })
                    .to_string();
                    // Pad the content so the whole body is 64 KiB, in
                    // 3-byte chars: under the 32,000-character limit on a
                    // message, so the session lookup is what refuses it.
                    let room = BODY_BYTES - head.len();
                    let pad = "€".repeat(room / 3) + &"x".repeat(room % 3);
                    let body = head.replace(r#""content":"""#, &format!(r#""content":"{pad}""#));
                    assert_eq!(body.len(), BODY_BYTES);
                    let r = post(addr, "/chat/", &body).await;
                    assert_eq!(r.status, 404, "{}", r.text());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a flood task panicked");
    }
    let log = gw.stop().await;
    assert!(
        log.len() < 1_000_000,
        "{BODIES} refused bodies of {BODY_BYTES} bytes grew app.log to {} bytes",
        log.len()
    );
    assert!(
        !log.contains("€€€€") && log.lines().all(|l| l.len() < 1024),
        "a refused body reached app.log"
    );
    let refused = log
        .lines()
        .filter(|l| l.contains(" INFO request,") && has_field(l, "status", "404"))
        .count();
    assert_eq!(refused, BODIES, "one access line per refused request");
}
