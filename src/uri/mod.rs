//! Normal forms of what routing reads from a request: the path (RFC 3986 normalization, with
//! the listener's `normalize:` policy) and the host (lower case, no trailing dot, refused when
//! invalid). Pure functions over text, used by the proxy before routing and by the config to
//! check `path_prefix` and route hosts; an already-normal value costs one scan and no
//! allocation.

pub mod host;
pub mod path;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use host::HostError;
pub use path::PathError;

/// Requests a listener's normalization rewrote or refused (kept across reloads by listener
/// name).
#[derive(Debug, Default)]
pub struct Counters {
    pub rewritten: AtomicU64,
    pub rejected: AtomicU64,
}

/// A listener's policy and its counters, as a connection holds them.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    pub policy: Policy,
    pub counters: Arc<Counters>,
}

/// What to do with an encoded slash or backslash (`%2F`, `%5C`, and a raw `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 (the default): no application can tell what was meant.
    #[default]
    Reject,
    /// Kept encoded (`%2F`, `%5C`; a raw `\` becomes `%5C`): part of a segment, never a
    /// separator for routing.
    Keep,
    /// Decoded to `/` (also `\`), a separator like any other, before dot segments are
    /// removed.
    Decode,
}

impl EscapedSlashes {
    pub fn as_str(self) -> &'static str {
        match self {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Keep => "keep",
            EscapedSlashes::Decode => "decode",
        }
    }
}

/// A listener's `normalize: { merge_slashes, escaped_slashes, forward_original }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Merge repeated slashes (`//` -> `/`) before dot segments are removed (default true).
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    /// Route on the normal form but send the backend the path as the client wrote it
    /// (default false: the backend sees exactly what was routed).
    pub forward_original: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            forward_original: false,
        }
    }
}
