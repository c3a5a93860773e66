//! `cache:` of a pool or a route (the HTTP cache of `crate::cache`): the file type, the
//! validated settings and their checks.

use std::time::Duration;

use serde::Deserialize;

use super::error::Issues;
use super::file::{Dur, StrOrInt};
use super::node::Located;

/// `cache:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// Bytes of stored responses (bodies, headers and keys), default 256MiB.
    pub max_size: u64,
    /// The largest response body stored, default 1MiB.
    pub max_object: u64,
    /// Freshness of a heuristically cacheable response without explicit expiration
    /// (default 0s: none, only `Last-Modified`'s 10% heuristic).
    pub default_ttl: Duration,
    /// A stale response is served (and refreshed in the background) for this long past its
    /// freshness (default 10s).
    pub stale_while_revalidate: Duration,
    /// A stale response is served for this long when the pool fails (default 60s).
    pub stale_if_error: Duration,
    /// `X-Cache: HIT|MISS|STALE|BYPASS` on responses (default true).
    pub x_cache: bool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_size: 256 << 20,
            max_object: 1 << 20,
            default_ttl: Duration::ZERO,
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            x_cache: true,
        }
    }
}

/// `cache:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cache mapping (max_size, max_object, default_ttl, stale_while_revalidate, stale_if_error, x_cache)"
)]
pub struct CacheFile {
    pub max_size: Option<Located<StrOrInt>>,
    pub max_object: Option<Located<StrOrInt>>,
    pub default_ttl: Option<Located<Dur>>,
    pub stale_while_revalidate: Option<Located<Dur>>,
    pub stale_if_error: Option<Located<Dur>>,
    pub x_cache: Option<Located<bool>>,
}

/// Validates `cache:`; `None` after recording the issues.
pub(crate) fn cache(file: &CacheFile, issues: &mut Issues) -> Option<Cache> {
    let before = issues.len();
    let mut c = Cache::default();
    if let Some(v) =
        super::limits::size(&file.max_size, 64 << 10, 1 << 40, "cache max_size", issues)
    {
        c.max_size = v;
    }
    if let Some(v) = super::limits::size(&file.max_object, 1, 1 << 30, "cache max_object", issues) {
        c.max_object = v;
    }
    if c.max_object > c.max_size {
        let pos = file
            .max_object
            .as_ref()
            .or(file.max_size.as_ref())
            .map(|f| f.pos);
        if let Some(pos) = pos {
            issues.push(
                pos,
                format!(
                    "cache max_object ({} bytes) must not exceed max_size ({} bytes)",
                    c.max_object, c.max_size
                ),
            );
        }
    }
    let days = Duration::from_secs(365 * 86_400);
    for (field, slot, what) in [
        (&file.default_ttl, &mut c.default_ttl, "default_ttl"),
        (
            &file.stale_while_revalidate,
            &mut c.stale_while_revalidate,
            "stale_while_revalidate",
        ),
        (
            &file.stale_if_error,
            &mut c.stale_if_error,
            "stale_if_error",
        ),
    ] {
        if let Some(d) = field {
            if d.value.0 > days {
                issues.push(d.pos, format!("cache {what} must be at most 365 days"));
            } else {
                *slot = d.value.0;
            }
        }
    }
    if let Some(x) = &file.x_cache {
        c.x_cache = x.value;
    }
    (issues.len() == before).then_some(c)
}
