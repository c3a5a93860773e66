//! The spanned YAML tree: `Node` (every value and key carries its line/column), built from
//! the parser's events by `yaml.rs` (serde-saphyr's path in `yaml_saphyr.rs` for what that
//! leaves), plus the `Located<T>` wrapper that keeps the position of a value through
//! deserialization (see `de.rs`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

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
    /// Keys in file order (duplicate keys are rejected while parsing).
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

/// Parses YAML text into a tree. An empty document (or only comments, or a null) is a `Null`
/// node at 1:1. A YAML syntax error (or a budget violation) is a single issue at its
/// position. Files `yaml::build` does not take (tags, anchors, merge keys, several
/// documents, any error) go through serde-saphyr, whose reading and messages stand.
pub fn parse(text: &str) -> Result<Node, Issue> {
    match super::yaml::build(text) {
        Ok(node) => Ok(node),
        Err(_) => super::yaml_saphyr::parse(text),
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
