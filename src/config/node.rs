//! The spanned YAML tree: `Node` (every value and key carries its line/column), built by
//! parsing the text once with serde-saphyr, plus the `Located<T>` wrapper that keeps the
//! position of a value through deserialization (see `de.rs`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned};

use super::error::{Issue, Pos};

/// A YAML node with its position (where it is used: for an alias, the alias token).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// Source text of a plain non-string scalar (`1.10`, `yes`, `0x10`), so that a string
    /// field receives what was written rather than a re-formatted number.
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in file order (serde-saphyr already rejects duplicate keys).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The text of a scalar as a string field would see it; `None` for null, lists and maps.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Some(self.raw.clone().unwrap_or_else(|| self.display_scalar()))
            }
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    fn display_scalar(&self) -> String {
        match &self.value {
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.clone(),
            Value::Null => "null".to_string(),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    /// The entries of a mapping (`None` if this is not a mapping).
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text().as_deref() == Some(key))
            .map(|(_, v)| v)
    }

    /// What kind of value this is, for messages ("a string", "a list", ...).
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses YAML text into a tree. An empty document (or only comments) is a `Null` node at 1:1.
/// A YAML syntax error (or a budget violation) is a single issue at serde-saphyr's location.
pub fn parse(text: &str) -> Result<Node, Issue> {
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

/// The newtype-struct name `de::NodeDe` recognises to hand out a node's position.
pub(crate) const LOCATED: &str = "__autolb_located";

/// A value together with the position of the YAML node it came from.
///
/// Only `de::NodeDe` knows the position; through another deserializer this fails to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub pos: Pos,
    pub value: T,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Outer<T>(PhantomData<T>);
        struct Inner<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Outer<T> {
            type Value = Located<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a located value")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Located<T>, D::Error> {
                d.deserialize_tuple(3, Inner(PhantomData))
            }
        }

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Inner<T> {
            type Value = Located<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("line, column and value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Located<T>, A::Error> {
                let line: u64 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let column: u64 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let value: T = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(2, &self))?;
                Ok(Located {
                    pos: Pos::new(line, column),
                    value,
                })
            }
        }

        d.deserialize_newtype_struct(LOCATED, Outer(PhantomData))
    }
}
