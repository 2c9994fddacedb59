//! Responses on PostgreSQL: a table beside the messages, written by the
//! statement that appends the response's turn (`messages.rs`, or its
//! batch's, `appends.rs`); a fork is
//! one statement that creates the session and copies the messages.

use async_trait::async_trait;

use super::messages::message_from;
use super::{millis, PostgresStore};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::storage::{MessageCursor, ResponseStore, StoredResponse};
use crate::types::{Session, SessionId, Usage};

/// A response and its turn's messages still stored, one row each (one row
/// of NULLs when there are none).
const GET_RESPONSE: &str = "SELECT r.session_id, r.through, r.document, m.position, m.role, m.content, m.created_at, m.body, m.prompt_tokens, m.completion_tokens, m.cached_tokens FROM responses r LEFT JOIN messages m ON m.session_id = r.session_id AND m.position BETWEEN coalesce(r.first, r.through) AND r.through WHERE r.id = $1 ORDER BY m.position";
/// The response whose turn ends at the session's last message.
const HEAD_RESPONSE: &str = "SELECT r.id FROM sessions s JOIN responses r ON r.session_id = s.id AND r.through = s.messages - 1 WHERE s.id = $1";
const DELETE_RESPONSE: &str = "DELETE FROM responses WHERE id = $1";
/// Creates session `$1` (when `$2` exists) with a copy of `$2`'s messages
/// through position `$8`, at the same positions (a deleted item's gap
/// included, so the next position is `$8 + 1`), without their tokens
/// (spent by the original), and the target `$9`.
/// Foreign keys are checked at the end of the statement, after the
/// session's insert.
const FORK: &str = "WITH src AS (SELECT 1 FROM sessions WHERE id = $2), s AS (INSERT INTO sessions (id, created_at, last_active, system_prompt, metadata, owner, target, messages) SELECT $1, $3, $4, $5, $6, $7, $9, $8::bigint + 1 FROM src RETURNING id) INSERT INTO messages (session_id, position, role, content, body, created_at) SELECT s.id, m.position, m.role, m.content, m.body, m.created_at FROM s JOIN messages m ON m.session_id = $2 AND m.position <= $8";
const THROUGH: &str = "SELECT role, content, created_at, body FROM messages WHERE session_id = $1 AND position <= $2 ORDER BY position";
const CREATED: &str = "SELECT 1 FROM sessions WHERE id = $1";

#[async_trait]
impl ResponseStore for PostgresStore {
    async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let rows = self.query(GET_RESPONSE, &[&id]).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let session: uuid::Uuid = first.try_get(0)?;
        let mut found = StoredResponse {
            id: id.to_owned(),
            session_id: SessionId::from(session),
            through: MessageCursor::after(first.try_get(1)?),
            document: first.try_get(2)?,
            messages: Vec::with_capacity(rows.len()),
            positions: Vec::with_capacity(rows.len()),
            usage: None,
        };
        for row in &rows {
            if let Some(position) = row.try_get::<_, Option<i64>>(3)? {
                found.positions.push(position);
                found.messages.push(message_from(row, 4)?);
                // The turn's tokens are on its reply.
                if position == found.through.position() {
                    let tokens = (
                        row.try_get::<_, Option<i64>>(8)?,
                        row.try_get::<_, Option<i64>>(9)?,
                        row.try_get::<_, Option<i64>>(10)?,
                    );
                    if let (Some(p), Some(c), cached) = tokens {
                        found.usage = Some(Usage::from_sums(p, c, cached.unwrap_or(0)));
                    }
                }
            }
        }
        Ok(Some(found))
    }

    async fn head_response(&self, id: SessionId) -> Result<Option<String>> {
        Ok(self
            .query_opt(HEAD_RESPONSE, &[id.as_uuid()])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?)
    }

    async fn delete_response(&self, id: &str) -> Result<bool> {
        Ok(self.execute(DELETE_RESPONSE, &[&id]).await? > 0)
    }

    async fn history_through(&self, id: SessionId, through: MessageCursor) -> Result<Vec<Message>> {
        let rows = self
            .query(THROUGH, &[id.as_uuid(), &through.position()])
            .await?;
        rows.iter().map(|row| message_from(row, 0)).collect()
    }

    async fn fork_session(
        &self,
        from: SessionId,
        through: MessageCursor,
        into: &Session,
    ) -> Result<()> {
        let through = through.position();
        self.execute(
            FORK,
            &[
                into.id.as_uuid(),
                from.as_uuid(),
                &millis(into.created_at),
                &millis(into.last_active),
                &into.system_prompt,
                &into.metadata,
                &into.owner,
                &through,
                &into.target,
            ],
        )
        .await?;
        // No messages copied may still mean a session made (a fork through
        // nothing); whether it exists says whether the source did.
        if self
            .query_opt(CREATED, &[into.id.as_uuid()])
            .await?
            .is_none()
        {
            return Err(Error::session_not_found());
        }
        Ok(())
    }
}
