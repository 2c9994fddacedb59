//! Messages and turn claims on PostgreSQL.
//!
//! A turn is appended by one statement: it moves the session's
//! `last_active`, turn count and message count, and inserts the turn's
//! messages at the positions the count gives, so it is atomic without an
//! explicit transaction, and the session row's lock orders concurrent
//! turns. A claim is a token and a deadline in the session's
//! row: taking, renewing, releasing and the claimed append are each one
//! conditional `UPDATE`, so no connection is held while the model answers.
//! The message count and the id of the last change (`head`), both in the
//! session's row and set by the statements that change its messages,
//! version its history: a claim naming the version a gateway holds reads
//! no messages.

use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{millis, session_from, PostgresStore};
use crate::error::{Error, Result};
use crate::message::{Message, Role};
use crate::storage::{
    Claim, HistoryVersion, MessageCursor, MessagePage, MessageStore, Turn, TurnClaims, TurnToken,
};
use crate::types::{SessionId, Usage};

/// The latest `$2` messages, oldest first.
const RECENT: &str = "SELECT role, content, created_at, body FROM (SELECT position, role, content, created_at, body FROM messages WHERE session_id = $1 ORDER BY position DESC LIMIT $2) m ORDER BY position";
/// The session and its latest `$2` messages (newest first), in one round
/// trip: one row per message, or one row with no message.
const TURN_CONTEXT: &str = "SELECT s.created_at, s.last_active, s.system_prompt, s.metadata, s.owner, s.target, m.role, m.content, m.created_at, m.body FROM sessions s LEFT JOIN LATERAL (SELECT position, role, content, created_at, body FROM messages WHERE session_id = s.id ORDER BY position DESC LIMIT $2) m ON true WHERE s.id = $1 ORDER BY m.position DESC";
/// Up to `$3` messages after position `$2`, oldest first; no row at all
/// when the session does not exist.
const PAGE: &str = "SELECT m.position, m.role, m.content, m.created_at, m.body FROM sessions s LEFT JOIN LATERAL (SELECT position, role, content, created_at, body FROM messages WHERE session_id = s.id AND position > $2 ORDER BY position LIMIT $3) m ON true WHERE s.id = $1 ORDER BY m.position";
const USAGE: &str = "SELECT coalesce(sum(prompt_tokens), 0)::bigint, coalesce(sum(completion_tokens), 0)::bigint, coalesce(sum(cached_tokens), 0)::bigint FROM messages WHERE session_id = $1";
/// Appends a turn: its messages (roles `$3`, texts `$4`, bodies `$5`,
/// times `$6`) take the positions after the session's count of messages,
/// read and moved under the row lock the update takes; the reply (the
/// last) carries the tokens. A response (`$11`, `$12`) is stored in the
/// same statement.
const APPEND: &str = "WITH t AS (UPDATE sessions SET last_active = $2, turns = turns + 1, messages = messages + cardinality($3::text[]), target = coalesce($10::text, target), head = $13 WHERE id = $1 RETURNING messages - cardinality($3::text[]) AS first), r AS (INSERT INTO responses (id, session_id, first, through, document) SELECT $11::text, $1, t.first, t.first + cardinality($3::text[]) - 1, $12::text FROM t WHERE $11::text IS NOT NULL) INSERT INTO messages (session_id, position, role, content, body, created_at, prompt_tokens, completion_tokens, cached_tokens) SELECT $1, t.first + m.i - 1, m.role, m.content, m.body, m.at, CASE WHEN m.i = cardinality($3::text[]) THEN $7::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $8::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $9::bigint END FROM t, unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY AS m(role, content, body, at, i)";
/// As [`APPEND`], only while `$13` holds the claim, which it releases, the
/// claim's token being the change's id. A
/// claim that lapsed but was not taken by another turn still carries this
/// turn's token, and counts as held: nothing was stored since.
const APPEND_CLAIMED: &str = "WITH t AS (UPDATE sessions SET last_active = $2, turns = turns + 1, messages = messages + cardinality($3::text[]), target = coalesce($10::text, target), claim = NULL, claim_until = NULL, head = $13 WHERE id = $1 AND claim = $13 RETURNING messages - cardinality($3::text[]) AS first), r AS (INSERT INTO responses (id, session_id, first, through, document) SELECT $11::text, $1, t.first, t.first + cardinality($3::text[]) - 1, $12::text FROM t WHERE $11::text IS NOT NULL) INSERT INTO messages (session_id, position, role, content, body, created_at, prompt_tokens, completion_tokens, cached_tokens) SELECT $1, t.first + m.i - 1, m.role, m.content, m.body, m.at, CASE WHEN m.i = cardinality($3::text[]) THEN $7::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $8::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $9::bigint END FROM t, unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY AS m(role, content, body, at, i)";
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
/// Deletes a message and gives its session's history a new `head` (`$3`),
/// in one statement: the history's version moves with the history. The
/// session's row is locked first, as every other statement on a session
/// does, so a deletion and a sweep cannot deadlock.
const DELETE_MESSAGE: &str = "WITH s AS (UPDATE sessions SET head = $3 WHERE id = $1 AND EXISTS (SELECT 1 FROM messages WHERE session_id = $1 AND position = $2) RETURNING id) DELETE FROM messages WHERE session_id = (SELECT id FROM s) AND position = $2";
const EXISTS: &str = "SELECT 1 FROM sessions WHERE id = $1";
const SESSION: &str =
    "SELECT created_at, last_active, system_prompt, metadata, owner, target FROM sessions WHERE id = $1";

/// A message row: `role`, `content`, `created_at`, `body` from column
/// `first` on.
pub(super) fn message_from(row: &Row, first: usize) -> Result<Message> {
    let role: String = row.try_get(first)?;
    let created_at = row.try_get(first + 2)?;
    if let Some(body) = row.try_get::<_, Option<String>>(first + 3)? {
        return Message::from_json(&body, created_at).map_err(Error::storage);
    }
    Ok(Message::text(
        Role::parse(&role)
            .ok_or_else(|| Error::storage(format!("unknown stored role {role:?}")))?,
        row.try_get::<_, String>(first + 1)?,
        created_at,
    ))
}

/// A message count as a SQL `LIMIT` (`usize::MAX` meaning all).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Appends `turn` with [`APPEND`] or, given the claim's token,
    /// [`APPEND_CLAIMED`]; whether the session (and the claim) was there.
    async fn append(
        &self,
        id: SessionId,
        turn: Turn<'_>,
        token: Option<TurnToken>,
    ) -> Result<bool> {
        let prompt = turn.usage.map(|u| i64::from(u.prompt_tokens));
        let completion = turn.usage.map(|u| i64::from(u.completion_tokens));
        let cached = turn.usage.map(|u| i64::from(u.cached_tokens));
        let reply_at = millis(turn.reply_at());
        let roles: Vec<&str> = turn.messages.iter().map(|m| m.role.as_str()).collect();
        let texts: Vec<&str> = turn.messages.iter().map(|m| m.content).collect();
        let bodies: Vec<Option<&str>> = turn.messages.iter().map(|m| m.wire).collect();
        let times: Vec<_> = turn.messages.iter().map(|m| millis(m.created_at)).collect();
        // A claimed append's id is its claim's token (see `HistoryVersion`).
        let head = token.map_or_else(uuid::Uuid::new_v4, |t| t.0);
        let response_id = turn.response.map(|r| r.id);
        let document = turn.response.map(|r| r.document);
        let params: [&(dyn ToSql + Sync); 13] = [
            id.as_uuid(),
            &reply_at,
            &roles,
            &texts,
            &bodies,
            &times,
            &prompt,
            &completion,
            &cached,
            &turn.target,
            &response_id,
            &document,
            &head,
        ];
        let sql = if token.is_some() {
            APPEND_CLAIMED
        } else {
            APPEND
        };
        Ok(self.execute(sql, &params).await? > 0)
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
        let client = self.claims_client().await?;
        let statement = client.prepare_cached(CLAIM).await?;
        // No version is -1 messages: every session has at least 0.
        let (appended, head) = known.map_or((-1, None), |v| (v.appended, Some(v.head)));
        let rows = client
            .query(
                &statement,
                &[
                    id.as_uuid(),
                    &token.0,
                    &ttl.as_secs_f64(),
                    &sql_limit(limit),
                    &appended,
                    &head,
                ],
            )
            .await?;
        // Logged once its outcome is known: a claim that claimed nothing
        // (a busy or unknown session) saved nothing, and is a read's line.
        match (&self.db.log, rows.is_empty()) {
            (Some(log), true) => slog::debug!(log, "sql"; "statement" => CLAIM),
            _ => self.log_sql(CLAIM),
        }
        let Some(row) = rows.first() else {
            self.log_sql(SESSION);
            let statement = client.prepare_cached(SESSION).await?;
            return Ok(match client.query_opt(&statement, &[id.as_uuid()]).await? {
                Some(row) => Claim::Busy(session_from(id, &row, 0)?),
                None => Claim::Missing,
            });
        };
        let session = session_from(id, row, 0)?;
        let version = HistoryVersion {
            appended: row.try_get(6)?,
            head: row.try_get(7)?,
        };
        if Some(version) == known {
            return Ok(Claim::Current(session));
        }
        // The version the messages were read at is not the claim's (see
        // `CLAIM`): rare; read them again, now that the claim holds off
        // other turns.
        let as_read: bool = row.try_get(8)?;
        if !as_read && limit > 0 {
            self.log_sql(RECENT);
            let statement = client.prepare_cached(RECENT).await?;
            let rows = client
                .query(&statement, &[id.as_uuid(), &sql_limit(limit)])
                .await?;
            let history = rows
                .iter()
                .map(|row| message_from(row, 0))
                .collect::<Result<_>>()?;
            return Ok(Claim::Held(session, history, version));
        }
        let mut history = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            if row.try_get::<_, Option<i64>>(9)?.is_some() {
                history.push(message_from(row, 10)?);
            }
        }
        Ok(Claim::Held(session, history, version))
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>> {
        let rows = self
            .query(RECENT, &[id.as_uuid(), &sql_limit(limit)])
            .await?;
        rows.iter().map(|row| message_from(row, 0)).collect()
    }

    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()> {
        if self.append(id, turn, None).await? {
            Ok(())
        } else {
            Err(Error::session_not_found())
        }
    }

    async fn delete_message(&self, id: SessionId, position: MessageCursor) -> Result<bool> {
        let head = uuid::Uuid::new_v4();
        Ok(self
            .execute(DELETE_MESSAGE, &[id.as_uuid(), &position.position(), &head])
            .await?
            > 0)
    }

    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        let rows = self.query(USAGE, &[id.as_uuid()]).await?;
        let (prompt, completion, cached): (i64, i64, i64) = match rows.first() {
            Some(row) => (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            None => (0, 0, 0),
        };
        Ok(Usage::from_sums(prompt, completion, cached))
    }

    async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<Option<MessagePage>> {
        let after_position = after.map_or(-1, MessageCursor::position);
        // One message more than asked for tells whether there is a next page.
        let want = sql_limit(limit.saturating_add(1));
        let rows = self
            .query(PAGE, &[id.as_uuid(), &after_position, &want])
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(position) = row.try_get::<_, Option<i64>>(0)? {
                page.push((position, message_from(row, 1)?));
            }
        }
        Ok(Some(MessagePage::from_overfetch(page, limit)))
    }

    async fn load_turn_context(
        &self,
        id: SessionId,
        limit: usize,
    ) -> Result<Option<(crate::types::Session, Vec<Message>)>> {
        let rows = self
            .query(TURN_CONTEXT, &[id.as_uuid(), &sql_limit(limit)])
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let session = session_from(id, first, 0)?;
        let mut history = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            if row.try_get::<_, Option<String>>(6)?.is_some() {
                history.push(message_from(row, 6)?);
            }
        }
        Ok(Some((session, history)))
    }

    fn claims(&self) -> Option<&dyn TurnClaims> {
        Some(self)
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
