//! `MemoryStore`: everything in one process's memory, behind one mutex.
//! For tests, embedding, and `storage.backend = "memory"`. Nothing survives
//! the process.
//!
//! A `std::sync::Mutex` is right here: no lock is held across an `.await`,
//! and every critical section is a few map operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ApiKey, FeedbackFilter, FeedbackStore, KeyStore, MessageCursor, MessagePage, MessageStore,
    ResponseStore, SessionCursor, SessionStore, StoredResponse, Turn,
};
use crate::error::{Error, Result};
use crate::message::{Message, MessageRef};
use crate::types::{Feedback, PurgeReport, Session, SessionId, Usage};

#[derive(Debug)]
struct Entry {
    session: Session,
    messages: Vec<Message>,
    /// Each message's position: a count of the messages ever stored, kept
    /// when another is deleted.
    positions: Vec<i64>,
    /// The next message's position (never reused, as in the other stores).
    next: i64,
    /// With its position among all feedback, for review paging.
    feedback: Vec<(i64, Feedback)>,
    usage: Usage,
    /// Its responses.
    responses: Vec<Kept>,
}

/// A response as kept: its id, the positions of its turn's first message
/// and of its reply, its document, its turn's tokens.
#[derive(Debug)]
struct Kept {
    id: String,
    first: i64,
    through: i64,
    document: String,
    usage: Option<Usage>,
}

/// An in-memory storage backend.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<SessionId, Entry>>,
    feedback_seq: AtomicI64,
    keys: Mutex<Vec<(ApiKey, [u8; 32])>>,
    /// Which session holds each response. Locked after `entries`, never
    /// before; an id whose session is gone is simply not found there.
    response_index: Mutex<HashMap<String, SessionId>>,
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

    fn index(&self) -> MutexGuard<'_, HashMap<String, SessionId>> {
        self.response_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Drops a removed session's responses from the index.
    fn unindex(&self, e: &Entry) {
        if !e.responses.is_empty() {
            let mut index = self.index();
            for Kept { id, .. } in &e.responses {
                index.remove(id);
            }
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn insert_session(&self, session: &Session) -> Result<()> {
        self.lock().insert(
            session.id,
            Entry {
                session: session.clone(),
                messages: Vec::new(),
                positions: Vec::new(),
                next: 0,
                feedback: Vec::new(),
                usage: Usage::default(),
                responses: Vec::new(),
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
                self.unindex(e);
            }
            keep
        });
        Ok(report)
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let removed = self.lock().remove(&id);
        if let Some(e) = &removed {
            self.unindex(e);
        }
        Ok(removed.is_some())
    }

    async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<&serde_json::Value>,
    ) -> Result<bool> {
        Ok(match self.lock().get_mut(&id) {
            Some(e) => {
                e.session.metadata = metadata.cloned();
                true
            }
            None => false,
        })
    }

    async fn list_sessions(
        &self,
        owner: Option<&str>,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let mut out: Vec<Session> = self
            .lock()
            .values()
            .map(|e| &e.session)
            .filter(|s| owner.is_none_or(|o| s.owner.as_deref() == Some(o)))
            .filter(|s| after.is_none_or(|c| c.precedes(s)))
            .cloned()
            .collect();
        out.sort_unstable_by_key(|s| std::cmp::Reverse((s.last_active.timestamp_millis(), s.id)));
        out.truncate(limit);
        Ok(out)
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
        let next = e.next;
        e.positions
            .extend((0..turn.messages.len() as i64).map(|i| next + i));
        e.next = next + turn.messages.len() as i64;
        e.messages
            .extend(turn.messages.iter().map(MessageRef::to_message));
        if let Some(r) = turn.response {
            e.responses.push(Kept {
                id: r.id.to_owned(),
                first: next,
                through: e.next - 1,
                document: r.document.to_owned(),
                usage: turn.usage,
            });
            self.index().insert(r.id.to_owned(), id);
        }
        e.session.last_active = turn.reply_at();
        if let Some(target) = turn.target {
            e.session.target = Some(target.to_owned());
        }
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
            let first = after.map_or(0, |c| c.position().saturating_add(1));
            let rows = e
                .positions
                .iter()
                .zip(&e.messages)
                .filter(|(p, _)| **p >= first)
                .take(limit.saturating_add(1))
                .map(|(p, m)| (*p, m.clone()))
                .collect();
            MessagePage::from_overfetch(rows, limit)
        }))
    }

    async fn delete_message(&self, id: SessionId, position: MessageCursor) -> Result<bool> {
        let mut map = self.lock();
        let Some(e) = map.get_mut(&id) else {
            return Ok(false);
        };
        let Some(i) = e.positions.iter().position(|p| *p == position.position()) else {
            return Ok(false);
        };
        e.positions.remove(i);
        e.messages.remove(i);
        Ok(true)
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
impl ResponseStore for MemoryStore {
    async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let map = self.lock();
        let Some(session) = self.index().get(id).copied() else {
            return Ok(None);
        };
        Ok(map.get(&session).and_then(|e| {
            let r = e.responses.iter().find(|r| r.id == id)?;
            // Positions only grow: the turn's messages are one run of them.
            let start = e.positions.partition_point(|p| *p < r.first);
            let end = e.positions.partition_point(|p| *p <= r.through);
            let positions = e.positions[start..end].to_vec();
            let messages = e.messages[start..end].to_vec();
            Some(StoredResponse {
                id: r.id.clone(),
                session_id: session,
                through: MessageCursor::after(r.through),
                document: r.document.clone(),
                messages,
                positions,
                usage: r.usage,
            })
        }))
    }

    async fn head_response(&self, id: SessionId) -> Result<Option<String>> {
        let map = self.lock();
        Ok(map.get(&id).and_then(|e| {
            let last = e.next - 1;
            e.responses
                .last()
                .filter(|r| r.through == last)
                .map(|r| r.id.clone())
        }))
    }

    async fn delete_response(&self, id: &str) -> Result<bool> {
        let mut map = self.lock();
        let Some(session) = self.index().remove(id) else {
            return Ok(false);
        };
        let Some(e) = map.get_mut(&session) else {
            return Ok(false);
        };
        let before = e.responses.len();
        e.responses.retain(|r| r.id != id);
        Ok(e.responses.len() < before)
    }

    async fn history_through(&self, id: SessionId, through: MessageCursor) -> Result<Vec<Message>> {
        let map = self.lock();
        Ok(map.get(&id).map_or_else(Vec::new, |e| {
            e.positions
                .iter()
                .zip(&e.messages)
                .filter(|(p, _)| **p <= through.position())
                .map(|(_, m)| m.clone())
                .collect()
        }))
    }

    async fn fork_session(
        &self,
        from: SessionId,
        through: MessageCursor,
        into: &Session,
    ) -> Result<()> {
        let mut map = self.lock();
        let source = map.get(&from).ok_or_else(Error::session_not_found)?;
        let (positions, messages): (Vec<i64>, Vec<Message>) = source
            .positions
            .iter()
            .zip(&source.messages)
            .filter(|(p, _)| **p <= through.position())
            .map(|(p, m)| (*p, m.clone()))
            .unzip();
        map.insert(
            into.id,
            Entry {
                session: into.clone(),
                messages,
                positions,
                next: through.position().saturating_add(1).max(0),
                feedback: Vec::new(),
                usage: Usage::default(),
                responses: Vec::new(),
            },
        );
        Ok(())
    }
}

#[async_trait]
impl FeedbackStore for MemoryStore {
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()> {
        let mut map = self.lock();
        let e = map
            .get_mut(&feedback.session_id)
            .ok_or_else(Error::session_not_found)?;
        let seq = self.feedback_seq.fetch_add(1, Ordering::Relaxed) + 1;
        e.feedback.push((seq, feedback.clone()));
        Ok(())
    }

    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        Ok(self
            .lock()
            .get(&id)
            .map(|e| e.feedback.iter().map(|(_, f)| f.clone()).collect())
            .unwrap_or_default())
    }

    async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>> {
        let after = after.unwrap_or(0);
        let mut out: Vec<(i64, Feedback)> = self
            .lock()
            .values()
            .flat_map(|e| e.feedback.iter())
            .filter(|(seq, f)| *seq > after && filter.admits(f))
            .cloned()
            .collect();
        out.sort_unstable_by_key(|(seq, _)| *seq);
        out.truncate(limit);
        Ok(out)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key.clone(), *hash));
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| k.id == id)
            .cloned())
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys
            .iter_mut()
            .find(|(k, _)| k.id == id && k.revoked_at.is_none())
        {
            Some((k, _)) => {
                k.revoked_at = Some(at);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
