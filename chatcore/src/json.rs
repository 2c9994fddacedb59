//! JSON objects read member by member, each value kept as the raw text it
//! came as. A gateway that forwards what a client sent, and relays what
//! the upstream answered, must not rebuild either from a typed model that
//! knows only some fields: it reads the few members it acts on and passes
//! the rest through untouched.
//!
//! [`Members`] borrows from its input (no allocation per member unless a
//! key is escaped); [`Fields`] owns its members, for a request's fields
//! that travel with a turn.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON object's members in order, values raw, borrowed from the text.
#[derive(Debug, Default)]
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Reads `json`, which must be one JSON object.
    pub(crate) fn parse(json: &'a [u8]) -> serde_json::Result<Members<'a>> {
        serde_json::from_slice(json)
    }

    /// The value of `key`: its last occurrence, as a JSON parser that keeps
    /// one value per key (Python's, JavaScript's) would read it.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Str(k), v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string, borrowed unless it held an escape.
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, read in one pass and kept only if it is a string
/// (borrowed unless it held an escape); anything else is skipped.
pub(crate) struct Probe<'a>(Option<Cow<'a, str>>);

impl<'a> Probe<'a> {
    /// The string, if the value was one.
    pub(crate) fn into_str(self) -> Option<Cow<'a, str>> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Probe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Probe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Probe<'de>, E> {
                Ok(Probe(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Probe<'de>, E> {
                Ok(Probe(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Probe<'de>, E> {
                Ok(Probe(Some(Cow::Owned(s))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Probe<'de>, E> {
                Ok(Probe(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Probe<'de>, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Probe(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe<'de>, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Probe(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether a raw value says "nothing": `null`, `[]` or `{}` (whitespace
/// aside). Servers send such members freely (`"refusal": null`,
/// `"annotations": []`); a message that holds nothing else is plain text.
pub(crate) fn is_nothing(raw: &RawValue) -> bool {
    let text = raw.get().as_bytes();
    let mut it = text.iter().filter(|b| !b.is_ascii_whitespace());
    match it.next() {
        Some(b'n') => true, // only `null` starts with n
        Some(b'[') => it.next() == Some(&b']'),
        Some(b'{') => it.next() == Some(&b'}'),
        _ => false,
    }
}

/// The string a raw value holds, if it is one.
pub(crate) fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
}

/// Raw JSON text for an owned value (always valid: it was serialized).
#[cfg(test)]
pub(crate) fn raw_of<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

/// A request's fields that a gateway forwards as the client sent them: a
/// JSON object's members, in order, each value as raw JSON text.
///
/// [`ChatOptions::fields`](crate::ChatOptions::fields) carries them with a
/// turn; the OpenAI adapter writes them into the upstream request after
/// the members it sets itself (`model`, `messages`, and `stream` with its
/// options), so nothing a client sent is dropped or rewritten on the way.
#[derive(Clone, Default)]
pub struct Fields(Vec<(Box<str>, Box<RawValue>)>);

impl Fields {
    /// No fields.
    pub const fn new() -> Fields {
        Fields(Vec::new())
    }

    /// Reads a JSON object's members.
    ///
    /// # Errors
    /// When `json` is not one JSON object.
    pub fn parse(json: &[u8]) -> serde_json::Result<Fields> {
        let members = Members::parse(json)?;
        Ok(Fields(
            members
                .0
                .into_iter()
                .map(|(k, v)| (Box::from(k.as_ref()), v.to_owned()))
                .collect(),
        ))
    }

    /// The value of `key` (its last occurrence).
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// Sets `key` to `value`: in the place of its first occurrence (others
    /// removed), or last when it was absent.
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter().position(|(k, _)| &**k == key) {
            Some(i) => {
                self.0[i].1 = value;
                let mut seen = 0;
                self.0.retain(|(k, _)| {
                    if &**k == key {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.0.push((Box::from(key), value)),
        }
    }

    /// Removes `key` (every occurrence) and returns its last value.
    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let mut out = None;
        let mut i = 0;
        while i < self.0.len() {
            if &*self.0[i].0 == key {
                out = Some(self.0.remove(i).1);
            } else {
                i += 1;
            }
        }
        out
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.0 == b.0 && a.1.get() == b.1.get())
    }
}

impl fmt::Debug for Fields {
    /// Keys only: values may hold a person's text or images.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(&**k, &**v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_order_raw_values_and_escaped_keys() {
        let m = Members::parse(br#"{"b": [1, 2], "a\n": {"x": null}, "b": "last"}"#).unwrap();
        let keys: Vec<&str> = m.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a\n", "b"]);
        assert_eq!(m.0[0].1.get(), "[1, 2]");
        assert_eq!(m.get("b").unwrap().get(), "\"last\"");
        assert!(Members::parse(b"[1]").is_err());
    }

    #[test]
    fn nothing_is_null_or_empty() {
        for s in ["null", "[]", "{ }", " [ \n] "] {
            let raw = RawValue::from_string(s.trim().to_owned()).unwrap();
            assert!(is_nothing(&raw), "{s}");
        }
        for s in ["0", "\"\"", "[null]", "{\"a\":1}", "false"] {
            let raw = RawValue::from_string(s.to_owned()).unwrap();
            assert!(!is_nothing(&raw), "{s}");
        }
    }

    #[test]
    fn fields_set_replaces_in_place_and_remove_takes_all() {
        let mut f = Fields::parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        f.set("a", raw_of(&9));
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"a":9,"b":2}"#);
        f.set("c", raw_of("x"));
        assert_eq!(f.remove("b").unwrap().get(), "2");
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"a":9,"c":"x"}"#);
        assert_eq!(format!("{f:?}"), r#"["a", "c"]"#);
    }
}
