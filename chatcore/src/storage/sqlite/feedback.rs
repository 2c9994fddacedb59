//! Feedback in SQLite.

use async_trait::async_trait;
use rusqlite::params;

use super::sql::*;
use super::{id_key, Sql, SqliteStore};
use crate::error::{Error, Result};
use crate::storage::{FeedbackFilter, FeedbackStore};
use crate::types::{from_millis, Feedback, Rating, SessionId};

#[async_trait]
impl FeedbackStore for SqliteStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        let key = id_key(feedback.session_id);
        let text = feedback.text.clone();
        let rating = feedback.rating.map(|r| r.get());
        let at = feedback.created_at.timestamp_millis();
        self.worker
            .call_single(move |db| {
                let n = db
                    .prepare(INSERT_FEEDBACK)?
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
                let mut stmt = db.prepare(LIST_FEEDBACK)?;
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
                let mut stmt = db.prepare(REVIEW_FEEDBACK)?;
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
