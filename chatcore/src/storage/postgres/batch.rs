//! Group commit on PostgreSQL: the queue that batches jobs (appends here,
//! claims in `claims.rs`), and claimed appends in batches.
//!
//! Every turn on a shared store ends with an append under its claim, and
//! most of what that append costs the server is per statement and per
//! commit, not per row: parsing the call, starting the executor, taking a
//! snapshot, flushing the commit to disk. So the appends waiting at the
//! same moment go to the server as one statement ([`APPEND_BATCH`]), each
//! caller answered after that statement commits: a turn is acknowledged
//! only once it is on disk, as before, and a batch that fails stores none
//! of its turns.
//!
//! One task per store gathers the batches. It starts one as soon as the
//! batch before has been answered, with whatever waited meanwhile, so an
//! append never waits for a timer and a lone turn goes alone, while under
//! load batches grow by themselves. One batch at a time is what costs the
//! server least; but a batch held up past [`HELD_UP`] (waiting on a
//! session's row lock that an operator's transaction or a sweep holds)
//! lets the next start beside it, up to [`IN_FLIGHT`] at once, so a held
//! batch delays only the turns it carries.
//!
//! A batch is one statement in its own transaction, so when the server
//! refuses it the server stored none of it. A refusal that one turn may
//! have caused (a text PostgreSQL cannot hold) or that passes (a
//! deadlock) is retried turn by turn, so one turn's failure is never
//! another's. A batch whose fate is unknown (a connection lost, a timeout)
//! fails every turn in it with that error, as a single append would.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use slog::Logger;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::ToSql;

use super::messages::APPEND_CLAIMED;
use super::{millis, pool_error, transient_state};
use crate::error::{Error, Result};
use crate::storage::Turn;

/// The most batches of one kind in flight at once.
const IN_FLIGHT: usize = 4;

/// How long a batch may take before the next starts beside it: far
/// beyond what a batch takes on a server that answers, far below a
/// statement's timeout.
const HELD_UP: std::time::Duration = std::time::Duration::from_millis(25);

/// The most turns in one batch: past a few dozen a batch saves nothing
/// more, and its arrays only grow.
const MAX_BATCH: usize = 64;

/// Appends the turns `$1`… under their claims, as
/// `APPEND_CLAIMED` does one: each session's row moves
/// and its messages are inserted only while the turn's token (`$2`) holds
/// its claim, which it releases. Turn `k` (1-based) is the `k`th element of
/// `$1`–`$10`; its messages are the elements of `$11`–`$16` whose `k` it
/// is, `i` their order within the turn. The rows are the `k` of the turns
/// stored; a turn missing from them stored nothing.
const APPEND_BATCH: &str = "WITH b AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::int8[]) WITH ORDINALITY AS b(id, token, at, target, response, document, prompt, completion, cached, n, k)), t AS (UPDATE sessions s SET last_active = b.at, turns = s.turns + 1, messages = s.messages + b.n, target = coalesce(b.target, s.target), claim = NULL, claim_until = NULL, head = b.token FROM b WHERE s.id = b.id AND s.claim = b.token RETURNING b.k, s.id, s.messages - b.n AS first, b.n, b.response, b.document, b.prompt, b.completion, b.cached), r AS (INSERT INTO responses (id, session_id, first, through, document) SELECT t.response, t.id, t.first, t.first + t.n - 1, t.document FROM t WHERE t.response IS NOT NULL), m AS (INSERT INTO messages (session_id, position, role, content, body, created_at, prompt_tokens, completion_tokens, cached_tokens) SELECT t.id, t.first + m.i - 1, m.role, m.content, m.body, m.at, CASE WHEN m.i = t.n THEN t.prompt END, CASE WHEN m.i = t.n THEN t.completion END, CASE WHEN m.i = t.n THEN t.cached END FROM t JOIN unnest($11::int8[], $12::int8[], $13::text[], $14::text[], $15::text[], $16::timestamptz[]) AS m(k, i, role, content, body, at) ON m.k = t.k) SELECT k FROM t";

/// A turn's append, owned, waiting for its batch.
struct Pending {
    id: uuid::Uuid,
    token: uuid::Uuid,
    at: DateTime<Utc>,
    target: Option<String>,
    response: Option<(String, String)>,
    usage: [Option<i64>; 3],
    messages: Vec<PendingMessage>,
    /// Whether the claim still held and the turn was stored.
    done: oneshot::Sender<Result<bool>>,
}

struct PendingMessage {
    role: &'static str,
    content: String,
    body: Option<String>,
    at: DateTime<Utc>,
}

impl Pending {
    fn new(
        id: uuid::Uuid,
        token: uuid::Uuid,
        turn: &Turn<'_>,
        done: oneshot::Sender<Result<bool>>,
    ) -> Self {
        Pending {
            id,
            token,
            at: millis(turn.reply_at()),
            target: turn.target.map(str::to_owned),
            response: turn
                .response
                .map(|r| (r.id.to_owned(), r.document.to_owned())),
            usage: turn.usage.map_or([None; 3], |u| {
                [
                    Some(i64::from(u.prompt_tokens)),
                    Some(i64::from(u.completion_tokens)),
                    Some(i64::from(u.cached_tokens)),
                ]
            }),
            messages: turn
                .messages
                .iter()
                .map(|m| PendingMessage {
                    role: m.role.as_str(),
                    content: m.content.to_owned(),
                    body: m.wire.map(str::to_owned),
                    at: millis(m.created_at),
                })
                .collect(),
            done,
        }
    }
}

/// A queue of jobs that one task sends to the server in batches; the
/// task ends when the queue (its store) is gone.
pub(super) struct Batches<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T: Send + 'static> Batches<T> {
    /// Starts the task that hands whatever waits to `store`, as one batch,
    /// once the batch before is answered or held up, with fewer than
    /// `slots` in flight.
    pub(super) fn start<F, Fut>(slots: usize, store: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<T>();
        let slots = Arc::new(Semaphore::new(slots.max(1)));
        tokio::spawn(async move {
            loop {
                // A free slot first, then whatever waits.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = waiting.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match waiting.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
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
        Batches { queue }
    }

    /// Queues `job`; gives it back when the task is gone (its runtime shut
    /// down), for the caller to run alone.
    pub(super) fn push(&self, job: T) -> std::result::Result<(), T> {
        self.queue.send(job).map_err(|e| e.0)
    }
}

/// How many batches of a pool of `size` connections may be in flight:
/// never all of them, so that a batch never waits for a connection that
/// another call holds only briefly.
pub(super) fn slots(size: usize) -> usize {
    IN_FLIGHT.min(size.saturating_sub(1).max(1))
}

/// Claimed appends, in batches.
pub(super) struct Appends(Batches<Pending>);

impl Appends {
    /// Starts the task that batches appends onto connections from `pool`.
    pub(super) fn start(
        pool: Pool,
        log: Option<Logger>,
        call_timeout: std::time::Duration,
    ) -> Self {
        let batcher = Batcher {
            slots: slots(pool.status().max_size),
            pool,
            log,
            call_timeout,
        };
        Appends(Batches::start(batcher.slots, move |batch| {
            let batcher = batcher.clone();
            async move { batcher.store(batch).await }
        }))
    }

    /// Appends `turn` to session `id` under the claim `token`, in the next
    /// batch; whether the claim still held (and the turn was stored).
    /// `None` when the batching task is gone: the caller appends alone.
    pub(super) async fn append(
        &self,
        id: uuid::Uuid,
        token: uuid::Uuid,
        turn: &Turn<'_>,
    ) -> Option<Result<bool>> {
        let (done, answer) = oneshot::channel();
        self.0.push(Pending::new(id, token, turn, done)).ok()?;
        answer.await.ok()
    }
}

/// What the appends' batches need of the store.
#[derive(Clone)]
struct Batcher {
    pool: Pool,
    log: Option<Logger>,
    call_timeout: std::time::Duration,
    slots: usize,
}

impl Batcher {
    /// Stores `batch` and answers each of its turns.
    async fn store(&self, mut batch: Vec<Pending>) {
        if batch.len() == 1 {
            let pending = batch.pop().expect("one turn");
            let stored = bounded(self.call_timeout, self.one(&pending)).await;
            let _ = pending.done.send(stored);
            return;
        }
        // Rows locked in the order of their ids, as a sweep locks them.
        batch.sort_unstable_by_key(|p| p.id);
        match bounded(self.call_timeout, self.many(&batch)).await {
            Ok(stored) => {
                for (k, pending) in batch.into_iter().enumerate() {
                    let _ = pending.done.send(Ok(stored.contains(&(k as i64 + 1))));
                }
            }
            Err(e) if retry_alone(&e) => {
                for pending in batch {
                    let stored = bounded(self.call_timeout, self.one(&pending)).await;
                    let _ = pending.done.send(stored);
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for pending in batch {
                    let _ = pending.done.send(Err(shared(&e)));
                }
            }
        }
    }

    fn log_sql(&self, sql: &str) {
        if let Some(log) = &self.log {
            crate::storage::log_sql(log, sql);
        }
    }

    /// One turn with [`APPEND_CLAIMED`].
    async fn one(&self, p: &Pending) -> Result<bool> {
        let client = self.pool.get().await.map_err(pool_error)?;
        self.log_sql(APPEND_CLAIMED);
        let statement = client.prepare_cached(APPEND_CLAIMED).await?;
        let roles: Vec<&str> = p.messages.iter().map(|m| m.role).collect();
        let texts: Vec<&str> = p.messages.iter().map(|m| m.content.as_str()).collect();
        let bodies: Vec<Option<&str>> = p.messages.iter().map(|m| m.body.as_deref()).collect();
        let times: Vec<DateTime<Utc>> = p.messages.iter().map(|m| m.at).collect();
        let response_id = p.response.as_ref().map(|r| r.0.as_str());
        let document = p.response.as_ref().map(|r| r.1.as_str());
        let params: [&(dyn ToSql + Sync); 13] = [
            &p.id,
            &p.at,
            &roles,
            &texts,
            &bodies,
            &times,
            &p.usage[0],
            &p.usage[1],
            &p.usage[2],
            &p.target,
            &response_id,
            &document,
            &p.token,
        ];
        Ok(client.execute(&statement, &params).await? > 0)
    }

    /// Several turns with [`APPEND_BATCH`]: the `k` of those stored.
    async fn many(&self, batch: &[Pending]) -> Result<Vec<i64>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        self.log_sql(APPEND_BATCH);
        let statement = client.prepare_cached(APPEND_BATCH).await?;
        let ids: Vec<uuid::Uuid> = batch.iter().map(|p| p.id).collect();
        let tokens: Vec<uuid::Uuid> = batch.iter().map(|p| p.token).collect();
        let ats: Vec<DateTime<Utc>> = batch.iter().map(|p| p.at).collect();
        let targets: Vec<Option<&str>> = batch.iter().map(|p| p.target.as_deref()).collect();
        let responses: Vec<Option<&str>> = batch
            .iter()
            .map(|p| p.response.as_ref().map(|r| r.0.as_str()))
            .collect();
        let documents: Vec<Option<&str>> = batch
            .iter()
            .map(|p| p.response.as_ref().map(|r| r.1.as_str()))
            .collect();
        let usage = |n: usize| -> Vec<Option<i64>> { batch.iter().map(|p| p.usage[n]).collect() };
        let (prompt, completion, cached) = (usage(0), usage(1), usage(2));
        let counts: Vec<i64> = batch.iter().map(|p| p.messages.len() as i64).collect();
        let messages = batch.iter().map(|p| p.messages.len()).sum();
        let mut turn_of = Vec::with_capacity(messages);
        let mut order = Vec::with_capacity(messages);
        let mut roles = Vec::with_capacity(messages);
        let mut texts = Vec::with_capacity(messages);
        let mut bodies = Vec::with_capacity(messages);
        let mut times = Vec::with_capacity(messages);
        for (k, p) in batch.iter().enumerate() {
            for (i, m) in p.messages.iter().enumerate() {
                turn_of.push(k as i64 + 1);
                order.push(i as i64 + 1);
                roles.push(m.role);
                texts.push(m.content.as_str());
                bodies.push(m.body.as_deref());
                times.push(m.at);
            }
        }
        let params: [&(dyn ToSql + Sync); 16] = [
            &ids,
            &tokens,
            &ats,
            &targets,
            &responses,
            &documents,
            &prompt,
            &completion,
            &cached,
            &counts,
            &turn_of,
            &order,
            &roles,
            &texts,
            &bodies,
            &times,
        ];
        let rows = client.query(&statement, &params).await?;
        rows.iter()
            .map(|row| row.try_get::<_, i64>(0).map_err(Error::from))
            .collect()
    }
}

/// Whether a batch that failed with `e` stored nothing and may succeed
/// turn by turn: the server refused the statement (so rolled it back) for
/// a reason one turn may carry, or lost a race that passes. A timeout or a
/// lost connection leaves the batch's fate unknown and is not retried.
pub(super) fn retry_alone(e: &Error) -> bool {
    let code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::code)
        .map(|c| c.code());
    match code {
        Some(code) => !transient_state(code) || code == "40001" || code == "40P01",
        None => false,
    }
}

/// `call` within `limit`; past it, `StorageUnavailable`.
pub(super) async fn bounded<T>(
    limit: std::time::Duration,
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
    Error::new(e.kind(), e.message().to_owned()).with_source(SharedCause(e.clone()))
}

/// One batch's failure, the cause of each of its turns' errors.
#[derive(Debug)]
struct SharedCause(Arc<Error>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(&*self.0) {
            Some(cause) => write!(f, "{}: {cause}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for SharedCause {}
