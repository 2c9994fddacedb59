//! Reads that no turn waits on (a session's page of messages, its usage,
//! its feedback, a list of sessions) run on reading connections of their
//! own, on tokio's blocking pool, so a large read never holds up the
//! writer thread that every commit goes through. There are a few of them,
//! so one slow read (a long listing) does not hold up another user's small
//! one either; listings never take the first connection, which small reads
//! try first, so they never queue behind listings however many run. In WAL mode a reader sees every transaction committed
//! before it began, so a client reads back everything it was told was
//! stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use slog::Logger;

use crate::error::{Error, Result};

/// How many reading connections a store opens.
pub(crate) const READERS: usize = 4;

/// The reading connections, shared by the store's clones.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conns: Vec<Mutex<Connection>>,
    /// Where the next read starts looking for a free connection.
    next: AtomicUsize,
    log: Option<Logger>,
}

impl Inner {
    /// A free connection among `conns[first..]` if there is one, else (all
    /// busy) the next in turn, waited for. A read that panicked left
    /// nothing half-done on a reading connection: a poisoned lock is still
    /// good to use.
    fn connection(&self, first: usize) -> MutexGuard<'_, Connection> {
        let pool = &self.conns[first.min(self.conns.len() - 1)..];
        let n = pool.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match pool[(start + i) % n].try_lock() {
                Ok(conn) => return conn,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        pool[start % n].lock().unwrap_or_else(|p| p.into_inner())
    }
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
    pub(crate) fn new(conns: Vec<Connection>, log: Option<Logger>) -> Reader {
        assert!(!conns.is_empty(), "a reader needs a connection");
        Reader {
            inner: Arc::new(Inner {
                conns: conns.into_iter().map(Mutex::new).collect(),
                next: AtomicUsize::new(0),
                log,
            }),
        }
    }

    /// Runs `f` on a reading connection, off the async runtime.
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&ReadDb<'_>) -> Result<R> + Send + 'static,
    {
        self.read_from(0, f).await
    }

    /// As [`Reader::read`], for a read that may take long (a listing): it
    /// never takes the first connection, so however many listings run, a
    /// small read (a session, its usage) finds one free and does not queue
    /// behind them.
    pub(crate) async fn read_long<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&ReadDb<'_>) -> Result<R> + Send + 'static,
    {
        self.read_from(1, f).await
    }

    async fn read_from<R, F>(&self, first: usize, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&ReadDb<'_>) -> Result<R> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.connection(first);
            f(&ReadDb {
                conn: &conn,
                log: inner.log.as_ref(),
            })
        })
        .await
        .map_err(|e| Error::internal(format!("a storage read failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Long reads holding every connection they may take leave the first
    /// free: a small read does not wait for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_leave_a_connection_for_small_ones() {
        let conns = (0..2)
            .map(|_| Connection::open_in_memory().unwrap())
            .collect();
        let reader = Reader::new(conns, None);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut long = Vec::new();
        for _ in 0..2 {
            let (reader, held_tx, release_rx) =
                (reader.clone(), held_tx.clone(), Arc::clone(&release_rx));
            long.push(tokio::spawn(async move {
                reader
                    .read_long(move |_| {
                        let _ = held_tx.send(());
                        release_rx.lock().unwrap().recv().ok();
                        Ok(())
                    })
                    .await
            }));
        }
        // One long read holds the second connection; the other waits for it.
        tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
            .await
            .unwrap();
        let quick = tokio::time::timeout(
            Duration::from_secs(30),
            reader.read(|db| Ok(db.conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)),
        )
        .await
        .expect("the small read queued behind the long ones")
        .unwrap();
        assert_eq!(quick, 1);
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for l in long {
            l.await.unwrap().unwrap();
        }
    }

    /// One read holding its connection (a long listing) does not make
    /// another wait: it gets another connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_read_does_not_hold_up_another() {
        let conns = (0..2)
            .map(|_| Connection::open_in_memory().unwrap())
            .collect();
        let reader = Reader::new(conns, None);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let slow = {
            let reader = reader.clone();
            tokio::spawn(async move {
                reader
                    .read(move |_| {
                        held_tx.send(()).unwrap();
                        release_rx.recv().ok();
                        Ok(())
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
            .await
            .unwrap();
        // The bound only guards against a hang: with one connection this
        // read would wait until the slow one is released, which is never.
        let quick = tokio::time::timeout(
            Duration::from_secs(30),
            reader.read(|db| Ok(db.conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)),
        )
        .await
        .expect("the quick read waited behind the slow one")
        .unwrap();
        assert_eq!(quick, 1);
        release_tx.send(()).unwrap();
        slow.await.unwrap().unwrap();
    }
}
