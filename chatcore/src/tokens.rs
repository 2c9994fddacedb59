//! Token accounting for the context budget: how many tokens a message is
//! estimated to cost, and trimming history from the oldest end to fit.
//!
//! The estimate lives apart from the turn and the hot cache because both
//! use it; it is the one place to change when counting gets smarter.

use crate::types::Message;

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

/// The most messages that can fit `context_tokens`: each costs at least
/// `TOKENS_PER_MESSAGE` (an empty message). Bounds how much history a turn
/// ever reads.
pub(crate) fn history_read_limit(context_tokens: usize) -> usize {
    context_tokens / TOKENS_PER_MESSAGE + 1
}

/// Drops messages from the oldest end of `history` until it, the system
/// prompt and the new message fit `context_tokens`; returns what remains.
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
        let cost = estimate_tokens(&m.content);
        if cost > budget {
            break;
        }
        budget -= cost;
        keep += 1;
    }
    &history[history.len() - keep..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Role;
    use chrono::Utc;

    fn msg(content: &str) -> Message {
        Message {
            role: Role::User,
            content: content.to_owned(),
            created_at: Utc::now(),
        }
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
