//! Responses in SQLite: on the row of the turn that produced them
//! (`response_id`, `response`), so storing one is part of the turn's
//! insert; found through their session, which their id names; a fork
//! copies a session's turn rows.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::messages::{turn_row, unfold, TURN_STRIDE};
use super::sql::*;
use super::{id_key, is_foreign_key_violation, Sql, SqliteStore, HOUR_MS};
use crate::error::{Error, Result};
use crate::message::Message;
use crate::storage::{response_session, MessageCursor, ResponseStore, StoredResponse};
use crate::types::{Session, SessionId, Usage};

#[async_trait]
impl ResponseStore for SqliteStore {
    async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let Some(session) = response_session(id) else {
            return Ok(None);
        };
        let id = id.to_owned();
        self.reader
            .read(move |db| {
                let row = db
                    .prepare(GET_RESPONSE)?
                    .query_row(params![id_key(session), id, TURN_STRIDE], |r| {
                        let tokens = (
                            r.get::<_, Option<i64>>(8)?,
                            r.get::<_, Option<i64>>(9)?,
                            r.get::<_, Option<i64>>(10)?,
                        );
                        Ok((
                            turn_row(r)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, String>(7)?,
                            tokens,
                        ))
                    })
                    .optional()?;
                let Some((turn, through, document, tokens)) = row else {
                    return Ok(None);
                };
                let mut messages = Vec::with_capacity(2);
                unfold(turn, &mut messages)?;
                let (positions, messages) = messages.into_iter().unzip();
                Ok(Some(StoredResponse {
                    id,
                    session_id: session,
                    through: MessageCursor::after(through),
                    document,
                    messages,
                    positions,
                    usage: match tokens {
                        (Some(p), Some(c), cached) => {
                            Some(Usage::from_sums(p, c, cached.unwrap_or(0)))
                        }
                        _ => None,
                    },
                }))
            })
            .await
    }

    async fn head_response(&self, id: SessionId) -> Result<Option<String>> {
        // On the writer's connection, like the history a turn reads: what
        // the session's previous turn stored is always seen.
        self.worker
            .call_single(move |db| {
                Ok(db
                    .prepare(HEAD_RESPONSE)?
                    .query_row([id_key(id)], |r| r.get::<_, Option<String>>(0))
                    .optional()?
                    .flatten())
            })
            .await
    }

    async fn delete_response(&self, id: &str) -> Result<bool> {
        let Some(session) = response_session(id) else {
            return Ok(false);
        };
        let id = id.to_owned();
        self.worker
            .call_single(move |db| {
                Ok(db
                    .prepare(DELETE_RESPONSE)?
                    .execute(params![id_key(session), id])?
                    > 0)
            })
            .await
    }

    async fn history_through(&self, id: SessionId, through: MessageCursor) -> Result<Vec<Message>> {
        let last_turn = through.position().div_euclid(TURN_STRIDE);
        self.reader
            .read(move |db| {
                let mut out = Vec::new();
                let mut stmt = db.prepare(TURNS_THROUGH)?;
                let rows = stmt.query_map(params![id_key(id), last_turn], turn_row)?;
                for row in rows {
                    unfold(row?, &mut out)?;
                }
                Ok(out
                    .into_iter()
                    .filter(|(p, _)| *p <= through.position())
                    .map(|(_, m)| m)
                    .collect())
            })
            .await
    }

    async fn fork_session(
        &self,
        from: SessionId,
        through: MessageCursor,
        into: &Session,
    ) -> Result<()> {
        let (from, key) = (id_key(from), id_key(into.id));
        let created = into.created_at.timestamp_millis();
        let hour = into.last_active.timestamp_millis().div_euclid(HOUR_MS);
        let prompt = into.system_prompt.clone();
        let owner = into.owner.clone();
        let target = into.target.clone();
        let metadata = match &into.metadata {
            Some(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
            None => None,
        };
        let last_turn = through.position().div_euclid(TURN_STRIDE);
        self.worker
            .call(move |db| {
                if db
                    .prepare(SESSION_EXISTS)?
                    .query_row([from], |_| Ok(()))
                    .optional()?
                    .is_none()
                {
                    return Err(Error::session_not_found());
                }
                db.prepare(INSERT_SESSION)?
                    .execute(params![key, created, hour, prompt, metadata, owner])?;
                if let Some(target) = &target {
                    db.prepare(SET_TARGET)?.execute(params![key, target])?;
                }
                match db
                    .prepare(FORK_TURNS)?
                    .execute(params![key, from, last_turn])
                {
                    Err(e) if is_foreign_key_violation(&e) => Err(Error::session_not_found()),
                    other => other.map(drop).map_err(Error::from),
                }?;
                db.hour_known(&key, hour);
                Ok(())
            })
            .await
    }
}
