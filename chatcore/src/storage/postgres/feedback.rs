//! Feedback on PostgreSQL.

use async_trait::async_trait;

use super::{millis, rating_from, PostgresStore};
use crate::error::{Error, Result};
use crate::storage::{FeedbackFilter, FeedbackStore};
use crate::types::{Feedback, SessionId};

const INSERT_FEEDBACK: &str = "INSERT INTO feedback (session_id, text, rating, created_at) SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $1)";
const LIST_FEEDBACK: &str =
    "SELECT text, rating, created_at FROM feedback WHERE session_id = $1 ORDER BY id";
const REVIEW_FEEDBACK: &str = "SELECT id, session_id, text, rating, created_at FROM feedback WHERE id > $1 AND ($2::timestamptz IS NULL OR created_at >= $2) AND ($3::timestamptz IS NULL OR created_at < $3) AND ($4::uuid IS NULL OR session_id = $4) AND ($5::smallint IS NULL OR rating = $5) ORDER BY id LIMIT $6";

#[async_trait]
impl FeedbackStore for PostgresStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        let rating = feedback.rating.map(|r| i16::from(r.get()));
        let inserted = self
            .execute(
                INSERT_FEEDBACK,
                &[
                    feedback.session_id.as_uuid(),
                    &feedback.text,
                    &rating,
                    &millis(feedback.created_at),
                ],
            )
            .await;
        match inserted {
            Ok(0) => Err(Error::session_not_found()),
            Ok(_) => Ok(()),
            // The session was deleted between the check and the insert.
            Err(e) if is_foreign_key_violation(&e) => Err(Error::session_not_found()),
            Err(e) => Err(e),
        }
    }

    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        let rows = self.query(LIST_FEEDBACK, &[id.as_uuid()]).await?;
        rows.iter()
            .map(|row| {
                Ok(Feedback {
                    session_id: id,
                    text: row.try_get(0)?,
                    rating: rating_from(row.try_get(1)?)?,
                    created_at: row.try_get(2)?,
                })
            })
            .collect()
    }

    async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>> {
        let session = filter.session_id.map(|id| *id.as_uuid());
        let rating = filter.rating.map(i16::from);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                REVIEW_FEEDBACK,
                &[
                    &after.unwrap_or(0),
                    &filter.since,
                    &filter.until,
                    &session,
                    &rating,
                    &limit,
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    Feedback {
                        session_id: SessionId::from(row.try_get::<_, uuid::Uuid>(1)?),
                        text: row.try_get(2)?,
                        rating: rating_from(row.try_get(3)?)?,
                        created_at: row.try_get(4)?,
                    },
                ))
            })
            .collect()
    }
}

/// Whether `e` carries a foreign-key violation (SQLSTATE `23503`).
fn is_foreign_key_violation(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| *c == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}
