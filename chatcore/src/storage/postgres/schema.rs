//! The PostgreSQL schema and its migrations, versioned in `chatgate_schema`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema one version up. They run
//! in one transaction that first takes a transaction-scoped advisory lock,
//! so several gateways starting at once on an empty database migrate it
//! once: the others wait for the lock, then find the schema current. A
//! database newer than this code is refused rather than misread.

use slog::Logger;
use tokio_postgres::Client;

use crate::error::{Error, Result};

/// Version `i + 1` is reached by running `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // v1. Domain times are `timestamptz` cut to whole milliseconds when
    // written, as SQLite keeps them, so a listing cursor (milliseconds)
    // compares exactly. A session keeps its `last_active` and the number
    // of turns stored, both moved by the statement that appends a turn:
    // the row lock that statement takes orders a session's turns.
    //
    // A message's `position` is `2 × turn` for the user's message and
    // `2 × turn + 1` for the reply: the `MessageCursor` positions, so a
    // page is one index range scan.
    //
    // `claim`/`claim_until` are a turn's claim on its session (see
    // `TurnClaims::claim_turn`); `claim_until` is on the database's
    // clock, never a gateway's, so clock skew between gateways is moot.
    "CREATE TABLE sessions (
         id            uuid PRIMARY KEY,
         created_at    timestamptz NOT NULL,
         last_active   timestamptz NOT NULL,
         system_prompt text,
         metadata      jsonb,
         owner         text,
         turns         bigint NOT NULL DEFAULT 0,
         claim         uuid,
         claim_until   timestamptz
     );
     CREATE INDEX sessions_by_last_active ON sessions (last_active, id);
     CREATE INDEX sessions_by_owner ON sessions (owner, last_active, id)
         WHERE owner IS NOT NULL;
     CREATE TABLE messages (
         session_id        uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         position          bigint NOT NULL,
         role              text NOT NULL CHECK (role IN ('user', 'assistant')),
         content           text NOT NULL,
         created_at        timestamptz NOT NULL,
         prompt_tokens     bigint,
         completion_tokens bigint,
         PRIMARY KEY (session_id, position)
     );
     CREATE TABLE feedback (
         id         bigserial PRIMARY KEY,
         session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         text       text NOT NULL,
         rating     smallint CHECK (rating BETWEEN 1 AND 5),
         created_at timestamptz NOT NULL
     );
     CREATE INDEX feedback_by_session ON feedback (session_id, id);
     CREATE TABLE api_keys (
         id         text PRIMARY KEY,
         name       text NOT NULL,
         hash       bytea NOT NULL CHECK (octet_length(hash) = 32),
         admin      boolean NOT NULL,
         created_at timestamptz NOT NULL,
         revoked_at timestamptz
     );
     CREATE TABLE chatgate_leases (
         name   text PRIMARY KEY,
         holder uuid NOT NULL,
         until  timestamptz NOT NULL
     );",
    // v2: messages as the protocol has them. Every role, not just user
    // and assistant; `body` holds a message that is more than its text
    // (tool calls, a tool result, content parts) as its JSON object, with
    // `content` empty; the prompt tokens a provider served from its cache.
    // A turn may now store more than two messages, so a session counts its
    // messages (`messages`, the next position) beside its turns; existing
    // sessions have two per turn.
    "ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_role_check;
     ALTER TABLE messages ADD CONSTRAINT messages_role_check
         CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool', 'function'));
     ALTER TABLE messages ADD COLUMN body text;
     ALTER TABLE messages ADD COLUMN cached_tokens bigint;
     ALTER TABLE sessions ADD COLUMN messages bigint NOT NULL DEFAULT 0;
     UPDATE sessions SET messages = 2 * turns WHERE turns > 0;",
    // v3: the upstream and model that answered a session's last turn, so
    // its next turn goes there too, on whichever gateway runs it.
    "ALTER TABLE sessions ADD COLUMN target text;",
    // v4: responses of the Responses API, each stored in the statement
    // that appends its turn, with the position of that turn's reply (a
    // fork copies the session's messages through it); they go with their
    // session.
    "CREATE TABLE responses (
         id         text PRIMARY KEY,
         session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
         through    bigint NOT NULL,
         document   text NOT NULL
     );
     CREATE INDEX responses_by_session ON responses (session_id, through);",
    // v5: the position of a response's turn's first message, so a
    // response is read with its turn's messages and its document need not
    // repeat them. NULL for a response stored before, whose document holds
    // everything.
    "ALTER TABLE responses ADD COLUMN first bigint;",
    // v6: the id of the last change to a session's messages, set anew by
    // every statement that changes them (an append, to its claim's token;
    // a deletion, to a fresh id). With `messages` it is the history's
    // version (`HistoryVersion`): a gateway whose copy of the history is
    // at the version a claim finds reads no messages. NULL until a claim
    // first sets it.
    "ALTER TABLE sessions ADD COLUMN head uuid;",
];

/// The schema version this code writes.
pub(crate) const LATEST: i32 = MIGRATIONS.len() as i32;

/// The advisory lock migrations hold. Fixed, so every gateway (whatever
/// its version) contends for the same one; the bytes spell `chatgate`.
const MIGRATION_LOCK: i64 = 0x6368_6174_6761_7465;

/// Brings the schema (in `schema`, created if missing, when given) to
/// [`LATEST`].
pub(crate) async fn migrate(
    client: &mut Client,
    schema: Option<&str>,
    log: Option<&Logger>,
) -> Result<()> {
    let report = |sql: &str| {
        if let Some(log) = log {
            crate::storage::log_sql(log, sql);
        }
    };
    report("BEGIN");
    let tx = client.transaction().await?;
    // Waiting for another gateway's migration, and the migration itself,
    // may take longer than a request's statement may.
    let unbounded = "SET LOCAL statement_timeout = 0";
    report(unbounded);
    tx.batch_execute(unbounded).await?;
    let lock = "SELECT pg_advisory_xact_lock($1)";
    report(lock);
    tx.execute(lock, &[&MIGRATION_LOCK]).await?;
    if let Some(schema) = schema {
        // Created under the lock: two `IF NOT EXISTS` at once can still
        // collide on the catalog's unique index. The name was checked to
        // be a plain identifier, so it needs no quoting.
        for sql in [
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            format!("SET LOCAL search_path TO {schema}"),
        ] {
            report(&sql);
            tx.batch_execute(&sql).await?;
        }
    }
    let create = "CREATE TABLE IF NOT EXISTS chatgate_schema (version integer NOT NULL)";
    report(create);
    tx.batch_execute(create).await?;
    let current = "SELECT max(version) FROM chatgate_schema";
    report(current);
    let version: i32 = tx
        .query_one(current, &[])
        .await?
        .try_get::<_, Option<i32>>(0)?
        .unwrap_or(0);
    if version > LATEST {
        return Err(Error::storage(format!(
            "database schema version {version} is newer than this build supports ({LATEST})"
        )));
    }
    if version < LATEST {
        for sql in &MIGRATIONS[version as usize..] {
            report(sql);
            tx.batch_execute(sql).await?;
        }
        // One row: the version the schema is at.
        let clear = "DELETE FROM chatgate_schema";
        report(clear);
        tx.execute(clear, &[]).await?;
        let set = "INSERT INTO chatgate_schema (version) VALUES ($1)";
        report(set);
        tx.execute(set, &[&LATEST]).await?;
    }
    report("COMMIT");
    tx.commit().await?;
    Ok(())
}
