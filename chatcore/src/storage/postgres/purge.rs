//! The retention sweep on PostgreSQL: one gateway at a time, in batches.
//!
//! Every gateway runs a sweeper, but one sweep is enough: a sweep first
//! takes the `sweep` lease in `chatgate_leases` (a row with a holder and a
//! deadline on the database's clock), and a gateway that finds another's
//! lease unexpired skips its sweep ([`PurgeReport::skipped`]). The lease is
//! renewed before every batch and released at the end; a sweeper that dies
//! holds it up only until its deadline.
//!
//! Each batch deletes a bounded number of sessions in a transaction of its
//! own, so no transaction (nor the row locks it takes) grows with the
//! backlog, and turns keep committing between batches.

use chrono::{DateTime, Utc};

use super::{millis, PostgresStore};
use crate::error::Result;
use crate::types::PurgeReport;

/// The statement timeout of a sweep's batch.
const SWEEP_TIMEOUT: &str = "SET LOCAL statement_timeout = '5min'";
/// Sessions deleted per transaction.
const PURGE_BATCH: i64 = 256;

/// Takes or renews the lease: it is free, expired, or already ours. The
/// deadline is far beyond one batch, so a live sweeper never loses it
/// between renewals.
const TAKE_LEASE: &str = "INSERT INTO chatgate_leases (name, holder, until) VALUES ('sweep', $1, clock_timestamp() + interval '10 minutes') ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until WHERE chatgate_leases.holder = EXCLUDED.holder OR chatgate_leases.until < clock_timestamp()";
const RELEASE_LEASE: &str = "DELETE FROM chatgate_leases WHERE name = 'sweep' AND holder = $1";
/// The batch's sessions, locked in id order so that two sweeps (clones of
/// one store share a holder) cannot deadlock. A session a turn moved past
/// the cutoff meanwhile is re-checked under the lock and left alone.
const CANDIDATES: &str =
    "SELECT id FROM sessions WHERE last_active < $1 ORDER BY id LIMIT $2 FOR UPDATE";
// Children are deleted explicitly (the cascade would do it) to count them.
const PURGE_MESSAGES: &str = "DELETE FROM messages WHERE session_id = ANY($1)";
const PURGE_FEEDBACK: &str = "DELETE FROM feedback WHERE session_id = ANY($1)";
const PURGE_SESSIONS: &str = "DELETE FROM sessions WHERE id = ANY($1)";

impl PostgresStore {
    /// Deletes every session last active before `cutoff`, with its
    /// messages and feedback, unless another gateway is sweeping.
    pub(super) async fn purge(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        if !self.take_lease().await? {
            return Ok(PurgeReport {
                skipped: true,
                ..PurgeReport::default()
            });
        }
        let swept = self.purge_batches(cutoff).await;
        // Should this fail, the lease lapses at its deadline.
        let _ = self.execute(RELEASE_LEASE, &[&self.db.holder]).await;
        swept
    }

    /// Takes or renews the sweep lease; `false` when another holds it.
    async fn take_lease(&self) -> Result<bool> {
        Ok(self.execute(TAKE_LEASE, &[&self.db.holder]).await? > 0)
    }

    async fn purge_batches(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        loop {
            // The lease lapsed (a stalled sweep) and another gateway took
            // it: that one carries on.
            if !self.take_lease().await? {
                return Ok(report);
            }
            let (batch, found) = self.purge_batch(cutoff).await?;
            report.sessions += batch.sessions;
            report.messages += batch.messages;
            report.feedback += batch.feedback;
            if found < PURGE_BATCH {
                return Ok(report);
            }
        }
    }

    /// One batch in one transaction: what it deleted, and how many
    /// sessions it found.
    async fn purge_batch(&self, cutoff: DateTime<Utc>) -> Result<(PurgeReport, i64)> {
        let mut client = self.client().await?;
        self.log_sql("BEGIN");
        let tx = client.transaction().await?;
        // A batch of long sessions may take longer than a request's
        // statement may; bounded still, so a stuck sweep gives up.
        self.log_sql(SWEEP_TIMEOUT);
        tx.batch_execute(SWEEP_TIMEOUT).await?;
        self.log_sql(CANDIDATES);
        let statement = tx.prepare_cached(CANDIDATES).await?;
        let ids: Vec<uuid::Uuid> = tx
            .query(&statement, &[&millis(cutoff), &PURGE_BATCH])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut report = PurgeReport::default();
        if !ids.is_empty() {
            for (sql, count) in [
                (PURGE_MESSAGES, &mut report.messages),
                (PURGE_FEEDBACK, &mut report.feedback),
                (PURGE_SESSIONS, &mut report.sessions),
            ] {
                self.log_sql(sql);
                let statement = tx.prepare_cached(sql).await?;
                *count = tx.execute(&statement, &[&ids]).await?;
            }
        }
        self.log_sql("COMMIT");
        tx.commit().await?;
        Ok((report, ids.len() as i64))
    }
}
