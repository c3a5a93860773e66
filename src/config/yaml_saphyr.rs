//! The slow, complete YAML path: serde-saphyr's `Spanned` values flattened into `Node`.
//! `yaml.rs` hands it every file it does not build itself (tags, anchors and aliases, merge
//! keys, several documents) and every file it finds an error in, so that what those files
//! mean, and every error message and position, is serde-saphyr's as before.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned};

use super::error::{Issue, Pos};
use super::node::{Node, Value};

/// Parses YAML text into a tree. An empty document (or only comments) is a `Null` node at 1:1.
/// A YAML syntax error (or a budget violation) is a single issue at serde-saphyr's location.
pub(super) fn parse(text: &str) -> Result<Node, Issue> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<RawValue>>>(text, options) {
        Ok(Some(root)) => Ok(build(root, text)),
        Ok(None) => Ok(Node {
            pos: Pos::START,
            value: Value::Null,
            raw: None,
        }),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos::new(l.line(), l.column()))
                .filter(|p| p.line > 0)
                .unwrap_or(Pos::START);
            let message = serde_saphyr::UserMessageFormatter.format_message(e.without_snippet());
            let message: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(Issue {
                pos,
                message: format!("invalid yaml: {}", message.trim()),
            })
        }
    }
}

fn build(sp: Spanned<RawValue>, text: &str) -> Node {
    let pos = Pos::new(sp.referenced.line(), sp.referenced.column());
    let raw_text = || {
        let span = sp.defined.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let s = text.get(start..start.checked_add(len)?)?;
        (!s.is_empty()).then(|| s.to_string())
    };
    let (value, raw) = match sp.value {
        RawValue::Null => (Value::Null, None),
        RawValue::Bool(b) => (Value::Bool(b), raw_text()),
        RawValue::Int(i) => (Value::Int(i), raw_text()),
        RawValue::Float(f) => (Value::Float(f), raw_text()),
        RawValue::Str(s) => (Value::Str(s), None),
        RawValue::Seq(items) => (
            Value::Seq(items.into_iter().map(|i| build(i, text)).collect()),
            None,
        ),
        RawValue::Map(entries) => (
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (build(k, text), build(v, text)))
                    .collect(),
            ),
            None,
        ),
    };
    Node { pos, value, raw }
}

/// What serde-saphyr hands us, before positions are flattened into `Node`.
enum RawValue {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawValue>>),
    Map(Vec<(Spanned<RawValue>, Spanned<RawValue>)>),
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_none<E>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
                RawValue::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
                Ok(RawValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
                Ok(RawValue::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
                Ok(RawValue::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<RawValue, E> {
                Ok(RawValue::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
                Ok(RawValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
                Ok(RawValue::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawValue, E> {
                Ok(RawValue::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(RawValue::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawValue, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(RawValue::Map(entries))
            }
        }
        d.deserialize_any(RawVisitor)
    }
}
