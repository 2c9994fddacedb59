//! OpenAI's Responses API request (`POST /v1/responses`), translated to
//! one chat-completions call: input items become messages, function tools
//! and `text.format` take their chat-completions names, and every member
//! this API does not name is forwarded as sent (a server's own sampling
//! fields, say). What the response object repeats back is kept aside.
//! Built-in tools and background responses have no chat-completions
//! equivalent: refused, not ignored.

use chatcore::{Fields, Message};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::api::openai::{bad, Policy};
use crate::error::ApiError;

/// A `POST /v1/responses` body, read and translated.
#[derive(Debug)]
pub struct ResponsesRequest {
    /// The model named.
    pub model: String,
    /// The input items as the turn's messages.
    pub messages: Vec<Message>,
    /// The input items as the API lists them back, not yet named; `None`
    /// when the input was one text (its one item is the user message
    /// stored: [`text_input_item`]).
    pub items: Option<Vec<Value>>,
    /// This response's system prompt (not carried to the next response).
    pub instructions: Option<String>,
    /// The response this one continues from.
    pub previous_response_id: Option<String>,
    /// The conversation this response joins (its id).
    pub conversation: Option<String>,
    /// Whether to keep the response (default true).
    pub store: bool,
    /// Whether to stream events.
    pub stream: bool,
    /// The chat-completions members to send upstream.
    pub fields: Fields,
    /// What the response object repeats of the request.
    pub echo: Map<String, Value>,
}

fn unsupported(param: &str, msg: impl Into<String>) -> ApiError {
    bad(param, msg).with_code("unsupported")
}

fn raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("a Value is JSON")
}

/// A conversation's id: `conv_` and its session's id.
pub fn conversation_id(session: chatcore::SessionId) -> String {
    format!("conv_{}", session.as_uuid().simple())
}

/// The input item a text input is: one user message of `text`.
pub fn text_input_item(text: &str) -> Value {
    json!({"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}],
        "status": "completed"})
}

/// A fresh id with `prefix` (`resp`, `msg`, …): 32 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Parses and translates a `POST /v1/responses` body under the operator's
/// `policy` (its caps and dropped or refused members apply to the
/// translated request).
///
/// # Errors
/// A validation error naming the member at fault; built-in tools and
/// `background: true` are 400 `unsupported`.
pub fn parse_responses(body: &[u8], policy: &Policy) -> Result<ResponsesRequest, ApiError> {
    // Members stay the raw text they came as: what is forwarded goes
    // upstream byte for byte, and only what this API names is parsed.
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
    // A member this API names, parsed; `None` when absent.
    let take = |fields: &mut Fields, name: &str| -> Result<Option<Value>, ApiError> {
        fields
            .remove(name)
            .map(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|e| bad(name, format!("{name} cannot be read: {e}")))
            })
            .transpose()
    };
    let text_or_null = |fields: &mut Fields, name: &str| -> Result<Option<String>, ApiError> {
        match fields.remove(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| bad(name, format!("{name} must be a string"))),
        }
    };
    let flag = |fields: &mut Fields, name: &str, default: bool| -> Result<bool, ApiError> {
        match fields.remove(name) {
            None => Ok(default),
            Some(raw) => match raw.get() {
                "null" => Ok(default),
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad(name, format!("{name} must be a boolean"))),
            },
        }
    };
    let instructions = text_or_null(&mut fields, "instructions")?;
    let previous_response_id = text_or_null(&mut fields, "previous_response_id")?;
    let conversation = match take(&mut fields, "conversation")? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Object(o)) => match o.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err(bad("conversation", "conversation.id must be a string")),
        },
        Some(_) => {
            return Err(bad(
                "conversation",
                "conversation must be an id or an object with one",
            ))
        }
    };
    if previous_response_id.is_some() && conversation.is_some() {
        return Err(bad(
            "conversation",
            "previous_response_id and conversation cannot be used together",
        ));
    }
    let store = flag(&mut fields, "store", true)?;
    let stream = flag(&mut fields, "stream", false)?;
    if flag(&mut fields, "background", false)? {
        return Err(unsupported(
            "background",
            "background responses are not supported by this gateway",
        ));
    }
    let input = take(&mut fields, "input")?.ok_or_else(|| bad("input", "Field required"))?;
    let now = chrono::Utc::now();
    let (messages, items) = read_input(input, now)?;

    let mut echo = Map::new();
    // Function tools take the chat-completions shape; no other kind has one.
    if let Some(tools) = take(&mut fields, "tools")? {
        if !tools.is_null() {
            let list = tools
                .as_array()
                .ok_or_else(|| bad("tools", "tools must be an array"))?;
            let mut out = Vec::with_capacity(list.len());
            for tool in list {
                out.push(chat_tool(tool)?);
            }
            if !out.is_empty() {
                fields.set("tools", raw(&Value::Array(out)));
            }
            echo.insert("tools".into(), tools);
        }
    }
    if let Some(choice) = take(&mut fields, "tool_choice")? {
        let chat =
            match &choice {
                Value::String(_) | Value::Null => choice.clone(),
                Value::Object(o) => match (o.get("type").and_then(Value::as_str), o.get("name")) {
                    (Some("function"), Some(Value::String(name))) => {
                        json!({"type": "function", "function": {"name": name}})
                    }
                    (Some("allowed_tools"), _) => choice.clone(),
                    _ => return Err(unsupported(
                        "tool_choice",
                        "tool_choice names a built-in tool, which this gateway does not support",
                    )),
                },
                _ => {
                    return Err(bad(
                        "tool_choice",
                        "tool_choice must be a string or an object",
                    ))
                }
            };
        if !chat.is_null() {
            fields.set("tool_choice", raw(&chat));
        }
        echo.insert("tool_choice".into(), choice);
    }
    let text = take(&mut fields, "text")?;
    let reasoning = take(&mut fields, "reasoning")?;
    for (name, value) in [("text", &text), ("reasoning", &reasoning)] {
        if value
            .as_ref()
            .is_some_and(|v| !(v.is_object() || v.is_null()))
        {
            return Err(bad(name, format!("{name} must be an object")));
        }
    }
    if let Some(text) = text {
        if let Some(format) = text.get("format").filter(|f| !f.is_null()) {
            let format_type = format.get("type").and_then(Value::as_str);
            match format_type {
                Some("text") => {}
                Some("json_object") => {
                    fields.set("response_format", raw(&json!({"type": "json_object"})));
                }
                Some("json_schema") => {
                    let mut schema = format.as_object().cloned().unwrap_or_default();
                    schema.remove("type");
                    if !schema.contains_key("schema") {
                        return Err(bad("text.format.schema", "Field required"));
                    }
                    fields.set(
                        "response_format",
                        raw(&json!({"type": "json_schema", "json_schema": schema})),
                    );
                }
                _ => {
                    return Err(bad(
                        "text.format.type",
                        "text.format.type must be text, json_object or json_schema",
                    ))
                }
            }
        }
        if let Some(verbosity) = text.get("verbosity").filter(|v| !v.is_null()) {
            fields.set("verbosity", raw(verbosity));
        }
        echo.insert("text".into(), text);
    }
    if let Some(reasoning) = reasoning {
        if let Some(effort) = reasoning.get("effort").filter(|v| !v.is_null()) {
            fields.set("reasoning_effort", raw(effort));
        }
        echo.insert("reasoning".into(), reasoning);
    }
    if let Some(max) = take(&mut fields, "max_output_tokens")? {
        // OpenAI's floor: a reply cut shorter says nothing worth storing.
        if !(max.is_null() || max.as_u64().is_some_and(|n| n >= 16)) {
            return Err(bad(
                "max_output_tokens",
                "max_output_tokens must be an integer of at least 16",
            ));
        }
        if !max.is_null() {
            fields.set("max_completion_tokens", raw(&max));
        }
        echo.insert("max_output_tokens".into(), max);
    }
    // Repeated in the response object; not a chat-completions member.
    for name in ["metadata", "truncation", "include"] {
        if let Some(v) = take(&mut fields, name)? {
            echo.insert(name.into(), v);
        }
    }
    if let Some(m) = echo.get("metadata") {
        if !(m.is_object() || m.is_null()) {
            return Err(bad("metadata", "metadata must be an object"));
        }
    }
    // A chat-completions streaming option; this API has its own events.
    fields.remove("stream_options");
    // The rest (temperature, top_p, parallel_tool_calls, user,
    // safety_identifier, prompt_cache_key, service_tier, a server's own
    // fields) means the same in both APIs: forwarded as sent, and those the
    // response object repeats kept for it too.
    for name in [
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "service_tier",
        "prompt_cache_key",
        "top_logprobs",
    ] {
        if let Some(v) = fields.get(name) {
            let v = serde_json::from_str(v.get())
                .map_err(|e| bad(name, format!("{name} cannot be read: {e}")))?;
            echo.insert(name.into(), v);
        }
    }
    for dropped in &policy.drop_params {
        fields.remove(dropped);
    }
    if let Some(cap) = policy.max_tokens {
        crate::api::openai::cap_tokens(&mut fields, cap);
    }
    if let Some(i) = &instructions {
        echo.insert("instructions".into(), Value::String(i.clone()));
    }
    Ok(ResponsesRequest {
        model,
        messages,
        items,
        instructions,
        previous_response_id,
        conversation,
        store,
        stream,
        fields,
        echo,
    })
}

/// A Responses function tool as chat completions names it.
fn chat_tool(tool: &Value) -> Result<Value, ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tools", "a function tool needs a name"))?;
            let mut function = Map::new();
            function.insert("name".into(), Value::String(name.to_owned()));
            for member in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(member).filter(|v| !v.is_null()) {
                    function.insert(member.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        }
        Some(other) => Err(unsupported(
            "tools",
            format!(
                "tools of type {other} are built into OpenAI's service; this gateway supports \
                 function tools"
            ),
        )),
        None => Err(bad("tools", "each tool needs a type")),
    }
}

/// The input (a string, or items) as the turn's messages and as the items
/// the API lists back (`None` for a string: see [`ResponsesRequest::items`]).
///
/// # Errors
/// 400 naming the item at fault.
pub fn read_input(
    input: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Vec<Message>, Option<Vec<Value>>), ApiError> {
    let items = match input {
        // The common case, made directly: one user message of text.
        Value::String(text) => {
            if text.is_empty() {
                return Err(bad("input", "input must not be empty"));
            }
            return Ok((vec![Message::text(chatcore::Role::User, text, now)], None));
        }
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(bad(
                "input",
                "input must be a string or a non-empty array of items",
            ))
        }
    };
    let mut messages: Vec<Message> = Vec::with_capacity(items.len());
    let mut listed = Vec::with_capacity(items.len());
    // Consecutive function calls are one assistant message's tool calls.
    let mut calls: Vec<Value> = Vec::new();
    let flush = |calls: &mut Vec<Value>, messages: &mut Vec<Message>| -> Result<(), ApiError> {
        if !calls.is_empty() {
            let m =
                json!({"role": "assistant", "content": null, "tool_calls": std::mem::take(calls)});
            messages.push(Message::from_json(&m.to_string(), now)?);
        }
        Ok(())
    };
    for item in items {
        let Value::Object(mut item) = item else {
            return Err(bad("input", "each input item must be an object"));
        };
        let kind = match item.get("type") {
            None => "message".to_owned(),
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(bad("input", "an item's type must be a string")),
        };
        match kind.as_str() {
            "message" => {
                flush(&mut calls, &mut messages)?;
                let role = item
                    .get("role")
                    .and_then(Value::as_str)
                    .filter(|r| matches!(*r, "user" | "system" | "developer" | "assistant"))
                    .ok_or_else(|| {
                        bad(
                            "input",
                            "a message's role must be user, system, developer or assistant",
                        )
                    })?
                    .to_owned();
                let content = item.get("content").cloned().unwrap_or(Value::Null);
                let (chat, parts) = chat_content(&role, content)?;
                let m = json!({"role": role, "content": chat});
                messages.push(Message::from_json(&m.to_string(), now)?);
                item.insert("type".into(), "message".into());
                item.insert("content".into(), Value::Array(parts));
                item.entry("status").or_insert_with(|| "completed".into());
            }
            "function_call" => {
                let call_id = string_member(&item, "call_id")?;
                let name = string_member(&item, "name")?;
                let arguments = string_member(&item, "arguments")?;
                calls.push(json!({
                    "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}
                }));
                item.entry("status").or_insert_with(|| "completed".into());
            }
            "function_call_output" => {
                flush(&mut calls, &mut messages)?;
                let call_id = string_member(&item, "call_id")?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => return Err(bad("input", "a function_call_output needs an output")),
                };
                let m = json!({"role": "tool", "tool_call_id": call_id, "content": output});
                messages.push(Message::from_json(&m.to_string(), now)?);
                item.entry("status").or_insert_with(|| "completed".into());
            }
            // A model's own reasoning is its provider's to replay; another
            // model cannot read it.
            "reasoning" => continue,
            other => {
                return Err(unsupported(
                    "input",
                    format!("input items of type {other} are not supported by this gateway"),
                ))
            }
        }
        listed.push(Value::Object(item));
    }
    flush(&mut calls, &mut messages)?;
    if messages.is_empty() {
        return Err(bad("input", "input holds no message"));
    }
    Ok((messages, Some(listed)))
}

fn string_member(item: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match item.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(bad(
            "input",
            format!("a function call item needs a string {name}"),
        )),
    }
}

/// A message item's content as chat completions takes it, and as the API
/// lists it back (parts).
fn chat_content(role: &str, content: Value) -> Result<(Value, Vec<Value>), ApiError> {
    let text_part = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    match content {
        Value::String(text) => {
            let part = json!({"type": text_part, "text": text});
            Ok((Value::String(text), vec![part]))
        }
        Value::Array(parts) => {
            let mut chat = Vec::with_capacity(parts.len());
            for part in &parts {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                let converted = match kind {
                    "input_text" | "output_text" | "text" => {
                        let text = part
                            .get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("input", "a text part needs a string text"))?;
                        json!({"type": "text", "text": text})
                    }
                    "refusal" => {
                        let text = part.get("refusal").and_then(Value::as_str).unwrap_or("");
                        json!({"type": "text", "text": text})
                    }
                    "input_image" => {
                        let url =
                            part.get("image_url")
                                .and_then(Value::as_str)
                                .ok_or_else(|| {
                                    unsupported(
                                        "input",
                                        "an input_image needs an image_url (file ids are OpenAI's)",
                                    )
                                })?;
                        let mut image = json!({"url": url});
                        if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                            image["detail"] = detail.clone();
                        }
                        json!({"type": "image_url", "image_url": image})
                    }
                    "input_file" => {
                        let mut file = Map::new();
                        for member in ["file_data", "file_id", "filename"] {
                            if let Some(v) = part.get(member).filter(|v| !v.is_null()) {
                                file.insert(member.into(), v.clone());
                            }
                        }
                        json!({"type": "file", "file": file})
                    }
                    _ => {
                        return Err(unsupported(
                            "input",
                            format!("content parts of type {kind:?} are not supported"),
                        ))
                    }
                };
                chat.push(converted);
            }
            // An assistant's earlier answer goes back as its text.
            if role == "assistant" {
                let text: String = chat
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                return Ok((Value::String(text), parts));
            }
            Ok((Value::Array(chat), parts))
        }
        _ => Err(bad(
            "input",
            "a message's content must be a string or an array of parts",
        )),
    }
}

/// Names the input items of response `response_id` that came without an
/// id (`msg_…`, `fc_…`, `fco_…`, from the response's id and the item's
/// place), so listing them names each the same way every time.
pub fn name_items(items: &mut [Value], response_id: &str) {
    let suffix = response_id.strip_prefix("resp_").unwrap_or(response_id);
    for (i, item) in items.iter_mut().enumerate() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        if item.contains_key("id") {
            continue;
        }
        let prefix = match item.get("type").and_then(Value::as_str) {
            Some("function_call") => "fc",
            Some("function_call_output") => "fco",
            _ => "msg",
        };
        item.insert(
            "id".into(),
            Value::String(format!("{prefix}_{suffix}_in{i}")),
        );
    }
}

/// A stored message as a conversation's items, named by its position:
/// a message item, or (an assistant's calls) one function_call item per
/// call after its text, or a function_call_output item.
pub fn items_of(position: i64, m: &Message) -> Vec<Value> {
    let view = m.view();
    let wire: Option<Value> = view.wire.and_then(|w| serde_json::from_str(w).ok());
    let role = view.role.as_str();
    let mut out = Vec::new();
    if matches!(view.role, chatcore::Role::Tool | chatcore::Role::Function) {
        let w = wire.unwrap_or(Value::Null);
        let output = match w.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
        let call_id = w
            .get("tool_call_id")
            .or_else(|| w.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        out.push(
            json!({"type": "function_call_output", "id": format!("fco_{position}"),
            "call_id": call_id, "output": output, "status": "completed"}),
        );
        return out;
    }
    let text_part = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    let content = match wire.as_ref().map(|w| w.get("content")) {
        None => vec![json!({"type": text_part, "text": view.content})],
        Some(Some(Value::String(t))) => vec![json!({"type": text_part, "text": t})],
        Some(Some(Value::Array(parts))) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("image_url") => json!({"type": "input_image",
                    "image_url": p.pointer("/image_url/url"), "detail": p.pointer("/image_url/detail")}),
                _ => json!({"type": text_part, "text": p.get("text")}),
            })
            .collect(),
        Some(_) => Vec::new(),
    };
    let refusal = wire
        .as_ref()
        .and_then(|w| w.get("refusal"))
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    let content = match refusal {
        Some(r) => vec![json!({"type": "refusal", "refusal": r})],
        None => content,
    };
    if !content.is_empty() {
        out.push(
            json!({"type": "message", "id": format!("msg_{position}"), "role": role,
            "content": content, "status": "completed"}),
        );
    }
    let calls = wire
        .as_ref()
        .and_then(|w| w.get("tool_calls"))
        .and_then(Value::as_array);
    for (i, call) in calls.into_iter().flatten().enumerate() {
        out.push(
            json!({"type": "function_call", "id": format!("fc_{position}_{i}"),
            "call_id": call["id"], "name": call.pointer("/function/name"),
            "arguments": call.pointer("/function/arguments"), "status": "completed"}),
        );
    }
    out
}

/// The position an item id names (`msg_7`, `fc_7_0`, `fco_7`).
pub fn position_of(item_id: &str) -> Option<i64> {
    let rest = item_id
        .strip_prefix("msg_")
        .or_else(|| item_id.strip_prefix("fco_"))
        .or_else(|| item_id.strip_prefix("fc_"))?;
    rest.split('_')
        .next()?
        .parse()
        .ok()
        .filter(|p: &i64| *p >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ResponsesRequest, ApiError> {
        parse_responses(body.to_string().as_bytes(), &Policy::default())
    }

    #[test]
    fn tools_and_formats_take_their_chat_completions_names() {
        let r = parse(json!({
            "model": "m", "input": "hi", "instructions": "be brief",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "max_output_tokens": 50, "reasoning": {"effort": "low"}, "top_k": 3,
            "metadata": {"a": "b"}
        }))
        .unwrap();
        let f = serde_json::to_value(&r.fields).unwrap();
        assert_eq!(f["tools"][0]["function"]["name"], "f");
        assert_eq!(f["tool_choice"]["function"]["name"], "f");
        assert_eq!(f["response_format"]["json_schema"]["name"], "x");
        assert_eq!(f["max_completion_tokens"], 50);
        assert_eq!(f["reasoning_effort"], "low");
        assert_eq!(f["top_k"], 3, "a server's own field is forwarded");
        assert!(
            f.get("metadata").is_none(),
            "metadata is the response's, not sent"
        );
        assert_eq!(r.instructions.as_deref(), Some("be brief"));
        assert_eq!(r.messages.len(), 1);
        assert!(r.store, "store defaults to true");
    }

    #[test]
    fn what_is_forwarded_goes_upstream_byte_for_byte() {
        let body = br#"{"model": "m", "input": "hi", "temperature": 0.50,
            "x_vendor": {"b": 1, "a": [2.0]}, "stream_options": {"include_usage": true}}"#;
        let r = parse_responses(body, &Policy::default()).unwrap();
        assert_eq!(r.fields.get("temperature").unwrap().get(), "0.50");
        assert_eq!(
            r.fields.get("x_vendor").unwrap().get(),
            r#"{"b": 1, "a": [2.0]}"#
        );
        assert!(r.fields.get("stream_options").is_none());
        assert!(r.fields.get("input").is_none() && r.fields.get("model").is_none());
        assert_eq!(r.echo["temperature"], 0.5, "the object repeats it");
        assert!(
            r.items.is_none(),
            "one text: its item is the stored message"
        );
    }

    #[test]
    fn function_calls_and_outputs_become_a_tool_exchange() {
        let r = parse(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"}
        ]}))
        .unwrap();
        let roles: Vec<_> = r.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "tool"]);
        assert_eq!(r.messages[1].view().calls(), ["c1", "c2"]);
        let mut items = r.items.clone().unwrap();
        name_items(&mut items, "resp_abc");
        let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "msg_abc_in0",
                "fc_abc_in1",
                "fc_abc_in2",
                "fco_abc_in3",
                "fco_abc_in4"
            ]
        );
    }

    #[test]
    fn built_in_tools_background_and_both_states_are_refused() {
        for (body, code) in [
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                Some("unsupported"),
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                Some("unsupported"),
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                Some("unsupported"),
            ),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}),
                None,
            ),
            (json!({"model": "m", "input": []}), None),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert!(e.status.is_client_error(), "{body}");
            assert_eq!(e.code, code, "{body}");
        }
    }
}
