//! The OpenAI chat-completions wire format. Requests are written by hand,
//! member by member, straight from the borrowed history and the client's
//! raw fields, so nothing is rebuilt or reordered beyond what the adapter
//! sets. Replies are read through private serde types that keep only what
//! chatcore acts on, borrowing the rest as raw JSON; the whole body is
//! handed back as it came.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::Members;
use crate::llm::{ChatRequest, Input};
use crate::message::{MessageRef, Shape};

/// Writes `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// An object being written: `{` already out, members separated by commas.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        // Keys are nearly always plain words (ours are): written as they
        // are, without the escaping pass.
        if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.out.push(b'"');
            self.out.extend_from_slice(key.as_bytes());
            self.out.push(b'"');
        } else {
            string(self.out, key);
        }
        self.out.push(b':');
        self.out
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key).extend_from_slice(json.as_bytes());
    }

    fn value<T: serde::Serialize + ?Sized>(&mut self, key: &str, v: &T) {
        let out = self.key(key);
        if serde_json::to_writer(&mut *out, v).is_err() {
            out.extend_from_slice(b"null");
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// The members the adapter writes itself: a client field of the same name
/// is not written again.
const OWN: [&str; 4] = ["model", "messages", "stream", "stream_options"];

/// Writes the request body: `model`, `messages` (system prompt, history,
/// new messages), the typed options that are set, every other field the
/// client sent as it sent it, and for a stream `stream` with
/// `stream_options.include_usage` (the client's other stream options
/// kept). `temperature` is the adapter's default when the request sets none.
pub(super) fn write_request(
    out: &mut Vec<u8>,
    model: &str,
    request: &ChatRequest<'_>,
    temperature: Option<f32>,
    cache_key: Option<&str>,
    stream: bool,
) {
    let o = request.options;
    let mut obj = Object::open(out);
    obj.value("model", model);
    write_messages(obj.key("messages"), request);
    let mut written: [&str; 8] = [""; 8];
    let mut n = 0;
    macro_rules! typed {
        ($key:literal, $value:expr) => {
            if let Some(v) = $value {
                obj.value($key, &v);
                written[n] = $key;
                n += 1;
            }
        };
    }
    // The adapter's default only where the request has no temperature of
    // its own, typed or among its fields.
    let default = temperature.filter(|_| o.fields.get("temperature").is_none());
    typed!("temperature", o.temperature.or(default));
    typed!("top_p", o.top_p);
    typed!("max_tokens", o.max_tokens);
    typed!("stop", (!o.stop.is_empty()).then_some(&o.stop));
    typed!("presence_penalty", o.presence_penalty);
    typed!("frequency_penalty", o.frequency_penalty);
    typed!("seed", o.seed);
    typed!("user", o.user.as_deref());
    let written = &written[..n];
    let mut client_stream = false;
    for (key, value) in o.fields.iter() {
        if key == "stream" {
            client_stream = true;
            continue;
        }
        if (stream && key == "stream_options") || OWN[..2].contains(&key) || written.contains(&key)
        {
            continue;
        }
        obj.raw(key, value.get());
    }
    // A client's own key wins over the one derived from its session.
    if let Some(key) = cache_key.filter(|_| o.fields.get("prompt_cache_key").is_none()) {
        obj.value("prompt_cache_key", key);
    }
    if stream {
        obj.raw("stream", "true");
        let options = obj.key("stream_options");
        let mut inner = Object::open(options);
        inner.raw("include_usage", "true");
        if let Some(theirs) = o.fields.get("stream_options") {
            if let Ok(members) = Members::parse(theirs.get().as_bytes()) {
                for (k, v) in members.0.iter().filter(|(k, _)| k != "include_usage") {
                    inner.raw(k, v.get());
                }
            }
        }
        inner.close();
    } else if client_stream {
        obj.raw("stream", "false");
    }
    obj.close();
}

/// The messages: system prompt, history, this turn's new messages.
fn write_messages(out: &mut Vec<u8>, r: &ChatRequest<'_>) {
    if let Input::Json(all) = r.input {
        if r.system.is_none() && r.history.is_empty() {
            out.extend_from_slice(all.get().as_bytes());
            return;
        }
    }
    out.push(b'[');
    let mut first = true;
    let mut next = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    if let Some(system) = r.system {
        next(out);
        let mut m = Object::open(out);
        m.raw("role", "\"system\"");
        m.value("content", system);
        m.close();
    }
    for m in r.history.iter().chain(r.new_messages()) {
        next(out);
        message(out, &m);
    }
    if let Input::Json(all) = r.input {
        // Checked to be an array when the request was read; should it not
        // be, it is written whole and the upstream says what is wrong.
        match serde_json::from_str::<Vec<&RawValue>>(all.get()) {
            Ok(items) => {
                for item in items {
                    next(out);
                    out.extend_from_slice(item.get().as_bytes());
                }
            }
            Err(_) => {
                next(out);
                out.extend_from_slice(all.get().as_bytes());
            }
        }
    }
    out.push(b']');
}

fn message(out: &mut Vec<u8>, m: &MessageRef<'_>) {
    match m.wire {
        Some(json) => out.extend_from_slice(json.as_bytes()),
        None => {
            // A role's name is a plain word.
            out.extend_from_slice(b"{\"role\":\"");
            out.extend_from_slice(m.role.as_str().as_bytes());
            out.extend_from_slice(b"\",\"content\":");
            string(out, m.content);
            out.push(b'}');
        }
    }
}

/// The size a request body is likely to need, to allocate it once.
pub(super) fn size_hint(model: &str, r: &ChatRequest<'_>) -> usize {
    let history: usize = r
        .history
        .iter()
        .chain(r.new_messages())
        .map(|m| m.wire.map_or(m.content.len(), str::len) + 40)
        .sum();
    let input = match r.input {
        Input::Json(all) => all.get().len(),
        Input::Text(_) | Input::Messages(_) => 0,
    };
    let fields: usize = r
        .options
        .fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    160 + model.len() + r.system.map_or(0, |s| s.len() + 40) + history + input + fields
}

/// A whole reply, read in one pass: each choice's message as far as telling
/// plain text from more ([`Shape`]), finish reason, usage.
#[derive(Deserialize)]
pub(super) struct ResponseBody<'a> {
    #[serde(borrow, default)]
    pub choices: Vec<Choice<'a>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(borrow, default)]
    pub message: Option<Shape<'a>>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The same reply read again for the first choice's message as raw JSON,
/// when it is more than text (a second pass only then).
#[derive(Deserialize)]
pub(super) struct RawResponse<'a> {
    #[serde(borrow, default)]
    pub choices: Vec<RawChoice<'a>>,
}

#[derive(Deserialize)]
pub(super) struct RawChoice<'a> {
    #[serde(borrow, default)]
    pub message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
pub(super) struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

impl WireUsage {
    pub(super) fn usage(&self) -> crate::types::Usage {
        crate::types::Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct StreamChunk {
    #[serde(default)]
    pub choices: Vec<StreamChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// Some servers report a failure as an event inside a 200 stream.
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
pub(super) struct StreamChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallPiece>>,
    #[serde(default)]
    pub function_call: Option<FunctionPiece>,
}

#[derive(Deserialize)]
pub(super) struct ToolCallPiece {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionPiece>,
}

#[derive(Deserialize)]
pub(super) struct FunctionPiece {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatOptions, Fields, History};
    use crate::message::{Message, Role};

    fn written(
        request: &ChatRequest<'_>,
        temperature: Option<f32>,
        stream: bool,
    ) -> serde_json::Value {
        let mut out = Vec::new();
        write_request(&mut out, "m", request, temperature, None, stream);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn fields_pass_through_and_own_members_are_not_duplicated() {
        let options = ChatOptions {
            fields: Fields::parse(
                br#"{"model":"client","tools":[{"type":"function"}],"top_k":5,"stream":true,"stream_options":{"include_usage":false,"x":1},"temperature":0.1}"#,
            )
            .unwrap(),
            ..ChatOptions::default()
        };
        let r = ChatRequest {
            system: None,
            history: History::empty(),
            input: Input::Text("hi"),
            options: &options,
            session: None,
            pinned: None,
        };
        let v = written(&r, None, true);
        assert_eq!(
            v,
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function"}], "top_k": 5, "temperature": 0.1,
                "stream": true, "stream_options": {"include_usage": true, "x": 1}})
        );
        // No default temperature unless the adapter has one; a whole
        // request keeps the client's own `stream: false`.
        let v = written(&r, Some(0.7), false);
        assert_eq!(v["temperature"], 0.1, "the client's value wins");
        assert_eq!(v["stream"], false);
        let bare = ChatRequest::new(None, History::empty(), "hi");
        assert!(written(&bare, None, false).get("temperature").is_none());
        assert_eq!(written(&bare, Some(0.5), false)["temperature"], 0.5);
    }

    #[test]
    fn wire_messages_are_written_verbatim_after_the_history() {
        let at = chrono::Utc::now();
        let history = vec![
            Message::text(Role::User, "q", at),
            Message::from_json(
                r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
                at,
            )
            .unwrap(),
        ];
        let new =
            vec![
                Message::from_json(r#"{"role":"tool","tool_call_id":"c","content":"42"}"#, at)
                    .unwrap(),
            ];
        let r = ChatRequest {
            system: Some("be brief"),
            history: (&history).into(),
            input: Input::Messages(&new),
            options: ChatOptions::none(),
            session: None,
            pinned: None,
        };
        let mut out = Vec::new();
        write_request(&mut out, "m", &r, None, None, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#"{"role":"tool","tool_call_id":"c","content":"42"}"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 4);
        assert_eq!(
            v["messages"][0],
            serde_json::json!({"role": "system", "content": "be brief"})
        );
    }
}
