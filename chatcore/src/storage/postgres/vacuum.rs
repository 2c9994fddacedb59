//! Keeping `sessions` lean while turns stream in.
//!
//! Every turn rewrites its session's row twice (the claim, the append),
//! and PostgreSQL keeps each old version of a row until a vacuum clears
//! it. The append moves `last_active`, which the listings' index orders
//! by, so its new version cannot reuse the old one's index entries (it is
//! not a HOT update): old versions pile up in the table and in each of its
//! indexes, and every later claim and append on the session walks past
//! them. Autovacuum looks at a table once a minute at most (its
//! `autovacuum_naptime`), and a gateway under load leaves hundreds of
//! thousands of old versions in a minute; the server's work per turn then
//! grows with them (benches/README has the figures).
//!
//! So the store vacuums `sessions` itself, once [`AFTER`] turns were stored
//! through it since it last did, and then no sooner than [`MIN_EVERY`], nor
//! sooner than [`SHARE`] times what the last vacuum took, so that it never
//! takes more than a small share of one connection however big the table
//! grows. `SKIP_LOCKED`: when another gateway (or autovacuum) is vacuuming
//! the table, this one skips its turn rather than wait. A vacuum neither
//! blocks nor is blocked by turns' statements, and stays within the
//! connection's statement timeout. A role that may not vacuum the table
//! gets a warning from the server and nothing else happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use slog::Logger;

use super::batch::bounded;
use super::{pool_error, Db};
use crate::error::Result;

/// Turns stored since the last vacuum that call for the next one: a few
/// thousand dead versions, well past what one vacuum's fixed cost is worth.
const AFTER: u64 = 1_000;

/// The shortest time between two vacuums of one store.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// The wait after a vacuum, in multiples of what it took.
const SHARE: u32 = 20;

const VACUUM: &str = "VACUUM (SKIP_LOCKED) sessions";

/// Counts the turns a store stored since its last vacuum.
#[derive(Debug, Default)]
pub(super) struct Upkeep {
    stored: AtomicU64,
}

impl Upkeep {
    /// Counts one more turn stored.
    pub(super) fn turn_stored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether enough turns were stored to vacuum; when so, counts from
    /// zero again.
    fn due(&self) -> bool {
        if self.stored.load(Ordering::Relaxed) < AFTER {
            return false;
        }
        self.stored.store(0, Ordering::Relaxed);
        true
    }
}

/// Starts the task that vacuums `sessions` for the store `db`, as long as
/// the store lives; `log` hears of vacuums that failed.
pub(super) fn start(db: Weak<Db>, log: Option<Logger>) {
    tokio::spawn(async move {
        let mut wait = MIN_EVERY;
        loop {
            tokio::time::sleep(wait).await;
            wait = MIN_EVERY;
            let Some(db) = db.upgrade() else {
                return;
            };
            if !db.upkeep.due() {
                continue;
            }
            let started = Instant::now();
            let result = vacuum(&db).await;
            wait = MIN_EVERY.max(started.elapsed() * SHARE);
            if let (Err(e), Some(log)) = (result, &log) {
                slog::warn!(log, "could not vacuum the sessions table; autovacuum is left to it";
                    "error" => e.chain().to_string(), "next_try_in_s" => wait.as_secs());
            }
        }
    });
}

/// One vacuum of `sessions`, on a pooled connection.
async fn vacuum(db: &Db) -> Result<()> {
    bounded(db.call_timeout, async {
        let client = db.pool.get().await.map_err(pool_error)?;
        if let Some(log) = &db.log {
            crate::storage::log_sql(log, VACUUM);
        }
        Ok(client.batch_execute(VACUUM).await?)
    })
    .await
}
