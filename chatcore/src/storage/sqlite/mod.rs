//! `SqliteStore`: sessions, messages, feedback and API keys in one SQLite
//! file.
//!
//! One file per concern: `sessions.rs`, `messages.rs`, `responses.rs`,
//! `feedback.rs` and `keys.rs` implement the storage traits, with every statement in
//! `sql.rs`; `schema.rs` migrates; `worker.rs` is the writer thread,
//! `reader.rs` the reading connection, `checkpoint.rs` the WAL
//! checkpoints. This file opens the store.
//!
//! WAL journal, `busy_timeout`, foreign keys on, schema migrated by
//! `PRAGMA user_version` (`schema`), statements cached per connection.
//! Writes, and the reads a turn makes, run on one dedicated thread
//! (`worker`) with group commit, so the async runtime never blocks on
//! SQLite and concurrent turns share one commit; reads for clients run on
//! a second connection (`reader`) so they never hold up a commit. WAL
//! checkpoints run on a thread and connection of their own
//! (`checkpoint`), off the commit path.
//!
//! The database and its `-wal`/`-shm` files hold conversations: they are
//! created readable by their owner only (SQLite gives the journal files
//! the database file's mode).
//!
//! Durability: with `synchronous = NORMAL` (the default here) a committed
//! turn survives the process being killed (`kill -9`); set
//! [`SqliteOptions::full_sync`] to also survive power loss, at the cost of
//! an fsync per commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{CachedStatement, Connection, OpenFlags};
use slog::Logger;

use crate::error::{Error, Result};
use crate::types::SessionId;

mod checkpoint;
mod feedback;
mod keys;
mod messages;
mod reader;
mod responses;
mod schema;
mod sessions;
mod sql;
mod worker;

use checkpoint::Checkpoints;
use reader::Reader;
use worker::Worker;

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Where every SQL statement executed is reported (the gateway's `log.sql`);
    /// `None` reports nothing. Parameter values are never logged.
    pub sql_logger: Option<Logger>,
    /// `synchronous = FULL` (fsync every commit) instead of `NORMAL`.
    pub full_sync: bool,
    /// How long a statement waits for another process's lock.
    pub busy_timeout: Duration,
    /// Where the store reports trouble it works around by itself (a WAL
    /// checkpoint that failed); `None` reports nothing.
    pub logger: Option<Logger>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            sql_logger: None,
            full_sync: false,
            busy_timeout: Duration::from_secs(5),
            logger: None,
        }
    }
}

/// What the writer thread has done and has waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Jobs submitted and not yet answered.
    pub queue_depth: usize,
    /// Transactions committed.
    pub commits: u64,
    /// Jobs those transactions held (group commit: `jobs / commits` per
    /// commit on average).
    pub jobs: u64,
    /// WAL checkpoint passes run by the background thread.
    pub checkpoint_passes: u64,
    /// Short checkpoints the writer ran itself, between two transactions,
    /// to finish what the background passes left.
    pub checkpoint_tails: u64,
    /// WAL frames (pages) copied into the database by the background
    /// passes, and by the writer's own short checkpoints.
    pub checkpoint_frames: (u64, u64),
    /// Checkpoints that failed.
    pub checkpoint_failures: u64,
}

/// A storage backend on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    worker: Worker,
    reader: Reader,
    checkpoints: Option<std::sync::Arc<checkpoint::CheckpointStats>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the file cannot
    /// be opened or migrated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the file cannot
    /// be opened, configured or migrated.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        owner_only(&path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| Error::storage(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(options.busy_timeout)?;
        let log = options.sql_logger.as_ref();
        let run = |conn: &Connection, sql: &str| -> Result<()> {
            if let Some(log) = log {
                crate::storage::log_sql(log, sql);
            }
            conn.execute_batch(sql)?;
            Ok(())
        };
        // 1 KiB pages (a new file only; an existing one keeps its size).
        // Every turn dirties a few pages at random places (its session's
        // index entries), and each dirty page is written whole to the WAL:
        // smaller pages cut the bytes written per turn about fourfold, which
        // profiles showed to be the writer's main cost.
        run(&conn, "PRAGMA page_size = 1024")?;
        if let Some(log) = log {
            crate::storage::log_sql(log, "PRAGMA journal_mode = WAL");
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(Error::storage(format!(
                "could not switch {} to WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        let sync = if options.full_sync {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        run(&conn, sync)?;
        run(&conn, "PRAGMA foreign_keys = ON")?;
        // 2 MiB of page cache (negative = KiB). Turns read history from the
        // facade's hot cache, so this cache mostly holds the index leaves
        // turns append to; a page it misses is read back from the OS page
        // cache or the WAL, a cheap syscall on the writer's thread. A
        // bigger cache costs more than those reads save: when a b-tree page
        // splits, SQLite briefly renumbers a page past the end of the file,
        // and the commit that follows walks every page this cache holds to
        // drop it again (`pcache1TruncateUnsafe`). That walk, cold, is on
        // the commit path of a lightly loaded turn, and grows with the
        // cache. Smaller still would leave a full batch of turns (its dirty
        // pages) too little room before SQLite spills pages mid-transaction.
        // The measurements behind the size: `git show e1f3db9 --
        // benches/README.md`.
        run(&conn, "PRAGMA cache_size = -2048")?;
        // Cut the WAL file back to 16 MiB after it is reset. The WAL is
        // checkpointed every 16 MiB by the checkpoint thread below, whose
        // hook replaces SQLite's autocheckpoint (see `checkpoint`).
        run(&conn, "PRAGMA journal_size_limit = 16777216")?;
        conn.set_prepared_statement_cache_capacity(32);
        schema::migrate(&mut conn, log)?;
        let mut read_conns = Vec::with_capacity(reader::READERS);
        for _ in 0..reader::READERS {
            let read_conn = Connection::open_with_flags(&path, flags)
                .map_err(|e| Error::storage(format!("cannot open {}: {e}", path.display())))?;
            read_conn.busy_timeout(options.busy_timeout)?;
            // It only reads; a small cache, since pages come from the OS
            // cache.
            read_conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -2048")?;
            read_conn.set_prepared_statement_cache_capacity(16);
            read_conns.push(read_conn);
        }
        let reader = Reader::new(read_conns, options.sql_logger.clone());
        // An in-memory database has no WAL to copy.
        let checkpoints = if mode.eq_ignore_ascii_case("wal") {
            Some(Checkpoints::spawn(
                &conn,
                &path,
                flags,
                sync,
                checkpoint::START,
                options.sql_logger.clone(),
                options.logger,
            )?)
        } else {
            None
        };
        let checkpoint_stats = checkpoints
            .as_ref()
            .map(|c| std::sync::Arc::clone(&c.stats));
        let worker = Worker::spawn(conn, options.sql_logger, checkpoints)?;
        Ok(SqliteStore {
            worker,
            reader,
            checkpoints: checkpoint_stats,
            path,
        })
    }

    /// Caps the database at about `bytes` (rounded down to whole pages):
    /// a write past it fails as on a full disk, with
    /// [`ErrorKind::StorageUnavailable`](crate::ErrorKind::StorageUnavailable),
    /// and writes work again once the cap is raised. `None` lifts the cap.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the setting
    /// cannot be applied.
    pub async fn set_max_size(&self, bytes: Option<u64>) -> Result<()> {
        self.worker
            .call_single(move |db| {
                let page: i64 = db.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                let pages = bytes.map_or(i64::from(u32::MAX), |b| {
                    i64::try_from(b).unwrap_or(i64::MAX) / page.max(1)
                });
                // The pragma answers the cap it set (never below the
                // database's current size).
                let _: i64 = db.conn.query_row(
                    &format!("PRAGMA max_page_count = {}", pages.max(1)),
                    [],
                    |r| r.get(0),
                )?;
                Ok(())
            })
            .await
    }

    /// The writer's state, for an operator's metrics.
    pub fn stats(&self) -> SqliteStats {
        use std::sync::atomic::Ordering::Relaxed;
        let (commits, jobs) = self.worker.batches();
        let mut stats = SqliteStats {
            queue_depth: self.worker.queue_depth(),
            commits,
            jobs,
            ..SqliteStats::default()
        };
        if let Some(c) = &self.checkpoints {
            stats.checkpoint_passes = c.passes.load(Relaxed);
            stats.checkpoint_tails = c.tails.load(Relaxed);
            stats.checkpoint_frames = (c.copied.load(Relaxed), c.tail_copied.load(Relaxed));
            stats.checkpoint_failures = c.failed.load(Relaxed);
        }
        stats
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

const HOUR_MS: i64 = 3_600_000;

/// A session id as stored: its 16 bytes.
fn id_key(id: SessionId) -> [u8; 16] {
    *id.as_bytes()
}

/// Creates the database file readable by its owner only, or makes an
/// existing one (and its journal files) so. Paths SQLite treats specially
/// (`:memory:`, `file:` URIs) are left alone.
fn owner_only(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let text = path.to_string_lossy();
        if text.is_empty() || text == ":memory:" || text.starts_with("file:") {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::storage(format!("cannot open {}: {e}", path.display())))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            if let Ok(meta) = std::fs::metadata(&file) {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| {
                            Error::storage(format!("cannot restrict {}: {e}", path.display()))
                        })?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Whether `e` is a foreign-key violation (a turn for a missing session).
fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// What a statement runs against: a connection, and where its SQL is
/// logged. Every statement of the store is prepared through
/// [`Sql::prepare`], so none runs unlogged.
pub(crate) trait Sql {
    fn conn(&self) -> &Connection;
    fn log_sql(&self, sql: &'static str);

    /// `sql`, logged and prepared (from the connection's statement cache).
    fn prepare(&self, sql: &'static str) -> rusqlite::Result<CachedStatement<'_>> {
        self.log_sql(sql);
        self.conn().prepare_cached(sql)
    }
}
