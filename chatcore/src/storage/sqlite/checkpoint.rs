//! WAL checkpoints kept off the commit path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL
//! past `wal_autocheckpoint`: the writer thread copies every frame into the
//! database file and fsyncs it while every queued turn waits. The copy is
//! cheap; the fsync of thousands of scattered pages is not, and it was the
//! load bench's p99.9 and its answers over 50 ms.
//!
//! Here the writer only counts. A WAL hook (which replaces SQLite's
//! autocheckpoint) tells it how many frames the WAL holds after each
//! commit; past [`START`] it asks a thread with a connection of its own to
//! copy them. That thread runs passive checkpoints, which never block the
//! writer, again and again while the writer keeps appending, until a pass
//! has little left to copy (each pass copies what was appended during the
//! one before, so they shrink). The WAL can only start over from its top
//! once every frame has been copied at the moment a transaction begins,
//! which never happens while the writer appends without pause; so, told
//! the thread has caught up, the writer copies the last few frames itself,
//! between two transactions: a checkpoint of a handful of pages and a
//! short fsync, after the batch's callers have their answers. Its next
//! transaction then restarts the WAL.
//!
//! A lightly loaded store fills the WAL slowly, so the thread runs rarely
//! and never on a timer: nothing wakes an idle process.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};
use slog::Logger;

use crate::error::{Error, Result};

const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// WAL frames (pages: 16 MiB at the store's 1 KiB pages) past which the
/// background thread is asked to copy them into the database file.
pub(crate) const START: u32 = 16_384;

/// A background pass that copied fewer frames than this ends the catch-up:
/// what was appended during it is left for the writer.
const SMALL: i64 = 256;

/// Background passes per request at most: under writes faster than the
/// copy, the writer takes over what is left rather than the WAL growing.
const MAX_PASSES: u32 = 8;

/// After a failed pass, how long the thread waits before it lets the
/// writer ask again, so a failing disk is not retried in a loop.
const BACKOFF: Duration = Duration::from_secs(1);

thread_local! {
    /// Frames in the WAL after the last commit made on this thread (the
    /// writer's thread: one per store).
    static WAL_FRAMES: Cell<u32> = const { Cell::new(0) };
}

fn note_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(u32::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// Frames in the WAL after the last commit on this thread.
fn wal_frames() -> u32 {
    WAL_FRAMES.with(Cell::get)
}

/// What the checkpoints have done (read by tests and by
/// [`SqliteStats`](super::SqliteStats)).
#[derive(Debug, Default)]
pub(crate) struct CheckpointStats {
    /// Background passes run.
    pub(crate) passes: AtomicU64,
    /// Frames those passes copied.
    pub(crate) copied: AtomicU64,
    /// SQLite's running count of frames copied, after the last pass: what
    /// the writer's checkpoint reports beyond it, it copied itself.
    copied_total: AtomicU64,
    /// Short checkpoints the writer ran itself to finish a catch-up.
    pub(crate) tails: AtomicU64,
    /// Frames those copied.
    pub(crate) tail_copied: AtomicU64,
    /// Checkpoints that failed (background or the writer's).
    pub(crate) failed: AtomicU64,
}

/// The writer's side: decides after each commit, and owns the thread.
/// Dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    request: Option<mpsc::SyncSender<()>>,
    caught_up: Arc<AtomicBool>,
    /// Asked and not yet finished.
    running: bool,
    /// WAL frames past which the thread is asked to copy them.
    start: u32,
    handle: Option<thread::JoinHandle<()>>,
    pub(crate) stats: Arc<CheckpointStats>,
    log: Option<Logger>,
}

impl Checkpoints {
    /// Installs the WAL hook on the writer's connection `writer` (SQLite no
    /// longer checkpoints inside its commits) and starts the thread with a
    /// connection of its own on `path`.
    pub(crate) fn spawn(
        writer: &Connection,
        path: &Path,
        flags: OpenFlags,
        sync: &'static str,
        start: u32,
        sql_log: Option<Logger>,
        log: Option<Logger>,
    ) -> Result<Checkpoints> {
        let conn = Connection::open_with_flags(path, flags).map_err(|e| {
            Error::storage(format!(
                "cannot open {} for checkpoints: {e}",
                path.display()
            ))
        })?;
        // The checkpointing connection's sync level decides the copy's
        // fsyncs: the same as the writer's.
        if let Some(sql) = &sql_log {
            crate::storage::log_sql(sql, sync);
        }
        conn.execute_batch(sync)?;
        let stats = Arc::new(CheckpointStats::default());
        let caught_up = Arc::new(AtomicBool::new(false));
        let (request, requests) = mpsc::sync_channel::<()>(1);
        let handle = {
            let stats = Arc::clone(&stats);
            let caught_up = Arc::clone(&caught_up);
            let log = log.clone();
            thread::Builder::new()
                .name("chatcore-ckpt".into())
                .spawn(move || {
                    background(
                        &conn,
                        &requests,
                        &caught_up,
                        &stats,
                        sql_log.as_ref(),
                        log.as_ref(),
                    );
                })
                .map_err(Error::storage)?
        };
        writer.wal_hook(Some(note_frames));
        Ok(Checkpoints {
            request: Some(request),
            caught_up,
            running: false,
            start,
            handle: Some(handle),
            stats,
            log,
        })
    }

    /// Called by the writer after each commit, once the batch's callers
    /// have their answers; `log_sql` reports the statement it runs, if any.
    /// Costs a thread-local read and an atomic load when there is nothing
    /// to do.
    pub(crate) fn after_commit(&mut self, conn: &Connection, log_sql: impl FnOnce(&'static str)) {
        if self.running {
            if self.caught_up.swap(false, Ordering::Acquire) {
                self.running = false;
                self.finish(conn, log_sql);
            } else if self
                .handle
                .as_ref()
                .is_some_and(thread::JoinHandle::is_finished)
            {
                // The thread died with a request in hand: never wait on it.
                self.running = false;
                self.thread_stopped();
                self.finish(conn, log_sql);
            }
            return;
        }
        if wal_frames() < self.start {
            return;
        }
        if let Some(request) = &self.request {
            match request.try_send(()) {
                // A full channel: the thread has a request already.
                Ok(()) | Err(mpsc::TrySendError::Full(())) => {
                    self.running = true;
                    return;
                }
                Err(mpsc::TrySendError::Disconnected(())) => self.thread_stopped(),
            }
        }
        // No thread: the writer checkpoints as SQLite would have.
        self.finish(conn, log_sql);
    }

    /// From now on the writer checkpoints by itself, as SQLite would have.
    fn thread_stopped(&mut self) {
        if let Some(log) = &self.log {
            slog::warn!(
                log,
                "the WAL checkpoint thread has stopped; the writer checkpoints itself"
            );
        }
        self.request = None;
    }

    /// Copies what the background passes left: only frames appended during
    /// the last one. The next transaction then restarts the WAL.
    fn finish(&self, conn: &Connection, log_sql: impl FnOnce(&'static str)) {
        log_sql(CHECKPOINT);
        match passive(conn) {
            Ok((_, _, copied)) => {
                self.stats.tails.fetch_add(1, Ordering::Relaxed);
                let before = self.stats.copied_total.load(Ordering::Relaxed);
                self.stats.tail_copied.fetch_add(
                    u64::try_from(copied).unwrap_or(0).saturating_sub(before),
                    Ordering::Relaxed,
                );
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(log) = &self.log {
                    slog::warn!(log, "WAL checkpoint failed"; "error" => %e);
                }
            }
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        drop(self.request.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// One passive checkpoint: (busy, frames in the WAL, frames copied so
/// far). Busy is 1 when a reader's snapshot kept some frames from being
/// copied; -1 counts mean the database is not in WAL mode.
fn passive(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(CHECKPOINT, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

fn background(
    conn: &Connection,
    requests: &mpsc::Receiver<()>,
    caught_up: &AtomicBool,
    stats: &CheckpointStats,
    sql_log: Option<&Logger>,
    log: Option<&Logger>,
) {
    // Returns (and the thread ends) when the writer drops the sender.
    while requests.recv().is_ok() {
        let mut before = 0_i64;
        for _ in 0..MAX_PASSES {
            if let Some(sql) = sql_log {
                crate::storage::log_sql(sql, CHECKPOINT);
            }
            match passive(conn) {
                Ok((_, _, copied)) => {
                    stats.passes.fetch_add(1, Ordering::Relaxed);
                    // A pass copies what the one before left; a total
                    // below the last means the WAL started over.
                    let this = if copied >= before {
                        copied - before
                    } else {
                        copied
                    };
                    before = copied;
                    stats
                        .copied
                        .fetch_add(u64::try_from(this).unwrap_or(0), Ordering::Relaxed);
                    stats
                        .copied_total
                        .store(u64::try_from(copied).unwrap_or(0), Ordering::Relaxed);
                    if this < SMALL {
                        break;
                    }
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(log) = log {
                        slog::warn!(log, "WAL checkpoint failed"; "error" => %e);
                    }
                    thread::sleep(BACKOFF);
                    break;
                }
            }
        }
        caught_up.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: &str = "PRAGMA synchronous = NORMAL";

    fn flags() -> OpenFlags {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    }

    fn writer(path: &Path) -> Connection {
        let conn = Connection::open_with_flags(path, flags()).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA synchronous = NORMAL;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        )
        .unwrap();
        conn
    }

    /// Commits one row as the store's writer does, then lets the policy
    /// decide; answers the WAL's frame count after that commit.
    fn commit(conn: &Connection, checkpoints: &mut Checkpoints, logged: &mut Vec<&str>) -> u32 {
        conn.execute("INSERT INTO t (v) VALUES (randomblob(700))", [])
            .unwrap();
        let frames = wal_frames();
        checkpoints.after_commit(conn, |sql| logged.push(sql));
        frames
    }

    #[test]
    fn the_thread_copies_the_writer_finishes_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let conn = writer(&path);
        let mut checkpoints =
            Checkpoints::spawn(&conn, &path, flags(), SYNC, 200, None, None).unwrap();
        let stats = Arc::clone(&checkpoints.stats);
        let mut logged = Vec::new();
        let mut rows = 0_i64;
        let mut restarts = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while restarts < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "no WAL restart: {stats:?}"
            );
            let tails = stats.tails.load(Ordering::Relaxed);
            let frames = commit(&conn, &mut checkpoints, &mut logged);
            rows += 1;
            // Once the thread is asked, the writer waits for it to catch
            // up: how much each side copies then depends on the policy,
            // not on how a busy machine schedules the two threads (a
            // writer committing in a tight loop while the thread waits
            // for a core copies more than the thread does).
            while checkpoints.running && !checkpoints.caught_up.load(Ordering::Acquire) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the thread never caught up: {stats:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
            // The WAL never grows far past the threshold while the thread
            // keeps pace (SQLite's autocheckpoint is off: the hook replaced
            // it, so nothing else bounds it).
            assert!(frames < 20_000, "the WAL kept growing: {frames} frames");
            if tails != stats.tails.load(Ordering::Relaxed) {
                // The commit after the writer's short checkpoint writes
                // at the WAL's top again: a handful of frames.
                let after = commit(&conn, &mut checkpoints, &mut logged);
                rows += 1;
                assert!(after < 16, "the WAL did not start over: {after} frames");
                restarts += 1;
            }
        }
        let passes = stats.passes.load(Ordering::Relaxed);
        let copied = stats.copied.load(Ordering::Relaxed);
        let tail_copied = stats.tail_copied.load(Ordering::Relaxed);
        assert!(passes >= 3, "{stats:?}");
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
        // The thread did the bulk of the copying, not the writer.
        assert!(copied > tail_copied, "{stats:?}");
        assert_eq!(
            logged,
            vec![CHECKPOINT; 3],
            "the writer's checkpoints are logged"
        );
        // Nothing was lost on the way: every row is in the database file
        // once the connections are closed.
        drop(checkpoints);
        drop(conn);
        let reopened = Connection::open(&path).unwrap();
        let stored: i64 = reopened
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, rows);
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_reader_holding_an_old_snapshot_delays_the_restart_but_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let conn = writer(&path);
        let mut checkpoints =
            Checkpoints::spawn(&conn, &path, flags(), SYNC, 100, None, None).unwrap();
        let stats = Arc::clone(&checkpoints.stats);
        let mut logged = Vec::new();
        for _ in 0..20 {
            commit(&conn, &mut checkpoints, &mut logged);
        }
        // A reader in the middle of a transaction pins the frames it sees.
        let reader = Connection::open_with_flags(&path, flags()).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 20);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut frames = 0;
        while stats.tails.load(Ordering::Relaxed) < 2 {
            assert!(std::time::Instant::now() < deadline, "{stats:?}");
            frames = commit(&conn, &mut checkpoints, &mut logged);
        }
        // The WAL could not start over under the reader's snapshot.
        let next = commit(&conn, &mut checkpoints, &mut logged);
        assert!(next > frames, "{next} frames after {frames}");
        let still: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(still, 20, "the reader's snapshot moved");
        reader.execute_batch("COMMIT").unwrap();
        // Once it is gone, the next round starts the WAL over.
        let tails = stats.tails.load(Ordering::Relaxed);
        while stats.tails.load(Ordering::Relaxed) == tails {
            assert!(std::time::Instant::now() < deadline, "{stats:?}");
            commit(&conn, &mut checkpoints, &mut logged);
        }
        let after = commit(&conn, &mut checkpoints, &mut logged);
        assert!(after < 16, "the WAL did not start over: {after} frames");
    }
}
