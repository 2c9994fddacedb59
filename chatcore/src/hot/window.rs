//! A session's window: the newest messages that fit the context budget,
//! packed.

use crate::history::{History, Packed as PackedEntry};
use crate::message::{Message, MessageRef};
use crate::storage::HistoryVersion;
use crate::tokens::{message_tokens, orphaned_results};

/// The newest messages of a session that fit the context budget, packed:
/// all their text (or, for a message kept whole, its JSON) in one buffer
/// and a small fixed-size entry per message (position, estimated tokens,
/// role, time). About half the memory of a `Vec<Message>` (no allocation
/// per message), and the token costs are computed once, not on every turn.
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(super) text: String,
    pub(super) entries: Vec<PackedEntry>,
    /// Entries before `start` (and their text) are dropped, lazily.
    start: usize,
    tokens: usize,
    /// The target that answered the session's last turn (see
    /// [`Completion::target`](crate::Completion::target)).
    pub(crate) target: Option<std::sync::Arc<str>>,
    /// On a shared store, the version of the stored history these messages
    /// are the newest of; moved by every turn this window records.
    pub(crate) version: Option<HistoryVersion>,
}

impl Window {
    /// Keeps the newest of `history` that fit `budget` tokens (and the
    /// newest message in any case).
    pub(crate) fn new(history: Vec<Message>, budget: usize) -> Window {
        let mut tokens = 0;
        let mut keep = 0;
        for m in history.iter().rev() {
            let cost = message_tokens(m.view());
            // The newest message stays whatever it costs: a turn that
            // answers its tool calls must send it.
            if tokens + cost > budget && keep > 0 {
                break;
            }
            tokens += cost;
            keep += 1;
        }
        let mut w = Window::default();
        for m in &history[history.len() - keep..] {
            w.append(m.view());
        }
        w
    }

    /// The newest messages whose estimated tokens fit `budget`, oldest
    /// first: what [`trim_history`](crate::trim_history) would keep. The
    /// newest `pinned` (0 or 1) are kept whatever they cost: a tool call
    /// the turn's new messages answer must go with them.
    pub(crate) fn fit(&self, budget: usize, pinned: usize) -> History<'_> {
        let live = &self.entries[self.start..];
        let mut left = budget;
        let mut keep = 0;
        for e in live.iter().rev() {
            let cost = e.cost as usize;
            if cost > left && keep >= pinned {
                break;
            }
            left = left.saturating_sub(cost);
            keep += 1;
        }
        let kept = &live[live.len() - keep..];
        let orphans = orphaned_results(kept.iter().map(|e| e.role));
        History::packed(&self.text, &kept[orphans..])
    }

    /// The newest message, if the window holds any.
    pub(crate) fn last(&self) -> Option<MessageRef<'_>> {
        History::packed(&self.text, &self.entries[self.start..]).last()
    }

    /// The messages, oldest first.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<(crate::message::Role, String)> {
        History::packed(&self.text, &self.entries[self.start..])
            .iter()
            .map(|m| (m.role, m.wire.unwrap_or(m.content).to_owned()))
            .collect()
    }

    pub(super) fn append(&mut self, m: MessageRef<'_>) {
        let cost = message_tokens(m);
        let body = m.wire.unwrap_or(m.content);
        self.tokens += cost;
        self.entries.push(PackedEntry {
            start: self.text.len() as u32,
            len: body.len() as u32,
            cost: cost.min(u32::MAX as usize) as u32,
            role: m.role,
            wire: m.wire.is_some(),
            at_ms: m.created_at.timestamp_millis(),
        });
        self.text.push_str(body);
    }

    pub(super) fn push(&mut self, m: MessageRef<'_>, budget: usize) {
        self.append(m);
        // The newest message stays whatever it costs (see `Window::new`).
        while self.tokens > budget && self.start + 1 < self.entries.len() {
            self.tokens -= self.entries[self.start].cost as usize;
            self.start += 1;
        }
        // Compact now and then, not on every turn: drop the dead entries
        // and their text, and move the rest down.
        if self.start > 32 && self.start * 2 > self.entries.len() {
            let cut = self
                .entries
                .get(self.start)
                .map_or(self.text.len(), |e| e.start as usize);
            self.text.drain(..cut);
            self.entries.drain(..self.start);
            for e in &mut self.entries {
                e.start -= cut as u32;
            }
            self.start = 0;
            self.text.shrink_to(self.text.len() * 2);
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}
