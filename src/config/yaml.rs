//! The fast YAML path: `Node` built straight from granit-parser's events (the parser under
//! serde-saphyr), with serde-saphyr's scalar rules (`yaml_scalar.rs`), duplicate-key check
//! and budget, for a single document without tags, anchors, aliases or merge keys, which is
//! what configs are. Anything else, and any error, is `Unsupported`: `node::parse` then reads
//! the file with serde-saphyr (`yaml_saphyr.rs`), so those files mean what they meant and
//! every message and position stays serde-saphyr's.
//!
//! Positions are what serde-saphyr's `Spanned` gave: the line and 1-based column where the
//! parser's event starts (for a block mapping, its first key); `raw` is the source text of
//! a plain boolean or number (the event's byte span).

use std::collections::HashSet;

use granit_parser::{Event, Parser, ScalarStyle, Span};

use super::error::Pos;
use super::node::{Node, Value};
use super::yaml_scalar::{self, KeyId, Scalar};

/// serde-saphyr's default budget (`serde_saphyr::Budget::default()`), which the old path
/// enforced: a file over one of these goes to serde-saphyr, which rejects it.
const MAX_EVENTS: usize = 1_000_000;
const MAX_NODES: usize = 250_000;
const MAX_DEPTH: usize = 64;
const MAX_SCALAR_BYTES: usize = 64 * 1024 * 1024;

/// Maps with this many keys or more check for duplicate keys with a hash set.
const LINEAR_KEY_CHECK: usize = 12;

/// Why the fast path did not build the tree; `node::parse` falls back to serde-saphyr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unsupported {
    #[error("YAML syntax error")]
    Syntax,
    #[error("a tag")]
    Tag,
    #[error("an anchor or an alias")]
    Anchor,
    #[error("a merge key")]
    MergeKey,
    #[error("a duplicate key (or a possible one)")]
    DuplicateKey,
    #[error("a mapping or list as a key")]
    ComplexKey,
    #[error("a non-finite number")]
    NonFinite,
    #[error("over the parsing budget")]
    Budget,
    #[error("more than one document")]
    Documents,
    #[error("an event the builder does not expect")]
    Unexpected,
}

/// A collection being built.
enum Frame {
    Seq {
        pos: Pos,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        entries: Vec<(Node, Node)>,
        /// The key read, waiting for its value.
        key: Option<Node>,
        /// Hashes of the keys' identities, once the map has `LINEAR_KEY_CHECK` keys.
        seen: Option<HashSet<u64>>,
    },
}

/// Builds the tree of `text` (see the module doc); `Unsupported` sends it to serde-saphyr.
pub(super) fn build(text: &str) -> Result<Node, Unsupported> {
    // serde-saphyr's parser options without comments (`Budget::parser_options`): the
    // defaults, whose nesting limits and simple-key lookahead are its budget's.
    let mut options = granit_parser::Options::default();
    options.set_emit_comments(false);
    let parser = Parser::new_from_str_with_options(text, options);
    let mut b = Builder {
        text,
        stack: Vec::new(),
        root: None,
        documents: 0,
        nodes: 0,
        scalar_bytes: 0,
    };
    for (events, item) in parser.enumerate() {
        if events >= MAX_EVENTS {
            return Err(Unsupported::Budget);
        }
        let (event, span) = item.map_err(|_| Unsupported::Syntax)?;
        match event {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                b.documents += 1;
                if b.documents > 1 {
                    return Err(Unsupported::Documents);
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    return Err(Unsupported::Tag);
                }
                if anchor != 0 {
                    return Err(Unsupported::Anchor);
                }
                b.scalar(&value, style, &span)?;
            }
            Event::SequenceStart(_, anchor, ref tag) | Event::MappingStart(_, anchor, ref tag) => {
                if tag.is_some() {
                    return Err(Unsupported::Tag);
                }
                if anchor != 0 {
                    return Err(Unsupported::Anchor);
                }
                b.count_node()?;
                if b.stack.len() >= MAX_DEPTH {
                    return Err(Unsupported::Budget);
                }
                b.key_position_is_not_a_collection()?;
                let pos = pos_of(&span);
                b.stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        pos,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        pos,
                        entries: Vec::new(),
                        key: None,
                        seen: None,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match b.stack.pop() {
                    Some(Frame::Seq { pos, items }) => Node {
                        pos,
                        value: Value::Seq(items),
                        raw: None,
                    },
                    Some(Frame::Map {
                        pos,
                        entries,
                        key: None,
                        ..
                    }) => Node {
                        pos,
                        value: Value::Map(entries),
                        raw: None,
                    },
                    _ => return Err(Unsupported::Unexpected),
                };
                b.place(node)?;
            }
            Event::Alias(_) => return Err(Unsupported::Anchor),
            _ => return Err(Unsupported::Unexpected),
        }
    }
    if !b.stack.is_empty() {
        return Err(Unsupported::Unexpected);
    }
    // serde-saphyr reads the root as `Option<_>`: a null root is "no document", at 1:1.
    Ok(match b.root {
        Some(node) if node.value != Value::Null => node,
        _ => Node {
            pos: Pos::START,
            value: Value::Null,
            raw: None,
        },
    })
}

struct Builder<'t> {
    text: &'t str,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    scalar_bytes: usize,
}

impl Builder<'_> {
    fn count_node(&mut self) -> Result<(), Unsupported> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Unsupported::Budget);
        }
        Ok(())
    }

    /// A mapping or list where a key is expected.
    fn key_position_is_not_a_collection(&self) -> Result<(), Unsupported> {
        match self.stack.last() {
            Some(Frame::Map { key: None, .. }) => Err(Unsupported::ComplexKey),
            _ => Ok(()),
        }
    }

    fn scalar(&mut self, value: &str, style: ScalarStyle, span: &Span) -> Result<(), Unsupported> {
        self.count_node()?;
        self.scalar_bytes = self.scalar_bytes.saturating_add(value.len());
        if self.scalar_bytes > MAX_SCALAR_BYTES {
            return Err(Unsupported::Budget);
        }
        let plain = style == ScalarStyle::Plain;
        let node = self.scalar_node(value, plain, span)?;
        if let Some(Frame::Map {
            entries,
            key: key @ None,
            seen,
            ..
        }) = self.stack.last_mut()
        {
            // A merge key in any style (serde-saphyr merges a plain or `!!merge` one).
            if value == "<<" {
                return Err(Unsupported::MergeKey);
            }
            check_new_key(entries, seen, value)?;
            *key = Some(node);
            return Ok(());
        }
        self.place(node)
    }

    fn scalar_node(&self, value: &str, plain: bool, span: &Span) -> Result<Node, Unsupported> {
        let resolved = yaml_scalar::resolve(value, plain).map_err(|_| Unsupported::NonFinite)?;
        let (value, raw) = match resolved {
            Scalar::Null => (Value::Null, None),
            Scalar::Str => (Value::Str(value.to_owned()), None),
            Scalar::Bool(b) => (Value::Bool(b), self.source(span)),
            Scalar::Int(i) => (Value::Int(i), self.source(span)),
            Scalar::Float(f) => (Value::Float(f), self.source(span)),
        };
        Ok(Node {
            pos: pos_of(span),
            value,
            raw,
        })
    }

    /// The source text of `span` (`None` if empty or not at char boundaries).
    fn source(&self, span: &Span) -> Option<String> {
        let start = span.start.byte_offset()?;
        let end = span.end.byte_offset()?;
        let s = self.text.get(start..end)?;
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// Puts a finished node where it belongs: the root, a list item, or a map's value.
    fn place(&mut self, node: Node) -> Result<(), Unsupported> {
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    return Err(Unsupported::Documents);
                }
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => return Err(Unsupported::ComplexKey),
            },
        }
        Ok(())
    }
}

/// Rejects a key that is, or might be, one the map already has: the same text (any two
/// null-like texts alike) or the same integer value (module doc of `yaml_scalar.rs`).
fn check_new_key(
    entries: &[(Node, Node)],
    seen: &mut Option<HashSet<u64>>,
    value: &str,
) -> Result<(), Unsupported> {
    let ids = ids_of_text(value);
    if entries.len() < LINEAR_KEY_CHECK {
        let clash = entries.iter().any(|(k, _)| {
            ids_of_node(k)
                .iter()
                .flatten()
                .any(|old| ids.iter().flatten().any(|new| new == old))
        });
        return if clash {
            Err(Unsupported::DuplicateKey)
        } else {
            Ok(())
        };
    }
    let seen = seen.get_or_insert_with(|| {
        entries
            .iter()
            .flat_map(|(k, _)| ids_of_node(k))
            .flatten()
            .map(|id| id_hash(&id))
            .collect()
    });
    // A hash seen before is a duplicate or a collision: either way serde-saphyr decides.
    for id in ids.iter().flatten() {
        if !seen.insert(id_hash(id)) {
            return Err(Unsupported::DuplicateKey);
        }
    }
    Ok(())
}

/// A key's identities: its text (`""` for any null-like text), and its integer value if
/// it is spelled as an integer.
fn ids_of_text(text: &str) -> [Option<KeyId<'_>>; 2] {
    let text_id = if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        KeyId::Text("")
    } else {
        KeyId::Text(text)
    };
    [Some(text_id), yaml_scalar::int_key(text)]
}

/// The identities of a key already in a map, from its node (`raw` is the text of a plain
/// boolean or number; a null key's text is not kept, and all null-like texts are one).
fn ids_of_node(k: &Node) -> [Option<KeyId<'_>>; 2] {
    match &k.value {
        Value::Str(s) => ids_of_text(s),
        Value::Null => ids_of_text(""),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            ids_of_text(k.raw.as_deref().unwrap_or(""))
        }
        Value::Seq(_) | Value::Map(_) => [None, None],
    }
}

fn id_hash(id: &KeyId<'_>) -> u64 {
    match id {
        KeyId::Text(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        KeyId::Int(negative, magnitude) => {
            let mut bytes = [0u8; 17];
            bytes[0] = u8::from(*negative);
            bytes[1..].copy_from_slice(&magnitude.to_le_bytes());
            // Apart from the texts' hashes (a text could be these 17 bytes).
            xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 1)
        }
    }
}

/// serde-saphyr's `Location`: the parser's line, its 0-based column plus one.
fn pos_of(span: &Span) -> Pos {
    Pos::new(
        u64::try_from(span.start.line()).unwrap_or(u64::MAX),
        u64::try_from(span.start.col().saturating_add(1)).unwrap_or(u64::MAX),
    )
}
