//! The HTTP contract's JSON shapes, and parsing of request bodies into them
//! with FastAPI-style 422 lists.
//!
//! Parsing tries a borrowed, typed decode first (the hot path allocates
//! nothing for well-formed input); only a body that fails it is decoded
//! into a `serde_json::Value` to list every problem, as FastAPI would
//! (`validate.rs`). `query.rs` reads listings' query strings, `openai.rs`
//! the OpenAI-compatible bodies, `responses.rs` the Responses API's.

use std::borrow::Cow;

use chatcore::{format_time, Message, SessionInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod openai;
mod query;
pub mod responses;
mod validate;

pub use query::{bad_query, next_page, parse_listing, parse_page_query, PageQuery, MAX_PAGE};
pub use validate::{parse_chat, parse_feedback, parse_initialize};

/// `POST /chat/` body.
#[derive(Debug, Deserialize)]
pub struct ChatIn<'a> {
    /// The session.
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    /// Must be `"user"`.
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    /// The message.
    #[serde(borrow)]
    pub content: Cow<'a, str>,
    /// Answer as server-sent events.
    #[serde(default, deserialize_with = "present")]
    pub stream: Option<bool>,
}

/// `POST /chat/` answer.
#[derive(Debug, Serialize)]
pub struct ChatOut<'a> {
    /// The session.
    pub session_id: &'a str,
    /// Always `"assistant"`.
    pub role: &'static str,
    /// The reply.
    pub content: &'a str,
}

/// `POST /feedback/` body.
#[derive(Debug, Deserialize)]
pub struct FeedbackIn<'a> {
    /// The session.
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    /// The feedback text.
    #[serde(borrow)]
    pub feedback: Cow<'a, str>,
    /// Optional rating, 1 to 5.
    #[serde(default, deserialize_with = "present")]
    pub rating: Option<i64>,
}

/// `POST /session/initialize_session` body (optional).
#[derive(Debug, Default, Deserialize)]
pub struct InitializeIn {
    /// Replaces `openai.system_prompt` for this session.
    #[serde(default, deserialize_with = "present")]
    pub system_prompt: Option<String>,
    /// Stored verbatim.
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// A session, as `initialize_session` and `GET /session/{id}` show it.
#[derive(Debug, Serialize)]
pub struct SessionOut {
    /// The id.
    pub session_id: String,
    /// Creation time.
    pub created_at: String,
    /// Last successful turn (or creation).
    pub last_active: String,
    /// 1 while active, 0 once expired.
    pub is_active: u8,
    /// Tokens the session's turns cost (`GET /session/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    /// The bearer token for this session (`initialize_session` in
    /// `session_token` mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// `GET /sessions` answer.
#[derive(Debug, Serialize)]
pub struct SessionsOut {
    /// Most recently active first.
    pub sessions: Vec<SessionOut>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Token counts, as the API shows them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageOut {
    /// Tokens in the prompts.
    pub prompt_tokens: u32,
    /// Tokens in the replies.
    pub completion_tokens: u32,
    /// Of the prompts' tokens, those the provider served from its prompt
    /// cache.
    pub cached_tokens: u32,
}

impl From<chatcore::Usage> for UsageOut {
    fn from(u: chatcore::Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
        }
    }
}

impl From<&SessionInfo> for SessionOut {
    fn from(info: &SessionInfo) -> Self {
        SessionOut {
            session_id: info.session.id.to_string(),
            created_at: format_time(&info.session.created_at),
            last_active: format_time(&info.session.last_active),
            is_active: u8::from(info.is_active),
            usage: None,
            session_token: None,
        }
    }
}

/// One message of `GET /session/{id}/messages`: `{"role", "content",
/// "created_at"}` for a text message (the seed's shape, exactly); for a
/// message kept whole, its members as stored (content parts, `tool_calls`,
/// `tool_call_id`, `name`, `refusal`, …) and `created_at`.
#[derive(Debug)]
pub struct MessageOut<'a> {
    message: &'a Message,
    created_at: String,
}

impl<'a> From<&'a Message> for MessageOut<'a> {
    fn from(m: &'a Message) -> Self {
        MessageOut {
            message: m,
            created_at: format_time(&m.created_at),
        }
    }
}

impl Serialize for MessageOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self
            .message
            .wire
            .as_ref()
            .and_then(|w| chatcore::Fields::parse(w.as_str().as_bytes()).ok());
        let mut map = s.serialize_map(None)?;
        match &fields {
            Some(fields) => {
                for (k, v) in fields.iter().filter(|(k, _)| *k != "created_at") {
                    map.serialize_entry(k, v)?;
                }
            }
            None => {
                map.serialize_entry("role", self.message.role.as_str())?;
                map.serialize_entry("content", &self.message.content)?;
            }
        }
        map.serialize_entry("created_at", &self.created_at)?;
        map.end()
    }
}

/// `GET /session/{id}/messages` answer.
#[derive(Debug, Serialize)]
pub struct MessagesOut<'a> {
    /// The session.
    pub session_id: String,
    /// Oldest first.
    pub messages: Vec<MessageOut<'a>>,
    /// Pass as `after` for the next page; absent on the last page (so a
    /// history that fits one page has the original two-field shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `{"detail": "Feedback received"}` and friends.
#[derive(Debug, Serialize)]
pub struct DetailOut {
    /// The sentence.
    pub detail: &'static str,
}

/// An optional field that, when present, must hold a value: `null` is
/// refused (omit the field instead), as the OpenAPI document says.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
