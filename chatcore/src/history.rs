//! A borrowed view of a session's earlier messages ([`History`]): a slice
//! of [`Message`]s, or the hot cache's packed window (one text buffer plus
//! small fixed-size entries, laid out here so both the cache and the model
//! request read it), iterated alike as [`MessageRef`]s.

use chrono::{DateTime, Utc};

use crate::message::{Message, MessageRef, Role};

/// A borrowed view of a session's earlier messages, oldest first.
///
/// Either a slice of [`Message`]s (`(&messages[..]).into()`) or chatcore's
/// compact in-memory window (one text buffer plus small entries, which
/// keeps cached history at about half the memory of a `Vec<Message>`).
/// Iterate it with [`History::iter`].
#[derive(Debug, Clone, Copy)]
pub struct History<'a>(Repr<'a>);

#[derive(Debug, Clone, Copy)]
enum Repr<'a> {
    Slice(&'a [Message]),
    Packed {
        text: &'a str,
        entries: &'a [Packed],
    },
}

/// One message of a packed window: where its text is, and what it is. A
/// message kept whole (`wire`) has its JSON object in the buffer instead
/// of its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed {
    pub(crate) start: u32,
    pub(crate) len: u32,
    pub(crate) cost: u32,
    pub(crate) role: Role,
    pub(crate) wire: bool,
    pub(crate) at_ms: i64,
}

impl<'a> History<'a> {
    /// No earlier messages.
    pub fn empty() -> History<'static> {
        History(Repr::Slice(&[]))
    }

    pub(crate) fn packed(text: &'a str, entries: &'a [Packed]) -> History<'a> {
        History(Repr::Packed { text, entries })
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Slice(s) => s.len(),
            Repr::Packed { entries, .. } => entries.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest message, if any.
    pub fn last(&self) -> Option<MessageRef<'a>> {
        self.iter().next_back()
    }

    /// The messages, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = MessageRef<'a>> + ExactSizeIterator + 'a {
        let (slice, text, entries): (&'a [Message], &'a str, &'a [Packed]) = match self.0 {
            Repr::Slice(s) => (s, "", &[]),
            Repr::Packed { text, entries } => (&[], text, entries),
        };
        let from_slice = slice.iter().map(Message::view);
        let from_packed = entries.iter().map(move |e| unpack(text, e));
        Either(from_slice, from_packed)
    }
}

/// The message a packed entry describes.
fn unpack<'a>(text: &'a str, e: &Packed) -> MessageRef<'a> {
    let body = &text[e.start as usize..(e.start + e.len) as usize];
    // Written by the window from a `WireMessage`, so it is JSON.
    let (content, wire) = if e.wire {
        ("", Some(body))
    } else {
        (body, None)
    };
    MessageRef {
        role: e.role,
        content,
        wire,
        created_at: from_millis(e.at_ms),
    }
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    crate::types::from_millis(ms)
}

impl<'a> From<&'a [Message]> for History<'a> {
    fn from(messages: &'a [Message]) -> Self {
        History(Repr::Slice(messages))
    }
}

impl<'a, const N: usize> From<&'a [Message; N]> for History<'a> {
    fn from(messages: &'a [Message; N]) -> Self {
        History(Repr::Slice(messages))
    }
}

impl<'a> From<&'a Vec<Message>> for History<'a> {
    fn from(messages: &'a Vec<Message>) -> Self {
        History(Repr::Slice(messages))
    }
}

/// Chains the two representations' iterators (only one is ever non-empty).
struct Either<A, B>(A, B);

impl<'a, A, B> Iterator for Either<A, B>
where
    A: ExactSizeIterator<Item = MessageRef<'a>>,
    B: ExactSizeIterator<Item = MessageRef<'a>>,
{
    type Item = MessageRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().or_else(|| self.1.next())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.len() + self.1.len();
        (n, Some(n))
    }
}

impl<'a, A, B> DoubleEndedIterator for Either<A, B>
where
    A: ExactSizeIterator<Item = MessageRef<'a>> + DoubleEndedIterator,
    B: ExactSizeIterator<Item = MessageRef<'a>> + DoubleEndedIterator,
{
    fn next_back(&mut self) -> Option<Self::Item> {
        self.1.next_back().or_else(|| self.0.next_back())
    }
}

impl<'a, A, B> ExactSizeIterator for Either<A, B>
where
    A: ExactSizeIterator<Item = MessageRef<'a>>,
    B: ExactSizeIterator<Item = MessageRef<'a>>,
{
}
