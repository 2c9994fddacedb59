//! The one error type of chatcore: what went wrong ([`ErrorKind`]), whose
//! fault it is ([`Fault`]), and the cause chain behind it.
//!
//! Each kind maps to exactly one row of the gateway's error table, so an
//! HTTP layer can translate errors with one exhaustive `match` and a new
//! kind forces a decision there.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A boxed error that can cross threads, used as an [`Error`]'s cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with chatcore's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Each kind corresponds to one row of the gateway's
/// error table (docs/api.md in the repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request was malformed: a missing or empty field, a bad value.
    InvalidInput,
    /// The session does not exist (or the id is not a UUID).
    SessionNotFound,
    /// The session was idle past its timeout; it is never revived.
    SessionExpired,
    /// The session used up its message quota; see [`Error::retry_after`].
    RateLimited,
    /// The caller is known but may not do this (an admin-only operation).
    Forbidden,
    /// The upstream refused the request as the request's own fault (400,
    /// 404, 413, 422: a parameter it does not support, a prompt too long):
    /// not retried; its status and body are kept
    /// ([`Error::upstream_reply`]) so a client can be told what it said.
    UpstreamRejected,
    /// The upstream model kept rate-limiting us after every retry.
    UpstreamBusy,
    /// The upstream model failed: 5xx, connection error, undecodable reply,
    /// or our credentials were refused.
    UpstreamFailed,
    /// The upstream deadline passed before a reply arrived.
    UpstreamTimeout,
    /// The storage backend failed.
    Storage,
    /// The storage backend cannot serve for now (disk full, I/O error, a
    /// lock held too long, a server out of reach); trying later may work.
    StorageUnavailable,
    /// The rate limiter's shared store (Redis) cannot be reached, and the
    /// limiter is set to refuse rather than let messages through unchecked.
    LimiterUnavailable,
    /// Anything else: a bug or a broken invariant.
    Internal,
}

/// Whose fault an error is, which decides how it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something we cannot serve.
    Client,
    /// The upstream model misbehaved.
    Upstream,
    /// We (or our storage) failed.
    Server,
}

impl ErrorKind {
    /// Whose fault an error of this kind is.
    pub fn fault(self) -> Fault {
        match self {
            ErrorKind::InvalidInput
            | ErrorKind::SessionNotFound
            | ErrorKind::SessionExpired
            | ErrorKind::RateLimited
            | ErrorKind::Forbidden
            | ErrorKind::UpstreamRejected => Fault::Client,
            ErrorKind::UpstreamBusy | ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout => {
                Fault::Upstream
            }
            ErrorKind::Storage
            | ErrorKind::StorageUnavailable
            | ErrorKind::LimiterUnavailable
            | ErrorKind::Internal => Fault::Server,
        }
    }
}

/// The quota an [`ErrorKind::RateLimited`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// The session's messages per minute.
    Session,
    /// The principal's messages per minute, across its sessions.
    Principal,
    /// Sessions a caller may create per hour.
    Sessions,
    /// Messages per minute from one client address, across its sessions
    /// and its stateless calls, when no principal is known.
    Address,
    /// Feedback per hour, per session and per principal or address.
    Feedback,
}

impl Quota {
    /// Its name in metrics and logs: `session`, `principal`,
    /// `sessions_per_hour`, `address`, `feedback_per_hour`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Session => "session",
            Quota::Principal => "principal",
            Quota::Sessions => "sessions_per_hour",
            Quota::Address => "address",
            Quota::Feedback => "feedback_per_hour",
        }
    }
}

/// An error from chatcore.
///
/// `Display` prints this level only: a message that is safe to show a
/// client (it never contains a secret). The cause, if any, is available
/// through [`std::error::Error::source`] and belongs in the log.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    field: Option<&'static str>,
    quota: Option<Quota>,
    retry_after: Option<Duration>,
    context_overflow: bool,
    transient: bool,
    upstream_reply: Option<Box<(u16, bytes::Bytes)>>,
    source: Option<BoxError>,
}

impl Error {
    /// Creates an error of `kind` with a client-safe `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            field: None,
            quota: None,
            retry_after: None,
            context_overflow: false,
            transient: false,
            upstream_reply: None,
            source: None,
        }
    }

    /// Keeps the upstream's own answer to a request it refused: its status
    /// and body (OpenAI's `{"error": …}`), as [`ErrorKind::UpstreamRejected`]
    /// carries them.
    #[must_use]
    pub fn with_upstream_reply(mut self, status: u16, body: bytes::Bytes) -> Self {
        self.upstream_reply = Some(Box::new((status, body)));
        self
    }

    /// The upstream's status and body, for an error it answered itself.
    pub fn upstream_reply(&self) -> Option<(u16, &bytes::Bytes)> {
        self.upstream_reply.as_deref().map(|(s, b)| (*s, b))
    }

    /// Marks an upstream refusal as "the prompt does not fit the model's
    /// context window", which a turn answers by trimming history harder.
    #[must_use]
    pub fn with_context_overflow(mut self) -> Self {
        self.context_overflow = true;
        self
    }

    /// Marks an upstream failure as one another attempt (here or on
    /// another upstream) may not meet: a connection error, a timeout
    /// before the upstream's first byte, 429 or 5xx. A reply that came
    /// and was wrong is not.
    #[must_use]
    pub fn with_transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Whether another attempt may succeed where this one failed (see
    /// [`Error::with_transient`]).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Whether the upstream refused the request because the prompt does
    /// not fit the model's context window.
    pub fn is_context_overflow(&self) -> bool {
        self.context_overflow
    }

    /// An [`ErrorKind::InvalidInput`] error about the request field `field`.
    pub fn invalid(field: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidInput, message).with_field(field)
    }

    /// The [`ErrorKind::SessionNotFound`] error.
    pub fn session_not_found() -> Self {
        Error::new(ErrorKind::SessionNotFound, "Session not found")
    }

    /// The [`ErrorKind::SessionExpired`] error.
    pub fn session_expired() -> Self {
        Error::new(ErrorKind::SessionExpired, "Session expired")
    }

    /// A [`ErrorKind::Storage`] error caused by `source`.
    pub fn storage(source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::Storage, "storage failure").with_source(source)
    }

    /// A [`ErrorKind::StorageUnavailable`] error caused by `source`.
    pub fn storage_unavailable(source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::StorageUnavailable, "Storage unavailable").with_source(source)
    }

    /// A [`ErrorKind::LimiterUnavailable`] error caused by `source`.
    pub fn limiter_unavailable(source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::LimiterUnavailable, "Rate limiter unavailable").with_source(source)
    }

    /// A [`ErrorKind::Internal`] error caused by `source`.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::Internal, "internal error").with_source(source)
    }

    /// Attaches the cause of this error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Names the request field an [`ErrorKind::InvalidInput`] error is
    /// about.
    #[must_use]
    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Says how long the caller should wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        self.kind.fault()
    }

    /// The client-safe message (the same text `Display` prints).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For [`ErrorKind::InvalidInput`]: the request field at fault, if known.
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    /// For [`ErrorKind::RateLimited`]: the quota that refused.
    pub fn quota(&self) -> Option<Quota> {
        self.quota
    }

    /// The [`ErrorKind::RateLimited`] error of `quota`, whose limit is
    /// `limit`, for a caller who may try again after `retry_after` (said
    /// in whole seconds, at least one: a client told "0" would retry at
    /// once).
    pub fn rate_limited(quota: Quota, limit: u32, retry_after: Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let message = match quota {
            Quota::Session | Quota::Principal | Quota::Address => {
                format!("Rate limit exceeded: {limit} messages per minute")
            }
            Quota::Sessions => format!("Rate limit exceeded: {limit} sessions per hour"),
            Quota::Feedback => format!("Rate limit exceeded: {limit} feedback per hour"),
        };
        let mut e = Error::new(ErrorKind::RateLimited, message)
            .with_retry_after(Duration::from_secs(secs.max(1)));
        e.quota = Some(quota);
        e
    }

    /// For [`ErrorKind::RateLimited`] and [`ErrorKind::UpstreamBusy`]: how
    /// long to wait before trying again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The whole cause chain on one line, `outer: inner: innermost`, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.message.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(field) = self.field {
            d.field("field", &field);
        }
        if let Some(wait) = self.retry_after {
            d.field("retry_after", &wait);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if sqlite_unavailable(&e) {
            Error::storage_unavailable(e)
        } else {
            Error::storage(e)
        }
    }
}

/// Whether a SQLite failure is one that passes (a full disk, an I/O error,
/// a lock held too long, a file that cannot be opened right now) rather
/// than a bug or a broken database.
pub(crate) fn sqlite_unavailable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked | CannotOpen)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_and_display_prints_one_level() {
        let io = std::io::Error::other("disk full");
        let e = Error::storage(io);
        assert_eq!(e.to_string(), "storage failure");
        assert_eq!(e.chain(), "storage failure: disk full");
        assert_eq!(e.fault(), Fault::Server);
    }

    #[test]
    fn faults_follow_whose_mistake_it_is() {
        use ErrorKind::*;
        let expected = [
            (InvalidInput, Fault::Client),
            (SessionNotFound, Fault::Client),
            (SessionExpired, Fault::Client),
            (RateLimited, Fault::Client),
            (Forbidden, Fault::Client),
            (UpstreamRejected, Fault::Client),
            (UpstreamBusy, Fault::Upstream),
            (UpstreamFailed, Fault::Upstream),
            (UpstreamTimeout, Fault::Upstream),
            (Storage, Fault::Server),
            (StorageUnavailable, Fault::Server),
            (LimiterUnavailable, Fault::Server),
            (Internal, Fault::Server),
        ];
        for (kind, fault) in expected {
            assert_eq!(kind.fault(), fault, "{kind:?}");
        }
    }
}
