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
}

impl SseParser {
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
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
}
