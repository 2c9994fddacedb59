//! Messages on PostgreSQL.
//!
//! A turn is appended by one statement: it moves the session's
//! `last_active`, turn count and message count, and inserts the turn's
//! messages at the positions the count gives, so it is atomic without an
//! explicit transaction, and the session row's lock orders concurrent
//! turns. An append under a claim (`claims.rs`) is one conditional
//! `UPDATE` of the same kind, committed with others waiting at the same
//! moment (`batch.rs`). The message count and the id of the last change
//! (`head`), both in the session's row and set by the statements that
//! change its messages, version its history.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{millis, session_from, PostgresStore};
use crate::error::{Error, Result};
use crate::message::{Message, Role};
use crate::storage::{MessageCursor, MessagePage, MessageStore, Turn, TurnClaims, TurnToken};
use crate::types::{SessionId, Usage};

/// The latest `$2` messages, oldest first.
pub(super) const RECENT: &str = "SELECT role, content, created_at, body FROM (SELECT position, role, content, created_at, body FROM messages WHERE session_id = $1 ORDER BY position DESC LIMIT $2) m ORDER BY position";
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
pub(super) const APPEND_CLAIMED: &str = "WITH t AS (UPDATE sessions SET last_active = $2, turns = turns + 1, messages = messages + cardinality($3::text[]), target = coalesce($10::text, target), claim = NULL, claim_until = NULL, head = $13 WHERE id = $1 AND claim = $13 RETURNING messages - cardinality($3::text[]) AS first), r AS (INSERT INTO responses (id, session_id, first, through, document) SELECT $11::text, $1, t.first, t.first + cardinality($3::text[]) - 1, $12::text FROM t WHERE $11::text IS NOT NULL) INSERT INTO messages (session_id, position, role, content, body, created_at, prompt_tokens, completion_tokens, cached_tokens) SELECT $1, t.first + m.i - 1, m.role, m.content, m.body, m.at, CASE WHEN m.i = cardinality($3::text[]) THEN $7::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $8::bigint END, CASE WHEN m.i = cardinality($3::text[]) THEN $9::bigint END FROM t, unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) WITH ORDINALITY AS m(role, content, body, at, i)";
/// Deletes a message and gives its session's history a new `head` (`$3`),
/// in one statement: the history's version moves with the history. The
/// session's row is locked first, as every other statement on a session
/// does, so a deletion and a sweep cannot deadlock.
const DELETE_MESSAGE: &str = "WITH s AS (UPDATE sessions SET head = $3 WHERE id = $1 AND EXISTS (SELECT 1 FROM messages WHERE session_id = $1 AND position = $2) RETURNING id) DELETE FROM messages WHERE session_id = (SELECT id FROM s) AND position = $2";
pub(super) const EXISTS: &str = "SELECT 1 FROM sessions WHERE id = $1";
pub(super) const SESSION: &str =
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
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Appends `turn` with [`APPEND`] or, given the claim's token,
    /// [`APPEND_CLAIMED`]; whether the session (and the claim) was there.
    pub(super) async fn append(
        &self,
        id: SessionId,
        turn: Turn<'_>,
        token: Option<TurnToken>,
    ) -> Result<bool> {
        let stored = self.append_once(id, turn, token).await?;
        if stored {
            self.db.upkeep.turn_stored();
        }
        Ok(stored)
    }

    /// [`PostgresStore::append`], uncounted.
    async fn append_once(
        &self,
        id: SessionId,
        turn: Turn<'_>,
        token: Option<TurnToken>,
    ) -> Result<bool> {
        if let Some(token) = token {
            let batched = self.db.appends.append(*id.as_uuid(), token.0, &turn);
            // Bounded as a lone statement is: an append given up on before
            // its batch forms is not sent.
            if let Some(stored) = self.bounded(async { Ok(batched.await) }).await? {
                return stored;
            }
        }
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
