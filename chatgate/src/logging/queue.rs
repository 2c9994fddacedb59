//! The front of the logger, run on the thread that logs: [`Queue`] drops
//! records no output wants before anything is copied, and hands the rest
//! to slog-async's queue for the logging thread.
//!
//! When the queue is full a record is dropped, never waited for: it is
//! counted, and once the queue has room again a warning says how many
//! were lost (slog-async's `DropAndReport`, but into our counter too).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use slog::{Drain, Level, OwnedKVList, Record};
use slog_async::{AsyncCore, AsyncError};

use super::ANNOUNCE;

/// See the module doc.
pub(super) struct Queue {
    pub(super) core: AsyncCore,
    /// The least severe level any output takes.
    pub(super) min: Level,
    /// Whether `ANNOUNCE` records pass whatever their level (stderr is on).
    pub(super) announce: bool,
    pub(super) drops: Arc<AtomicU64>,
    /// Dropped since the last report.
    pub(super) unreported: AtomicU64,
}

impl Drain for Queue {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !(record.level().is_at_least(self.min) || self.announce && record.tag() == ANNOUNCE) {
            return Ok(());
        }
        // A load before the swap: every thread logs through here, and a
        // write to this shared counter on each record would bounce its
        // cache line between cores.
        if self.unreported.load(Ordering::Relaxed) > 0 {
            self.report(values);
        }
        if let Err(e) = self.core.log(record, values) {
            self.drops.fetch_add(1, Ordering::Relaxed);
            // After shutdown (`Disconnected`) there is no one to report to.
            if matches!(e, AsyncError::Full) {
                self.unreported.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl Queue {
    fn report(&self, values: &OwnedKVList) {
        let lost = self.unreported.swap(0, Ordering::Relaxed);
        if lost == 0 {
            return;
        }
        let sent = self.core.log(
            &slog::record!(
                Level::Warning,
                "",
                &format_args!("log records dropped"),
                slog::b!("dropped" => lost, "cause" => "log queue full")
            ),
            values,
        );
        if sent.is_err() {
            // Still full: report them with the next ones.
            self.unreported.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{info, o, Logger};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// Holds the logging thread on its first record until released, and
    /// reports each record's message.
    struct Stuck {
        release: Mutex<mpsc::Receiver<()>>,
        seen: Mutex<mpsc::Sender<String>>,
    }

    impl Drain for Stuck {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &Record<'_>, _: &OwnedKVList) -> Result<(), slog::Never> {
            let _ = self.release.lock().unwrap().recv();
            let _ = self.seen.lock().unwrap().send(r.msg().to_string());
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_counts_and_later_reports() {
        let (release, release_rx) = mpsc::channel();
        let (seen_tx, seen) = mpsc::channel();
        let stuck = Stuck {
            release: Mutex::new(release_rx),
            seen: Mutex::new(seen_tx),
        };
        let (core, guard) = AsyncCore::custom(stuck).chan_size(4).build_with_guard();
        let drops = Arc::new(AtomicU64::new(0));
        let queue = Queue {
            core,
            min: Level::Info,
            announce: false,
            drops: Arc::clone(&drops),
            unreported: AtomicU64::new(0),
        };
        let log = Logger::root(queue, o!());
        slog::debug!(log, "below the level: not queued, not counted");
        for i in 0..20 {
            info!(log, "record {}", i);
        }
        // 4 queued, and perhaps 1 already taken by the stuck thread.
        let dropped = drops.load(Ordering::Relaxed);
        assert!((15..=16).contains(&dropped), "{dropped} dropped");
        for _ in 0..30 {
            let _ = release.send(());
        }
        let mut first: Vec<String> = Vec::new();
        while first.len() < 20 - dropped as usize {
            first.push(seen.recv().unwrap());
        }
        assert_eq!(first[0], "record 0");
        info!(log, "after");
        // The report comes before the next record; the logging thread may
        // still be catching up, so read until that record arrives.
        let mut rest: Vec<String> = Vec::new();
        while rest.last().map(String::as_str) != Some("after") {
            rest.push(seen.recv().unwrap());
        }
        assert!(
            rest.iter().any(|m| m == "log records dropped"),
            "no report before the next record: {rest:?}"
        );
        assert_eq!(
            drops.load(Ordering::Relaxed),
            dropped,
            "the report is not a drop"
        );
        drop(log);
        drop(guard);
    }
}
