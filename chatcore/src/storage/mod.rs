//! Storage backends: five small traits (sessions, messages, responses,
//! feedback, keys) that a backend implements, the claim protocol a store shared by
//! several gateways adds ([`TurnClaims`]), and the three backends chatcore
//! ships (memory, SQLite, PostgreSQL).
//!
//! Every operation the gateway needs is a required method, so a backend
//! that lacks one does not compile:
//!
//! ```compile_fail
//! use async_trait::async_trait;
//! use chatcore::{PurgeReport, Result, Session, SessionId, SessionStore};
//! use chrono::{DateTime, Utc};
//!
//! #[derive(Debug)]
//! struct Forgetful;
//!
//! // No `delete_session` nor `list_sessions`: refused at compile time,
//! // never a 500 at run time.
//! #[async_trait]
//! impl SessionStore for Forgetful {
//!     async fn insert_session(&self, _: &Session) -> Result<()> { Ok(()) }
//!     async fn get_session(&self, _: SessionId) -> Result<Option<Session>> { Ok(None) }
//!     async fn purge_inactive_before(&self, _: DateTime<Utc>) -> Result<PurgeReport> {
//!         Ok(PurgeReport::default())
//!     }
//! }
//! ```
//!
//! Provided methods are built from the required ones
//! ([`MessageStore::load_turn_context`] from a session lookup and a history
//! read, [`MessageStore::messages_page`] from the history); a backend
//! overrides them when it can do better (one round trip instead of two).
//! Lookups return `Option`; a turn's messages are appended in one atomic
//! call.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::message::{Message, MessageRef, Role};
use crate::types::{Feedback, PurgeReport, Session, SessionId, Usage};

mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
mod responses;
mod sql_log;
pub mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
pub use responses::{
    new_response_id, response_session, ResponseRecord, ResponseStore, StoredResponse,
};
pub(crate) use sql_log::{log_sql, log_transaction};
pub use sqlite::{SqliteOptions, SqliteStats, SqliteStore};

/// Stores sessions.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Stores a new session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn insert_session(&self, session: &Session) -> Result<()>;

    /// Looks a session up; `None` when there is no such session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>>;

    /// Deletes every session whose `last_active` is before `cutoff`, with
    /// its messages and feedback. Each session goes with all of its rows at
    /// once; a backend may delete sessions in batches, each its own
    /// transaction, so that turns keep committing during a large purge.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails; the batches before
    /// the failure stay deleted, and the next sweep finishes the job.
    async fn purge_inactive_before(&self, cutoff: DateTime<Utc>) -> Result<PurgeReport>;

    /// Deletes a session with its messages and feedback, all at once;
    /// `false` when there was no such session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails (nothing is deleted).
    async fn delete_session(&self, id: SessionId) -> Result<bool>;

    /// Replaces a session's application metadata (`None` clears it);
    /// `false` when there is no such session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<&serde_json::Value>,
    ) -> Result<bool>;

    /// Up to `limit` sessions, most recently active first, after `after`;
    /// only those owned by `owner` when it is given.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn list_sessions(
        &self,
        owner: Option<&str>,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<Session>>;

    /// What kind of store this is, for readiness reports (`"memory"`,
    /// `"sqlite"`, `"postgres"`).
    fn backend(&self) -> &'static str {
        "custom"
    }

    /// Checks that the backend is reachable (for readiness probes).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when it is not.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Where a listing of sessions (most recently active first) stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    /// The last listed session's `last_active`, in unix milliseconds.
    pub last_active_ms: i64,
    /// The last listed session.
    pub id: SessionId,
}

impl SessionCursor {
    /// The cursor after `session`.
    pub fn after(session: &Session) -> Self {
        SessionCursor {
            last_active_ms: session.last_active.timestamp_millis(),
            id: session.id,
        }
    }

    /// Whether `session` comes after this cursor in the listing order
    /// (`last_active` descending, then id descending).
    pub fn precedes(&self, session: &Session) -> bool {
        let t = session.last_active.timestamp_millis();
        t < self.last_active_ms || (t == self.last_active_ms && session.id < self.id)
    }

    /// Reads a cursor a client sent back; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let (t, id) = s.split_once('.')?;
        Some(SessionCursor {
            last_active_ms: t.parse().ok()?,
            id: SessionId::parse(id).ok()?,
        })
    }
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.last_active_ms, self.id)
    }
}

/// Which feedback to list for review.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedbackFilter {
    /// Received at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Received before this time.
    pub until: Option<DateTime<Utc>>,
    /// About this session.
    pub session_id: Option<SessionId>,
    /// With this rating.
    pub rating: Option<u8>,
}

impl FeedbackFilter {
    /// Whether `f` passes the filter.
    pub fn admits(&self, f: &Feedback) -> bool {
        self.since.is_none_or(|t| f.created_at >= t)
            && self.until.is_none_or(|t| f.created_at < t)
            && self.session_id.is_none_or(|id| f.session_id == id)
            && self
                .rating
                .is_none_or(|r| f.rating.map(|x| x.get()) == Some(r))
    }
}

/// A stored API key, without its secret (only a hash of it is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's public id (part of the key itself).
    pub id: String,
    /// What the operator called it.
    pub name: String,
    /// Whether it grants the admin scope.
    pub admin: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The messages one successful turn stores, in order: its new messages
/// (a user message, or tool results and perhaps a user message) and the
/// assistant's reply last.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// The messages, oldest first; the last one's time is the session's
    /// new `last_active`. Never empty, and fewer than
    /// [`MAX_TURN_MESSAGES`].
    pub messages: &'a [MessageRef<'a>],
    /// The tokens the turn cost, when the model reported them.
    pub usage: Option<Usage>,
    /// The session's new target (see [`Session::target`]), when it changed:
    /// a session's first turn through a router, or a failover. `None`
    /// leaves it as it was.
    pub target: Option<&'a str>,
    /// A response of the Responses API to store with the turn, in the same
    /// atomic step ([`ResponseStore`]).
    pub response: Option<ResponseRecord<'a>>,
}

/// The most messages one turn stores (its new messages and the reply):
/// each backend's message positions leave room for this many per turn.
pub const MAX_TURN_MESSAGES: usize = 257;

impl<'a> Turn<'a> {
    /// When the turn's last message (the reply) was made: the session's
    /// new `last_active`.
    pub fn reply_at(&self) -> DateTime<Utc> {
        self.messages
            .last()
            .map_or(DateTime::<Utc>::UNIX_EPOCH, |m| m.created_at)
    }

    /// The common case that backends may store compactly: one user text
    /// and one assistant text.
    pub fn text_pair(&self) -> Option<(MessageRef<'a>, MessageRef<'a>)> {
        match self.messages {
            [u, r]
                if u.role == Role::User
                    && r.role == Role::Assistant
                    && u.wire.is_none()
                    && r.wire.is_none() =>
            {
                Some((*u, *r))
            }
            _ => None,
        }
    }
}

/// Where a page of a session's messages ends, to ask for the next one.
///
/// Opaque to clients: its text form (`Display`/[`MessageCursor::parse`])
/// is what an API hands out. Inside, it is the position of the last
/// message returned, in an order each backend keeps its own way (a count
/// of the session's messages, or a turn's key and the message's place in
/// the turn).
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
    /// Each message's position (what its [`MessageCursor`] holds): stable
    /// for as long as the message is stored, so it can name the message.
    pub positions: Vec<i64>,
    /// Where to continue; `None` when this page reaches the newest message.
    pub next: Option<MessageCursor>,
}

impl MessagePage {
    /// The page of `rows` (messages with their positions, read one more
    /// than `limit`: the extra one says whether another page follows).
    pub fn from_overfetch(mut rows: Vec<(i64, Message)>, limit: usize) -> Self {
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|(position, _)| MessageCursor::after(*position))
        } else {
            None
        };
        let (positions, messages) = rows.into_iter().unzip();
        MessagePage {
            messages,
            positions,
            next,
        }
    }

    /// The page of `all` (a whole history, oldest first) after `after`, at
    /// most `limit` messages, where a message's position is its index; only
    /// the page is copied.
    pub fn slice(all: &[Message], after: Option<MessageCursor>, limit: usize) -> Self {
        // Saturating: a cursor at the largest position is past every page.
        let start = after.map_or(0, |c| {
            usize::try_from(c.0.saturating_add(1)).unwrap_or(usize::MAX)
        });
        let end = start.saturating_add(limit).min(all.len());
        let start = start.min(end);
        MessagePage {
            messages: all[start..end].to_vec(),
            positions: (start as i64..end as i64).collect(),
            next: (end < all.len() && end > start).then(|| MessageCursor((end - 1) as i64)),
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
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn recent_messages(&self, id: SessionId, limit: usize) -> Result<Vec<Message>>;

    /// Appends a turn's messages and sets the session's `last_active` to
    /// its reply's time, atomically: all of it or none.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`] when
    /// the session no longer exists (nothing is stored);
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn append_turn(&self, id: SessionId, turn: Turn<'_>) -> Result<()>;

    /// Deletes the message at `position` (a conversation's item); the
    /// others keep their positions. `false` when there is none there.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn delete_message(&self, id: SessionId, position: MessageCursor) -> Result<bool>;

    /// The tokens a session's stored turns cost, summed (turns whose usage
    /// was not reported count zero).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn session_usage(&self, id: SessionId) -> Result<Usage>;

    /// A session and the tokens its turns cost, together (`None` when there
    /// is no such session). The provided version makes two calls; backends
    /// may read both at once.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn session_with_usage(&self, id: SessionId) -> Result<Option<(Session, Usage)>> {
        let Some(session) = self.get_session(id).await? else {
            return Ok(None);
        };
        Ok(Some((session, self.session_usage(id).await?)))
    }

    /// Up to `limit` of a session's messages after `after` (from the
    /// oldest when `None`), oldest first; `None` when there is no such
    /// session. The provided version reads the whole history and slices
    /// it, with each message's index as its position; backends override it
    /// to read one page.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<Option<MessagePage>> {
        Ok(self
            .load_turn_context(id, usize::MAX)
            .await?
            .map(|(_, all)| MessagePage::slice(&all, after, limit)))
    }

    /// The session and its latest `limit` messages, in one call. The
    /// provided version makes two calls; backends may do it in one.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
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

    /// The claim protocol, for a store that other processes write at the
    /// same time (a database server shared by several gateways). A facade
    /// on such a store claims each session for the length of a turn, and
    /// trusts no cached session without it: another process may have moved
    /// the session on. It keeps each session's history as of a
    /// [`HistoryVersion`], which the claim confirms or replaces. An
    /// in-process or single-file store has one writer and no claims: the
    /// provided version.
    fn claims(&self) -> Option<&dyn TurnClaims> {
        None
    }
}

/// How turns on several gateways sharing one store take turns on a
/// session: a turn claims the session (a row update with a lifetime, not a
/// held lock), renews the claim while it runs, and stores its messages only
/// while it still holds it. Reached through [`MessageStore::claims`].
#[async_trait]
pub trait TurnClaims: Send + Sync {
    /// Claims session `id` for one turn, for `ttl` unless renewed, and
    /// loads the session with its latest `limit` messages, all as one step,
    /// unless its history is still at version `known` ([`Claim::Current`]:
    /// the caller has those messages already, and none are read).
    /// [`Claim::Busy`] with the session while another turn (in any
    /// process) holds an unexpired claim on it. A claim whose holder died
    /// lapses after its `ttl`, so a crashed gateway holds a session up for
    /// at most that long.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] or [`ErrorKind::StorageUnavailable`] when the
    /// backend fails.
    async fn claim_turn_since(
        &self,
        id: SessionId,
        token: TurnToken,
        ttl: std::time::Duration,
        limit: usize,
        known: Option<HistoryVersion>,
    ) -> Result<Claim>;

    /// [`TurnClaims::claim_turn_since`] for a caller that knows no version
    /// of the history: a held claim always comes with it.
    ///
    /// # Errors
    /// As [`TurnClaims::claim_turn_since`].
    async fn claim_turn(
        &self,
        id: SessionId,
        token: TurnToken,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<Claim> {
        self.claim_turn_since(id, token, ttl, limit, None).await
    }

    /// Extends `token`'s claim on `id` to `ttl` from now; `false` when the
    /// claim is no longer held (it lapsed and another turn took it).
    ///
    /// # Errors
    /// As [`TurnClaims::claim_turn`].
    async fn renew_claim(
        &self,
        id: SessionId,
        token: TurnToken,
        ttl: std::time::Duration,
    ) -> Result<bool>;

    /// Gives up `token`'s claim on `id` (a turn that failed or was
    /// cancelled); nothing happens when it is not held.
    ///
    /// # Errors
    /// As [`TurnClaims::claim_turn`].
    async fn release_claim(&self, id: SessionId, token: TurnToken) -> Result<()>;

    /// As [`MessageStore::append_turn`], only while `token` holds the claim
    /// on `id`, releasing it in the same transaction. A claim that lapsed
    /// stores nothing: another turn may have been stored since this one
    /// read the history. A history at version `v` when claimed is then at
    /// `v.then(token, turn.messages.len())` ([`HistoryVersion::then`]).
    ///
    /// # Errors
    /// [`ErrorKind::StorageUnavailable`] when the claim is no longer held;
    /// otherwise as [`MessageStore::append_turn`].
    async fn append_claimed_turn(
        &self,
        id: SessionId,
        token: TurnToken,
        turn: Turn<'_>,
    ) -> Result<()>;
}

/// Identifies one turn's claim on a session in a shared store (see
/// [`TurnClaims::claim_turn`]): random, so no two turns share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TurnToken(pub uuid::Uuid);

impl TurnToken {
    /// A fresh random token.
    pub fn new() -> Self {
        TurnToken(uuid::Uuid::new_v4())
    }
}

impl Default for TurnToken {
    fn default() -> Self {
        TurnToken::new()
    }
}

/// Where a session's stored history stands, in a store shared by several
/// gateways: the messages ever appended to it, and the id of the last
/// change to its messages, which every statement that changes them sets
/// anew (a claimed append, to its claim's token). Two different histories
/// never share a version, even after the database is restored to an
/// earlier time and moves on differently, so a gateway holding the history
/// at a version need not read it again while the version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HistoryVersion {
    /// Messages appended to the session ever (its next message's position).
    pub appended: i64,
    /// The last change to the session's messages.
    pub head: uuid::Uuid,
}

impl HistoryVersion {
    /// The version once `token`'s claimed append
    /// ([`TurnClaims::append_claimed_turn`]) of `messages` messages is
    /// stored onto this one.
    pub fn then(self, token: TurnToken, messages: usize) -> Self {
        HistoryVersion {
            appended: self.appended + messages as i64,
            head: token.0,
        }
    }
}

/// The outcome of [`TurnClaims::claim_turn_since`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The claim is held: the session and its latest messages, oldest
    /// first, as stored when it was taken, and the history's version then.
    Held(Session, Vec<Message>, HistoryVersion),
    /// The claim is held, and the session's history is still at the
    /// version the claim named: the session alone.
    Current(Session),
    /// Another turn holds the session (as stored now); try again shortly.
    Busy(Session),
    /// There is no such session.
    Missing,
}

/// Stores feedback.
#[async_trait]
pub trait FeedbackStore: Send + Sync + std::fmt::Debug {
    /// Stores a piece of feedback about an existing session.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`] when
    /// the session does not exist (nothing is stored);
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn insert_feedback(&self, feedback: &Feedback) -> Result<()>;

    /// All feedback about a session, oldest first.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn list_feedback(&self, id: SessionId) -> Result<Vec<Feedback>>;

    /// Up to `limit` pieces of feedback passing `filter`, oldest first,
    /// after position `after`; each with its position (to continue from).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>>;
}

/// Stores API keys: only a SHA-256 hash of each secret is kept. Backends
/// shared by several gateways share their keys, so a key revoked through
/// one is refused by all.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Stores a new key with the hash of its secret.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn insert_key(&self, key: &ApiKey, hash: &[u8; 32]) -> Result<()>;

    /// A key and the hash of its secret, by id.
    ///
    /// # Errors
    /// As [`KeyStore::insert_key`].
    async fn get_key(&self, id: &str) -> Result<Option<(ApiKey, [u8; 32])>>;

    /// Every key, oldest first.
    ///
    /// # Errors
    /// As [`KeyStore::insert_key`].
    async fn list_keys(&self) -> Result<Vec<ApiKey>>;

    /// Marks a key revoked at `at`; `false` when there is no such key (or
    /// it was already revoked).
    ///
    /// # Errors
    /// As [`KeyStore::insert_key`].
    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool>;
}

/// A complete storage backend: sessions, messages, responses, feedback and
/// API keys. Implemented automatically for any type that implements the
/// five traits.
pub trait Store: SessionStore + MessageStore + ResponseStore + FeedbackStore + KeyStore {}

impl<T: SessionStore + MessageStore + ResponseStore + FeedbackStore + KeyStore> Store for T {}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_after_the_largest_cursor_is_empty() {
        use crate::message::{Message, Role};
        let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        let all = vec![
            Message::text(Role::User, "a", at),
            Message::text(Role::Assistant, "b", at),
        ];
        for after in [i64::MAX, i64::MAX - 1, 2] {
            let page = super::MessagePage::slice(&all, Some(super::MessageCursor(after)), 10);
            assert!(page.messages.is_empty() && page.next.is_none(), "{after}");
        }
        let page = super::MessagePage::slice(&all, Some(super::MessageCursor(0)), 10);
        assert_eq!(page.messages.len(), 1);
    }
}
