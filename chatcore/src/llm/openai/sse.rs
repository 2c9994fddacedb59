//! Server-sent events of a streamed chat completion: `data:` lines split
//! across network chunks, decoded into text pieces, ending at `[DONE]`.

use super::wire;
use crate::error::{Error, ErrorKind};

/// One decoded server-sent event of a chat-completions stream.
#[derive(Debug)]
pub(super) enum SseEvent {
    Piece(String),
    Done,
    Bad(Error),
}

/// Splits a byte stream into `data:` lines and decodes them.
#[derive(Debug, Default)]
pub(super) struct SseParser {
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
}

impl SseParser {
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let Some(nl) = self.pending[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned)
            else {
                self.scanned = self.pending.len();
                if self.pending.len() > super::MAX_REPLY_BYTES {
                    events.push(SseEvent::Bad(Error::new(
                        ErrorKind::UpstreamFailed,
                        format!(
                            "Upstream stream line is longer than {} bytes",
                            super::MAX_REPLY_BYTES
                        ),
                    )));
                }
                break;
            };
            self.scanned = 0;
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue; // blank separators, comments, other fields
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                events.push(SseEvent::Done);
                break;
            }
            match serde_json::from_slice::<wire::StreamChunk>(data) {
                Ok(chunk) => {
                    if let Some(text) = chunk
                        .choices
                        .into_iter()
                        .next()
                        .and_then(|c| c.delta.content)
                    {
                        if !text.is_empty() {
                            events.push(SseEvent::Piece(text));
                        }
                    }
                }
                Err(e) => {
                    events.push(SseEvent::Bad(
                        Error::new(
                            ErrorKind::UpstreamFailed,
                            "Upstream sent an invalid stream event",
                        )
                        .with_source(e),
                    ));
                    break;
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_lines_and_done() {
        let mut p = SseParser::default();
        let first = p.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel");
        assert!(first.is_empty());
        let events = p.feed(b"lo\"}}]}\n\n: comment\ndata: [DONE]\n\n");
        assert!(matches!(&events[0], SseEvent::Piece(s) if s == "Hello"));
        assert!(matches!(events[1], SseEvent::Done));
    }

    #[test]
    fn a_line_without_end_is_refused_past_the_cap() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            assert!(p.feed(&chunk).is_empty(), "16 MiB is still allowed");
        }
        let events = p.feed(b"x");
        assert!(matches!(&events[..], [SseEvent::Bad(e)] if e.to_string().contains("longer than")));
    }
}
