//! WAL checkpoints on a thread and connection of their own.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past
//! `wal_autocheckpoint`: the writer thread then fsyncs the WAL, copies every
//! frame into the database file and fsyncs that too, while every turn
//! waits on it. Traced under load, that took the writer away for hundreds
//! of milliseconds every few seconds (16 MiB of frames copied one page at
//! a time), which was the bench's p99.9.
//!
//! Here a separate connection runs `PRAGMA wal_checkpoint(PASSIVE)` once
//! per interval when the writer has committed since the last one. A
//! passive checkpoint never blocks the writer: it copies the frames
//! committed so far while new ones are appended. Once it has copied them
//! all, the writer's next transaction starts the WAL over from the top. The
//! writer keeps `wal_autocheckpoint` as a backstop (if, under sustained
//! writes, the WAL never gets fully copied between two transactions); by
//! then nearly every frame has already been copied, so the backstop's
//! checkpoint is short.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use slog::Logger;

use crate::error::{Error, Result};

const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// The pause between two checkpoints while the last one left frames
/// uncopied.
const CATCH_UP: Duration = Duration::from_millis(5);

/// What the checkpoint thread has done (read by tests).
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct CheckpointStats {
    /// Checkpoints run.
    pub(crate) runs: AtomicU64,
    /// Checkpoints that found the WAL in use by another checkpoint.
    pub(crate) busy: AtomicU64,
    /// After the last run: frames in the WAL and frames copied, as
    /// `log << 32 | copied`.
    pub(crate) last: AtomicU64,
}

/// The checkpoint thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<thread::JoinHandle<()>>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) stats: Arc<CheckpointStats>,
}

impl Checkpointer {
    /// Opens a second connection on the database at `path` and starts the
    /// thread. `commits` is the writer's count of committed transactions
    /// that changed rows: an interval in which it did not move runs nothing,
    /// so a store that is idle or only read neither writes nor logs.
    pub(crate) fn spawn(
        path: &Path,
        full_sync: bool,
        every: Duration,
        commits: Arc<AtomicU64>,
        log: Option<Logger>,
    ) -> Result<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| {
            Error::storage(format!(
                "cannot open {} for checkpoints: {e}",
                path.display()
            ))
        })?;
        // The same sync level as the writer: the WAL is synced before frames
        // are copied and the database file after.
        let sync = if full_sync {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        if let Some(log) = &log {
            slog::info!(log, "sql"; "statement" => sync);
        }
        conn.execute_batch(sync)?;
        let stats = Arc::new(CheckpointStats::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_stats = Arc::clone(&stats);
        let handle = thread::Builder::new()
            .name("chatcore-ckpt".into())
            .spawn(move || {
                run(
                    &conn,
                    every,
                    &commits,
                    &stopped,
                    log.as_ref(),
                    &thread_stats,
                )
            })
            .map_err(Error::storage)?;
        Ok(Checkpointer {
            stop: Some(stop),
            handle: Some(handle),
            stats,
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(
    conn: &Connection,
    every: Duration,
    commits: &AtomicU64,
    stopped: &mpsc::Receiver<()>,
    log: Option<&Logger>,
    stats: &CheckpointStats,
) {
    let mut seen = commits.load(Ordering::Acquire);
    // Whether the last run left frames uncopied (the writer was appending,
    // or a reader held an old snapshot): run again even with no new commit,
    // so the WAL can start over once the writer goes quiet.
    let mut behind = false;
    // Returns (and the thread ends) when the store's last handle drops the
    // sender; the store closes the writer's connection, which checkpoints
    // what is left.
    loop {
        // On the writer's heels while frames are left, so that when the
        // backstop fires little is left for the writer to copy.
        let wait = if behind { every.min(CATCH_UP) } else { every };
        if !matches!(
            stopped.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        let now = commits.load(Ordering::Acquire);
        if now == seen && !behind {
            continue;
        }
        seen = now;
        behind = false;
        if let Some(log) = log {
            slog::info!(log, "sql"; "statement" => CHECKPOINT);
        }
        // (busy, frames in the WAL, frames copied): busy is 1 when another
        // checkpoint (the writer's backstop) holds the WAL; -1 counts mean
        // the database is not in WAL mode.
        let outcome = conn.query_row(CHECKPOINT, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match outcome {
            Ok((busy, wal, copied)) => {
                stats.runs.fetch_add(1, Ordering::Relaxed);
                if busy != 0 {
                    stats.busy.fetch_add(1, Ordering::Relaxed);
                }
                behind = copied < wal;
                let pack = |n: i64| u64::try_from(n).unwrap_or(0) & 0xffff_ffff;
                stats
                    .last
                    .store(pack(wal) << 32 | pack(copied), Ordering::Relaxed);
            }
            Err(e) => {
                // Another process checkpointing, or an I/O error: the writer's
                // backstop still bounds the WAL. Try again next interval.
                if let Some(log) = log {
                    slog::warn!(log, "background checkpoint failed"; "error" => %e);
                }
            }
        }
    }
}
