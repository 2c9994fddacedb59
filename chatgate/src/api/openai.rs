//! OpenAI's chat-completions request, as `/v1` reads it: faithfully. The
//! gateway checks only what it acts on (a JSON object, a `model` it
//! serves, `messages` a non-empty array of objects with a string `role`,
//! `stream` and `stream_options` of the right types) and keeps every
//! other member exactly as sent, to forward it. Its changes are the
//! operator's: `openai.max_tokens` caps the reply under the name the
//! client used, `openai.drop_params` are removed, `openai.deny_params`
//! refused. The reply shapes live with their framing
//! ([`crate::framing::chat_completions`]).

use chatcore::Fields;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// What the operator changes in every `/v1` request.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `openai.max_tokens`: the most tokens a reply may have.
    pub max_tokens: Option<u32>,
    /// `openai.drop_params`: removed before the request goes upstream.
    pub drop_params: Vec<String>,
    /// `openai.deny_params`: a request holding one is refused.
    pub deny_params: Vec<String>,
}

/// A `POST /v1/chat/completions` body, read as far as the gateway acts on
/// it.
#[derive(Debug)]
pub struct Completions {
    /// The model named.
    pub model: String,
    /// The `messages` array, as sent.
    pub messages: Box<RawValue>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk.
    pub include_usage: bool,
    /// Every other member, as sent (after the operator's changes).
    pub fields: Fields,
}

/// A 400 `invalid_request_error` about `param`.
pub fn bad(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_field(param, msg.into())
}

/// Parses a `POST /v1/chat/completions` body under the operator's
/// `policy`.
///
/// # Errors
/// A validation error (answered 400 `invalid_request_error` on `/v1`)
/// naming the member at fault.
pub fn parse_completions(body: &[u8], policy: &Policy) -> Result<Completions, ApiError> {
    let mut fields = Fields::parse(body).map_err(|e| {
        let mut err = ApiError::invalid_field("", format!("The body must be a JSON object: {e}"));
        err.code = Some("invalid_request");
        err
    })?;
    for denied in &policy.deny_params {
        if fields.get(denied).is_some() {
            return Err(bad(
                denied,
                format!("{denied} is not accepted by this gateway"),
            ));
        }
    }
    let model = match fields.remove("model") {
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(m) if !m.trim().is_empty() => m,
            _ => return Err(bad("model", "model must be a non-empty string")),
        },
        None => return Err(bad("model", "Field required")),
    };
    let messages = fields
        .remove("messages")
        .ok_or_else(|| bad("messages", "Field required"))?;
    check_messages(&messages)?;
    let stream = match fields.get("stream").map(RawValue::get) {
        None | Some("null") => false,
        Some(raw) => serde_json::from_str::<bool>(raw)
            .map_err(|_| bad("stream", "stream must be a boolean"))?,
    };
    let include_usage = match fields.get("stream_options").map(RawValue::get) {
        None | Some("null") => false,
        Some(raw) => {
            let wrong = || {
                bad(
                    "stream_options",
                    "stream_options must be an object; include_usage a boolean",
                )
            };
            let options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(raw).map_err(|_| wrong())?;
            match options.get("include_usage") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => return Err(wrong()),
            }
        }
    };
    for dropped in &policy.drop_params {
        fields.remove(dropped);
    }
    if let Some(cap) = policy.max_tokens {
        cap_tokens(&mut fields, cap);
    }
    Ok(Completions {
        model,
        messages,
        stream,
        include_usage,
        fields,
    })
}

/// Caps the reply length at `cap` under the name the client used
/// (`max_completion_tokens`, the current one, or `max_tokens`), lowering
/// a larger number; a request with neither gets `max_completion_tokens`,
/// the name every current OpenAI model takes.
pub(crate) fn cap_tokens(fields: &mut Fields, cap: u32) {
    let mut named = false;
    for name in ["max_completion_tokens", "max_tokens"] {
        let Some(raw) = fields.get(name) else {
            continue;
        };
        named = true;
        // Only a whole number within the cap stands (a negative one is the
        // upstream's to refuse). Anything else could slip past it: `null`
        // means no limit, and some servers read `1e9` or `"900000"` as a
        // number.
        let within = serde_json::from_str::<i64>(raw.get()).is_ok_and(|n| n <= i64::from(cap));
        if !within {
            fields.set(name, raw_number(cap));
        }
    }
    if !named {
        fields.set("max_completion_tokens", raw_number(cap));
    }
}

fn raw_number(n: u32) -> Box<RawValue> {
    RawValue::from_string(n.to_string()).expect("a number is JSON")
}

/// `messages` must be a non-empty array of objects with a string `role`;
/// what else a message holds is the upstream's to judge.
fn check_messages(messages: &RawValue) -> Result<(), ApiError> {
    /// Read only to check that `role` is a string.
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow, rename = "role")]
        _role: std::borrow::Cow<'a, str>,
    }
    let items: Vec<&RawValue> = serde_json::from_str(messages.get())
        .map_err(|_| bad("messages", "messages must be an array of message objects"))?;
    if items.is_empty() {
        return Err(bad("messages", "messages must hold at least one message"));
    }
    for (i, item) in items.iter().enumerate() {
        if serde_json::from_str::<Shape<'_>>(item.get()).is_err() {
            return Err(bad(
                "messages",
                format!("messages[{i}] must be an object with a string role"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Completions, ApiError> {
        parse_completions(body.as_bytes(), &Policy::default())
    }

    #[test]
    fn everything_but_model_and_messages_is_kept_as_sent() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"top_k":5,
            "stream":true,"stream_options":{"include_usage":true},"n":2,"max_tokens":0}"#;
        let c = parse(body).unwrap();
        assert_eq!(c.model, "m");
        assert!(c.stream && c.include_usage);
        let keys: Vec<&str> = c.fields.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "tools",
                "top_k",
                "stream",
                "stream_options",
                "n",
                "max_tokens"
            ]
        );
        assert_eq!(c.fields.get("max_tokens").unwrap().get(), "0");
        assert!(c.messages.get().contains("\"type\":\"text\""));
    }

    #[test]
    fn only_what_the_gateway_acts_on_is_checked() {
        for body in [
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[{"content":"x"}]}"#,
            r#"{"model":"m","messages":["x"]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":1}"#,
            r#"[1]"#,
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.openai_body().0, hyper::StatusCode::BAD_REQUEST, "{body}");
        }
        // Roles, content shapes and values are the upstream's to judge.
        parse(r#"{"model":"m","messages":[{"role":"robot","content":null}],"temperature":9}"#)
            .unwrap();
    }

    #[test]
    fn the_operator_caps_drops_and_denies() {
        let policy = Policy {
            max_tokens: Some(100),
            drop_params: vec!["logit_bias".into()],
            deny_params: vec!["seed".into()],
        };
        let c = parse_completions(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":500,"max_tokens":50,"logit_bias":{"1":2}}"#,
            &policy,
        )
        .unwrap();
        assert_eq!(c.fields.get("max_completion_tokens").unwrap().get(), "100");
        assert_eq!(c.fields.get("max_tokens").unwrap().get(), "50");
        assert!(c.fields.get("logit_bias").is_none());
        let none = parse_completions(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            &policy,
        )
        .unwrap();
        assert_eq!(
            none.fields.get("max_completion_tokens").unwrap().get(),
            "100"
        );
        let e = parse_completions(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1}"#,
            &policy,
        )
        .unwrap_err();
        assert_eq!(e.openai_body().1["error"]["param"], "seed");
        // What is not a whole number within the cap becomes the cap.
        for value in ["null", "1e9", "\"900000\"", "100.5"] {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"max_tokens":{value}}}"#
            );
            let c = parse_completions(body.as_bytes(), &policy).unwrap();
            assert_eq!(c.fields.get("max_tokens").unwrap().get(), "100", "{value}");
        }
    }
}
