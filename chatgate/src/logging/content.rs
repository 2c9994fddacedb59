//! Content lines: each user message and AI response with its session id
//! (`log.content`), cut to `log.max_content_bytes` so one long message
//! cannot fill the disk, with the full length noted.
//!
//! Content is logged in its Debug form (quoted, with `\n` and other
//! control characters escaped), so a message can never break the
//! one-line-per-event format of the log or forge a line of its own. The
//! cut is made on the message itself, at a char boundary, before
//! escaping. Handlers call these only once the turn has passed validation
//! and the session checks: a refused request leaves its access line, not
//! its body.

use std::fmt;

use slog::{info, Logger};

/// Writes content lines, or nothing when `log.content` is off.
#[derive(Debug, Clone)]
pub struct ContentLog {
    log: Option<Logger>,
    max_bytes: usize,
}

impl ContentLog {
    /// Content lines to `log`, each message cut to `max_bytes`.
    pub fn new(log: Logger, max_bytes: usize) -> Self {
        ContentLog {
            log: Some(log),
            max_bytes,
        }
    }

    /// No content lines.
    pub fn off() -> Self {
        ContentLog {
            log: None,
            max_bytes: 0,
        }
    }

    /// Whether content is logged at all (a streamed reply is collected
    /// for its line only then).
    pub fn enabled(&self) -> bool {
        self.log.is_some()
    }

    /// The most bytes of a message a line shows: a streamed reply need
    /// not be collected past this.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// `user message, session_id: …, content: "…", content_len: N, truncated: …`.
    pub fn user(&self, session_id: impl fmt::Display, content: &str, request_id: &str) {
        self.line(
            "user message",
            session_id,
            content,
            content.len(),
            request_id,
        );
    }

    /// `ai response, …`, as [`ContentLog::user`].
    pub fn reply(&self, session_id: impl fmt::Display, content: &str, request_id: &str) {
        self.line(
            "ai response",
            session_id,
            content,
            content.len(),
            request_id,
        );
    }

    /// An `ai response` line for a reply of `len` bytes of which only the
    /// start, `collected`, was kept.
    pub fn reply_collected(
        &self,
        session_id: impl fmt::Display,
        collected: &str,
        len: usize,
        request_id: &str,
    ) {
        self.line("ai response", session_id, collected, len, request_id);
    }

    fn line(
        &self,
        what: &str,
        session_id: impl fmt::Display,
        content: &str,
        len: usize,
        rid: &str,
    ) {
        let Some(log) = &self.log else { return };
        let shown = cut(content, self.max_bytes);
        info!(log, "{}", what;
            "session_id" => %session_id,
            "content" => ?shown,
            "content_len" => len,
            "truncated" => shown.len() < len,
            "request_id" => rid);
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// char boundary.
pub(crate) fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_never_splits_a_char() {
        assert_eq!(cut("hello", 10), "hello");
        assert_eq!(cut("hello", 5), "hello");
        assert_eq!(cut("hello", 2), "he");
        // "é" is 2 bytes, "€" 3: a cut inside one backs off to its start.
        assert_eq!(cut("éé", 3), "é");
        assert_eq!(cut("a€", 3), "a");
        assert_eq!(cut("€", 2), "");
        for max in 0..12 {
            let s = cut("aé€😀b", max);
            assert!(s.len() <= max && "aé€😀b".starts_with(s), "{max}: {s:?}");
        }
    }
}
