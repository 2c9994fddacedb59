//! Storage backends: three small traits (sessions, messages, feedback) that
//! a backend implements, and the two backends chatcore ships.
//!
//! A backend implements only what only it can provide; conveniences such as
//! [`MessageStore::load_turn_context`] are provided methods a backend may
//! override when it can do better (one round trip instead of two). Lookups
//! return `Option`; a turn's two messages are appended in one atomic call.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::llm::Usage;
use crate::types::{Feedback, Message, PurgeReport, Session, SessionId};

mod memory;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::{SqliteOptions, SqliteStore};

/// Stores sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Stores a new session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn insert_session(&self, session: &Session) -> Result<()>;

    /// Looks a session up; `None` when there is no such session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>>;

    /// Deletes, in one transaction, every session whose `last_active` is
    /// before `cutoff`, with its messages and feedback.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails;
    /// then nothing was deleted.
    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport>;

    /// Checks that the backend is reachable (for readiness probes).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when it is not.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// The two messages of one successful chat turn.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// The user's message.
    pub user: &'a str,
    /// When the user's message arrived.
    pub user_at: DateTime<Utc>,
    /// The assistant's reply.
    pub reply: &'a str,
    /// When the reply arrived; also the session's new `last_active`.
    pub reply_at: DateTime<Utc>,
    /// The tokens the turn cost, when the model reported them.
    pub usage: Option<Usage>,
}

/// Where a page of a session's messages ends, to ask for the next one.
///
/// Opaque to clients: its text form (`Display`/[`MessageCursor::parse`])
/// is what an API hands out. Inside, it is the position of the last
/// message returned: `2 × turn + 1` after a reply, `2 × turn` after a user
/// message, where `turn` orders a session's turns (a backend's own key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageCursor(i64);

impl MessageCursor {
    /// The cursor after message `position` (see the type's docs).
    pub fn after(position: i64) -> Self {
        MessageCursor(position)
    }

    /// The position of the last message returned.
    pub fn position(self) -> i64 {
        self.0
    }

    /// Reads a cursor a client sent back; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse::<i64>().ok().filter(|n| *n >= 0).map(MessageCursor)
    }
}

impl std::fmt::Display for MessageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One page of a session's messages, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    /// The messages.
    pub messages: Vec<Message>,
    /// Where to continue; `None` when this page reaches the newest message.
    pub next: Option<MessageCursor>,
}

impl MessagePage {
    /// The page of `all` (a whole history, oldest first) after `after`, at
    /// most `limit` messages, where a message's position is its index.
    pub fn slice(mut all: Vec<Message>, after: Option<MessageCursor>, limit: usize) -> Self {
        let start = after.map_or(0, |c| usize::try_from(c.0 + 1).unwrap_or(usize::MAX));
        let end = start.saturating_add(limit).min(all.len());
        let start = start.min(end);
        let next = (end < all.len() && end > start).then(|| MessageCursor((end - 1) as i64));
        all.truncate(end);
        all.drain(..start);
        MessagePage {
            messages: all,
            next,
        }
    }
}

/// Stores the messages of sessions (which live in a [`SessionStore`]).
#[async_trait]
pub trait MessageStore: SessionStore {
    /// The latest `limit` messages of a session, oldest first (all of them
    /// when `limit` is `usize::MAX`). An unknown session has none.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>>;

    /// Appends a turn's user message and reply and sets the session's
    /// `last_active` to `turn.reply_at`, atomically: all of it or none.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound) when
    /// the session no longer exists (nothing is stored);
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()>;

    /// The tokens a session's stored turns cost, summed (turns whose usage
    /// was not reported count zero). A backend that does not keep usage
    /// reports zero, which the provided version does.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn session_usage(&self, id: SessionId) -> Result<Usage> {
        let _ = id;
        Ok(Usage::default())
    }

    /// Up to `limit` of a session's messages after `after` (from the
    /// oldest when `None`), oldest first; `None` when there is no such
    /// session. The provided version reads the whole history and slices
    /// it, with each message's index as its position; backends override it
    /// to read one page.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<Option<MessagePage>> {
        Ok(self
            .load_turn_context(id, usize::MAX)
            .await?
            .map(|(_, all)| MessagePage::slice(all, after, limit)))
    }

    /// The session and its latest `limit` messages, in one call. The
    /// provided version makes two calls; backends may do it in one.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn load_turn_context(
        &self,
        id: SessionId,
        limit: usize,
    ) -> Result<Option<(Session, Vec<Message>)>> {
        let Some(session) = self.get_session(id).await? else {
            return Ok(None);
        };
        let history = self.recent_messages(id, limit).await?;
        Ok(Some((session, history)))
    }
}

/// Stores feedback.
#[async_trait]
pub trait FeedbackStore: Send + Sync + std::fmt::Debug {
    /// Stores a piece of feedback about an existing session.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound) when
    /// the session does not exist (nothing is stored);
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()>;

    /// All feedback about a session, oldest first.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage) when the backend fails.
    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>>;
}

/// A complete storage backend: sessions, messages and feedback. Implemented
/// automatically for any type that implements the three traits.
pub trait Store: SessionStore + MessageStore + FeedbackStore {}

impl<T: SessionStore + MessageStore + FeedbackStore> Store for T {}
