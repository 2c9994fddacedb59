//! Sessions in SQLite: created, read, listed, deleted and purged.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::sql::*;
use super::{id_key, Sql, SqliteStore, HOUR_MS};
use crate::error::{Error, Result};
use crate::storage::{SessionCursor, SessionStore};
use crate::types::{from_millis, PurgeReport, Session, SessionId};

/// Sessions deleted per transaction by the retention sweep: each batch is
/// one writer job, so turns keep committing between batches however much
/// there is to purge.
const PURGE_BATCH: i64 = 256;

pub(super) fn read_session(
    db: &impl Sql,
    id: SessionId,
    key: &[u8; 16],
) -> Result<Option<Session>> {
    let mut stmt = db.prepare(GET_SESSION)?;
    let row = stmt
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .optional()?;
    let Some((created, last_reply, system_prompt, metadata, owner, target)) = row else {
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
        target,
    }))
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
                db.prepare(INSERT_SESSION)?
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
                    let ids: Vec<Vec<u8>> = {
                        let mut stmt = db.prepare(PURGE_CANDIDATES)?;
                        let rows = stmt
                            .query_map(params![cutoff_hour, cutoff, PURGE_BATCH], |r| r.get(0))?;
                        rows.collect::<rusqlite::Result<_>>()?
                    };
                    let mut report = PurgeReport::default();
                    for id in &ids {
                        let run = |sql: &'static str| -> Result<u64> {
                            Ok(db.prepare(sql)?.execute([id])? as u64)
                        };
                        let messages: i64 =
                            db.prepare(COUNT_MESSAGES)?.query_row([id], |r| r.get(0))?;
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
                let run =
                    |sql: &'static str| -> Result<usize> { Ok(db.prepare(sql)?.execute([key])?) };
                run(PURGE_TURNS)?;
                run(PURGE_FEEDBACK)?;
                Ok(run(PURGE_SESSION)? > 0)
            })
            .await
    }

    async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let metadata = match metadata {
            Some(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
            None => None,
        };
        self.worker
            .call_single(move |db| {
                Ok(db
                    .prepare(SET_METADATA)?
                    .execute(params![id_key(id), metadata])?
                    > 0)
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
            .read_long(move |db| {
                let (at, after_id) = match after {
                    Some(c) => (Some(c.last_active_ms), Some(id_key(c.id).to_vec())),
                    None => (None, None),
                };
                // A session's `active_hour` is the hour of its last activity,
                // so a page can only reach back to the hour of the session
                // `limit` places down: only the sessions of that hour and
                // later have their last activity read. The cursor's own
                // hour may hold sessions already listed, so a short page
                // looks further back (rarely more than once).
                let until = at.map(|t| t.div_euclid(HOUR_MS));
                let (floor_sql, list_sql) = match owner {
                    Some(_) => (OWN_PAGE_FLOOR, LIST_OWN_SESSIONS),
                    None => (PAGE_FLOOR, LIST_SESSIONS),
                };
                let mut reach = limit.saturating_sub(1);
                loop {
                    let floor: Option<i64> = if limit == 0 {
                        None
                    } else {
                        db.prepare(floor_sql)?
                            .query_row(params![owner, None::<i64>, reach, until], |r| r.get(0))
                            .optional()?
                    };
                    let page = list_page(db, list_sql, &owner, at, &after_id, limit, floor, until)?;
                    if page.len() as i64 >= limit || floor.is_none() {
                        return Ok(page);
                    }
                    reach = reach.saturating_mul(2).saturating_add(1);
                }
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.worker
            .call_single(|db| {
                db.prepare("SELECT 1")?.query_row([], |_| Ok(()))?;
                Ok(())
            })
            .await
    }
}

/// One page of sessions from `sql`, among the sessions whose `active_hour`
/// is from `floor` to `until` (see `list_sessions`).
#[allow(clippy::too_many_arguments)]
fn list_page(
    db: &impl Sql,
    sql: &'static str,
    owner: &Option<String>,
    at: Option<i64>,
    after_id: &Option<Vec<u8>>,
    limit: i64,
    floor: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<Session>> {
    let mut stmt = db.prepare(sql)?;
    let rows = stmt.query_map(params![owner, at, after_id, limit, floor, until], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, created, last, system_prompt, metadata, owner, target) = row?;
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| Error::storage("a session id is not 16 bytes"))?;
        out.push(Session {
            id: SessionId::from_bytes(id),
            created_at: from_millis(created),
            last_active: from_millis(last),
            system_prompt,
            metadata: match metadata {
                Some(text) => Some(serde_json::from_str(&text).map_err(Error::storage)?),
                None => None,
            },
            owner,
            target,
        });
    }
    Ok(out)
}
