//! Messages as the chat-completions protocol has them. A message is a role
//! and its text, or, when it holds more (content parts such as images,
//! tool calls, a tool result, a name, a refusal), the whole message object
//! exactly as it came ([`WireMessage`]), so that it is stored and sent
//! upstream again without losing a field chatcore does not know.
//!
//! Plain text stays the common, cheap case: one string, no JSON kept. A
//! message object is "plain text" when it has a role of `system`,
//! `developer`, `user` or `assistant`, a string `content`, and nothing else
//! but members that say nothing (`null`, `[]`, `{}`), as servers add them
//! (`"refusal": null`, `"annotations": []`).

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::json::{self, Members};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// Instructions for the model, in the newer models' name for them.
    Developer,
    /// The person chatting.
    User,
    /// The model.
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
    /// A function's result (the older name for tool results).
    Function,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }

    /// Parses a stored or wire role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => return None,
        })
    }

    /// Whether a message of this role can be plain text (role and content
    /// alone); a tool's or function's result always names its call.
    fn may_be_text(self) -> bool {
        matches!(
            self,
            Role::System | Role::Developer | Role::User | Role::Assistant
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A whole message object as the protocol carries it: a JSON object with
/// a string `role`, kept as its exact text.
#[derive(Clone)]
pub struct WireMessage {
    json: Box<RawValue>,
    role: Role,
}

impl WireMessage {
    /// Checks and keeps `json`, which must be a JSON object with a known
    /// `role`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when it
    /// is not.
    pub fn parse(json: &str) -> Result<WireMessage> {
        let role = Shape::read(json)?.role()?;
        let json = RawValue::from_string(json.to_owned())
            .map_err(|_| Error::invalid("messages", "a message must be JSON"))?;
        Ok(WireMessage { json, role })
    }

    /// The message's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.json.get()
    }

    /// The JSON, to write into a larger document verbatim.
    pub fn as_raw(&self) -> &RawValue {
        &self.json
    }
}

impl PartialEq for WireMessage {
    fn eq(&self, other: &WireMessage) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Eq for WireMessage {}

impl fmt::Debug for WireMessage {
    /// The role and size only: the content is a person's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireMessage")
            .field("role", &self.role)
            .field("bytes", &self.json.get().len())
            .finish()
    }
}

impl Serialize for WireMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// What a message object is, read in one pass: its role, its content if
/// that is a string, and whether anything else in it says something.
pub(crate) struct Shape<'a> {
    role: Option<Cow<'a, str>>,
    /// The content, when it is a string.
    text: Option<Cow<'a, str>>,
    /// Whether every member but `role` and a string `content` says nothing
    /// (`null`, `[]`, `{}`).
    plain: bool,
}

impl<'a> Shape<'a> {
    fn read(json: &'a str) -> Result<Shape<'a>> {
        serde_json::from_str(json)
            .map_err(|_| Error::invalid("messages", "a message must be a JSON object"))
    }

    /// The text message this is, when it is plain text.
    pub(crate) fn into_text(self) -> Option<(Role, Cow<'a, str>)> {
        let role = self.role.as_deref().and_then(Role::parse)?;
        match (self.plain, role.may_be_text(), self.text) {
            (true, true, Some(text)) => Some((role, text)),
            _ => None,
        }
    }

    fn role(&self) -> Result<Role> {
        let role = self
            .role
            .as_deref()
            .ok_or_else(|| Error::invalid("messages", "a message needs a string role"))?;
        Role::parse(role).ok_or_else(|| {
            Error::invalid(
                "messages",
                format!(
                    "role {role:?} is not one of system, developer, user, assistant, tool, function"
                ),
            )
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Shape<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Shape<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Shape<'de>, A::Error> {
                let mut shape = Shape {
                    role: None,
                    text: None,
                    plain: true,
                };
                while let Some(key) = map.next_key::<json::Str<'de>>()? {
                    match key.0.as_ref() {
                        "role" => shape.role = map.next_value::<json::Probe<'de>>()?.into_str(),
                        "content" => match map.next_value::<json::Probe<'de>>()?.into_str() {
                            Some(text) => shape.text = Some(text),
                            None => shape.plain = false,
                        },
                        _ => {
                            let value: &'de RawValue = map.next_value()?;
                            shape.plain &= json::is_nothing(value);
                        }
                    }
                }
                Ok(shape)
            }
        }
        d.deserialize_map(V)
    }
}

/// One message of a session's history: a role and text, or the whole
/// message object when it holds more ([`Message::wire`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text of a text message; empty when [`Message::wire`] holds the
    /// message (see [`Message::display_text`]).
    pub content: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// The whole message object, for a message that is more than a role
    /// and its text: content parts, tool calls, a tool result, a name, a
    /// refusal. `None` for a text message.
    pub wire: Option<WireMessage>,
}

impl Message {
    /// A text message.
    pub fn text(role: Role, content: impl Into<String>, created_at: DateTime<Utc>) -> Message {
        Message {
            role,
            content: content.into(),
            created_at,
            wire: None,
        }
    }

    /// A message from its JSON object: a text message when it is plain
    /// text (see the module docs), else the object kept whole.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when
    /// `json` is not a message object.
    pub fn from_json(json: &str, created_at: DateTime<Utc>) -> Result<Message> {
        let shape = Shape::read(json)?;
        let role = shape.role()?;
        if let (true, true, Some(text)) = (shape.plain, role.may_be_text(), shape.text) {
            return Ok(Message::text(role, text, created_at));
        }
        let json = RawValue::from_string(json.to_owned())
            .map_err(|_| Error::invalid("messages", "a message must be JSON"))?;
        Ok(Message {
            role,
            content: String::new(),
            created_at,
            wire: Some(WireMessage { json, role }),
        })
    }

    /// A borrowed view.
    pub fn view(&self) -> MessageRef<'_> {
        MessageRef {
            role: self.role,
            content: &self.content,
            wire: self.wire.as_ref().map(WireMessage::as_str),
            created_at: self.created_at,
        }
    }

    /// The message's text as a person reads it: the text, the text parts
    /// joined by newlines, or a refusal; empty when it has none (a tool
    /// call).
    pub fn display_text(&self) -> Cow<'_, str> {
        self.view().display_text()
    }
}

/// A borrowed message: what history iteration yields and what a turn
/// stores.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Who wrote it.
    pub role: Role,
    /// The text of a text message; empty when `wire` holds the message.
    pub content: &'a str,
    /// The whole message object's JSON text, for a message that is more
    /// than text.
    pub wire: Option<&'a str>,
    /// When it was (or is being) stored.
    pub created_at: DateTime<Utc>,
}

impl<'a> MessageRef<'a> {
    /// An owned copy.
    pub fn to_message(&self) -> Message {
        Message {
            role: self.role,
            content: self.content.to_owned(),
            created_at: self.created_at,
            // Made from a `WireMessage`, so it parses; should it not, the
            // message keeps its text alone.
            wire: self
                .wire
                .and_then(|json| RawValue::from_string(json.to_owned()).ok())
                .map(|json| WireMessage {
                    json,
                    role: self.role,
                }),
        }
    }

    /// See [`Message::display_text`].
    pub fn display_text(&self) -> Cow<'a, str> {
        match self.wire {
            None => Cow::Borrowed(self.content),
            Some(json) => wire_text(json).unwrap_or_default(),
        }
    }

    /// The calls an assistant message makes, each named as its answer
    /// names it ([`MessageRef::answers`]): a tool call by its `id`, the
    /// older single `function_call` as `function:` and its name.
    pub fn calls(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct Calls {
            #[serde(default)]
            tool_calls: Option<Vec<Call>>,
            #[serde(default)]
            function_call: Option<Function>,
        }
        #[derive(Deserialize)]
        struct Call {
            #[serde(default)]
            id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Function {
            #[serde(default)]
            name: Option<String>,
        }
        let Some(json) = self.wire else {
            return Vec::new();
        };
        let Ok(calls) = serde_json::from_str::<Calls>(json) else {
            return Vec::new();
        };
        let mut out: Vec<String> = calls
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        if let Some(name) = calls.function_call.and_then(|f| f.name) {
            out.push(format!("function:{name}"));
        }
        out
    }

    /// The call a tool's or function's result answers: its
    /// `tool_call_id`, or for the older `function` role `function:` and its
    /// `name`.
    pub fn answers(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            tool_call_id: Option<String>,
            #[serde(default)]
            name: Option<String>,
        }
        let answer = serde_json::from_str::<Answer>(self.wire?).ok()?;
        match self.role {
            Role::Function => answer.name.map(|n| format!("function:{n}")),
            _ => answer.tool_call_id,
        }
    }

    /// Whether an assistant message says anything: text, content parts,
    /// tool calls or a refusal.
    pub fn has_substance(&self) -> bool {
        let Some(json) = self.wire else {
            return !self.content.is_empty();
        };
        let Ok(members) = Members::parse(json.as_bytes()) else {
            return false;
        };
        members.0.iter().any(|(k, v)| match k.as_ref() {
            "content" => json::as_str(v).map_or(!json::is_nothing(v), |s| !s.is_empty()),
            "tool_calls" | "function_call" | "audio" => !json::is_nothing(v),
            "refusal" => json::as_str(v).is_some_and(|s| !s.is_empty()),
            _ => false,
        })
    }
}

/// The readable text of a message object: string content, or its text
/// parts joined by newlines, or its refusal.
fn wire_text(json: &str) -> Option<Cow<'static, str>> {
    #[derive(Deserialize)]
    struct Shape {
        #[serde(default)]
        content: Option<Content>,
        #[serde(default)]
        refusal: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        refusal: Option<String>,
    }
    let shape: Shape = serde_json::from_str(json).ok()?;
    let text = match shape.content {
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| p.text.or(p.refusal))
            .collect::<Vec<_>>()
            .join("\n"),
        None => String::new(),
    };
    if text.is_empty() {
        if let Some(refusal) = shape.refusal {
            return Some(Cow::Owned(refusal));
        }
    }
    Some(Cow::Owned(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    #[test]
    fn plain_text_objects_become_text_messages() {
        for json in [
            r#"{"role":"user","content":"Hi"}"#,
            r#"{"role":"assistant","content":"Hi","refusal":null,"annotations":[]}"#,
            r#"{"content":"Hi","role":"developer"}"#,
        ] {
            let m = Message::from_json(json, at()).unwrap();
            assert!(m.wire.is_none(), "{json}");
            assert_eq!(m.content, "Hi");
        }
    }

    #[test]
    fn anything_more_is_kept_whole() {
        let cases = [
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}"#,
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
            r#"{"role":"tool","tool_call_id":"c1","content":"42"}"#,
            r#"{"role":"user","name":"ann","content":"Hi"}"#,
            r#"{"role":"assistant","content":"x","vendor_field":1}"#,
        ];
        for json in cases {
            let m = Message::from_json(json, at()).unwrap();
            assert_eq!(m.wire.as_ref().map(WireMessage::as_str), Some(json));
            assert!(m.content.is_empty());
        }
        let parts = Message::from_json(cases[0], at()).unwrap();
        assert_eq!(parts.display_text(), "a");
        let call = Message::from_json(cases[1], at()).unwrap();
        assert_eq!(call.view().calls(), ["c1"]);
        assert!(call.view().has_substance());
        let result = Message::from_json(cases[2], at()).unwrap();
        assert_eq!(result.role, Role::Tool);
        assert_eq!(result.view().answers().as_deref(), Some("c1"));
        let legacy = Message::from_json(
            r#"{"role":"assistant","content":null,"function_call":{"name":"f","arguments":"{}"}}"#,
            at(),
        )
        .unwrap();
        assert_eq!(legacy.view().calls(), ["function:f"]);
        let answer =
            Message::from_json(r#"{"role":"function","name":"f","content":"1"}"#, at()).unwrap();
        assert_eq!(answer.view().answers().as_deref(), Some("function:f"));
    }

    #[test]
    fn substance_and_bad_objects() {
        let empty = Message::from_json(r#"{"role":"assistant","content":null}"#, at()).unwrap();
        assert!(!empty.view().has_substance());
        let refusal = Message::from_json(
            r#"{"role":"assistant","content":null,"refusal":"No."}"#,
            at(),
        )
        .unwrap();
        assert!(refusal.view().has_substance());
        assert_eq!(refusal.display_text(), "No.");
        assert!(!Message::text(Role::Assistant, "", at())
            .view()
            .has_substance());
        for bad in [
            r#"[1]"#,
            r#"{"content":"x"}"#,
            r#"{"role":"robot","content":"x"}"#,
        ] {
            assert!(Message::from_json(bad, at()).is_err(), "{bad}");
        }
    }
}
