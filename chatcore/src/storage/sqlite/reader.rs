//! Reads that no turn waits on (a session's page of messages, its usage,
//! its feedback, a session shown to a client) run on a connection of their
//! own, on tokio's blocking pool, so a large read never holds up the
//! writer thread that every commit goes through. In WAL mode a reader sees
//! every transaction committed before it began, so a client reads back
//! everything it was told was stored.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use slog::Logger;

use crate::error::{Error, Result};

/// The reading connection, shared by the store's clones.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Mutex<Connection>,
    log: Option<Logger>,
}

/// The reader as a read sees it.
pub(crate) struct ReadDb<'a> {
    conn: &'a Connection,
    log: Option<&'a Logger>,
}

impl super::Sql for ReadDb<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }

    fn log_sql(&self, sql: &'static str) {
        if let Some(log) = self.log {
            crate::storage::log_sql(log, sql);
        }
    }
}

impl Reader {
    pub(crate) fn new(conn: Connection, log: Option<Logger>) -> Reader {
        Reader {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                log,
            }),
        }
    }

    /// Runs `f` on the reading connection, off the async runtime.
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&ReadDb<'_>) -> Result<R> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A read that panicked left nothing half-done on a reading
            // connection: the lock is still good to use.
            let conn = inner.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&ReadDb {
                conn: &conn,
                log: inner.log.as_ref(),
            })
        })
        .await
        .map_err(|e| Error::internal(format!("a storage read failed: {e}")))?
    }
}
