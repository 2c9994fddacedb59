//! The HTTP contract's JSON shapes, and parsing of request bodies into them
//! with FastAPI-style 422 lists.
//!
//! Parsing tries a borrowed, typed decode first (the hot path allocates
//! nothing for well-formed input); only a body that fails it is decoded
//! into a `serde_json::Value` to list every problem, as FastAPI would.

use std::borrow::Cow;

use chatcore::{format_time, Message, SessionInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, Invalid};

pub mod openai;

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
}

impl From<chatcore::Usage> for UsageOut {
    fn from(u: chatcore::Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
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

/// The most messages one page of `GET /session/{id}/messages` holds (and
/// its default size).
pub const MAX_PAGE: usize = 1000;

/// `GET /session/{id}/messages` query: `limit` (1 to [`MAX_PAGE`]) and
/// `after` (a cursor from an earlier page).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Messages per page.
    pub limit: usize,
    /// Continue after this cursor.
    pub after: Option<chatcore::MessageCursor>,
}

/// A 422 about query parameter `name`.
pub fn bad_query(name: &str, msg: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError::validation(vec![Invalid {
        loc: vec!["query".into(), name.into()],
        msg: msg.into(),
        kind: "value_error",
    }])
}

/// The `limit` (1 to `max`, default `max`) and raw `after` of a listing's
/// query string; other parameters go to `other`, which may refuse them.
///
/// # Errors
/// 422 naming the parameter at fault.
pub fn parse_listing<'q>(
    query: Option<&'q str>,
    max: usize,
    mut other: impl FnMut(&str, &'q str) -> Result<(), ApiError>,
) -> Result<(usize, Option<&'q str>), ApiError> {
    let mut limit = max;
    let mut after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        bad_query(
                            "limit",
                            format!("Input should be an integer from 1 to {max}"),
                        )
                    })?;
            }
            "after" => after = Some(value),
            _ => other(key, value)?,
        }
    }
    Ok((limit, after))
}

/// Parses the query string of `GET /session/{id}/messages`.
///
/// # Errors
/// 422 naming the parameter at fault.
pub fn parse_page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut out = PageQuery {
        limit: MAX_PAGE,
        after: None,
    };
    let bad = |name: &str, msg: String| {
        ApiError::validation(vec![Invalid {
            loc: vec!["query".into(), name.into()],
            msg: msg.into(),
            kind: "value_error",
        }])
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                out.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "limit",
                            format!("Input should be an integer from 1 to {MAX_PAGE}"),
                        )
                    })?;
            }
            "after" => {
                out.after = Some(chatcore::MessageCursor::parse(value).ok_or_else(|| {
                    bad(
                        "after",
                        "Input should be a cursor from an earlier page".into(),
                    )
                })?);
            }
            // Unknown parameters are ignored, as FastAPI does.
            _ => {}
        }
    }
    Ok(out)
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

/// Whether `body` is a JSON object (serde would also read a struct from an
/// array of its fields, which the contract does not allow).
fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The expected type of a field, for validation.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Object,
}

/// One field a body may carry.
#[derive(Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
    /// Non-empty string required.
    min_len: bool,
    /// Exact string required.
    literal: Option<&'static str>,
    /// Integer range.
    range: Option<(i64, i64)>,
}

const fn field(name: &'static str, kind: Kind, required: bool) -> Field {
    Field {
        name,
        kind,
        required,
        min_len: false,
        literal: None,
        range: None,
    }
}

const CHAT_FIELDS: &[Field] = &[
    field("session_id", Kind::Str, true),
    Field {
        literal: Some("user"),
        ..field("role", Kind::Str, true)
    },
    Field {
        min_len: true,
        ..field("content", Kind::Str, true)
    },
    field("stream", Kind::Bool, false),
];

const FEEDBACK_FIELDS: &[Field] = &[
    field("session_id", Kind::Str, true),
    Field {
        min_len: true,
        ..field("feedback", Kind::Str, true)
    },
    Field {
        range: Some((1, 5)),
        ..field("rating", Kind::Int, false)
    },
];

const INITIALIZE_FIELDS: &[Field] = &[
    field("system_prompt", Kind::Str, false),
    field("metadata", Kind::Object, false),
];

/// Lists everything wrong with `body` against `fields`, FastAPI-style.
fn validate(body: &[u8], fields: &[Field]) -> Vec<Invalid> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let offset = byte_offset(body, e.line(), e.column());
            return vec![Invalid {
                loc: vec!["body".into(), offset.into()],
                msg: "JSON decode error".into(),
                kind: "json_invalid",
            }];
        }
    };
    let Value::Object(map) = value else {
        return vec![Invalid {
            loc: vec!["body".into()],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            kind: "model_attributes_type",
        }];
    };
    let mut out = Vec::new();
    for f in fields {
        let v = match map.get(f.name) {
            None if !f.required => continue,
            None => {
                out.push(Invalid::field(f.name, "Field required", "missing"));
                continue;
            }
            Some(v) => v,
        };
        match (f.kind, v) {
            (Kind::Str, Value::String(s)) => {
                if let Some(lit) = f.literal {
                    if s != lit {
                        out.push(Invalid::field(
                            f.name,
                            format!("Input should be '{lit}'"),
                            "literal_error",
                        ));
                    }
                }
                if f.min_len && s.is_empty() {
                    out.push(Invalid::field(
                        f.name,
                        "String should have at least 1 character",
                        "string_too_short",
                    ));
                }
            }
            (Kind::Str, _) => out.push(Invalid::field(
                f.name,
                "Input should be a valid string",
                "string_type",
            )),
            (Kind::Int, Value::Number(n)) if n.is_i64() => {
                let n = n.as_i64().unwrap_or_default();
                if let Some((lo, hi)) = f.range {
                    if n < lo {
                        out.push(Invalid::field(
                            f.name,
                            format!("Input should be greater than or equal to {lo}"),
                            "greater_than_equal",
                        ));
                    } else if n > hi {
                        out.push(Invalid::field(
                            f.name,
                            format!("Input should be less than or equal to {hi}"),
                            "less_than_equal",
                        ));
                    }
                }
            }
            (Kind::Int, _) => out.push(Invalid::field(
                f.name,
                "Input should be a valid integer",
                "int_type",
            )),
            (Kind::Bool, Value::Bool(_)) => {}
            (Kind::Bool, _) => out.push(Invalid::field(
                f.name,
                "Input should be a valid boolean",
                "bool_type",
            )),
            (Kind::Object, Value::Object(_)) => {}
            (Kind::Object, _) => out.push(Invalid::field(
                f.name,
                "Input should be a valid dictionary",
                "dict_type",
            )),
        }
    }
    out
}

fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in body.split(|&b| b == b'\n').enumerate() {
        if i + 1 == line {
            return offset + column.saturating_sub(1);
        }
        offset += l.len() + 1;
    }
    body.len()
}

fn rejected(body: &[u8], fields: &[Field]) -> ApiError {
    let items = validate(body, fields);
    if items.is_empty() {
        // The typed decode failed for a reason the lister does not model
        // (e.g. a string too long for a Cow borrow cannot fail; kept safe).
        return ApiError::validation(vec![Invalid {
            loc: vec!["body".into()],
            msg: "Invalid request body".into(),
            kind: "value_error",
        }]);
    }
    ApiError::validation(items)
}

/// Parses a `POST /chat/` body.
///
/// # Errors
/// 422 with every problem listed.
pub fn parse_chat(body: &[u8]) -> Result<ChatIn<'_>, ApiError> {
    match serde_json::from_slice::<ChatIn<'_>>(body) {
        Ok(c) if c.role == "user" && !c.content.is_empty() && is_object(body) => Ok(c),
        _ => Err(rejected(body, CHAT_FIELDS)),
    }
}

/// Parses a `POST /feedback/` body.
///
/// # Errors
/// 422 with every problem listed.
pub fn parse_feedback(body: &[u8]) -> Result<FeedbackIn<'_>, ApiError> {
    match serde_json::from_slice::<FeedbackIn<'_>>(body) {
        Ok(f)
            if !f.feedback.is_empty()
                && f.rating.is_none_or(|r| (1..=5).contains(&r))
                && is_object(body) =>
        {
            Ok(f)
        }
        _ => Err(rejected(body, FEEDBACK_FIELDS)),
    }
}

/// Parses a `POST /session/initialize_session` body: empty, `{}`, or the
/// optional extension fields.
///
/// # Errors
/// 422 with every problem listed.
pub fn parse_initialize(body: &[u8]) -> Result<InitializeIn, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(InitializeIn::default());
    }
    match serde_json::from_slice::<InitializeIn>(body) {
        Ok(i) if is_object(body) => Ok(i),
        _ => Err(rejected(body, INITIALIZE_FIELDS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(e: ApiError) -> Vec<Invalid> {
        match e.detail {
            crate::error::Detail::Validation(v) => v,
            other => panic!("expected a list, got {other:?}"),
        }
    }

    #[test]
    fn good_chat_body_borrows() {
        let c = parse_chat(br#"{"session_id":"x","role":"user","content":"Hi"}"#).unwrap();
        assert!(matches!(c.content, Cow::Borrowed("Hi")));
    }

    #[test]
    fn chat_errors_are_listed_like_fastapi() {
        let v = items(parse_chat(br#"{"session_id":"x","role":"bot","content":""}"#).unwrap_err());
        let kinds: Vec<_> = v.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["literal_error", "string_too_short"]);
        assert_eq!(v[1].loc, vec![Value::from("body"), Value::from("content")]);
        let v = items(parse_chat(br#"{"session_id":1}"#).unwrap_err());
        let kinds: Vec<_> = v.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["string_type", "missing", "missing"]);
        let v = items(parse_chat(b"{\"session_id\": ").unwrap_err());
        assert_eq!(v[0].kind, "json_invalid");
        let v = items(parse_chat(b"[1,2]").unwrap_err());
        assert_eq!(v[0].kind, "model_attributes_type");
    }

    #[test]
    fn page_queries_are_bounded() {
        assert_eq!(parse_page_query(None).unwrap().limit, MAX_PAGE);
        let q = parse_page_query(Some("limit=10&after=7&x=1")).unwrap();
        assert_eq!((q.limit, q.after.map(|c| c.position())), (10, Some(7)));
        for bad in ["limit=0", "limit=1001", "limit=x", "after=-1", "after=abc"] {
            assert!(parse_page_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_must_be_a_boolean() {
        let c = parse_chat(br#"{"session_id":"x","role":"user","content":"Hi","stream":true}"#)
            .unwrap();
        assert_eq!(c.stream, Some(true));
        let v = items(
            parse_chat(br#"{"session_id":"x","role":"user","content":"Hi","stream":"yes"}"#)
                .unwrap_err(),
        );
        assert_eq!(v[0].kind, "bool_type");
    }

    #[test]
    fn feedback_rating_is_bounded() {
        assert!(parse_feedback(br#"{"session_id":"x","feedback":"ok","rating":5}"#).is_ok());
        let v =
            items(parse_feedback(br#"{"session_id":"x","feedback":"ok","rating":6}"#).unwrap_err());
        assert_eq!(v[0].kind, "less_than_equal");
        let v = items(
            parse_feedback(br#"{"session_id":"x","feedback":"ok","rating":"5"}"#).unwrap_err(),
        );
        assert_eq!(v[0].kind, "int_type");
    }

    #[test]
    fn initialize_accepts_nothing_or_extensions() {
        assert!(parse_initialize(b"").unwrap().system_prompt.is_none());
        assert!(parse_initialize(b"{}").is_ok());
        let i = parse_initialize(br#"{"system_prompt":"Be brief","metadata":{"a":1}}"#).unwrap();
        assert_eq!(i.system_prompt.as_deref(), Some("Be brief"));
        let v = items(parse_initialize(br#"{"metadata":[1]}"#).unwrap_err());
        assert_eq!(v[0].kind, "dict_type");
    }

    #[test]
    fn arrays_and_nulls_outside_the_contract_are_422() {
        let v = items(parse_initialize(br#"["Be brief", {}]"#).unwrap_err());
        assert_eq!(v[0].kind, "model_attributes_type");
        let v = items(parse_initialize(br#"{"metadata":null}"#).unwrap_err());
        assert_eq!(v[0].kind, "dict_type");
        let v = items(parse_initialize(br#"{"system_prompt":null}"#).unwrap_err());
        assert_eq!(v[0].kind, "string_type");
        let v = items(parse_chat(br#"["x","user","Hi"]"#).unwrap_err());
        assert_eq!(v[0].kind, "model_attributes_type");
        let v = items(
            parse_chat(br#"{"session_id":"x","role":"user","content":"Hi","stream":null}"#)
                .unwrap_err(),
        );
        assert_eq!(v[0].kind, "bool_type");
        let v = items(
            parse_feedback(br#"{"session_id":"x","feedback":"ok","rating":null}"#).unwrap_err(),
        );
        assert_eq!(v[0].kind, "int_type");
        let v = items(parse_feedback(br#"["x","ok"]"#).unwrap_err());
        assert_eq!(v[0].kind, "model_attributes_type");
    }
}
