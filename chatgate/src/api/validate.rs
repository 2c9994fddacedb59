//! Request bodies read into their shapes: a borrowed, typed decode first,
//! and for a body that fails it, every problem listed FastAPI-style.

use serde_json::Value;

use super::{ChatIn, FeedbackIn, InitializeIn};
use crate::error::{ApiError, Invalid};

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
        return ApiError::invalid_field("", "Invalid request body");
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
    use std::borrow::Cow;

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
