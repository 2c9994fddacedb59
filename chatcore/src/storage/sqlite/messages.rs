//! A session's messages in SQLite: one row per turn, a text turn in its
//! columns and any other as a JSON array of its messages.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::sessions::read_session;
use super::sql::*;
use super::{id_key, is_foreign_key_violation, Sql, SqliteStore, HOUR_MS};
use crate::error::{Error, Result};
use crate::message::{Message, Role};
use crate::storage::{MessageCursor, MessagePage, MessageStore, Turn};
use crate::types::{from_millis, Session, SessionId, Usage};

/// A message's position (its [`MessageCursor`]) is its turn's `seq` times
/// this, plus its place in the turn: room for every message a turn may
/// hold ([`MAX_TURN_MESSAGES`](super::MAX_TURN_MESSAGES)).
pub(super) const TURN_STRIDE: i64 = 1024;

/// One stored turn's columns: `seq`, the two texts with their times, and
/// the body that replaces them for a turn that is more than text.
type TurnRow = (i64, String, i64, String, i64, Option<String>);

pub(super) fn turn_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TurnRow> {
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
pub(super) fn unfold(row: TurnRow, out: &mut Vec<(i64, Message)>) -> Result<()> {
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
        // A deleted message leaves `null`, so the others keep their places.
        if json.get() == "null" {
            continue;
        }
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
    // Nearly every turn holds two messages or more; a session whose turns
    // hold fewer (items added to a conversation one by one, messages
    // deleted) is read again with one turn per message wanted.
    let mut out = Vec::new();
    for turns in [limit.div_ceil(2), limit] {
        let turns = i64::try_from(turns).unwrap_or(-1);
        let mut stmt = db.prepare(RECENT_TURNS)?;
        let rows = stmt.query_map(params![key, turns], turn_row)?;
        out.clear();
        let mut read = 0;
        for row in rows {
            unfold(row?, &mut out)?;
            read += 1;
        }
        if out.len() >= limit || turns < 0 || read < turns {
            break;
        }
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
    let exists = db
        .prepare(SESSION_EXISTS)?
        .query_row([key], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    // The first position to return, and the turn it is in.
    let first = after.map_or(0, |c| c.position().saturating_add(1));
    // One message more than asked for tells whether there is a next page.
    // A turn may hold a single message (items added to a conversation) or
    // none left (deleted), so rows are read until the page is full: the
    // rows are stepped lazily, and reading stops there.
    let want = limit.saturating_add(1);
    let mut stmt = db.prepare(PAGE_TURNS)?;
    let rows = stmt.query_map(params![key, first / TURN_STRIDE, i64::MAX], turn_row)?;
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
    Ok(Some(MessagePage::from_overfetch(page, limit)))
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
        let target = turn.target.map(str::to_owned);
        let response_id = turn.response.map(|r| r.id.to_owned());
        let response = turn.response.map(|r| r.document.to_owned());
        self.worker
            .call_single(move |db| {
                // No savepoint (`call_single`): the only write that can come
                // before a failure is the `active_hour` hint, harmless alone
                // (the sweep checks the turns themselves). The hint changes
                // at most once an hour per session; the worker remembers
                // recent ones, so most turns skip the statement entirely.
                let hour = reply_at.div_euclid(HOUR_MS);
                if !db.hour_known(&key, hour) {
                    db.prepare(TOUCH_SESSION)?.execute(params![key, hour])?;
                }
                // Likewise a hint: the target changes only on a session's
                // first turn or a failover.
                if let Some(target) = &target {
                    db.prepare(SET_TARGET)?.execute(params![key, target])?;
                }
                // The foreign key refuses a turn for a missing session, so
                // no separate existence check is needed.
                let inserted = db.prepare(INSERT_TURN)?.execute(params![
                    key,
                    user,
                    user_at,
                    reply,
                    reply_at,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                    body,
                    response_id,
                    response
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

    async fn delete_message(&self, id: SessionId, position: MessageCursor) -> Result<bool> {
        let (seq, place) = (
            position.position().div_euclid(TURN_STRIDE),
            position.position().rem_euclid(TURN_STRIDE) as usize,
        );
        self.worker
            .call_single(move |db| {
                let Some(row) = db
                    .prepare(TURN_ROW)?
                    .query_row(params![id_key(id), seq], turn_row)
                    .optional()?
                else {
                    return Ok(false);
                };
                // The turn's messages as `[unix_ms, message]` pairs, the
                // deleted one left as `null` so the others keep their
                // positions; the others are copied as they are, byte for
                // byte (parsed into values, their members would be
                // reordered).
                let (_, user, user_at, reply, reply_at, body) = row;
                let text = |role: &str, content: String| {
                    serde_json::value::to_raw_value(
                        &serde_json::json!({"role": role, "content": content}),
                    )
                    .map_err(Error::internal)
                };
                let mut items: Vec<(i64, Box<serde_json::value::RawValue>)> = match body {
                    Some(body) => serde_json::from_str(&body).map_err(Error::storage)?,
                    None => vec![
                        (user_at, text("user", user)?),
                        (reply_at, text("assistant", reply)?),
                    ],
                };
                match items.get_mut(place) {
                    Some((_, m)) if m.get() != "null" => {
                        *m = serde_json::value::to_raw_value(&()).map_err(Error::internal)?;
                    }
                    _ => return Ok(false),
                }
                let body = serde_json::to_string(&items).map_err(Error::internal)?;
                db.prepare(SET_TURN_BODY)?.execute(params![seq, body])?;
                Ok(true)
            })
            .await
    }

    async fn session_with_usage(&self, id: SessionId) -> Result<Option<(Session, Usage)>> {
        // One trip to a reading connection for both.
        self.reader
            .read(move |db| {
                let Some(session) = read_session(db, id, &id_key(id))? else {
                    return Ok(None);
                };
                let (prompt, completion, cached): (i64, i64, i64) = db
                    .prepare(SESSION_USAGE)?
                    .query_row(params![id_key(id)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                Ok(Some((
                    session,
                    Usage::from_sums(prompt, completion, cached),
                )))
            })
            .await
    }

    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        self.reader
            .read(move |db| {
                let (prompt, completion, cached): (i64, i64, i64) = db
                    .prepare(SESSION_USAGE)?
                    .query_row(params![id_key(id)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                Ok(Usage::from_sums(prompt, completion, cached))
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
