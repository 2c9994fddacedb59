//! Conversations (OpenAI's Conversations API) on sessions: a conversation
//! is a session, its items are the session's messages, each named by its
//! stable position, so the same conversation is seen through the seed
//! API, `/v1` with `X-Session-Id`, and responses that join it. Items
//! added without a reply go through the turn path (the session's order,
//! its quota, every replica); a deleted item leaves the others where they
//! were.

use crate::error::{Error, Result};
use crate::input::TurnInput;
use crate::llm::ChatOptions;
use crate::message::Message;
use crate::scoped::Scoped;
use crate::session::{SessionInfo, MAX_METADATA_BYTES};
use crate::storage::{MessageCursor, MessagePage};
use crate::types::{NewSession, SessionId};

impl Scoped<'_> {
    /// A new conversation (a session owned by the caller, within the
    /// sessions-per-hour quota) holding `items`, if any.
    ///
    /// # Errors
    /// As [`Scoped::initialize`] and [`Scoped::add_items`].
    pub async fn create_conversation(
        &self,
        metadata: Option<serde_json::Value>,
        items: Vec<Message>,
    ) -> Result<SessionInfo> {
        let info = self
            .initialize(NewSession {
                metadata,
                ..NewSession::default()
            })
            .await?;
        if !items.is_empty() {
            self.add_items(info.session.id, items).await?;
        }
        Ok(info)
    }

    /// Appends `items` to a session the caller may use, with no model call:
    /// one write in the session's turn order, taking one message token.
    ///
    /// # Errors
    /// As [`Scoped::prepare`](crate::Scoped::prepare).
    pub async fn add_items(&self, id: SessionId, items: Vec<Message>) -> Result<()> {
        self.prepare(id, TurnInput::Items(items), ChatOptions::default())
            .await?
            .store_input()
            .await
    }

    /// Replaces a session's metadata (a JSON object of at most
    /// [`MAX_METADATA_BYTES`], or `None`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for other
    /// metadata; as [`Scoped::get`].
    pub async fn set_metadata(
        &self,
        id: SessionId,
        metadata: Option<serde_json::Value>,
    ) -> Result<()> {
        if let Some(m) = &metadata {
            if !m.is_object() {
                return Err(Error::invalid("metadata", "metadata must be a JSON object"));
            }
            if serde_json::to_vec(m).map_err(Error::internal)?.len() > MAX_METADATA_BYTES {
                return Err(Error::invalid(
                    "metadata",
                    format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
        }
        self.visible(id).await?;
        if self.inner.store.set_metadata(id, metadata.as_ref()).await? {
            Ok(())
        } else {
            Err(Error::session_not_found())
        }
    }

    /// Every message of a session the caller may use, with its position,
    /// oldest first.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn items(&self, id: SessionId) -> Result<MessagePage> {
        self.visible(id).await?;
        self.inner
            .store
            .messages_page(id, None, usize::MAX)
            .await?
            .ok_or_else(Error::session_not_found)
    }

    /// Deletes the message at `position` of a session the caller may use,
    /// after the session's earlier turns; `false` when there is none there.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn delete_item(&self, id: SessionId, position: MessageCursor) -> Result<bool> {
        self.visible(id).await?;
        let _slot = self.inner.queues.enter(id).await;
        let deleted = self.inner.store.delete_message(id, position).await?;
        // The cached window may hold it: the next turn reads the store.
        self.inner.hot.discard(id);
        self.inner.windows.discard(id);
        Ok(deleted)
    }
}
