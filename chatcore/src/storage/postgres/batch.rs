//! Group commit on PostgreSQL: the queue that sends the jobs waiting at the
//! same moment (claims, `claims.rs`; claimed appends, `appends.rs`) to the
//! server as one statement.
//!
//! Most of what a turn's statement costs the server is per statement, not
//! per row: parsing the call, starting the executor, taking a snapshot,
//! committing. So one task per store and kind gathers the jobs into
//! batches, each one statement of arrays in its own transaction, and every
//! caller is answered once that statement has committed.
//!
//! A batch starts as soon as the one before it is answered, with whatever
//! waited meanwhile: a job never waits for a timer, a lone job goes alone,
//! and under load batches grow by themselves. One batch at a time is what
//! costs the server least; but a batch held up past [`HELD_UP`] (waiting
//! on a session's row lock that an operator's transaction or a sweep holds)
//! lets the next start beside it, up to [`IN_FLIGHT`] at once, so a held
//! batch delays only the jobs it carries. A job whose caller has gone
//! before its batch forms is dropped unsent.
//!
//! When the server refuses a batch it stored none of it. A refusal that
//! one job may have caused (a text PostgreSQL cannot hold), that passes (a
//! deadlock), or that the server ended (a statement or lock timed out) is
//! retried job by job, all at once, so one job's failure is never
//! another's ([`retry_alone`]). A batch whose fate is unknown (a lost
//! connection, no answer in time) fails every job in it with that error,
//! as a lone statement would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::transient_state;
use crate::error::{Error, Result};

/// The most batches of one kind in flight at once.
const IN_FLIGHT: usize = 4;

/// How long a batch may take before the next starts beside it: far
/// beyond what a batch takes on a server that answers, far below a
/// statement's timeout.
const HELD_UP: Duration = Duration::from_millis(25);

/// The most jobs in one batch: past a few dozen a batch saves nothing
/// more, and its arrays only grow.
const MAX_BATCH: usize = 64;

/// The most bytes of text one batch carries (a job bigger than that goes
/// alone): far below what one PostgreSQL message may hold.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// A job a batch carries.
pub(super) trait Job: Send + 'static {
    /// Whether its caller has gone, so it need not be sent.
    fn abandoned(&self) -> bool;

    /// About how many bytes it adds to its batch's statement.
    fn bytes(&self) -> usize;
}

/// A queue of jobs that one task sends to the server in batches; the task
/// ends when the queue (its store) is gone.
pub(super) struct Batches<T> {
    queue: mpsc::UnboundedSender<T>,
    /// Jobs queued and not yet in a batch.
    queued: Arc<AtomicUsize>,
}

impl<T: Job> Batches<T> {
    /// Starts the task that hands whatever waits to `store`, as one batch,
    /// once the batch before is answered or held up, with at most `slots`
    /// in flight.
    pub(super) fn start<F, Fut>(slots: usize, store: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<T>();
        let queued = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&queued);
        let slots = Arc::new(Semaphore::new(slots.max(1)));
        tokio::spawn(async move {
            // A job taken from the queue that did not fit the last batch.
            let mut carried: Option<T> = None;
            loop {
                // A free slot first, then whatever waits.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::new();
                let mut bytes = 0;
                if let Some(job) = carried.take() {
                    bytes += job.bytes();
                    batch.push(job);
                }
                while batch.is_empty() {
                    let Some(job) = waiting.recv().await else {
                        return;
                    };
                    count.fetch_sub(1, Ordering::Relaxed);
                    if !job.abandoned() {
                        bytes += job.bytes();
                        batch.push(job);
                    }
                }
                while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    let Ok(job) = waiting.try_recv() else {
                        break;
                    };
                    count.fetch_sub(1, Ordering::Relaxed);
                    if job.abandoned() {
                        continue;
                    }
                    if bytes + job.bytes() > MAX_BATCH_BYTES {
                        carried = Some(job);
                        break;
                    }
                    bytes += job.bytes();
                    batch.push(job);
                }
                let stored = store(batch);
                let (answered, done) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    stored.await;
                    drop(slot);
                    drop(answered);
                });
                // What arrives while this batch is out goes in the next,
                // unless this one is held up.
                let _ = tokio::time::timeout(HELD_UP, done).await;
            }
        });
        Batches { queue, queued }
    }

    /// Queues `job`; gives it back when the task is gone (its runtime shut
    /// down), for the caller to run alone.
    pub(super) fn push(&self, job: T) -> std::result::Result<(), T> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.queue.send(job).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            e.0
        })
    }

    /// Queues the job that `job` makes around its answer's sender, and
    /// waits for the answer; `None` when the task is gone (the caller runs
    /// the job alone).
    pub(super) async fn ask<R>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<R>>) -> T,
    ) -> Option<Result<R>> {
        let (done, answer) = oneshot::channel();
        self.push(job(done)).ok()?;
        Some(answer.await.unwrap_or_else(|_| Err(unanswered())))
    }

    /// Jobs waiting for a batch.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// How many batches of a pool of `size` connections may be in flight:
/// fewer than its connections when it has several, so that a statement
/// outside the batches (a renewal, a read) finds one.
pub(super) fn slots(size: usize) -> usize {
    IN_FLIGHT.min(size.saturating_sub(1).max(1))
}

/// The error of a job whose batch ended without answering it (its task
/// panicked): whether it was done is unknown.
fn unanswered() -> Error {
    Error::storage_unavailable("the batch carrying this statement ended without an answer")
}

/// Whether a batch that failed with `e` stored nothing and may succeed job
/// by job: the server refused the statement (so rolled it back) for a
/// reason one job may carry, for a race that passes (`40001`, `40P01`), or
/// because it ran out of time waiting (`57014`, `55P03`: one job's row may
/// be locked). A lost connection or no answer in time leaves the batch's
/// fate unknown, and is not retried.
pub(super) fn retry_alone(e: &Error) -> bool {
    let code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::code)
        .map(|c| c.code());
    match code {
        Some("40001" | "40P01" | "57014" | "55P03") => true,
        Some(code) => !transient_state(code),
        None => false,
    }
}

/// `call` within `limit`; past it, `StorageUnavailable`.
pub(super) async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::storage_unavailable(format!(
            "PostgreSQL did not answer within {limit:?}"
        ))),
    }
}

/// `e` for one more of the jobs it failed.
pub(super) fn shared(e: &Arc<Error>) -> Error {
    Error::new(e.kind(), e.message().to_owned()).with_source(SharedCause(Arc::clone(e)))
}

/// One batch's failure, the cause of each of its jobs' errors: what caused
/// it (the batch's error itself says what each job's says).
#[derive(Debug)]
struct SharedCause(Arc<Error>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(cause) => write!(f, "{cause}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0).and_then(std::error::Error::source)
    }
}

/// Reports, on `log`, a batch of `n` refused and tried again job by job.
pub(super) fn log_retry(log: Option<&slog::Logger>, what: &str, n: usize, e: &Error) {
    if let Some(log) = log {
        slog::warn!(log, "PostgreSQL refused a batch; trying each alone";
            "jobs" => n, "kind" => what, "error" => e.chain().to_string());
    }
}
