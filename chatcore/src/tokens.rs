//! Token accounting for the context budget: how many tokens a message is
//! estimated to cost, and trimming history from the oldest end to fit.
//!
//! The estimate lives apart from the turn and the hot cache because both
//! use it; it is the one place to change when counting gets smarter.
//!
//! Trimming keeps tool calls whole: a `tool` message is never kept without
//! the assistant message whose call it answers, since the upstream refuses
//! a tool result that follows no call.

use crate::json::{self, Members};
use crate::message::{Message, MessageRef, Role};

/// Tokens a message costs beyond its text (role and framing), per OpenAI's
/// published accounting for chat models.
pub(crate) const TOKENS_PER_MESSAGE: usize = 4;

/// Estimated tokens of a message, plus 4 for its framing: one token per
/// four ASCII characters, and one per two bytes of anything else.
///
/// BPE vocabularies pack English about four characters to a token but not
/// other scripts: a CJK character is often a token of its own or more,
/// and an emoji two or three. Counting non-ASCII text by its UTF-8 bytes
/// (1.5 tokens per CJK character, 2 per emoji, 1 per accented letter) errs
/// on the side of sending less history, which costs a little context;
/// counting it like English would overflow the model's window and fail
/// the turn. Dependency-free and exact for no model; a turn that still
/// overflows is retried with less history.
pub fn estimate_tokens(text: &str) -> usize {
    let bytes = text.as_bytes();
    let ascii = if text.is_ascii() {
        bytes.len()
    } else {
        bytes.iter().filter(|b| b.is_ascii()).count()
    };
    ascii.div_ceil(4) + (bytes.len() - ascii).div_ceil(2) + TOKENS_PER_MESSAGE
}

/// What one image in a message is counted as. Images are sent as URLs or
/// data URLs whose length says nothing of their tokens; this is more than
/// OpenAI bills for any one image (a high-detail image is cut to at most
/// 2048 × 768 pixels: six tiles, 1,105 tokens), so an estimate built on it
/// errs on the side of sending less history.
pub const IMAGE_TOKENS: usize = 1_536;

/// What one audio or file part is counted as, for the same reason as
/// [`IMAGE_TOKENS`]. A turn whose estimate still falls short is retried
/// with less history when the upstream says the prompt is too long.
pub const MEDIA_TOKENS: usize = 1_536;

/// Estimated tokens of a message: its text as [`estimate_tokens`] counts
/// it; for a message kept whole (parts, tool calls), each text part and
/// each other member's JSON by the same rule, and each image, audio or
/// file part a fixed [`IMAGE_TOKENS`] or [`MEDIA_TOKENS`].
pub fn message_tokens(m: MessageRef<'_>) -> usize {
    let Some(wire) = m.wire else {
        return estimate_tokens(m.content);
    };
    let Ok(members) = Members::parse(wire.as_bytes()) else {
        return estimate_tokens(wire);
    };
    let mut tokens = TOKENS_PER_MESSAGE;
    for (key, value) in &members.0 {
        match key.as_ref() {
            "role" => {}
            "content" => tokens += content_tokens(value),
            _ => tokens += estimate_tokens(value.get()) - TOKENS_PER_MESSAGE,
        }
    }
    tokens
}

/// Tokens of a `content` member: a string, or a list of parts.
fn content_tokens(content: &serde_json::value::RawValue) -> usize {
    if let Some(text) = json::as_str(content) {
        return estimate_tokens(&text) - TOKENS_PER_MESSAGE;
    }
    let Ok(parts) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(content.get()) else {
        return estimate_tokens(content.get()) - TOKENS_PER_MESSAGE;
    };
    parts
        .iter()
        .map(|part| {
            let Ok(members) = Members::parse(part.get().as_bytes()) else {
                return estimate_tokens(part.get()) - TOKENS_PER_MESSAGE;
            };
            let kind = members.get("type").and_then(json::as_str);
            match kind.as_deref() {
                Some("image_url" | "input_image") => IMAGE_TOKENS,
                Some("input_audio" | "file" | "input_file" | "audio") => MEDIA_TOKENS,
                _ => {
                    let text = members
                        .get("text")
                        .or_else(|| members.get("refusal"))
                        .and_then(json::as_str);
                    match text {
                        Some(t) => estimate_tokens(&t) - TOKENS_PER_MESSAGE,
                        None => estimate_tokens(part.get()) - TOKENS_PER_MESSAGE,
                    }
                }
            }
        })
        .sum()
}

/// How many of the oldest `kept` messages (the tail of a history) must go
/// too, so that the kept part does not open with tool results whose call
/// was trimmed away.
pub(crate) fn orphaned_results(kept: impl Iterator<Item = Role>) -> usize {
    kept.take_while(|r| matches!(r, Role::Tool | Role::Function))
        .count()
}

/// The most messages that can fit `context_tokens`: each costs at least
/// `TOKENS_PER_MESSAGE` (an empty message). Bounds how much history a turn
/// ever reads.
pub(crate) fn history_read_limit(context_tokens: usize) -> usize {
    context_tokens / TOKENS_PER_MESSAGE + 1
}

/// Drops messages from the oldest end of `history` until it, the system
/// prompt and the new message fit `context_tokens`, and never keeps a tool
/// result without its call; returns what remains.
pub fn trim_history<'a>(
    history: &'a [Message],
    system: Option<&str>,
    user: &str,
    context_tokens: usize,
) -> &'a [Message] {
    let fixed = system.map_or(0, estimate_tokens) + estimate_tokens(user);
    let mut budget = context_tokens.saturating_sub(fixed);
    let mut keep = 0;
    for m in history.iter().rev() {
        let cost = message_tokens(m.view());
        if cost > budget {
            break;
        }
        budget -= cost;
        keep += 1;
    }
    let kept = &history[history.len() - keep..];
    &kept[orphaned_results(kept.iter().map(|m| m.role))..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn msg(content: &str) -> Message {
        Message::text(Role::User, content, Utc::now())
    }

    fn wire(json: &str) -> Message {
        Message::from_json(json, Utc::now()).unwrap()
    }

    #[test]
    fn images_count_a_fixed_estimate_and_text_parts_their_text() {
        let url = format!("data:image/png;base64,{}", "A".repeat(5 << 20));
        let m = wire(&format!(
            r#"{{"role":"user","content":[{{"type":"text","text":"abcd"}},{{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}"#
        ));
        assert_eq!(message_tokens(m.view()), 4 + 1 + IMAGE_TOKENS);
        let call = wire(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        );
        assert!(message_tokens(call.view()) > 4 + 10, "the calls count");
        assert_eq!(message_tokens(msg("abcd").view()), estimate_tokens("abcd"));
    }

    #[test]
    fn trimming_never_keeps_a_tool_result_without_its_call() {
        let call = wire(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        );
        let result = wire(r#"{"role":"tool","tool_call_id":"c","content":"sunny"}"#);
        let history = vec![msg("q"), call.clone(), result.clone(), msg("answer")];
        let full = trim_history(&history, None, "next", 1_000_000);
        assert_eq!(full.len(), 4);
        // Room for the last two only: the result would lose its call, so
        // it goes too.
        let room = message_tokens(result.view()) + message_tokens(history[3].view());
        let kept = trim_history(&history, None, "", room + estimate_tokens(""));
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].content, "answer");
    }

    #[test]
    fn estimate_is_conservative_for_other_scripts() {
        assert_eq!(estimate_tokens(""), 4);
        assert_eq!(estimate_tokens("abcd"), 5);
        assert_eq!(estimate_tokens("abcde"), 6);
        // Two bytes each: one token per accented letter.
        assert_eq!(estimate_tokens("ééééé"), 9);
        // Three bytes each: 1.5 tokens per CJK character.
        assert_eq!(estimate_tokens("你好世界"), 6 + 4);
        // Four bytes: 2 tokens per emoji.
        assert_eq!(estimate_tokens("😀😀"), 4 + 4);
        assert_eq!(estimate_tokens("hi 你好"), 1 + 3 + 4);
    }

    #[test]
    fn trimming_drops_the_oldest_first() {
        let history: Vec<Message> = (0..10).map(|i| msg(&format!("{i:0>40}"))).collect();
        // 40 chars -> 14 tokens each; user "hi" -> 5; budget 50 -> 3 messages.
        let kept = trim_history(&history, None, "hi", 50);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].content, history[7].content);
        assert_eq!(trim_history(&history, None, "hi", 1_000_000).len(), 10);
        assert!(trim_history(&history, Some(&"x".repeat(400)), "hi", 50).is_empty());
    }

    #[test]
    fn read_limit_covers_every_message_that_could_fit() {
        let limit = history_read_limit(3000);
        let tiny: Vec<Message> = (0..limit + 50).map(|_| msg("")).collect();
        assert!(trim_history(&tiny, None, "", 3000).len() < limit);
    }
}
