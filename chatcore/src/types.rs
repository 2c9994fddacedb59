//! Domain types: ids are newtypes, times are UTC, and every value that
//! crosses the library boundary is validated where it is made.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// A session's id: a random UUID v4, shown hyphenated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh random (v4) id.
    pub fn new_v4() -> Self {
        SessionId(Uuid::new_v4())
    }

    /// Parses a client-supplied id.
    ///
    /// # Errors
    /// [`ErrorKind::SessionNotFound`](crate::ErrorKind::SessionNotFound) when
    /// `s` is not a UUID: no session can have such an id.
    pub fn parse(s: &str) -> Result<Self> {
        Uuid::try_parse(s)
            .map(SessionId)
            .map_err(|_| Error::session_not_found())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The id's 16 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(Uuid::from_bytes(bytes))
    }
}

impl From<Uuid> for SessionId {
    fn from(u: Uuid) -> Self {
        SessionId(u)
    }
}

impl FromStr for SessionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SessionId::parse(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0.hyphenated())
    }
}

/// Formats a time the way the API shows it: RFC 3339, UTC, whole seconds
/// (`2023-10-10T12:00:00Z`).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Converts stored unix milliseconds back into a time.
pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A chat session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// When the session was created.
    pub created_at: DateTime<Utc>,
    /// When the last successful chat turn finished (creation time before any).
    pub last_active: DateTime<Utc>,
    /// This session's system prompt, replacing the configured default.
    pub system_prompt: Option<String>,
    /// Application metadata, stored verbatim.
    pub metadata: Option<serde_json::Value>,
    /// The principal that created it, when access control knows one; only
    /// it (and an admin) may use the session.
    pub owner: Option<String>,
    /// The upstream and model that answered its last turn, when a
    /// [`Router`](crate::Router) chose them: its next turn goes there too
    /// while that upstream is healthy (`upstream:model`).
    pub target: Option<String>,
}

impl Session {
    /// Whether the session is still active at `now` given an idle timeout:
    /// it is active until `idle_timeout` passes without a successful turn.
    pub fn is_active_at(&self, now: DateTime<Utc>, idle_timeout: Duration) -> bool {
        active_at(self.last_active, now, idle_timeout)
    }
}

/// Whether a session last active at `last_active` is still active at `now`.
/// An idle timeout too large to represent never expires anything.
pub(crate) fn active_at(
    last_active: DateTime<Utc>,
    now: DateTime<Utc>,
    idle_timeout: Duration,
) -> bool {
    match chrono::Duration::from_std(idle_timeout)
        .ok()
        .and_then(|idle| last_active.checked_add_signed(idle))
    {
        Some(expires) => now < expires,
        None => true,
    }
}

/// Options for a new session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Replaces the configured system prompt for this session.
    pub system_prompt: Option<String>,
    /// Application metadata, stored verbatim (must be a JSON object).
    pub metadata: Option<serde_json::Value>,
}

/// Token counts reported by the model for one turn, or summed over a
/// session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens in the reply.
    pub completion_tokens: u32,
    /// Of the prompt's tokens, those the provider read from its prompt
    /// cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
}

impl Usage {
    /// Counts from a store's sums (64-bit, as databases sum), held within
    /// `u32`: a session that somehow passed four billion tokens reads as
    /// the most there can be, not as a wrapped small number.
    pub fn from_sums(prompt: i64, completion: i64, cached: i64) -> Usage {
        let clamp = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        Usage {
            prompt_tokens: clamp(prompt),
            completion_tokens: clamp(completion),
            cached_tokens: clamp(cached),
        }
    }

    /// Adds `other` to these counts (saturating).
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
    }
}

/// A feedback rating: an integer from 1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rating(u8);

impl Rating {
    /// Validates a rating.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) unless
    /// `value` is within 1..=5.
    pub fn new(value: i64) -> Result<Self> {
        if (1..=5).contains(&value) {
            Ok(Rating(value as u8))
        } else {
            Err(Error::invalid(
                "rating",
                "rating must be an integer from 1 to 5",
            ))
        }
    }

    /// The rating's value, 1 to 5.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// A piece of feedback about a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The session it is about.
    pub session_id: SessionId,
    /// What the user said.
    pub text: String,
    /// An optional 1–5 rating.
    pub rating: Option<Rating>,
    /// When it was received.
    pub created_at: DateTime<Utc>,
}

/// What one retention sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Sessions deleted.
    pub sessions: u64,
    /// Messages deleted with them.
    pub messages: u64,
    /// Feedback entries deleted with them.
    pub feedback: u64,
    /// The sweep did not run: on a store shared by several gateways,
    /// another one was sweeping (one runs at a time).
    pub skipped: bool,
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            return f.write_str("purge skipped: another gateway is purging");
        }
        write!(
            f,
            "purged {} sessions, {} messages, {} feedback entries",
            self.sessions, self.messages, self.feedback
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_and_rejects_garbage() {
        let id = SessionId::new_v4();
        assert_eq!(SessionId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.to_string().len(), 36);
        let err = SessionId::parse("not-a-uuid").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::SessionNotFound);
    }

    #[test]
    fn time_format_is_whole_seconds_utc() {
        let t = Utc.with_ymd_and_hms(2023, 10, 10, 12, 0, 0).unwrap()
            + chrono::Duration::milliseconds(999);
        assert_eq!(format_time(&t), "2023-10-10T12:00:00Z");
    }

    #[test]
    fn activity_follows_idle_timeout() {
        let t0 = Utc.with_ymd_and_hms(2023, 10, 10, 12, 0, 0).unwrap();
        let s = Session {
            id: SessionId::new_v4(),
            created_at: t0,
            last_active: t0,
            system_prompt: None,
            metadata: None,
            owner: None,
            target: None,
        };
        let idle = Duration::from_secs(1800);
        assert!(s.is_active_at(t0 + chrono::Duration::seconds(1799), idle));
        assert!(!s.is_active_at(t0 + chrono::Duration::seconds(1800), idle));
    }

    #[test]
    fn rating_bounds() {
        assert!(Rating::new(0).is_err());
        assert_eq!(Rating::new(5).unwrap().get(), 5);
        assert!(Rating::new(6).is_err());
    }
}
