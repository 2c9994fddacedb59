//! The timestamp every log line starts with, for the console and file
//! sides alike.

use std::cell::RefCell;
use std::io;

/// Log timestamps: RFC 3339, UTC, microseconds
/// (`2026-11-24T05:04:55.067123Z`). The date-and-time part changes once a
/// second, so it is formatted once a second and reused (per thread).
pub(super) fn rfc3339(w: &mut dyn io::Write) -> io::Result<()> {
    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let secs = now.timestamp();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1 = now.format("%Y-%m-%dT%H:%M:%S").to_string();
            c.0 = secs;
        }
        write!(w, "{}.{:06}Z", c.1, now.timestamp_subsec_micros())
    })
}
