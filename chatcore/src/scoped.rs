//! The facade as one caller sees it ([`ChatCore::as_caller`](crate::ChatCore::as_caller)), the one
//! way to act on sessions: every operation on a session first checks that
//! the caller may use it, and
//! answers "not found" when it may not, so another principal's sessions
//! cannot even be confirmed to exist. Sessions made here belong to the
//! caller; reviewing feedback needs an admin.

use std::borrow::Cow;
use std::sync::Arc;

use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::inner::Inner;
use crate::input::TurnInput;
use crate::llm::{ChatOptions, ChatRequest, Completion, CompletionStream};
use crate::message::Message;
use crate::quota::{take_caller_token, take_feedback_token, take_session_token};
use crate::session::SessionInfo;
use crate::storage::{FeedbackFilter, MessageCursor, MessagePage, SessionCursor};
use crate::turn::{self, ChatReply, PreparedTurn};
use crate::types::{Feedback, NewSession, Session, SessionId, Usage};

/// [`ChatCore`](crate::ChatCore) acting for one [`Caller`].
#[derive(Debug, Clone)]
pub struct Scoped<'a> {
    pub(crate) inner: &'a Arc<Inner>,
    pub(crate) caller: Caller,
    client: Option<String>,
}

impl<'a> Scoped<'a> {
    pub(crate) fn new(inner: &'a Arc<Inner>, caller: Caller) -> Self {
        Scoped {
            inner,
            caller,
            client: None,
        }
    }

    /// The same view, for a caller coming from `client` (a network
    /// address, say): a caller with no principal has its quotas counted
    /// per client (sessions per hour, messages across its sessions and
    /// stateless calls, feedback per hour).
    #[must_use]
    pub fn with_client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// Who this acts for.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The session, if it exists and the caller may use it.
    pub(crate) async fn visible(&self, id: SessionId) -> Result<Session> {
        match self.inner.store.get_session(id).await? {
            Some(s) if self.caller.may_use(&s) => Ok(s),
            _ => Err(Error::session_not_found()),
        }
    }

    /// Creates a session owned by the caller, with its own system prompt
    /// and metadata if `options` has them ([`NewSession::default`] for
    /// none), within the sessions-per-hour quota, if there is one
    /// ([`ChatCoreBuilder::sessions_per_hour`](crate::ChatCoreBuilder::sessions_per_hour)).
    ///
    /// # Errors
    /// [`ErrorKind::RateLimited`] over the quota; [`ErrorKind::InvalidInput`]
    /// when the prompt is too long or the metadata is not a JSON object or
    /// too large; [`ErrorKind::Storage`].
    pub async fn initialize(&self, options: NewSession) -> Result<SessionInfo> {
        take_session_token(self.inner, &self.caller, self.client.as_deref()).await?;
        self.inner
            .sessions
            .initialize_owned(options, self.caller.owner().map(str::to_owned))
            .await
    }

    /// A session, with `is_active` as of now.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`] when it does not exist or is not the
    /// caller's; [`ErrorKind::Storage`].
    pub async fn get(&self, id: SessionId) -> Result<SessionInfo> {
        let session = self.visible(id).await?;
        Ok(self.inner.sessions.info(session))
    }

    /// The tokens a session's turns cost.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn usage(&self, id: SessionId) -> Result<Usage> {
        self.visible(id).await?;
        self.inner.sessions.usage(id).await
    }

    /// [`Scoped::get`] and [`Scoped::usage`] together, the session looked
    /// up once.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn get_with_usage(&self, id: SessionId) -> Result<(SessionInfo, Usage)> {
        match self.inner.store.session_with_usage(id).await? {
            Some((session, usage)) if self.caller.may_use(&session) => {
                Ok((self.inner.sessions.info(session), usage))
            }
            _ => Err(Error::session_not_found()),
        }
    }

    /// A page of a session's messages.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn messages_page(
        &self,
        id: SessionId,
        after: Option<MessageCursor>,
        limit: usize,
    ) -> Result<MessagePage> {
        self.visible(id).await?;
        self.inner.sessions.messages_page(id, after, limit).await
    }

    /// A session's whole history, oldest first.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn messages(&self, id: SessionId) -> Result<Vec<Message>> {
        self.visible(id).await?;
        self.inner.sessions.messages(id).await
    }

    /// Runs one chat turn: `content` from the user to session `id`, as
    /// [`Scoped::prepare`] and then [`PreparedTurn::complete`].
    ///
    /// On success the user message and the reply are stored atomically and
    /// the session's `last_active` moves; on any failure nothing is stored.
    ///
    /// # Errors
    /// As [`Scoped::prepare`], then the upstream kinds from the model and
    /// [`ErrorKind::Storage`].
    pub async fn chat(&self, id: SessionId, content: &str) -> Result<ChatReply> {
        self.prepare(id, content, ChatOptions::default())
            .await?
            .complete()
            .await
    }

    /// Runs the checks of a turn and waits for the session's earlier turns:
    /// the first half of [`Scoped::chat`]. Finish it with
    /// [`PreparedTurn::complete`] or [`PreparedTurn::stream`]; the turn holds
    /// the session until then (dropping it stores nothing). `input` is the
    /// user's text (borrowed or owned; an owned one makes a `'static` turn
    /// that can live inside a streamed response) or messages of any kind
    /// ([`TurnInput::Messages`]: content parts, tool results). The session's
    /// limit applies, and the caller's principal's too (the owner's, for a session
    /// token's holder), or its client's when it has no principal.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] (empty or oversized content),
    /// [`ErrorKind::SessionNotFound`] (also another caller's session),
    /// [`ErrorKind::SessionExpired`], [`ErrorKind::RateLimited`] (with a
    /// retry-after) and [`ErrorKind::Storage`].
    pub async fn prepare<'c>(
        &self,
        id: SessionId,
        input: impl Into<TurnInput<'c>>,
        options: ChatOptions,
    ) -> Result<PreparedTurn<'c>> {
        let client = self.client.as_deref();
        turn::prepare(self.inner, &self.caller, client, id, input.into(), options).await
    }

    /// Sends a request straight to the model, with no session: nothing is
    /// checked against a session or stored; the caller's principal quota
    /// applies, or its client's when it has no principal.
    ///
    /// # Errors
    /// [`ErrorKind::RateLimited`] past the quota; the upstream kinds.
    pub async fn complete(&self, request: ChatRequest<'_>) -> Result<Completion> {
        take_caller_token(self.inner, &self.caller, self.client.as_deref()).await?;
        self.inner.model.complete(request).await
    }

    /// As [`Scoped::complete`], streamed.
    ///
    /// # Errors
    /// As [`Scoped::complete`], before the first piece.
    pub async fn stream(&self, request: ChatRequest<'_>) -> Result<CompletionStream> {
        take_caller_token(self.inner, &self.caller, self.client.as_deref()).await?;
        self.inner.model.stream(request).await
    }

    /// Stores feedback about a session the caller may use, within the
    /// feedback quotas (per session, and per principal or client).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the text is empty or longer than
    /// [`MAX_FEEDBACK_CHARS`](crate::MAX_FEEDBACK_CHARS), or the rating is
    /// outside 1–5; [`ErrorKind::SessionNotFound`] when the session does
    /// not exist or is not the caller's; [`ErrorKind::RateLimited`] past a
    /// quota; [`ErrorKind::Storage`].
    pub async fn submit_feedback(
        &self,
        id: SessionId,
        text: &str,
        rating: Option<i64>,
    ) -> Result<Feedback> {
        // The session is looked up before any token is taken: feedback
        // naming sessions that do not exist costs nothing and leaves no
        // limiter state behind. A session this process holds hot is read
        // there, with no trip to the store: its owner never changes, and
        // every store's insert refuses a session deleted meanwhile (by
        // another replica, say), as not found; that rare feedback spends
        // its token.
        let hot = self.inner.hot.get(id);
        let session = match &hot {
            Some(hot) if self.caller.may_use(&hot.session) => Cow::Borrowed(&hot.session),
            Some(_) => return Err(Error::session_not_found()),
            None => Cow::Owned(self.visible(id).await?),
        };
        // Refused feedback spends no token.
        crate::feedback::FeedbackDesk::validate(text, rating)?;
        let owner = session.owner.as_deref();
        let client = self.client.as_deref();
        take_feedback_token(self.inner, &self.caller, owner, client, id).await?;
        self.inner.feedback.submit(id, text, rating).await
    }

    /// The feedback about a session the caller may use, oldest first.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn feedback(&self, id: SessionId) -> Result<Vec<Feedback>> {
        self.visible(id).await?;
        self.inner.feedback.list(id).await
    }

    /// Deletes a session with its messages and feedback, at once.
    ///
    /// # Errors
    /// As [`Scoped::get`].
    pub async fn delete(&self, id: SessionId) -> Result<()> {
        self.visible(id).await?;
        if !self.inner.store.delete_session(id).await? {
            return Err(Error::session_not_found());
        }
        self.inner.hot.forget(id);
        self.inner.windows.forget(id);
        Ok(())
    }

    /// The caller's sessions (every session for an admin), most recently
    /// active first, `limit` at a time.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`].
    pub async fn sessions(
        &self,
        after: Option<SessionCursor>,
        limit: usize,
    ) -> Result<Vec<SessionInfo>> {
        let owner = match &self.caller {
            Caller::Principal(p) if !p.admin => Some(p.id.as_str()),
            Caller::Session(id) => {
                let mine = self.visible(*id).await?;
                let after_mine = after.is_some_and(|c| !c.precedes(&mine));
                return Ok(if after_mine || limit == 0 {
                    Vec::new()
                } else {
                    vec![self.inner.sessions.info(mine)]
                });
            }
            _ => None,
        };
        let list = self.inner.store.list_sessions(owner, after, limit).await?;
        Ok(list
            .into_iter()
            .map(|s| self.inner.sessions.info(s))
            .collect())
    }

    /// Feedback for review, oldest first, `limit` at a time: admins only.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] for anyone else; [`ErrorKind::Storage`].
    pub async fn review_feedback(
        &self,
        filter: &FeedbackFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, Feedback)>> {
        if !self.caller.is_admin() {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "Reviewing feedback needs the admin scope",
            ));
        }
        self.inner.store.review_feedback(filter, after, limit).await
    }
}
