//! Turn claims on PostgreSQL.
//!
//! A claim is a token and a deadline in the session's row: taking,
//! renewing, releasing and the claimed append (`messages.rs`) are each one
//! conditional `UPDATE`, so no connection is held while the model answers.
//! A claim naming the history's version (`HistoryVersion`) that this
//! gateway holds reads no messages.
//!
//! As with appends (`batch.rs`), what a claim costs the server is mostly
//! per statement, so the claims waiting at the same moment go as one
//! statement, [`CLAIM_BATCH`], on the claims connections; a lone claim goes
//! as [`CLAIM`]. Each claim's rows come back to its caller, who reads them
//! as it would a lone claim's.
//!
//! A claim cannot be taken back once sent, and one that waited in a batch
//! may land after its caller has gone (the client went away): the batch
//! then releases it itself, so an abandoned claim never holds its session
//! for its whole TTL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use slog::Logger;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::batch::{bounded, log_retry, retry_alone, shared, slots, Batches, Job};
use super::messages::{message_from, sql_limit, EXISTS, RECENT, SESSION};
use super::{pool_error, session_from, PostgresStore};
use crate::error::{Error, Result};
use crate::storage::{Claim, HistoryVersion, Turn, TurnClaims, TurnToken};
use crate::types::SessionId;

/// Takes the claim when it is free, lapsed, or already this token's, and
/// reads the latest `$4` messages (newest first) in the same round trip,
/// unless the history's version (`messages`, `head`) is still `$5`, `$6`:
/// one row per message, or one row with none; no row when the claim is
/// not taken. Deadlines are on the database's clock (`clock_timestamp()`,
/// which moves within a transaction, unlike `now()`). A session with no
/// `head` yet (stored before it existed) gets the claim's token.
///
/// A statement reads the database as it was when it began, but an update
/// that waited on another transaction's lock on the row (an append or a
/// deletion committing) goes on with the row as that left it: the claim
/// then names a version its messages were not read at. `s` reads the
/// version as of the statement's start; when the two differ (other than
/// by the head this claim gave), `claim` reads the messages again.
const CLAIM: &str = "WITH c AS (UPDATE sessions SET claim = $2, claim_until = clock_timestamp() + make_interval(secs => $3), head = coalesce(head, $2) WHERE id = $1 AND (claim IS NULL OR claim = $2 OR claim_until < clock_timestamp()) RETURNING created_at, last_active, system_prompt, metadata, owner, target, messages, head), s AS (SELECT messages, head FROM sessions WHERE id = $1) SELECT c.created_at, c.last_active, c.system_prompt, c.metadata, c.owner, c.target, c.messages, c.head, s.messages IS NOT DISTINCT FROM c.messages AND (s.head IS NOT DISTINCT FROM c.head OR (s.head IS NULL AND c.head = $2)), m.position, m.role, m.content, m.created_at, m.body FROM c LEFT JOIN s ON true LEFT JOIN LATERAL (SELECT position, role, content, created_at, body FROM messages WHERE session_id = $1 AND (c.messages <> $5 OR c.head IS DISTINCT FROM $6) ORDER BY position DESC LIMIT $4) m ON true ORDER BY m.position DESC";
const RENEW: &str = "UPDATE sessions SET claim_until = clock_timestamp() + make_interval(secs => $3) WHERE id = $1 AND claim = $2";
const RELEASE: &str =
    "UPDATE sessions SET claim = NULL, claim_until = NULL WHERE id = $1 AND claim = $2";
/// Takes the claims `$1` (sessions) with tokens `$2` for `$3` seconds, as
/// `CLAIM` takes one, and reads each claimed session's latest `$4`
/// messages unless its history's version is still `$5`, `$6`. Claim `k`
/// (1-based) is the `k`th element of each array. The rows are `CLAIM`'s,
/// each led by its claim's `k`, ordered by `k`; a claim with no row did not
/// claim.
const CLAIM_BATCH: &str = "WITH b AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::float8[], $4::int8[], $5::int8[], $6::uuid[]) WITH ORDINALITY AS b(id, token, ttl, lim, appended, head, k)), s AS (SELECT id, messages, head FROM sessions WHERE id = ANY($1::uuid[])), c AS (UPDATE sessions x SET claim = b.token, claim_until = clock_timestamp() + make_interval(secs => b.ttl), head = coalesce(x.head, b.token) FROM b WHERE x.id = b.id AND (x.claim IS NULL OR x.claim = b.token OR x.claim_until < clock_timestamp()) RETURNING b.k, b.token, b.lim, b.appended, b.head AS known, x.id, x.created_at, x.last_active, x.system_prompt, x.metadata, x.owner, x.target, x.messages, x.head) SELECT c.k, c.created_at, c.last_active, c.system_prompt, c.metadata, c.owner, c.target, c.messages, c.head, s.messages IS NOT DISTINCT FROM c.messages AND (s.head IS NOT DISTINCT FROM c.head OR (s.head IS NULL AND c.head = c.token)), m.position, m.role, m.content, m.created_at, m.body FROM c LEFT JOIN s ON s.id = c.id LEFT JOIN LATERAL (SELECT position, role, content, created_at, body FROM messages WHERE session_id = c.id AND (c.messages <> c.appended OR c.head IS DISTINCT FROM c.known) ORDER BY position DESC LIMIT c.lim) m ON true ORDER BY c.k, m.position DESC";

/// A claim as its statement's parameters.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClaimParams {
    pub id: uuid::Uuid,
    pub token: uuid::Uuid,
    pub ttl: f64,
    pub limit: i64,
    /// The version named (-1 messages when none).
    pub appended: i64,
    pub head: Option<uuid::Uuid>,
}

/// What a claim's statement answered: `CLAIM`'s rows, from column `at`
/// on (none: the session was not claimed).
pub(super) struct ClaimRows {
    pub rows: Vec<Row>,
    pub at: usize,
}

/// A claim waiting for its batch.
struct Pending {
    params: ClaimParams,
    done: oneshot::Sender<Result<ClaimRows>>,
}

impl Job for Pending {
    fn abandoned(&self) -> bool {
        self.done.is_closed()
    }

    fn bytes(&self) -> usize {
        64
    }
}

/// Turn claims, in batches on the claims connections.
pub(super) struct Claims(Batches<Pending>);

impl Claims {
    /// Starts the task that batches claims onto connections from `pool`;
    /// `log` hears of batches the server refused.
    pub(super) fn start(
        pool: Pool,
        sql_log: Option<Logger>,
        log: Option<Logger>,
        call_timeout: Duration,
    ) -> Self {
        let batcher = Arc::new(Batcher {
            pool,
            sql_log,
            log,
            call_timeout,
        });
        let slots = slots(batcher.pool.status().max_size);
        Claims(Batches::start(slots, move |batch| {
            let batcher = Arc::clone(&batcher);
            async move { batcher.claim(batch).await }
        }))
    }

    /// Takes the claim `params` in the next batch; `None` when the batching
    /// task is gone (the caller claims alone).
    pub(super) async fn claim(&self, params: ClaimParams) -> Option<Result<ClaimRows>> {
        self.0.ask(|done| Pending { params, done }).await
    }

    /// Claims waiting for a batch.
    pub(super) fn queued(&self) -> usize {
        self.0.queued()
    }
}

/// What the claims' batches need of the store.
struct Batcher {
    pool: Pool,
    sql_log: Option<Logger>,
    log: Option<Logger>,
    call_timeout: Duration,
}

impl Batcher {
    /// Takes the claims of `batch`, answers each, then releases those
    /// whose callers have gone.
    async fn claim(self: Arc<Self>, mut batch: Vec<Pending>) {
        if batch.len() == 1 {
            let pending = batch.pop().expect("one claim");
            let rows = bounded(self.call_timeout, self.one(&pending.params)).await;
            if let Some(p) = answer(pending, rows) {
                self.release(p).await;
            }
            return;
        }
        // Sorted by session, the order in which the statement's plan
        // usually takes the rows' locks, and a sweep takes them; a deadlock
        // all the same is retried claim by claim.
        batch.sort_unstable_by_key(|p| p.params.id);
        match bounded(self.call_timeout, self.many(&batch)).await {
            Ok(rows) => {
                let mut rows = rows.into_iter().peekable();
                let mut gone = Vec::new();
                for (k, pending) in batch.into_iter().enumerate() {
                    let mut own = Vec::new();
                    while let Some(row) = rows.next_if(|r| r.get::<_, i64>(0) == k as i64 + 1) {
                        own.push(row);
                    }
                    gone.extend(answer(pending, Ok(ClaimRows { rows: own, at: 1 })));
                }
                for p in gone {
                    self.release(p).await;
                }
            }
            Err(e) if retry_alone(&e) => {
                log_retry(self.log.as_ref(), "claim", batch.len(), &e);
                let mut alone = tokio::task::JoinSet::new();
                for pending in batch {
                    let batcher = Arc::clone(&self);
                    alone.spawn(async move {
                        let rows =
                            bounded(batcher.call_timeout, batcher.one(&pending.params)).await;
                        if let Some(p) = answer(pending, rows) {
                            batcher.release(p).await;
                        }
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

    fn log_sql(&self, sql: &str, claimed: bool) {
        log_claim(self.sql_log.as_ref(), sql, claimed);
    }

    /// One claim with `CLAIM`.
    async fn one(&self, p: &ClaimParams) -> Result<ClaimRows> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(CLAIM).await?;
        let params: [&(dyn ToSql + Sync); 6] =
            [&p.id, &p.token, &p.ttl, &p.limit, &p.appended, &p.head];
        let rows = client.query(&statement, &params).await?;
        self.log_sql(CLAIM, !rows.is_empty());
        Ok(ClaimRows { rows, at: 0 })
    }

    /// Several claims with [`CLAIM_BATCH`]: its rows.
    async fn many(&self, batch: &[Pending]) -> Result<Vec<Row>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(CLAIM_BATCH).await?;
        let column = |f: fn(&ClaimParams) -> i64| -> Vec<i64> {
            batch.iter().map(|p| f(&p.params)).collect()
        };
        let ids: Vec<uuid::Uuid> = batch.iter().map(|p| p.params.id).collect();
        let tokens: Vec<uuid::Uuid> = batch.iter().map(|p| p.params.token).collect();
        let ttls: Vec<f64> = batch.iter().map(|p| p.params.ttl).collect();
        let heads: Vec<Option<uuid::Uuid>> = batch.iter().map(|p| p.params.head).collect();
        let (limits, appended) = (column(|p| p.limit), column(|p| p.appended));
        let params: [&(dyn ToSql + Sync); 6] = [&ids, &tokens, &ttls, &limits, &appended, &heads];
        let rows = client.query(&statement, &params).await?;
        self.log_sql(CLAIM_BATCH, !rows.is_empty());
        Ok(rows)
    }

    /// Releases a claim whose caller has gone (best effort: a claim not
    /// released lapses after its TTL).
    async fn release(&self, p: ClaimParams) {
        let release = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            self.log_sql(RELEASE, true);
            let statement = client.prepare_cached(RELEASE).await?;
            client.execute(&statement, &[&p.id, &p.token]).await?;
            Ok(())
        };
        let _ = bounded(self.call_timeout, release).await;
    }
}

/// Hands `rows` to the claim's caller; the claim, when it was taken and
/// the caller has gone.
fn answer(pending: Pending, rows: Result<ClaimRows>) -> Option<ClaimParams> {
    let claimed = matches!(&rows, Ok(r) if !r.rows.is_empty());
    (pending.done.send(rows).is_err() && claimed).then_some(pending.params)
}

/// Logs a claim statement once its outcome is known: one that claimed
/// nothing (a busy or unknown session) saved nothing, and is a read's line.
fn log_claim(log: Option<&Logger>, sql: &str, claimed: bool) {
    match (log, claimed) {
        (Some(log), true) => crate::storage::log_sql(log, sql),
        (Some(log), false) => slog::debug!(log, "sql"; "statement" => sql),
        (None, _) => {}
    }
}

impl PostgresStore {
    /// [`TurnClaims::claim_turn_since`], unbounded.
    async fn claim(
        &self,
        id: SessionId,
        token: TurnToken,
        ttl: Duration,
        limit: usize,
        known: Option<HistoryVersion>,
    ) -> Result<Claim> {
        // No version is -1 messages: every session has at least 0.
        let (appended, head) = known.map_or((-1, None), |v| (v.appended, Some(v.head)));
        let params = ClaimParams {
            id: *id.as_uuid(),
            token: token.0,
            ttl: ttl.as_secs_f64(),
            limit: sql_limit(limit),
            appended,
            head,
        };
        let ClaimRows { rows, at } = match self.db.claims_batches.claim(params).await {
            Some(rows) => rows?,
            None => self.claim_alone(&params).await?,
        };
        let Some(row) = rows.first() else {
            return Ok(match self.query_opt(SESSION, &[id.as_uuid()]).await? {
                Some(row) => Claim::Busy(session_from(id, &row, 0)?),
                None => Claim::Missing,
            });
        };
        let session = session_from(id, row, at)?;
        let version = HistoryVersion {
            appended: row.try_get(at + 6)?,
            head: row.try_get(at + 7)?,
        };
        if Some(version) == known {
            return Ok(Claim::Current(session));
        }
        // The version the messages were read at is not the claim's (see
        // `CLAIM`): rare; read them again, now that the claim holds off
        // other turns.
        let as_read: bool = row.try_get(at + 8)?;
        if !as_read && limit > 0 {
            let rows = self.query(RECENT, &[id.as_uuid(), &params.limit]).await?;
            let history = rows
                .iter()
                .map(|row| message_from(row, 0))
                .collect::<Result<_>>()?;
            return Ok(Claim::Held(session, history, version));
        }
        let mut history = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            if row.try_get::<_, Option<i64>>(at + 9)?.is_some() {
                history.push(message_from(row, at + 10)?);
            }
        }
        Ok(Claim::Held(session, history, version))
    }

    /// A claim with [`CLAIM`] on a claims connection of its own, when
    /// claims are not batched (see `claims.rs`).
    async fn claim_alone(&self, p: &ClaimParams) -> Result<ClaimRows> {
        let client = self.claims_client().await?;
        let statement = client.prepare_cached(CLAIM).await?;
        let params: [&(dyn ToSql + Sync); 6] =
            [&p.id, &p.token, &p.ttl, &p.limit, &p.appended, &p.head];
        let rows = client.query(&statement, &params).await?;
        log_claim(self.db.log.as_ref(), CLAIM, !rows.is_empty());
        Ok(ClaimRows { rows, at: 0 })
    }
}

#[async_trait]
impl TurnClaims for PostgresStore {
    async fn claim_turn_since(
        &self,
        id: SessionId,
        token: TurnToken,
        ttl: Duration,
        limit: usize,
        known: Option<HistoryVersion>,
    ) -> Result<Claim> {
        self.bounded(self.claim(id, token, ttl, limit, known)).await
    }

    async fn renew_claim(&self, id: SessionId, token: TurnToken, ttl: Duration) -> Result<bool> {
        let params: [&(dyn ToSql + Sync); 3] = [id.as_uuid(), &token.0, &ttl.as_secs_f64()];
        Ok(self.execute_on(&self.db.claims, RENEW, &params).await? > 0)
    }

    async fn release_claim(&self, id: SessionId, token: TurnToken) -> Result<()> {
        let params: [&(dyn ToSql + Sync); 2] = [id.as_uuid(), &token.0];
        self.execute_on(&self.db.claims, RELEASE, &params).await?;
        Ok(())
    }

    async fn append_claimed_turn(
        &self,
        id: SessionId,
        token: TurnToken,
        turn: Turn<'_>,
    ) -> Result<()> {
        if self.append(id, turn, Some(token)).await? {
            return Ok(());
        }
        // Nothing was stored; say why.
        if self.query_opt(EXISTS, &[id.as_uuid()]).await?.is_some() {
            Err(Error::storage_unavailable(
                "the turn's claim on its session lapsed and another turn took it; nothing was stored",
            ))
        } else {
            Err(Error::session_not_found())
        }
    }
}
