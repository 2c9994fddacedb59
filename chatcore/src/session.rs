//! `SessionManager`: create, look up, expire and purge sessions.
//!
//! Expiry is derived, not stored: a session is active while `last_active`
//! plus the idle timeout is in the future. `last_active` moves only when a
//! turn succeeds, and a turn is only started on an active session, so an
//! expired session is never revived.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::hot::HotSessions;
use crate::message::Message;
use crate::storage::Store;
use crate::types::{NewSession, PurgeReport, Session, SessionId};

/// Longest per-session system prompt accepted, in characters.
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 32_000;
/// Largest session metadata accepted, in bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A session as seen at one moment: the stored record and whether it is
/// still active.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// The stored session.
    pub session: Session,
    /// Whether the session can still chat.
    pub is_active: bool,
}

/// Creates, looks up and purges sessions.
#[derive(Debug, Clone)]
pub(crate) struct SessionManager {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hot: Arc<HotSessions>,
    idle_timeout: Duration,
    retention: Duration,
}

impl SessionManager {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hot: Arc<HotSessions>,
        idle_timeout: Duration,
        retention: Duration,
    ) -> Self {
        SessionManager {
            store,
            clock,
            hot,
            idle_timeout,
            retention,
        }
    }

    /// Creates a session for `owner` (none for an anonymous caller).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// prompt is too long or the metadata is not a JSON object or too large;
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when it cannot be stored.
    pub(crate) async fn initialize_owned(
        &self,
        options: NewSession,
        owner: Option<String>,
    ) -> Result<SessionInfo> {
        if let Some(prompt) = &options.system_prompt {
            if prompt.chars().count() > MAX_SYSTEM_PROMPT_CHARS {
                return Err(Error::invalid(
                    "system_prompt",
                    format!("system_prompt must be at most {MAX_SYSTEM_PROMPT_CHARS} characters"),
                ));
            }
        }
        if let Some(metadata) = &options.metadata {
            if !metadata.is_object() {
                return Err(Error::invalid("metadata", "metadata must be a JSON object"));
            }
            let size = serde_json::to_vec(metadata).map_err(Error::internal)?.len();
            if size > MAX_METADATA_BYTES {
                return Err(Error::invalid(
                    "metadata",
                    format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
        }
        let now = self.clock.now();
        let session = Session {
            id: SessionId::new_v4(),
            created_at: now,
            last_active: now,
            system_prompt: options.system_prompt,
            metadata: options.metadata,
            owner,
            target: None,
        };
        self.store.insert_session(&session).await?;
        if self.hot.enabled() {
            // A turn never needs the metadata: keep it out of memory.
            let hot = Session {
                metadata: None,
                ..session.clone()
            };
            self.hot.insert(hot, Vec::new());
        }
        Ok(SessionInfo {
            is_active: true,
            session,
        })
    }

    /// The tokens a session's stored turns cost, summed.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub(crate) async fn usage(&self, id: SessionId) -> Result<crate::Usage> {
        self.store.session_usage(id).await
    }

    /// Up to `limit` of a session's messages after `after` (from the
    /// oldest when `None`), oldest first, with where to continue.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound) when
    /// there is no such session; [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub(crate) async fn messages_page(
        &self,
        id: SessionId,
        after: Option<crate::MessageCursor>,
        limit: usize,
    ) -> Result<crate::MessagePage> {
        self.store
            .messages_page(id, after, limit)
            .await?
            .ok_or_else(Error::session_not_found)
    }

    /// A session's whole history, oldest first.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound) when
    /// there is no such session; [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub(crate) async fn messages(&self, id: SessionId) -> Result<Vec<Message>> {
        match self.store.load_turn_context(id, usize::MAX).await? {
            Some((_, messages)) => Ok(messages),
            None => Err(Error::session_not_found()),
        }
    }

    /// Deletes every session idle for longer than the retention period,
    /// with its messages and feedback (see
    /// [`SessionStore::purge_inactive_before`](crate::SessionStore::purge_inactive_before)).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage); what was deleted
    /// before the failure stays deleted, and the next sweep finishes.
    pub(crate) async fn purge(&self) -> Result<PurgeReport> {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = self
            .clock
            .now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let report = self.store.purge_inactive_before(cutoff).await?;
        self.hot.forget_idle_before(cutoff);
        Ok(report)
    }

    /// Whether `session` is active now.
    pub(crate) fn is_active(&self, session: &Session) -> bool {
        self.is_active_since(session.last_active)
    }

    /// Whether a session last active at `last_active` is active now.
    pub(crate) fn is_active_since(&self, last_active: chrono::DateTime<chrono::Utc>) -> bool {
        crate::types::active_at(last_active, self.clock.now(), self.idle_timeout)
    }

    pub(crate) fn info(&self, session: Session) -> SessionInfo {
        SessionInfo {
            is_active: self.is_active(&session),
            session,
        }
    }
}
