//! Server-sent event frames: `event:`/`data:` lines ending in a blank line.
//! JSON never holds a raw newline (serde_json escapes it), so one `data:`
//! line always carries one whole event.

use bytes::Bytes;
use serde::Serialize;

/// `event: NAME` + `data: JSON`.
pub(crate) fn event<T: Serialize>(name: &str, data: &T) -> Bytes {
    let mut out = Vec::with_capacity(64 + name.len());
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    push_json(&mut out, data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: NAME` + `data:` with bytes that are already JSON.
pub(crate) fn event_raw(name: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(16 + name.len() + json.len());
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A bare `data: JSON` event (OpenAI's stream format).
pub(crate) fn data<T: Serialize>(data: &T) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    push_json(&mut out, data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A bare `data:` event with bytes that are already JSON (an upstream's
/// chunk, relayed).
pub(crate) fn data_raw(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// OpenAI's end-of-stream marker.
pub(crate) fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

fn push_json<T: Serialize>(out: &mut Vec<u8>, data: &T) {
    if serde_json::to_writer(&mut *out, data).is_err() {
        // Our own types always serialize; keep the frame well-formed anyway.
        out.extend_from_slice(b"{}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_content_stays_inside_one_data_line() {
        let f = event("delta", &serde_json::json!({"content": "a\nb"}));
        assert_eq!(&f[..], b"event: delta\ndata: {\"content\":\"a\\nb\"}\n\n");
        assert_eq!(&data(&1)[..], b"data: 1\n\n");
    }
}
