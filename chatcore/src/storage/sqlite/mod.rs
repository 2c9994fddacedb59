//! `SqliteStore`: sessions, messages and feedback in one SQLite file.
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

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use slog::Logger;

use super::{
    ApiKey, FeedbackFilter, FeedbackStore, KeyStore, MessageCursor, MessagePage, MessageStore,
    SessionCursor, SessionStore, Turn,
};
use crate::error::{Error, Result};
use crate::message::{Message, Role};
use crate::types::{from_millis, Feedback, PurgeReport, Rating, Session, SessionId, Usage};

mod checkpoint;
mod reader;
mod schema;
mod worker;

use checkpoint::Checkpoints;
use reader::{Reader, Sql};
use worker::Worker;

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Where every SQL statement executed is reported (SPEC `log.sql`);
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
                slog::info!(log, "sql"; "statement" => sql);
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
            slog::info!(log, "sql"; "statement" => "PRAGMA journal_mode = WAL");
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
        // Measured in benches/README.
        run(&conn, "PRAGMA cache_size = -2048")?;
        // Cut the WAL file back to 16 MiB after it is reset. The WAL is
        // checkpointed every 16 MiB by the checkpoint thread below, whose
        // hook replaces SQLite's autocheckpoint (see `checkpoint`).
        run(&conn, "PRAGMA journal_size_limit = 16777216")?;
        conn.set_prepared_statement_cache_capacity(32);
        schema::migrate(&mut conn, log)?;
        let read_conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| Error::storage(format!("cannot open {}: {e}", path.display())))?;
        read_conn.busy_timeout(options.busy_timeout)?;
        // It only reads; a small cache, since pages come from the OS cache.
        read_conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -2048")?;
        read_conn.set_prepared_statement_cache_capacity(16);
        let reader = Reader::new(read_conn, options.sql_logger.clone());
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

const INSERT_SESSION: &str = "INSERT INTO sessions (id, created_at, active_hour, system_prompt, metadata, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const GET_SESSION: &str = "SELECT s.created_at, (SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), s.system_prompt, s.metadata, s.owner FROM sessions s WHERE s.id = ?1";
const LIST_SESSIONS: &str = "SELECT id, created_at, last_at, system_prompt, metadata, owner FROM (SELECT s.id, s.created_at, max(s.created_at, coalesce((SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), 0)) AS last_at, s.system_prompt, s.metadata, s.owner FROM sessions s WHERE ?1 IS NULL OR s.owner = ?1) WHERE ?2 IS NULL OR last_at < ?2 OR (last_at = ?2 AND id < ?3) ORDER BY last_at DESC, id DESC LIMIT ?4";
const REVIEW_FEEDBACK: &str = "SELECT seq, session_id, text, rating, created_at FROM feedback WHERE seq > ?1 AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at < ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR rating = ?5) ORDER BY seq LIMIT ?6";
const INSERT_KEY: &str =
    "INSERT INTO api_keys (id, name, hash, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";
const GET_KEY: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys WHERE id = ?1";
const LIST_KEYS: &str =
    "SELECT id, name, hash, admin, created_at, revoked_at FROM api_keys ORDER BY created_at, id";
const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL";
const RECENT_TURNS: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM (SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY seq ASC";
const INSERT_TURN: &str = "INSERT INTO turns (session_id, user_content, user_at, reply_content, reply_at, prompt_tokens, completion_tokens, cached_tokens, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const SESSION_USAGE: &str = "SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(cached_tokens), 0) FROM turns WHERE session_id = ?1";
const TOUCH_SESSION: &str =
    "UPDATE sessions SET active_hour = ?2 WHERE id = ?1 AND active_hour < ?2";
const INSERT_FEEDBACK: &str = "INSERT INTO feedback (session_id, text, rating, created_at) SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = ?1)";
const LIST_FEEDBACK: &str =
    "SELECT text, rating, created_at FROM feedback WHERE session_id = ?1 ORDER BY seq";
const PURGE_CANDIDATES: &str = "SELECT s.id FROM sessions s WHERE s.active_hour <= ?1 AND max(s.created_at, coalesce((SELECT t.reply_at FROM turns t WHERE t.session_id = s.id ORDER BY t.seq DESC LIMIT 1), 0)) < ?2 LIMIT ?3";
const SESSION_EXISTS: &str = "SELECT 1 FROM sessions WHERE id = ?1";
const PAGE_TURNS: &str = "SELECT seq, user_content, user_at, reply_content, reply_at, body FROM turns WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3";
const COUNT_MESSAGES: &str = "SELECT coalesce(sum(CASE WHEN body IS NULL THEN 2 ELSE json_array_length(body) END), 0) FROM turns WHERE session_id = ?1";
const PURGE_TURNS: &str = "DELETE FROM turns WHERE session_id = ?1";
const PURGE_FEEDBACK: &str = "DELETE FROM feedback WHERE session_id = ?1";
const PURGE_SESSION: &str = "DELETE FROM sessions WHERE id = ?1";

const HOUR_MS: i64 = 3_600_000;

/// A message's position (its [`MessageCursor`]) is its turn's `seq` times
/// this, plus its place in the turn: room for every message a turn may
/// hold ([`MAX_TURN_MESSAGES`](super::MAX_TURN_MESSAGES)).
const TURN_STRIDE: i64 = 1024;

/// Sessions deleted per transaction by the retention sweep: each batch is
/// one writer job, so turns keep committing between batches however much
/// there is to purge.
const PURGE_BATCH: i64 = 256;

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

fn read_session(db: &impl Sql, id: SessionId, key: &[u8; 16]) -> Result<Option<Session>> {
    db.log_sql(GET_SESSION);
    let mut stmt = db.conn().prepare_cached(GET_SESSION)?;
    let row = stmt
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .optional()?;
    let Some((created, last_reply, system_prompt, metadata, owner)) = row else {
        return Ok(None);
    };
    let metadata = match metadata {
        Some(text) => Some(serde_json::from_str(&text).map_err(Error::storage)?),
        None => None,
    };
    Ok(Some(Session {
        id,
        created_at: from_millis(created),
        last_active: from_millis(last_reply.map_or(created, |r| r.max(created))),
        system_prompt,
        metadata,
        owner,
    }))
}

/// One stored turn's columns: `seq`, the two texts with their times, and
/// the body that replaces them for a turn that is more than text.
type TurnRow = (i64, String, i64, String, i64, Option<String>);

fn turn_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TurnRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

/// A stored turn's messages, oldest first, each with its position.
fn unfold(row: TurnRow, out: &mut Vec<(i64, Message)>) -> Result<()> {
    let (seq, user, user_at, reply, reply_at, body) = row;
    let base = seq.saturating_mul(TURN_STRIDE);
    let Some(body) = body else {
        out.push((base, Message::text(Role::User, user, from_millis(user_at))));
        out.push((
            base + 1,
            Message::text(Role::Assistant, reply, from_millis(reply_at)),
        ));
        return Ok(());
    };
    let items: Vec<(i64, &serde_json::value::RawValue)> =
        serde_json::from_str(&body).map_err(Error::storage)?;
    for (i, (at, json)) in items.into_iter().enumerate() {
        let m = Message::from_json(json.get(), from_millis(at)).map_err(Error::storage)?;
        out.push((base + i as i64, m));
    }
    Ok(())
}

/// A turn's messages as stored in `body`: `[[unix_ms, message], …]`.
fn turn_body(turn: &Turn<'_>) -> String {
    let mut out = Vec::with_capacity(
        turn.messages
            .iter()
            .map(|m| m.wire.map_or(m.content.len(), str::len) + 48)
            .sum(),
    );
    out.push(b'[');
    for (i, m) in turn.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        out.extend_from_slice(m.created_at.timestamp_millis().to_string().as_bytes());
        out.push(b',');
        match m.wire {
            Some(json) => out.extend_from_slice(json.as_bytes()),
            None => {
                let text = serde_json::json!({"role": m.role.as_str(), "content": m.content});
                out.extend_from_slice(text.to_string().as_bytes());
            }
        }
        out.push(b']');
    }
    out.push(b']');
    // Built from JSON pieces and ASCII: valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The newest `limit` messages, oldest first: the newest `limit / 2`
/// turns (rounded up; every turn holds at least two messages), unfolded,
/// then cut to `limit`.
fn read_recent(db: &impl Sql, key: &[u8; 16], limit: usize) -> Result<Vec<Message>> {
    db.log_sql(RECENT_TURNS);
    let turns = i64::try_from(limit.div_ceil(2)).unwrap_or(-1);
    let mut stmt = db.conn().prepare_cached(RECENT_TURNS)?;
    let rows = stmt.query_map(params![key, turns], turn_row)?;
    let mut out = Vec::new();
    for row in rows {
        unfold(row?, &mut out)?;
    }
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(out.into_iter().map(|(_, m)| m).collect())
}

/// Up to `limit` messages after `after`, oldest first, reading only the
/// turns the page needs; `None` when the session does not exist. A
/// message's position is its turn's `seq` × [`TURN_STRIDE`] plus its
/// place in the turn.
fn read_page(
    db: &impl Sql,
    key: &[u8; 16],
    after: Option<MessageCursor>,
    limit: usize,
) -> Result<Option<MessagePage>> {
    db.log_sql(SESSION_EXISTS);
    let exists = db
        .conn()
        .prepare_cached(SESSION_EXISTS)?
        .query_row([key], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    // The first position to return, and the turn it is in.
    let first = after.map_or(0, |c| c.position().saturating_add(1));
    // One message more than asked for tells whether there is a next page;
    // every turn holds at least two messages.
    let want = limit.saturating_add(1);
    let turns = i64::try_from(want.div_ceil(2) + 1).unwrap_or(i64::MAX);
    db.log_sql(PAGE_TURNS);
    let mut stmt = db.conn().prepare_cached(PAGE_TURNS)?;
    let rows = stmt.query_map(params![key, first / TURN_STRIDE, turns], turn_row)?;
    let mut page: Vec<(i64, Message)> = Vec::with_capacity(want.min(1024));
    let mut unfolded = Vec::new();
    for row in rows {
        unfolded.clear();
        unfold(row?, &mut unfolded)?;
        for (pos, m) in unfolded.drain(..) {
            if pos >= first && page.len() < want {
                page.push((pos, m));
            }
        }
        if page.len() >= want {
            break;
        }
    }
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|(pos, _)| MessageCursor::after(*pos))
    } else {
        None
    };
    Ok(Some(MessagePage {
        messages: page.into_iter().map(|(_, m)| m).collect(),
        next,
    }))
}

/// Whether `e` is a foreign-key violation (a turn for a missing session).
fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert_session(&self, session: &Session) -> Result<()> {
        let key = id_key(session.id);
        let created = session.created_at.timestamp_millis();
        let hour = session.last_active.timestamp_millis().div_euclid(HOUR_MS);
        let prompt = session.system_prompt.clone();
        let owner = session.owner.clone();
        let metadata = match &session.metadata {
            Some(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
            None => None,
        };
        self.worker
            .call_single(move |db| {
                db.log_sql(INSERT_SESSION);
                db.conn
                    .prepare_cached(INSERT_SESSION)?
                    .execute(params![key, created, hour, prompt, metadata, owner])?;
                // Stored with its hour: the session's first turns need not
                // touch the hint.
                db.hour_known(&key, hour);
                Ok(())
            })
            .await
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        self.reader
            .read(move |db| read_session(db, id, &id_key(id)))
            .await
    }

    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        let cutoff = cutoff.timestamp_millis();
        let cutoff_hour = cutoff.div_euclid(HOUR_MS);
        let mut report = PurgeReport::default();
        loop {
            let (batch, found) = self
                .worker
                .call(move |db| {
                    // Candidates come through the active_hour index: only
                    // sessions whose last activity is in or before the
                    // cutoff's hour; the exact test reads each one's last
                    // turn.
                    db.log_sql(PURGE_CANDIDATES);
                    let ids: Vec<Vec<u8>> = {
                        let mut stmt = db.conn.prepare_cached(PURGE_CANDIDATES)?;
                        let rows = stmt
                            .query_map(params![cutoff_hour, cutoff, PURGE_BATCH], |r| r.get(0))?;
                        rows.collect::<rusqlite::Result<_>>()?
                    };
                    let mut report = PurgeReport::default();
                    for id in &ids {
                        let run = |sql: &'static str| -> Result<u64> {
                            db.log_sql(sql);
                            Ok(db.conn.prepare_cached(sql)?.execute([id])? as u64)
                        };
                        db.log_sql(COUNT_MESSAGES);
                        let messages: i64 = db
                            .conn
                            .prepare_cached(COUNT_MESSAGES)?
                            .query_row([id], |r| r.get(0))?;
                        report.messages += u64::try_from(messages).unwrap_or(0);
                        run(PURGE_TURNS)?;
                        report.feedback += run(PURGE_FEEDBACK)?;
                        report.sessions += run(PURGE_SESSION)?;
                    }
                    Ok((report, ids.len() as i64))
                })
                .await?;
            report.sessions += batch.sessions;
            report.messages += batch.messages;
            report.feedback += batch.feedback;
            if found < PURGE_BATCH {
                return Ok(report);
            }
        }
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let key = id_key(id);
        self.worker
            .call(move |db| {
                let run = |sql: &'static str| -> Result<usize> {
                    db.log_sql(sql);
                    Ok(db.conn.prepare_cached(sql)?.execute([key])?)
                };
                run(PURGE_TURNS)?;
                run(PURGE_FEEDBACK)?;
                Ok(run(PURGE_SESSION)? > 0)
            })
            .await
    }

    async fn list_sessions(
        &self,
        owner: Option<&str>,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let owner = owner.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .read(move |db| {
                db.log_sql(LIST_SESSIONS);
                let mut stmt = db.conn().prepare_cached(LIST_SESSIONS)?;
                let (at, after_id) = match after {
                    Some(c) => (Some(c.last_active_ms), Some(id_key(c.id).to_vec())),
                    None => (None, None),
                };
                let rows = stmt.query_map(params![owner, at, after_id, limit], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, created, last, system_prompt, metadata, owner) = row?;
                    let id: [u8; 16] = id
                        .try_into()
                        .map_err(|_| Error::storage("a session id is not 16 bytes"))?;
                    out.push(Session {
                        id: SessionId::from_bytes(id),
                        created_at: from_millis(created),
                        last_active: from_millis(last),
                        system_prompt,
                        metadata: match metadata {
                            Some(text) => {
                                Some(serde_json::from_str(&text).map_err(Error::storage)?)
                            }
                            None => None,
                        },
                        owner,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.worker
            .call_single(|db| {
                db.log_sql("SELECT 1");
                db.conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>> {
        self.worker
            .call_single(move |db| read_recent(db, &id_key(id), limit))
            .await
    }

    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()> {
        let key = id_key(id);
        // A user's text and a text reply (nearly every turn) go in the two
        // text columns; anything else in `body`.
        let (user, user_at, reply, body) = match turn.text_pair() {
            Some((u, r)) => (
                u.content.to_owned(),
                u.created_at.timestamp_millis(),
                r.content.to_owned(),
                None,
            ),
            None => (
                String::new(),
                turn.messages
                    .first()
                    .map_or(0, |m| m.created_at.timestamp_millis()),
                String::new(),
                Some(turn_body(&turn)),
            ),
        };
        let reply_at = turn.reply_at().timestamp_millis();
        let prompt_tokens = turn.usage.map(|u| u.prompt_tokens);
        let completion_tokens = turn.usage.map(|u| u.completion_tokens);
        let cached_tokens = turn.usage.map(|u| u.cached_tokens);
        self.worker
            .call_single(move |db| {
                // No savepoint (`call_single`): the only write that can come
                // before a failure is the `active_hour` hint, harmless alone
                // (the sweep checks the turns themselves). The hint changes
                // at most once an hour per session; the worker remembers
                // recent ones, so most turns skip the statement entirely.
                let hour = reply_at.div_euclid(HOUR_MS);
                if !db.hour_known(&key, hour) {
                    db.log_sql(TOUCH_SESSION);
                    db.conn
                        .prepare_cached(TOUCH_SESSION)?
                        .execute(params![key, hour])?;
                }
                // The foreign key refuses a turn for a missing session, so
                // no separate existence check is needed.
                db.log_sql(INSERT_TURN);
                let inserted = db.conn.prepare_cached(INSERT_TURN)?.execute(params![
                    key,
                    user,
                    user_at,
                    reply,
                    reply_at,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                    body
                ]);
                match inserted {
                    Err(e) if is_foreign_key_violation(&e) => {
                        return Err(Error::session_not_found())
                    }
                    other => other?,
                };
                Ok(())
            })
            .await
    }

    async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<Option<MessagePage>> {
        self.reader
            .read(move |db| read_page(db, &id_key(id), after, limit))
            .await
    }

    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        self.reader
            .read(move |db| {
                db.log_sql(SESSION_USAGE);
                let (prompt, completion, cached): (i64, i64, i64) = db
                    .conn()
                    .prepare_cached(SESSION_USAGE)?
                    .query_row(params![id_key(id)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                let clamp = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
                Ok(Usage {
                    prompt_tokens: clamp(prompt),
                    completion_tokens: clamp(completion),
                    cached_tokens: clamp(cached),
                })
            })
            .await
    }

    async fn load_turn_context(
        &self,
        id: SessionId,
        limit: usize,
    ) -> Result<Option<(Session, Vec<Message>)>> {
        self.worker
            .call_single(move |db| {
                let key = id_key(id);
                let Some(session) = read_session(db, id, &key)? else {
                    return Ok(None);
                };
                Ok(Some((session, read_recent(db, &key, limit)?)))
            })
            .await
    }
}

#[async_trait]
impl FeedbackStore for SqliteStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        let key = id_key(feedback.session_id);
        let text = feedback.text.clone();
        let rating = feedback.rating.map(|r| r.get());
        let at = feedback.created_at.timestamp_millis();
        self.worker
            .call_single(move |db| {
                db.log_sql(INSERT_FEEDBACK);
                let n = db
                    .conn
                    .prepare_cached(INSERT_FEEDBACK)?
                    .execute(params![key, text, rating, at])?;
                if n == 0 {
                    return Err(Error::session_not_found());
                }
                Ok(())
            })
            .await
    }

    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        self.reader
            .read(move |db| {
                db.log_sql(LIST_FEEDBACK);
                let mut stmt = db.conn().prepare_cached(LIST_FEEDBACK)?;
                let rows = stmt.query_map([id_key(id)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (text, rating, at) = row?;
                    out.push(Feedback {
                        session_id: id,
                        text,
                        rating: rating.map(Rating::new).transpose()?,
                        created_at: from_millis(at),
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>> {
        let since = filter.since.map(|t| t.timestamp_millis());
        let until = filter.until.map(|t| t.timestamp_millis());
        let session = filter.session_id.map(|id| id_key(id).to_vec());
        let rating = filter.rating.map(i64::from);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.reader
            .read(move |db| {
                db.log_sql(REVIEW_FEEDBACK);
                let mut stmt = db.conn().prepare_cached(REVIEW_FEEDBACK)?;
                let rows = stmt.query_map(
                    params![after.unwrap_or(0), since, until, session, rating, limit],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, id, text, rating, at) = row?;
                    let id: [u8; 16] = id
                        .try_into()
                        .map_err(|_| Error::storage("a session id is not 16 bytes"))?;
                    out.push((
                        seq,
                        Feedback {
                            session_id: SessionId::from_bytes(id),
                            text,
                            rating: rating.map(Rating::new).transpose()?,
                            created_at: from_millis(at),
                        },
                    ));
                }
                Ok(out)
            })
            .await
    }
}

/// An API key row: the key and the hash of its secret.
fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiKey, Vec<u8>)> {
    Ok((
        ApiKey {
            id: r.get(0)?,
            name: r.get(1)?,
            admin: r.get(3)?,
            created_at: from_millis(r.get(4)?),
            revoked_at: r.get::<_, Option<i64>>(5)?.map(from_millis),
        },
        r.get(2)?,
    ))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()> {
        let key = key.clone();
        let hash = *hash;
        self.worker
            .call_single(move |db| {
                db.log_sql(INSERT_KEY);
                db.conn.prepare_cached(INSERT_KEY)?.execute(params![
                    key.id,
                    key.name,
                    &hash[..],
                    key.admin,
                    key.created_at.timestamp_millis()
                ])?;
                Ok(())
            })
            .await
    }

    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>> {
        let id = id.to_owned();
        // Each lookup is a read transaction of its own, so it sees every
        // commit before it: a key revoked by another process is refused
        // from the next lookup on.
        self.reader
            .read(move |db| {
                db.log_sql(GET_KEY);
                let row = db
                    .conn()
                    .prepare_cached(GET_KEY)?
                    .query_row([id], key_row)
                    .optional()?;
                row.map(|(key, hash)| {
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| Error::storage("a key hash is not 32 bytes"))?;
                    Ok((key, hash))
                })
                .transpose()
            })
            .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.reader
            .read(|db| {
                db.log_sql(LIST_KEYS);
                let mut stmt = db.conn().prepare_cached(LIST_KEYS)?;
                let rows = stmt.query_map([], key_row)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(row?.0);
                }
                Ok(out)
            })
            .await
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let id = id.to_owned();
        let at = at.timestamp_millis();
        self.worker
            .call_single(move |db| {
                db.log_sql(REVOKE_KEY);
                Ok(db
                    .conn
                    .prepare_cached(REVOKE_KEY)?
                    .execute(params![id, at])?
                    > 0)
            })
            .await
    }
}
