//! The one thread that owns the SQLite connection.
//!
//! Async callers hand it closures through a bounded channel and await the
//! answer on a oneshot, so SQLite never blocks a runtime worker. The thread
//! runs whatever jobs are queued as one transaction (group commit), each
//! job inside its own savepoint so a failing job rolls back alone, and
//! answers every job only after the commit: an acknowledged write is on
//! disk (in the WAL) before anyone hears of it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use slog::Logger;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::Checkpoints;
use super::Sql;
use crate::error::{Error, Result};

/// How many queued jobs one transaction may take.
const MAX_BATCH: usize = 512;

/// What a job hands back after running: a closure told the commit's outcome.
type Deliver = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
type Job = Box<dyn FnOnce(Option<&Db>) -> Deliver + Send>;

/// The connection as jobs see it, with the SQL logger.
pub(crate) struct Db {
    pub(crate) conn: Connection,
    log: Option<Logger>,
    /// A small direct-mapped memo of the `active_hour` last written per
    /// session (see [`Db::hour_known`]).
    hours: std::cell::RefCell<Vec<([u8; 16], i64)>>,
    /// Statements run in the current batch, logged once its callers have
    /// their answers (see [`Db::log_sql`]).
    ran: std::cell::RefCell<Vec<&'static str>>,
}

/// Slots of the `active_hour` memo (~100 KiB).
const HOUR_SLOTS: usize = 4096;

impl Db {
    /// Whether `active_hour >= hour` is already known to be stored for the
    /// session `key`; if not, records that it will be. A slot recorded by a
    /// job or a transaction that then rolled back would be a wrong "yes":
    /// every failure forgets the whole memo ([`Db::forget_hours`]), so
    /// `active_hour` stays exact, which the session listing relies on.
    pub(crate) fn hour_known(&self, key: &[u8; 16], hour: i64) -> bool {
        let slot = usize::from(u16::from_le_bytes([key[0], key[1]])) % HOUR_SLOTS;
        let mut hours = self.hours.borrow_mut();
        let entry = &mut hours[slot];
        if entry.0 == *key && entry.1 >= hour {
            return true;
        }
        *entry = (*key, hour);
        false
    }

    /// Reports one SQL statement about to run (the gateway's `log.sql`). Only the
    /// statement text is logged, never parameter values.
    ///
    /// The lines are written (in order) after the batch's callers have been
    /// answered: handing a record to the async logger can wake its thread,
    /// a futex call per statement that traces showed on the commit path.
    /// None is lost: a long job (a purge) flushes every [`LOG_BATCH`]
    /// lines, a panicking job's lines go out as the thread unwinds (`Drop`),
    /// and the last handle's drop waits for the thread, so a process that
    /// drops its store before its logger keeps every line.
    #[inline]
    pub(crate) fn log_sql(&self, sql: &'static str) {
        if self.log.is_some() {
            let full = {
                let mut ran = self.ran.borrow_mut();
                ran.push(sql);
                ran.len() >= LOG_BATCH
            };
            if full {
                self.flush_sql_log();
            }
        }
    }

    /// Logs the statements [`Db::log_sql`] collected: one transaction, or
    /// [`LOG_BATCH`] statements of a long one.
    fn flush_sql_log(&self) {
        if let Some(log) = &self.log {
            let mut ran = self.ran.borrow_mut();
            crate::storage::log_transaction(log, ran.iter().copied());
            ran.clear();
            ran.shrink_to(LOG_BATCH);
        }
    }
}

/// Statement lines held back at most (see [`Db::log_sql`]).
const LOG_BATCH: usize = 1024;

impl Drop for Db {
    fn drop(&mut self) {
        self.flush_sql_log();
    }
}

impl Db {
    /// Forgets every `active_hour` the memo holds: what it recorded may
    /// have been rolled back.
    fn forget_hours(&self) {
        self.hours
            .borrow_mut()
            .iter_mut()
            .for_each(|slot| *slot = ([0u8; 16], i64::MIN));
    }

    /// Runs `f` inside a savepoint, so that its failure undoes its own
    /// writes and nobody else's in the same transaction.
    fn in_savepoint<R>(&self, f: impl FnOnce(&Db) -> Result<R>) -> Result<R> {
        // Cached statements: these run for every job, and re-parsing SQL
        // showed up in profiles of the SQLite thread.
        self.exec("SAVEPOINT job")?;
        let out = f(self);
        if out.is_err() {
            self.forget_hours();
            self.exec("ROLLBACK TO job")?;
        }
        self.exec("RELEASE job")?;
        out
    }

    /// Runs (and reports) a parameterless statement through the
    /// statement cache.
    fn exec(&self, sql: &'static str) -> rusqlite::Result<()> {
        Sql::prepare(self, sql)?.execute([])?;
        Ok(())
    }
}

/// A handle on the worker thread; cloning shares the thread.
#[derive(Clone, Debug)]
pub(crate) struct Worker {
    // Field order matters: this handle's sender goes before the thread is
    // joined (the thread ends once every sender is gone).
    tx: mpsc::Sender<Job>,
    /// Jobs submitted and not yet answered.
    pending: std::sync::Arc<AtomicUsize>,
    /// Transactions committed, and the jobs they held.
    batches: std::sync::Arc<Batches>,
    _joined: std::sync::Arc<Joined>,
}

/// What the writer has committed: transactions, and the jobs in them.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    pub(crate) commits: std::sync::atomic::AtomicU64,
    pub(crate) jobs: std::sync::atomic::AtomicU64,
}

/// Joins the worker thread when the last handle goes, so that its last
/// log lines are out before the owner tears its logger down.
#[derive(Debug)]
struct Joined(std::sync::Mutex<Option<thread::JoinHandle<()>>>);

impl Drop for Joined {
    fn drop(&mut self) {
        let handle = self.0.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle {
            // A job never holds a handle, but never join oneself.
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// How long a caller whose job is the only one in flight polls for its
/// answer before parking (see [`Worker::submit`]).
const SPIN: Duration = Duration::from_micros(200);

impl Worker {
    /// Starts the thread that owns `conn`, and, with `checkpoints`, decides
    /// when its WAL is copied back (see [`Checkpoints`]).
    pub(crate) fn spawn(
        conn: Connection,
        log: Option<Logger>,
        checkpoints: Option<Checkpoints>,
    ) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        let batches = std::sync::Arc::new(Batches::default());
        let counted = std::sync::Arc::clone(&batches);
        let handle = thread::Builder::new()
            .name("chatcore-sqlite".into())
            .spawn(move || {
                let hours = std::cell::RefCell::new(vec![([0u8; 16], i64::MIN); HOUR_SLOTS]);
                let ran = std::cell::RefCell::new(Vec::with_capacity(64));
                run(
                    Db {
                        conn,
                        log,
                        hours,
                        ran,
                    },
                    rx,
                    &counted,
                    checkpoints,
                )
            })
            .map_err(Error::storage)?;
        Ok(Worker {
            tx,
            pending: std::sync::Arc::default(),
            batches,
            _joined: std::sync::Arc::new(Joined(std::sync::Mutex::new(Some(handle)))),
        })
    }

    /// Runs `f` on the worker thread, inside the next transaction, and
    /// returns its result once that transaction has committed.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Db) -> Result<R> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// As [`Worker::call`], without the savepoint: for jobs that write at
    /// most one statement, or fail before their first write, and so can
    /// never leave a partial write behind (SQLite undoes a failed statement
    /// by itself). Two statements fewer per job on the hot path.
    pub(crate) async fn call_single<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Db) -> Result<R> + Send + 'static,
    {
        self.submit(f, false).await
    }

    async fn submit<R, F>(&self, f: F, isolate: bool) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Db) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<R>>();
        let job: Job = Box::new(move |db| {
            let out = match db {
                Some(db) if isolate => db.in_savepoint(f),
                Some(db) => f(db),
                None => Err(Error::storage_unavailable("could not begin a transaction")),
            };
            Box::new(move |commit_err| {
                let out = match (out, commit_err) {
                    (Ok(v), None) => Ok(v),
                    (Ok(_), Some(e)) if crate::error::sqlite_unavailable(e) => {
                        Err(Error::storage_unavailable(format!("commit failed: {e}")))
                    }
                    (Ok(_), Some(e)) => Err(Error::storage(format!("commit failed: {e}"))),
                    (Err(e), _) => Err(e),
                };
                // The caller may have gone away (its request was dropped);
                // the work is done either way.
                let _ = reply.send(out);
            })
        });
        let _pending = Pending::enter(&self.pending);
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::storage("the SQLite worker has stopped"))?;
        let answer = if self.pending.load(Ordering::Relaxed) == 1 {
            spin_then_await(answer).await
        } else {
            answer.await
        };
        answer.map_err(|_| Error::storage("the SQLite worker dropped a job"))?
    }
}

/// Counts a job in flight until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Pending(count)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Awaits `fut`, first re-polling it (yielding to the runtime in between)
/// for up to [`SPIN`]. A lone job commits in tens of microseconds; parking
/// the runtime thread and being woken by the writer costs two context
/// switches, which on a lightly loaded VM were most of a turn's storage
/// latency. Under load other tasks keep the thread busy, and `submit` only
/// spins for a job that is alone in flight.
async fn spin_then_await<F: Future + Unpin>(mut fut: F) -> F::Output {
    let start = Instant::now();
    loop {
        let polled = std::future::poll_fn(|cx| match std::pin::Pin::new(&mut fut).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        if let Some(v) = polled {
            return v;
        }
        if start.elapsed() >= SPIN {
            return fut.await;
        }
        tokio::task::yield_now().await;
    }
}

impl Worker {
    /// Jobs submitted and not yet answered.
    pub(crate) fn queue_depth(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Transactions committed, and the jobs they held.
    pub(crate) fn batches(&self) -> (u64, u64) {
        (
            self.batches.commits.load(Ordering::Relaxed),
            self.batches.jobs.load(Ordering::Relaxed),
        )
    }
}

fn run(
    db: Db,
    mut rx: mpsc::Receiver<Job>,
    batches: &Batches,
    mut checkpoints: Option<Checkpoints>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut deliveries: Vec<Deliver> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = db.exec("BEGIN IMMEDIATE") {
            // No transaction, so no job may run: fail them all unrun.
            for job in batch.drain(..) {
                job(None)(Some(&e));
            }
            db.flush_sql_log();
            continue;
        }
        // If a job's failure made SQLite roll the whole transaction back
        // (disk full, I/O error), the jobs after it must not run outside a
        // transaction: they fail unrun, and so does everything before.
        let mut aborted: Option<rusqlite::Error> = None;
        for job in batch.drain(..) {
            if aborted.is_some() {
                job(None)(aborted.as_ref());
                continue;
            }
            // A job that panics must not take the writer (and every later
            // write) down with it. What it wrote is unknown, so the whole
            // transaction is rolled back and the batch fails; its own caller
            // hears of it when its reply channel drops with the panic.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&db)))) {
                Ok(deliver) => deliveries.push(deliver),
                Err(_) => {
                    let _ = db.exec("ROLLBACK");
                    aborted = Some(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("a job in the same transaction panicked".into()),
                    ));
                    continue;
                }
            }
            if db.conn.is_autocommit() {
                aborted = Some(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("the transaction was rolled back by an earlier failure".into()),
                ));
            }
        }
        let err = match aborted {
            Some(e) => Some(e),
            None => {
                let err = db.exec("COMMIT").err();
                if err.is_some() {
                    let _ = db.exec("ROLLBACK");
                } else {
                    batches.commits.fetch_add(1, Ordering::Relaxed);
                    batches
                        .jobs
                        .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
                }
                err
            }
        };
        if err.is_some() {
            db.forget_hours();
        }
        for deliver in deliveries.drain(..) {
            deliver(err.as_ref());
        }
        if let Some(checkpoints) = &mut checkpoints {
            checkpoints.after_commit(&db.conn, |sql| db.log_sql(sql));
        }
        db.flush_sql_log();
    }
    // The checkpoint thread's connection closes before the writer's, which
    // (as the last one) checkpoints what is left.
    drop(checkpoints);
}

impl Sql for Db {
    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn log_sql(&self, sql: &'static str) {
        Db::log_sql(self, sql);
    }
}
