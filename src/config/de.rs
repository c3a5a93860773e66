//! A serde `Deserializer` over a `&Node`: deserializes one item of the tree at a time and
//! attaches the position of the innermost node where an error arose.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, value::BorrowedStrDeserializer, value::U64Deserializer, DeserializeOwned,
    DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};

use super::error::{Issue, Pos};
use super::node::{Node, Value, LOCATED};

/// Deserializes `T` from `node`; the error carries the innermost failing node's position.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, Issue> {
    T::deserialize(NodeDe(node)).map_err(|e| Issue {
        pos: e.pos.unwrap_or(node.pos),
        message: e.message,
    })
}

/// A deserialization error; `pos` is set by the innermost node that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl DeError {
    fn at(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

fn one_of(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            message: msg.to_string(),
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, got {}",
            expected(exp),
            describe(&unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::invalid_type(unexp, exp)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!(
            "unknown field \"{field}\", expected one of: {}",
            one_of(expected)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!(
            "unknown value \"{variant}\", expected one of: {}",
            one_of(expected)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format_args!("missing field \"{field}\""))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::custom(format_args!("duplicate field \"{field}\""))
    }
}

/// serde's names of primitive types, in words.
fn expected(exp: &dyn Expected) -> String {
    let exp = exp.to_string();
    match exp.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_string(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        _ => exp,
    }
}

fn describe(u: &Unexpected<'_>) -> String {
    match u {
        Unexpected::Unit | Unexpected::Option => "null".to_string(),
        Unexpected::Bool(b) => b.to_string(),
        Unexpected::Unsigned(n) => n.to_string(),
        Unexpected::Signed(n) => n.to_string(),
        Unexpected::Float(n) => n.to_string(),
        Unexpected::Str(s) => format!("string \"{s}\""),
        Unexpected::Seq => "a list".to_string(),
        Unexpected::Map => "a mapping".to_string(),
        other => other.to_string(),
    }
}

/// The deserializer over one node of the tree.
#[derive(Clone, Copy)]
pub struct NodeDe<'a>(pub &'a Node);

impl<'de> NodeDe<'de> {
    fn text(&self) -> Option<String> {
        self.0.scalar_text()
    }
}

impl<'de> Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.0;
        let result = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match u64::try_from(*i) {
                Ok(u) => visitor.visit_u64(u),
                Err(_) => match i64::try_from(*i) {
                    Ok(s) => visitor.visit_i64(s),
                    Err(_) => visitor.visit_i128(*i),
                },
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => {
                let mut seq = SeqDe {
                    iter: items.iter(),
                    count: 0,
                };
                visitor.visit_seq(&mut seq).and_then(|value| {
                    if seq.iter.len() > 0 {
                        Err(de::Error::invalid_length(
                            seq.count + seq.iter.len(),
                            &"fewer elements",
                        ))
                    } else {
                        Ok(value)
                    }
                })
            }
            Value::Map(entries) => {
                let last_key = Cell::new(None);
                let map = MapDe {
                    iter: entries.iter(),
                    value: None,
                    last_key: &last_key,
                };
                visitor.visit_map(map).map_err(|e| {
                    // Errors the struct visitor raises itself: a duplicate field points at
                    // the repeated key, anything else (missing field) at the mapping.
                    match (e.pos, last_key.get()) {
                        (None, Some(key)) if e.message.starts_with("duplicate field") => e.at(key),
                        _ => e,
                    }
                })
            }
        };
        result.map_err(|e| e.at(node.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_none().map_err(|e: DeError| e.at(self.0.pos)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match (&self.0.value, self.text()) {
            (Value::Str(_), _) | (_, None) => self.deserialize_any(visitor),
            (_, Some(text)) => visitor
                .visit_string(text)
                .map_err(|e: DeError| e.at(self.0.pos)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == LOCATED {
            visitor.visit_newtype_struct(LocatedDe(self.0))
        } else {
            visitor.visit_newtype_struct(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match (&self.0.value, self.text()) {
            (Value::Str(s), _) => visitor.visit_enum(BorrowedStrDeserializer::<DeError>::new(s)),
            (_, Some(text)) => visitor.visit_enum(text.into_deserializer()),
            (_, None) => Err(de::Error::invalid_type(unexpected(self.0), &visitor)),
        };
        result.map_err(|e: DeError| e.at(self.0.pos))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit_struct seq tuple tuple_struct map struct
    }
}

fn unexpected(node: &Node) -> Unexpected<'_> {
    match &node.value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(i) => match i64::try_from(*i) {
            Ok(s) => Unexpected::Signed(s),
            Err(_) => Unexpected::Other("a large integer"),
        },
        Value::Float(f) => Unexpected::Float(*f),
        Value::Str(s) => Unexpected::Str(s),
        Value::Seq(_) => Unexpected::Seq,
        Value::Map(_) => Unexpected::Map,
    }
}

struct SeqDe<'a> {
    iter: std::slice::Iter<'a, Node>,
    count: usize,
}

impl<'de> SeqAccess<'de> for &mut SeqDe<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(node) => {
                self.count += 1;
                seed.deserialize(NodeDe(node)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapDe<'a, 'c> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
    last_key: &'c Cell<Option<Pos>>,
}

impl<'de> MapAccess<'de> for MapDe<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((key, value)) => {
                self.value = Some(value);
                self.last_key.set(Some(key.pos));
                seed.deserialize(NodeDe(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe(node)),
            None => Err(de::Error::custom("value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// Hands a `Located<T>` its node's line, column, then the value itself.
struct LocatedDe<'a>(&'a Node);

impl<'de> Deserializer<'de> for LocatedDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(LocatedSeq {
            node: self.0,
            state: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct LocatedSeq<'a> {
    node: &'a Node,
    state: u8,
}

impl<'de> SeqAccess<'de> for LocatedSeq<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let state = self.state;
        self.state = self.state.saturating_add(1);
        match state {
            0 => seed
                .deserialize(U64Deserializer::<DeError>::new(self.node.pos.line))
                .map(Some),
            1 => seed
                .deserialize(U64Deserializer::<DeError>::new(self.node.pos.column))
                .map(Some),
            2 => seed.deserialize(NodeDe(self.node)).map(Some),
            _ => Ok(None),
        }
    }
}
