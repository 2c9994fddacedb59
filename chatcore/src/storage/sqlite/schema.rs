//! The SQLite schema and its migrations, versioned by `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema one version up; a database
//! is brought to the latest version inside one transaction when opened. A
//! database newer than this code is refused rather than misread.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Version `i + 1` is reached by running `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // v1: sessions, turns, feedback. Times are unix milliseconds (UTC). Ids
    // are the UUID's 16 bytes (`hex(id)` in `sqlite3`): less than half the
    // size of the text form in every key.
    //
    // One row per turn (the user message and its reply), so a turn is one
    // insert: a row at the table's tail and one entry in the session's
    // index leaf. A session's `last_active` is not stored per turn: it is
    // its last turn's `reply_at` (or `created_at`), read through that
    // index. Updating a stored `last_active` on every turn would dirty two
    // more pages at random places (the row and its index entry), which
    // profiles showed to be most of the cost of a turn. Instead
    // `active_hour` (last activity, in whole hours since the epoch) moves
    // at most once an hour per session and lets the retention sweep find
    // its few candidates through an index.
    //
    // Sessions are a rowid table (new rows go to the end) with a unique
    // index on the random id, so a new session dirties one page at a random
    // place, not two: entries of the active_hour index are (hour, rowid),
    // which also grow at the end.
    "CREATE TABLE sessions (
         id            BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
         created_at    INTEGER NOT NULL,
         active_hour   INTEGER NOT NULL,
         system_prompt TEXT,
         metadata      TEXT
     );
     CREATE INDEX sessions_by_active_hour ON sessions (active_hour);
     CREATE TABLE turns (
         seq           INTEGER PRIMARY KEY,
         session_id    BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         user_content  TEXT NOT NULL,
         user_at       INTEGER NOT NULL,
         reply_content TEXT NOT NULL,
         reply_at      INTEGER NOT NULL
     );
     CREATE INDEX turns_by_session ON turns (session_id, seq);
     CREATE TABLE feedback (
         seq        INTEGER PRIMARY KEY,
         session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         text       TEXT NOT NULL,
         rating     INTEGER CHECK (rating BETWEEN 1 AND 5),
         created_at INTEGER NOT NULL
     );
     CREATE INDEX feedback_by_session ON feedback (session_id, seq);",
    // v2: the tokens each turn cost, as the model reported them (NULL when
    // it did not), summed per session on demand rather than kept in a
    // running total that every turn would have to update.
    "ALTER TABLE turns ADD COLUMN prompt_tokens INTEGER;
     ALTER TABLE turns ADD COLUMN completion_tokens INTEGER;",
    // v3: access control. A session's owner (the principal that created
    // it; NULL without access control), indexed for a principal's list of
    // sessions; API keys, of which only a SHA-256 hash of the secret is
    // kept.
    "ALTER TABLE sessions ADD COLUMN owner TEXT;
     CREATE INDEX sessions_by_owner ON sessions (owner) WHERE owner IS NOT NULL;
     CREATE TABLE api_keys (
         id         TEXT PRIMARY KEY,
         name       TEXT NOT NULL,
         hash       BLOB NOT NULL CHECK (length(hash) = 32),
         admin      INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         revoked_at INTEGER
     );",
    // v4: turns that are more than a user's text and a text reply (tool
    // calls, tool results, content parts): `body` holds the turn's
    // messages as a JSON array of `[unix_ms, message object]`, and the
    // two text columns are empty. A text turn keeps its compact row with
    // no body. Also the prompt tokens the provider served from its cache.
    "ALTER TABLE turns ADD COLUMN body TEXT;
     ALTER TABLE turns ADD COLUMN cached_tokens INTEGER;",
    // v5: the upstream and model that answered a session's last turn, so
    // its next turn goes there too. Written only when it changes (a
    // session's first turn, a failover), not with every turn.
    "ALTER TABLE sessions ADD COLUMN target TEXT;",
    // v6: feedback ids are never reused. A plain INTEGER PRIMARY KEY hands
    // the newest row's id out again once that row is deleted (with its
    // session), and the id is the admin page's cursor; AUTOINCREMENT keeps
    // the highest id ever given in `sqlite_sequence`. SQLite cannot add it
    // to a table, so the table is rebuilt with its rows and ids (rows of
    // sessions deleted with foreign keys off, by hand, are left behind).
    "CREATE TABLE feedback_v6 (
         seq        INTEGER PRIMARY KEY AUTOINCREMENT,
         session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         text       TEXT NOT NULL,
         rating     INTEGER CHECK (rating BETWEEN 1 AND 5),
         created_at INTEGER NOT NULL
     );
     INSERT INTO feedback_v6 (seq, session_id, text, rating, created_at)
         SELECT seq, session_id, text, rating, created_at FROM feedback
         WHERE session_id IN (SELECT id FROM sessions);
     DROP TABLE feedback;
     ALTER TABLE feedback_v6 RENAME TO feedback;
     CREATE INDEX feedback_by_session ON feedback (session_id, seq);",
    // v7: a principal's sessions by activity, so a page of its listing
    // reads the sessions of its most recent hours, not all of them (every
    // session's exact last activity is its last turn's; `active_hour` is
    // that hour).
    "DROP INDEX sessions_by_owner;
     CREATE INDEX sessions_by_owner ON sessions (owner, active_hour) WHERE owner IS NOT NULL;",
    // v8: a response of the Responses API is stored on the row of the turn
    // that produced it (its id, and what the API keeps of it), so it is
    // written in the turn's own insert and goes with its session. No index
    // of its own: a response's id names its session, whose turns are read
    // newest first through `turns_by_session` (a continuation's response
    // is its session's newest turn).
    "ALTER TABLE turns ADD COLUMN response_id TEXT;
     ALTER TABLE turns ADD COLUMN response TEXT;",
];

/// The schema version this code writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings `conn`'s schema to [`LATEST`].
pub(crate) fn migrate(conn: &mut Connection, log: Option<&slog::Logger>) -> Result<()> {
    let report = |sql: &str| {
        if let Some(log) = log {
            crate::storage::log_sql(log, sql);
        }
    };
    report("BEGIN IMMEDIATE");
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    report("PRAGMA user_version");
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > LATEST {
        return Err(Error::storage(format!(
            "database schema version {version} is newer than this build supports ({LATEST})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        report(sql);
        tx.execute_batch(sql)?;
        let bump = format!("PRAGMA user_version = {}", i + 1);
        report(&bump);
        tx.execute_batch(&bump)?;
    }
    report("COMMIT");
    tx.commit()?;
    Ok(())
}
