//! Server-sent events of a streamed chat completion: `data:` lines split
//! across network chunks, reassembled, and decoded into stream events
//! (text pieces, finish reason, usage), ending at `[DONE]`.

use std::collections::VecDeque;

use super::wire;
use crate::error::{Error, ErrorKind};
use crate::llm::{StreamEvent, Usage};

/// One decoded server-sent event of a chat-completions stream.
#[derive(Debug)]
pub(super) enum SseEvent {
    Event(StreamEvent),
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
    /// Appends what `bytes` completes to `events`; a line cut by the end
    /// of `bytes` waits for the next call.
    pub(super) fn feed(&mut self, bytes: &[u8], events: &mut VecDeque<SseEvent>) {
        self.pending.extend_from_slice(bytes);
        loop {
            let Some(nl) = self.pending[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned)
            else {
                self.scanned = self.pending.len();
                if self.pending.len() > super::MAX_REPLY_BYTES {
                    events.push_back(SseEvent::Bad(Error::new(
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
                events.push_back(SseEvent::Done);
                break;
            }
            match serde_json::from_slice::<wire::StreamChunk>(data) {
                Ok(chunk) if chunk.error.is_some() => {
                    // The upstream reports a failure inside a 200 stream;
                    // its message may quote the request, so it is not kept.
                    events.push_back(SseEvent::Bad(Error::new(
                        ErrorKind::UpstreamFailed,
                        "Upstream reported an error mid-stream",
                    )));
                    break;
                }
                Ok(chunk) => {
                    if let Some(choice) = chunk.choices.into_iter().next() {
                        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                            events.push_back(SseEvent::Event(StreamEvent::Delta(text)));
                        }
                        if let Some(reason) = choice.finish_reason {
                            events.push_back(SseEvent::Event(StreamEvent::Finish(reason)));
                        }
                    }
                    if let Some(u) = chunk.usage {
                        events.push_back(SseEvent::Event(StreamEvent::Usage(Usage {
                            prompt_tokens: u.prompt_tokens,
                            completion_tokens: u.completion_tokens,
                        })));
                    }
                }
                Err(e) => {
                    events.push_back(SseEvent::Bad(
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut SseParser, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = VecDeque::new();
        p.feed(bytes, &mut events);
        events.into()
    }

    #[test]
    fn sse_parser_handles_split_lines_and_done() {
        let mut p = SseParser::default();
        let first = feed(&mut p, b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel");
        assert!(first.is_empty());
        let events = feed(&mut p, b"lo\"}}]}\n\n: comment\ndata: [DONE]\n\n");
        assert!(matches!(&events[0], SseEvent::Event(StreamEvent::Delta(s)) if s == "Hello"));
        assert!(matches!(events[1], SseEvent::Done));
    }

    #[test]
    fn finish_reason_and_usage_become_events() {
        let mut p = SseParser::default();
        let events = feed(
            &mut p,
            b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n\
              data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n",
        );
        assert!(matches!(&events[0], SseEvent::Event(StreamEvent::Finish(r)) if r == "length"));
        assert!(matches!(
            &events[1],
            SseEvent::Event(StreamEvent::Usage(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            }))
        ));
    }

    #[test]
    fn an_error_object_mid_stream_is_a_failure() {
        let mut p = SseParser::default();
        let events = feed(
            &mut p,
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        );
        assert!(matches!(&events[..], [SseEvent::Bad(e)] if e.kind() == ErrorKind::UpstreamFailed));
    }

    #[test]
    fn a_line_without_end_is_refused_past_the_cap() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            assert!(feed(&mut p, &chunk).is_empty(), "16 MiB is still allowed");
        }
        let events = feed(&mut p, b"x");
        assert!(matches!(&events[..], [SseEvent::Bad(e)] if e.to_string().contains("longer than")));
    }
}
