//! `MemoryStore`: everything in one process's memory, behind one mutex.
//! For tests, embedding, and `storage.backend = "memory"`. Nothing survives
//! the process.
//!
//! A `std::sync::Mutex` is right here: no lock is held across an `.await`,
//! and every critical section is a few map operations.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{FeedbackStore, MessageCursor, MessagePage, MessageStore, SessionStore, Turn};
use crate::error::{Error, Result};
use crate::llm::Usage;
use crate::types::{Feedback, Message, PurgeReport, Role, Session, SessionId};

#[derive(Debug)]
struct Entry {
    session: Session,
    messages: Vec<Message>,
    feedback: Vec<Feedback>,
    usage: Usage,
}

/// An in-memory storage backend.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written
        // (each critical section mutates one entry with infallible pushes),
        // so a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn insert_session(&self, session: &Session) -> Result<()> {
        self.lock().insert(
            session.id,
            Entry {
                session: session.clone(),
                messages: Vec::new(),
                feedback: Vec::new(),
                usage: Usage::default(),
            },
        );
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
        Ok(self.lock().get(&id).map(|e| e.session.clone()))
    }

    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        self.lock().retain(|_, e| {
            let keep = e.session.last_active >= cutoff;
            if !keep {
                report.sessions += 1;
                report.messages += e.messages.len() as u64;
                report.feedback += e.feedback.len() as u64;
            }
            keep
        });
        Ok(report)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>> {
        let map = self.lock();
        let Some(e) = map.get(&id) else {
            return Ok(Vec::new());
        };
        let start = e.messages.len().saturating_sub(limit);
        Ok(e.messages[start..].to_vec())
    }

    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()> {
        let mut map = self.lock();
        let e = map.get_mut(&id).ok_or_else(Error::session_not_found)?;
        e.messages.reserve(2);
        e.messages.push(Message {
            role: Role::User,
            content: turn.user.to_owned(),
            created_at: turn.user_at,
        });
        e.messages.push(Message {
            role: Role::Assistant,
            content: turn.reply.to_owned(),
            created_at: turn.reply_at,
        });
        e.session.last_active = turn.reply_at;
        if let Some(usage) = turn.usage {
            e.usage.add(usage);
        }
        Ok(())
    }

    async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<Option<MessagePage>> {
        let map = self.lock();
        Ok(map.get(&id).map(|e| {
            let start = after.map_or(0, |c| {
                usize::try_from(c.position() + 1).unwrap_or(usize::MAX)
            });
            let start = start.min(e.messages.len());
            let end = start.saturating_add(limit).min(e.messages.len());
            MessagePage {
                messages: e.messages[start..end].to_vec(),
                next: (end < e.messages.len() && end > start)
                    .then(|| MessageCursor::after((end - 1) as i64)),
            }
        }))
    }

    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        Ok(self.lock().get(&id).map_or(Usage::default(), |e| e.usage))
    }

    async fn load_turn_context(
        &self,
        id: SessionId,
        limit: usize,
    ) -> Result<Option<(Session, Vec<Message>)>> {
        let map = self.lock();
        Ok(map.get(&id).map(|e| {
            let start = e.messages.len().saturating_sub(limit);
            (e.session.clone(), e.messages[start..].to_vec())
        }))
    }
}

#[async_trait]
impl FeedbackStore for MemoryStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        let mut map = self.lock();
        let e = map
            .get_mut(&feedback.session_id)
            .ok_or_else(Error::session_not_found)?;
        e.feedback.push(feedback.clone());
        Ok(())
    }

    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        Ok(self
            .lock()
            .get(&id)
            .map(|e| e.feedback.clone())
            .unwrap_or_default())
    }
}
