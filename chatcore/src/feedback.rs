//! `FeedbackDesk`: validates feedback and hands it to the store. Feedback is
//! accepted for expired sessions for as long as their data is retained.

use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::types::{Feedback, Rating, SessionId};

/// Longest feedback text accepted, in characters.
pub const MAX_FEEDBACK_CHARS: usize = 10_000;

/// Receives feedback about sessions.
#[derive(Debug, Clone)]
pub(crate) struct FeedbackDesk {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl FeedbackDesk {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        FeedbackDesk { store, clock }
    }

    /// Stores feedback `text` (and an optional 1–5 `rating`) about a session.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// text is empty or longer than [`MAX_FEEDBACK_CHARS`], or the rating is
    /// outside 1–5; [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound)
    /// when the session does not exist; [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub(crate) async fn submit(
        &self,
        session: SessionId,
        text: &str,
        rating: Option<i64>,
    ) -> Result<Feedback> {
        let rating = Self::validate(text, rating)?;
        let feedback = Feedback {
            session_id: session,
            text: text.to_owned(),
            rating,
            created_at: self.clock.now(),
        };
        self.store.insert_feedback(&feedback).await?;
        Ok(feedback)
    }

    /// The feedback's rules: non-empty text of at most
    /// [`MAX_FEEDBACK_CHARS`], a rating from 1 to 5 if any.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
    pub(crate) fn validate(text: &str, rating: Option<i64>) -> Result<Option<Rating>> {
        if text.trim().is_empty() {
            return Err(Error::invalid("feedback", "feedback must not be empty"));
        }
        if text.chars().count() > MAX_FEEDBACK_CHARS {
            return Err(Error::invalid(
                "feedback",
                format!("feedback must be at most {MAX_FEEDBACK_CHARS} characters"),
            ));
        }
        rating.map(Rating::new).transpose()
    }

    /// All feedback about a session, oldest first.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`](crate::ErrorKind::Storage).
    pub(crate) async fn list(&self, session: SessionId) -> Result<Vec<Feedback>> {
        self.store.list_feedback(session).await
    }
}
