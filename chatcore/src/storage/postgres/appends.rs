//! Claimed appends on PostgreSQL, in batches (see `batch.rs`).
//!
//! Every turn on a shared store ends with an append under its claim. The
//! appends waiting at the same moment on one gateway go as one statement,
//! [`APPEND_BATCH`], each caller answered after it commits: a turn is
//! acknowledged only once it is on disk, as a lone append's is, and a
//! batch that fails stores none of its turns. A lone turn goes as
//! `APPEND_CLAIMED`. An append whose caller has gone before its batch
//! forms is not sent: its turn was never acknowledged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use slog::Logger;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use super::batch::{bounded, log_retry, retry_alone, shared, slots, Batches, Job};
use super::messages::APPEND_CLAIMED;
use super::{millis, pool_error};
use crate::error::{Error, Result};
use crate::storage::Turn;

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

impl Job for Pending {
    fn abandoned(&self) -> bool {
        self.done.is_closed()
    }

    fn bytes(&self) -> usize {
        let response = self
            .response
            .as_ref()
            .map_or(0, |(id, doc)| id.len() + doc.len());
        let messages: usize = self
            .messages
            .iter()
            .map(|m| m.content.len() + m.body.as_ref().map_or(0, String::len) + 64)
            .sum();
        response + messages + 128
    }
}

/// Claimed appends, in batches.
pub(super) struct Appends(Batches<Pending>);

impl Appends {
    /// Starts the task that batches appends onto connections from `pool`;
    /// `log` hears of batches the server refused.
    pub(super) fn start(
        pool: Pool,
        sql_log: Option<Logger>,
        log: Option<Logger>,
        call_timeout: Duration,
    ) -> Self {
        let batcher = Arc::new(Batcher {
            slots: slots(pool.status().max_size),
            pool,
            sql_log,
            log,
            call_timeout,
        });
        Appends(Batches::start(batcher.slots, move |batch| {
            let batcher = Arc::clone(&batcher);
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
        self.0.ask(|done| Pending::new(id, token, turn, done)).await
    }

    /// Appends waiting for a batch.
    pub(super) fn queued(&self) -> usize {
        self.0.queued()
    }
}

/// What the appends' batches need of the store.
struct Batcher {
    pool: Pool,
    sql_log: Option<Logger>,
    log: Option<Logger>,
    call_timeout: Duration,
    slots: usize,
}

impl Batcher {
    /// Stores `batch` and answers each of its turns.
    async fn store(self: Arc<Self>, mut batch: Vec<Pending>) {
        if batch.len() == 1 {
            let pending = batch.pop().expect("one turn");
            let stored = bounded(self.call_timeout, self.one(&pending)).await;
            let _ = pending.done.send(stored);
            return;
        }
        // Sorted by session, the order in which the statement's plan
        // usually takes the rows' locks, and a sweep takes them; a deadlock
        // all the same is retried turn by turn.
        batch.sort_unstable_by_key(|p| p.id);
        match bounded(self.call_timeout, self.many(&batch)).await {
            Ok(stored) => {
                for (k, pending) in batch.into_iter().enumerate() {
                    let _ = pending.done.send(Ok(stored.contains(&(k as i64 + 1))));
                }
            }
            Err(e) if retry_alone(&e) => {
                log_retry(self.log.as_ref(), "append", batch.len(), &e);
                let mut alone = tokio::task::JoinSet::new();
                for pending in batch {
                    let batcher = Arc::clone(&self);
                    alone.spawn(async move {
                        let stored = bounded(batcher.call_timeout, batcher.one(&pending)).await;
                        let _ = pending.done.send(stored);
                    });
                }
                while alone.join_next().await.is_some() {}
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
        if let Some(log) = &self.sql_log {
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
