//! Sessions on PostgreSQL: created, read, listed, deleted (a session's
//! messages and feedback go with it, by foreign key); the purge is
//! `purge.rs`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{millis, session_from, PostgresStore};
use crate::error::{Error, Result};
use crate::storage::{SessionCursor, SessionStore};
use crate::types::{from_millis, PurgeReport, Session, SessionId};

const INSERT_SESSION: &str = "INSERT INTO sessions (id, created_at, last_active, system_prompt, metadata, owner) VALUES ($1, $2, $3, $4, $5, $6)";
const GET_SESSION: &str =
    "SELECT created_at, last_active, system_prompt, metadata, owner, target FROM sessions WHERE id = $1";
const DELETE_SESSION: &str = "DELETE FROM sessions WHERE id = $1";
const SET_METADATA: &str = "UPDATE sessions SET metadata = $2 WHERE id = $1";
const LIST_SESSIONS: &str = "SELECT id, created_at, last_active, system_prompt, metadata, owner, target FROM sessions WHERE ($1::text IS NULL OR owner = $1) AND ($2::timestamptz IS NULL OR (last_active, id) < ($2, $3::uuid)) ORDER BY last_active DESC, id DESC LIMIT $4";
const PING: &str = "SELECT 1";

/// The longest a readiness probe waits (less when the connect timeout is
/// shorter): a probe that hangs is as bad as one that fails.
const PING_BOUND: Duration = Duration::from_secs(2);

#[async_trait]
impl SessionStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert_session(&self, session: &Session) -> Result<()> {
        self.execute(
            INSERT_SESSION,
            &[
                session.id.as_uuid(),
                &millis(session.created_at),
                &millis(session.last_active),
                &session.system_prompt,
                &session.metadata,
                &session.owner,
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        self.query_opt(GET_SESSION, &[id.as_uuid()])
            .await?
            .map(|row| session_from(id, &row, 0))
            .transpose()
    }

    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        self.purge(cutoff).await
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        // Messages and feedback go with it (ON DELETE CASCADE).
        Ok(self.execute(DELETE_SESSION, &[id.as_uuid()]).await? > 0)
    }

    async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<&serde_json::Value>,
    ) -> Result<bool> {
        Ok(self
            .execute(SET_METADATA, &[id.as_uuid(), &metadata])
            .await?
            > 0)
    }

    async fn list_sessions(
        &self,
        owner: Option<&str>,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let (at, after_id) = match after {
            Some(c) => (Some(from_millis(c.last_active_ms)), Some(*c.id.as_uuid())),
            None => (None, None),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(LIST_SESSIONS, &[&owner, &at, &after_id, &limit])
            .await?;
        rows.iter()
            .map(|row| session_from(SessionId::from(row.try_get::<_, uuid::Uuid>(0)?), row, 1))
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        let bound = self.db.connect_timeout.min(PING_BOUND);
        match tokio::time::timeout(bound, self.query(PING, &[])).await {
            Ok(answer) => answer.map(|_| ()),
            Err(_) => Err(Error::storage_unavailable(
                "PostgreSQL did not answer the readiness probe in time",
            )),
        }
    }
}
