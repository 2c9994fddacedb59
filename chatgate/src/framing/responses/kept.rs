//! A stored response read back: what it keeps beside its turn's messages
//! ([`Meta::kept`]), and its object and input items made again from that
//! and the messages ([`Shown`]), exactly as they were returned.

use std::borrow::Cow;

use chatcore::StoredResponse;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{put, Meta};
use crate::api::responses::{conversation_id, text_input_item};
use crate::error::ApiError;

/// What a stored response keeps besides its turn's messages, which hold
/// its input and its reply: one line of JSON, the object's other members
/// and, when the input was more than one text, the input items as the API
/// lists them. The object and the items are made again from it and the
/// messages, as they were when the response was created, so a response
/// costs its turn a few dozen bytes rather than a second copy of both
/// texts.
///
/// A response stored by an earlier version kept its whole object and its
/// items, one line each (compact JSON holds no raw newline); it reads as
/// it was.
#[derive(Debug, Deserialize)]
struct Kept<'a> {
    created_at: i64,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(default)]
    incomplete: bool,
    #[serde(borrow, default)]
    previous_response_id: Option<Cow<'a, str>>,
    /// Whether it joined a conversation: the session it is stored in.
    #[serde(default)]
    conversation: bool,
    #[serde(default)]
    echo: Option<Map<String, Value>>,
    /// Absent when the input was one text: its one item is the turn's
    /// first message.
    #[serde(default)]
    items: Option<Vec<Value>>,
}

impl Meta {
    /// The document a stored response keeps (see `Kept`): `items` are
    /// its input items, `None` when the input was one text. Its usage is
    /// its turn's, and its conversation (when it joined one) the session
    /// it is stored in: neither is kept twice.
    pub fn kept(&self, finish_reason: Option<&str>, items: Option<&[Value]>) -> String {
        // Written by hand, as the object is: the names are fixed text.
        let mut out = Vec::with_capacity(128);
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"created_at\":");
        out.extend_from_slice(n.format(self.created_at).as_bytes());
        out.extend_from_slice(b",\"model\":");
        put(&mut out, self.model.as_str());
        if finish_reason == Some("length") {
            out.extend_from_slice(b",\"incomplete\":true");
        }
        if let Some(id) = &self.previous_response_id {
            out.extend_from_slice(b",\"previous_response_id\":");
            put(&mut out, id.as_str());
        }
        if self.conversation.is_some() {
            out.extend_from_slice(b",\"conversation\":true");
        }
        if !self.echo.is_empty() {
            out.extend_from_slice(b",\"echo\":");
            put(&mut out, &self.echo);
        }
        if let Some(items) = items {
            out.extend_from_slice(b",\"items\":");
            put(&mut out, items);
        }
        out.push(b'}');
        // serde_json writes UTF-8, and so does everything else here.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A stored response as the API shows it: its object and its input items.
#[derive(Debug)]
pub struct Shown<'a> {
    stored: &'a StoredResponse,
    kept: Option<Kept<'a>>,
}

impl<'a> Shown<'a> {
    /// Reads `stored`'s document.
    ///
    /// # Errors
    /// 500 when the document is not one this gateway writes.
    pub fn new(stored: &'a StoredResponse) -> Result<Self, ApiError> {
        if stored.document.contains('\n') {
            return Ok(Shown { stored, kept: None });
        }
        let kept = serde_json::from_str(&stored.document)
            .map_err(|e| ApiError::internal(format!("a stored response cannot be read: {e}")))?;
        Ok(Shown {
            stored,
            kept: Some(kept),
        })
    }

    /// The turn's message at `position`, unless it was deleted.
    fn message_at(&self, position: i64) -> Option<chatcore::MessageRef<'a>> {
        let stored = self.stored;
        let i = stored.positions.iter().position(|p| *p == position)?;
        Some(stored.messages[i].view())
    }

    /// The response object, as JSON: the one the client was given.
    pub fn object(&self) -> Vec<u8> {
        let Some(kept) = &self.kept else {
            let doc = &self.stored.document;
            return doc.split_once('\n').map_or(doc.as_str(), |(o, _)| o).into();
        };
        let meta = Meta {
            id: self.stored.id.clone(),
            created_at: kept.created_at,
            model: kept.model.clone().into_owned(),
            previous_response_id: kept.previous_response_id.clone().map(Cow::into_owned),
            conversation: kept
                .conversation
                .then(|| conversation_id(self.stored.session_id)),
            store: true,
            echo: kept.echo.clone().unwrap_or_default(),
        };
        let reply = self.message_at(self.stored.through.position());
        let content = reply.map_or("", |m| m.content);
        let wire: Option<Value> = reply
            .and_then(|m| m.wire)
            .and_then(|w| serde_json::from_str(w).ok());
        let output = meta.output_items(content, wire.as_ref());
        let finish = kept.incomplete.then_some("length");
        // The turn's tokens go with its reply: a reply deleted from a
        // conversation takes them along, on every store alike.
        let usage = reply.and(self.stored.usage);
        meta.object_json("completed", &output, usage, finish, None)
    }

    /// The input items, oldest first.
    pub fn items(&self) -> Vec<Value> {
        let Some(kept) = &self.kept else {
            return self
                .stored
                .document
                .split_once('\n')
                .and_then(|(_, items)| serde_json::from_str(items).ok())
                .unwrap_or_default();
        };
        if let Some(items) = &kept.items {
            return items.clone();
        }
        // One text: the user message just before the reply.
        match self.message_at(self.stored.through.position() - 1) {
            Some(m) if m.role == chatcore::Role::User => {
                let mut item = text_input_item(m.content);
                if let Some(o) = item.as_object_mut() {
                    let suffix = self
                        .stored
                        .id
                        .strip_prefix("resp_")
                        .unwrap_or(&self.stored.id);
                    o.insert("id".into(), Value::String(format!("msg_{suffix}_in0")));
                }
                vec![item]
            }
            _ => Vec::new(),
        }
    }
}
