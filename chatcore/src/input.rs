//! A turn's new messages ([`TurnInput`]) and the rules they must keep: a
//! user message of bounded text, or tool results answering exactly the
//! calls of the session's last reply, perhaps followed by a user message.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::message::{Message, MessageRef, Role};
use crate::storage::MAX_TURN_MESSAGES;

/// A turn's new messages, as a caller hands them in.
#[derive(Debug, Clone)]
pub enum TurnInput<'c> {
    /// One user message of plain text (borrowed or owned).
    Text(Cow<'c, str>),
    /// Messages of any kind, oldest first: a user message (text or content
    /// parts), or the tool results that answer the previous reply's tool
    /// calls, perhaps followed by a user message.
    Messages(Vec<Message>),
    /// Messages of any role, oldest first, as the Responses API's input
    /// items come (instructions and examples as `developer`/`system`
    /// messages, earlier `assistant` turns, tool results, user messages),
    /// all stored with the turn; tool results must still answer the
    /// session's last reply's calls.
    Items(Vec<Message>),
}

impl<'c> From<&'c str> for TurnInput<'c> {
    fn from(text: &'c str) -> Self {
        TurnInput::Text(Cow::Borrowed(text))
    }
}

impl From<String> for TurnInput<'_> {
    fn from(text: String) -> Self {
        TurnInput::Text(Cow::Owned(text))
    }
}

impl<'c> From<Cow<'c, str>> for TurnInput<'c> {
    fn from(text: Cow<'c, str>) -> Self {
        TurnInput::Text(text)
    }
}

impl From<Vec<Message>> for TurnInput<'_> {
    fn from(messages: Vec<Message>) -> Self {
        TurnInput::Messages(messages)
    }
}

impl TurnInput<'_> {
    /// Whether the first new message is a tool's result: then the previous
    /// reply's tool calls must go upstream with it.
    pub(crate) fn answers_calls(&self) -> bool {
        match self {
            TurnInput::Text(_) => false,
            TurnInput::Messages(m) | TurnInput::Items(m) => m
                .first()
                .is_some_and(|m| matches!(m.role, Role::Tool | Role::Function)),
        }
    }

    /// The new messages, when they are more than a user's text.
    pub(crate) fn messages(&self) -> Option<&[Message]> {
        match self {
            TurnInput::Text(_) => None,
            TurnInput::Messages(m) | TurnInput::Items(m) => Some(m),
        }
    }
}

/// Longest user message accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 32_000;

/// Validates a turn's new messages: a user message of text, or messages
/// in one of the shapes a turn takes (tool results, then at most one user
/// message), each of bounded text.
pub(crate) fn validate_input(input: &TurnInput<'_>) -> Result<()> {
    let (messages, any_role) = match input {
        TurnInput::Text(t) => return validate_message(t),
        TurnInput::Messages(m) => (m, false),
        TurnInput::Items(m) => (m, true),
    };
    if messages.is_empty() {
        return Err(Error::invalid(
            "messages",
            "a turn needs at least one message",
        ));
    }
    if messages.len() >= MAX_TURN_MESSAGES {
        return Err(Error::invalid(
            "messages",
            format!("a turn takes at most {} messages", MAX_TURN_MESSAGES - 1),
        ));
    }
    if any_role {
        return Ok(());
    }
    let (last, results) = messages.split_last().expect("not empty");
    let results_ok = results
        .iter()
        .all(|m| matches!(m.role, Role::Tool | Role::Function));
    let last_ok = matches!(last.role, Role::User | Role::Tool | Role::Function);
    if !results_ok || !last_ok {
        return Err(Error::invalid(
            "messages",
            "a session's turn sends a user message, or the tool results that answer the \
             previous reply's tool calls (optionally followed by a user message); the session \
             supplies the system prompt and the history",
        ));
    }
    // No bound of its own on their size: a tool's output (a fetched page,
    // a file) is often long, and the request that brings it is bounded.
    Ok(())
}

/// Checks the turn against the session's newest message: when that reply
/// called tools, the turn must first answer each call, once; tool results
/// must answer calls of that reply. (The session's window always holds
/// its newest message, whatever it costs.)
pub(crate) fn check_calls_answered(
    input: &TurnInput<'_>,
    last: Option<MessageRef<'_>>,
) -> Result<()> {
    let calls = last
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.calls())
        .unwrap_or_default();
    // Items may carry a call and its result together (a client that
    // replays its own history): such results answer the input's calls,
    // not the session's.
    let own_calls: Vec<String> = match input {
        TurnInput::Items(m) => m
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .flat_map(|m| m.view().calls())
            .collect(),
        _ => Vec::new(),
    };
    let results: Vec<Option<String>> = match input.messages() {
        None => Vec::new(),
        Some(m) => m
            .iter()
            .filter(|m| matches!(m.role, Role::Tool | Role::Function))
            .map(|m| m.view().answers())
            .filter(|a| a.as_ref().is_none_or(|a| !own_calls.contains(a)))
            .collect(),
    };
    if calls.is_empty() && results.is_empty() {
        return Ok(());
    }
    if calls.is_empty() {
        return Err(Error::invalid(
            "messages",
            "tool results answer tool calls, and the session's last reply called no tool",
        ));
    }
    let mut answered: Vec<&str> = results.iter().filter_map(|r| r.as_deref()).collect();
    answered.sort_unstable();
    let mut expected: Vec<&str> = calls.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if answered != expected || results.iter().any(Option::is_none) {
        return Err(Error::invalid(
            "messages",
            format!(
                "the session's last reply called tools {}: send one tool message for each \
                 (tool_call_id; a function message with its name for a function_call), \
                 before any user message",
                expected.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Validates a user message.
pub(crate) fn validate_message(content: &str) -> Result<()> {
    if content.trim().is_empty() {
        return Err(Error::invalid("content", "content must not be empty"));
    }
    if content.len() > MAX_MESSAGE_CHARS && content.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Error::invalid(
            "content",
            format!("content must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_messages_are_rejected() {
        assert!(validate_message("   ").is_err());
        assert!(validate_message(&"a".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
        assert!(validate_message("Hello").is_ok());
    }
}
