//! Server-sent events of a streamed chat completion: `data:` lines split
//! across network chunks, reassembled, and decoded into stream events
//! (text pieces, tool-call pieces, refusals, finish reason, usage), ending
//! at `[DONE]`. Asked to, it also hands back each chunk as it came
//! ([`StreamEvent::Raw`]), after the events decoded from it.

use std::collections::VecDeque;

use bytes::Bytes;

use super::wire;
use crate::error::{Error, ErrorKind};
use crate::llm::{FunctionCallDelta, RawChunk, StreamEvent, ToolCallDelta};

/// One decoded server-sent event of a chat-completions stream.
#[derive(Debug)]
pub(super) enum SseEvent {
    Event(StreamEvent),
    Done,
    Bad(Error),
}

/// Splits a byte stream into `data:` lines and decodes them.
#[derive(Debug)]
pub(super) struct SseParser {
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    /// Whether each chunk is also handed back as it came.
    raw: bool,
    /// The longest line held while waiting for its end.
    limit: usize,
}

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::new(false, super::MAX_REPLY_BYTES)
    }
}

impl SseParser {
    /// A parser; with `raw`, each chunk also comes back as it was sent. A
    /// line longer than `limit` bytes is an error, not a buffer that grows.
    pub(super) fn new(raw: bool, limit: usize) -> SseParser {
        SseParser {
            pending: Vec::new(),
            scanned: 0,
            raw,
            limit,
        }
    }

    /// Whether chunks come back as they were sent.
    pub(super) fn raw(&self) -> bool {
        self.raw
    }

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
                if self.pending.len() > self.limit {
                    events.push_back(SseEvent::Bad(Error::new(
                        ErrorKind::UpstreamFailed,
                        format!("Upstream stream line is longer than {} bytes", self.limit),
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
                    let usage_only = chunk.choices.is_empty() && chunk.usage.is_some();
                    // A turn keeps the first choice; a relay sends them all
                    // in the raw chunk.
                    if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
                        decode(choice, events);
                    }
                    if let Some(u) = chunk.usage {
                        events.push_back(SseEvent::Event(StreamEvent::Usage(u.usage())));
                    }
                    if self.raw {
                        events.push_back(SseEvent::Event(StreamEvent::Raw(RawChunk {
                            data: Bytes::copy_from_slice(data),
                            usage_only,
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

/// The events of one choice's delta.
fn decode(choice: wire::StreamChoice, events: &mut VecDeque<SseEvent>) {
    let delta = choice.delta;
    if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
        events.push_back(SseEvent::Event(StreamEvent::Delta(text)));
    }
    if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
        events.push_back(SseEvent::Event(StreamEvent::Refusal(text)));
    }
    for call in delta.tool_calls.unwrap_or_default() {
        let (name, arguments) = call
            .function
            .map_or((None, None), |f| (f.name, f.arguments));
        events.push_back(SseEvent::Event(StreamEvent::ToolCall(ToolCallDelta {
            index: call.index,
            id: call.id,
            kind: call.kind,
            name,
            arguments: arguments.unwrap_or_default(),
        })));
    }
    if let Some(f) = delta.function_call {
        events.push_back(SseEvent::Event(StreamEvent::FunctionCall(
            FunctionCallDelta {
                name: f.name,
                arguments: f.arguments.unwrap_or_default(),
            },
        )));
    }
    if let Some(reason) = choice.finish_reason {
        events.push_back(SseEvent::Event(StreamEvent::Finish(reason)));
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
            SseEvent::Event(StreamEvent::Usage(crate::types::Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cached_tokens: 0,
            }))
        ));
    }

    #[test]
    fn tool_call_pieces_refusals_and_raw_chunks() {
        let mut p = SseParser::new(true, super::super::MAX_REPLY_BYTES);
        let line = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]},\"logprobs\":null}]}\n\n";
        let events = feed(&mut p, line.as_bytes());
        match &events[..] {
            [SseEvent::Event(StreamEvent::ToolCall(d)), SseEvent::Event(StreamEvent::Raw(raw))] => {
                assert_eq!(d.id.as_deref(), Some("c"));
                assert_eq!(d.name.as_deref(), Some("f"));
                assert_eq!(d.arguments, "{\"a");
                assert_eq!(&raw.data[..], &line.as_bytes()[6..line.len() - 2]);
                assert!(!raw.usage_only);
            }
            other => panic!("{other:?}"),
        }
        let events = feed(
            &mut p,
            b"data: {\"choices\":[{\"delta\":{\"refusal\":\"No\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n",
        );
        assert!(matches!(&events[0], SseEvent::Event(StreamEvent::Refusal(r)) if r == "No"));
        assert!(
            matches!(&events[2], SseEvent::Event(StreamEvent::Usage(u)) if u.cached_tokens == 1)
        );
        assert!(matches!(&events[3], SseEvent::Event(StreamEvent::Raw(r)) if r.usage_only));
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
