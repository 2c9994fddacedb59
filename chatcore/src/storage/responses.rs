//! Responses stored with their turns: what OpenAI's Responses API keeps of
//! a response beyond its turn's messages (a document the caller makes),
//! written in the same atomic step as the turn that produced it, so a
//! response the client was given can be continued at once, on any gateway
//! sharing the store; it is read back with its turn's messages and tokens.
//!
//! A chain of responses is a session: continuing from the response whose
//! turn is its session's newest turn ([`ResponseStore::head_response`])
//! appends to that session; continuing from an older one forks the session
//! through that response's turn ([`ResponseStore::fork_session`]), leaving
//! the original unchanged. A response goes with its session (deleted,
//! purged at the end of retention).

use async_trait::async_trait;

use super::{MessageCursor, MessageStore};
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::message::Message;
use crate::types::{Session, SessionId, Usage};

/// A new response id for a response stored in session `session`:
/// `resp_`, the session's id and a random part (32 and 16 hex digits). A
/// store can find a response's session from its id alone, with no index
/// of its own for responses ([`response_session`]).
pub fn new_response_id(session: SessionId) -> String {
    let mut id = String::with_capacity(53);
    id.push_str("resp_");
    id.push_str(
        session
            .as_uuid()
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    let nonce = nonce();
    // Sixteen hex digits, most significant first (what `{:016x}` writes).
    id.extend(
        (0..16)
            .rev()
            .map(|i| char::from_digit(((nonce >> (i * 4)) & 0xf) as u32, 16).unwrap_or('0')),
    );
    id
}

/// A number no other call in this process returns, from a random start:
/// the session's id already makes a response id unguessable, so the
/// random part only has to differ between a session's responses, made by
/// any process (a random start each). No system call per response.
fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u64);
    // An odd multiplier maps distinct counts to distinct numbers.
    start.wrapping_add(
        COUNT
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// The session a response id made by [`new_response_id`] names; `None`
/// for any other text.
pub fn response_session(id: &str) -> Option<SessionId> {
    let hex = id.strip_prefix("resp_")?;
    if hex.len() != 48 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    uuid::Uuid::try_parse(&hex[..32]).ok().map(SessionId::from)
}

/// A response to store with a turn ([`Turn::response`](super::Turn::response)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseRecord<'a> {
    /// Its id, made by [`new_response_id`] for the turn's session.
    pub id: &'a str,
    /// What the API keeps of it, stored and handed back verbatim.
    pub document: &'a str,
}

/// A stored response ([`ResponseStore::get_response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Its id.
    pub id: String,
    /// The session its turn belongs to.
    pub session_id: SessionId,
    /// The position of its turn's last message (the reply) in that session:
    /// a fork from this response copies the messages through here.
    pub through: MessageCursor,
    /// What the API keeps of it, as stored.
    pub document: String,
    /// Its turn's messages that are still stored, oldest first: what the
    /// turn took in, then its reply (at `through`). A message deleted since
    /// (a conversation's item) is not among them. With the document, they
    /// are the whole response: the document need not repeat them.
    pub messages: Vec<Message>,
    /// Each message's position, as in [`MessagePage::positions`](super::MessagePage::positions).
    pub positions: Vec<i64>,
    /// The tokens its turn spent, as the upstream reported them (`None`
    /// when it did not).
    pub usage: Option<Usage>,
}

/// Stores responses with their turns (see the module doc).
#[async_trait]
pub trait ResponseStore: MessageStore {
    /// A stored response by id, with its turn's messages.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn get_response(&self, id: &str) -> Result<Option<StoredResponse>>;

    /// The id of the response stored with session `id`'s newest turn;
    /// `None` when the session has no turn, or its newest turn has no
    /// response (a `/chat/` turn, say), or there is no such session.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn head_response(&self, id: SessionId) -> Result<Option<String>>;

    /// Forgets a response; its turn stays in its session's history.
    /// `false` when there was no such response.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn delete_response(&self, id: &str) -> Result<bool>;

    /// Session `id`'s messages through position `through`, oldest first
    /// (the history a response continues from, when it is not the session's
    /// newest).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the backend fails.
    async fn history_through(&self, id: SessionId, through: MessageCursor) -> Result<Vec<Message>>;

    /// Stores `into` (a new session) with a copy of session `from`'s
    /// messages through position `through`, atomically. The copies carry
    /// no responses: a response belongs to one session.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`] when `from` no longer exists (nothing
    /// is stored); [`ErrorKind::Storage`] when the backend fails.
    async fn fork_session(
        &self,
        from: SessionId,
        through: MessageCursor,
        into: &Session,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_id_names_its_session_and_no_other() {
        let session = SessionId::new_v4();
        let (a, b) = (new_response_id(session), new_response_id(session));
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 53, "{id}");
            assert!(
                id[5..]
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            assert_eq!(response_session(id), Some(session));
        }
        assert_eq!(&a[5..37], session.as_uuid().simple().to_string());
        assert_eq!(response_session("resp_short"), None);
        assert_eq!(response_session(&a.replace("resp_", "conv_")), None);
    }
}
