//! The state behind OpenAI's Responses API, on sessions: a chain of
//! responses is a session, so it has the session's owner, quotas, expiry
//! and retention on every backend and replica. A response is stored with
//! its turn ([`PreparedTurn::with_response`](crate::PreparedTurn::with_response));
//! continuing from the session's newest response appends to the session,
//! continuing from an older one forks it ([`Scoped::fork_chain`]).
//!
//! A chain's session is not counted against `sessions_per_hour`: each of
//! its responses takes a message token, as every turn does, so the message
//! quotas bound how fast a caller makes them.

use crate::error::{Error, Result};
use crate::message::Message;
use crate::scoped::Scoped;
use crate::session::SessionInfo;
use crate::storage::StoredResponse;
use crate::types::NewSession;

impl Scoped<'_> {
    /// A stored response, if its session exists and the caller may use it
    /// (another caller's responses do not exist, as far as it knows).
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound)
    /// when there is no such response or it is not the caller's;
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn response(&self, id: &str) -> Result<StoredResponse> {
        let found = self
            .inner
            .store
            .get_response(id)
            .await?
            .ok_or_else(Error::session_not_found)?;
        self.visible(found.session_id).await?;
        Ok(found)
    }

    /// Whether `r`'s turn is still its session's newest, so that a
    /// continuation may append there. Once false it stays false (a session
    /// only grows), so a continuation can fork at once without touching the
    /// original session; when true, the turn checks again while it holds
    /// the session ([`PreparedTurn::head_response`](crate::PreparedTurn::head_response)).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn is_newest(&self, r: &StoredResponse) -> Result<bool> {
        Ok(self
            .inner
            .store
            .head_response(r.session_id)
            .await?
            .as_deref()
            == Some(r.id.as_str()))
    }

    /// Forgets a response the caller may use; its turn stays in its
    /// session's history.
    ///
    /// # Errors
    /// As [`Scoped::response`].
    pub async fn delete_response(&self, id: &str) -> Result<()> {
        self.response(id).await?;
        if self.inner.store.delete_response(id).await? {
            Ok(())
        } else {
            Err(Error::session_not_found())
        }
    }

    /// A new session for a chain of responses, owned by the caller (see
    /// the module doc for its quota).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn new_chain(&self) -> Result<SessionInfo> {
        self.inner
            .sessions
            .initialize_owned(
                NewSession::default(),
                self.caller.owner().map(str::to_owned),
            )
            .await
    }

    /// A new session, owned by the caller, holding `from`'s session's
    /// messages through `from`'s turn: a chain continued from a response
    /// that is no longer its session's newest, leaving the original as it
    /// was. The source session must still be active.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound)
    /// when the source is gone or not the caller's;
    /// [`ErrorKind::SessionExpired`](crate::ErrorKind::SessionExpired);
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub async fn fork_chain(&self, from: &StoredResponse) -> Result<SessionInfo> {
        let source = self.visible(from.session_id).await?;
        if !self.inner.sessions.info(source.clone()).is_active {
            return Err(Error::session_expired());
        }
        let now = self.inner.clock.now();
        let session = crate::types::Session {
            id: crate::types::SessionId::new_v4(),
            created_at: now,
            last_active: now,
            system_prompt: source.system_prompt,
            metadata: None,
            owner: self.caller.owner().map(str::to_owned),
            target: source.target,
        };
        self.inner
            .store
            .fork_session(from.session_id, from.through, &session)
            .await?;
        Ok(SessionInfo {
            is_active: true,
            session,
        })
    }

    /// The history `from` continues from: its session's messages through
    /// its turn (for a response that is not stored, which reads the chain
    /// but adds nothing to it).
    ///
    /// # Errors
    /// As [`Scoped::response`]; [`ErrorKind::SessionExpired`](crate::ErrorKind::SessionExpired).
    pub async fn history_through(&self, from: &StoredResponse) -> Result<Vec<Message>> {
        let source = self.visible(from.session_id).await?;
        if !self.inner.sessions.info(source).is_active {
            return Err(Error::session_expired());
        }
        self.inner
            .store
            .history_through(from.session_id, from.through)
            .await
    }
}
