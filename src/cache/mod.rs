//! The HTTP cache (`cache:` of a pool or a route): an RFC 9111 shared cache in memory. It
//! owns the stored responses (`store`), the HTTP semantics of caching (`policy`, `key`,
//! `serve`), request coalescing (`flight`), the body that fills the store as it streams
//! (`tee`) and the decisions around one request (`flow`); the proxy calls `flow::begin`
//! before admitting a request and `flow::Pending::complete` on the backend's answer.
//!
//! The semantics are autolb's own code rather than a crate's: the candidates
//! (`http-cache-semantics`) are written for private or generic caches and would still need
//! the shared-cache rules below (no `Set-Cookie` ever shared, `Authorization`, serve-stale
//! windows, purges) around them; moka keeps the store bounded.

pub mod flight;
pub mod flow;
pub mod key;
pub mod policy;
pub mod serve;
pub mod store;
pub mod tee;

use std::sync::atomic::{AtomicU64, Ordering};

pub use flow::{begin, Begin, Completed, Pending};
pub use store::Purge;
pub use tee::Tee;

/// How the cache answered a request (`X-Cache`, the access log's `cache`, and
/// `autolb_cache_requests_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the store (fresh, or validated with the backend by a 304).
    Hit,
    /// From the backend (and stored when the response allows it).
    Miss,
    /// A stale stored response: while it is refreshed in the background, or because the
    /// backend failed.
    Stale,
    /// Not a request the cache answers (a method other than GET/HEAD, `no-store`).
    Bypass,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Hit, Outcome::Miss, Outcome::Stale, Outcome::Bypass];

    /// `X-Cache`'s value.
    pub fn header(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// The metric label and the access log's value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }
}

/// One cache: a pool's, or a route's.
#[derive(Debug)]
pub struct Cache {
    pub settings: crate::config::Cache,
    pub store: store::Store,
    pub flights: flight::Flights,
    /// Requests by `Outcome` (in the order of `Outcome::ALL`).
    requests: [AtomicU64; 4],
}

impl Cache {
    pub fn new(settings: &crate::config::Cache) -> Cache {
        Cache {
            settings: settings.clone(),
            store: store::Store::new(settings.max_size),
            flights: flight::Flights::default(),
            requests: Default::default(),
        }
    }

    /// The cache for `settings`: `previous` while its settings stay the same (a reload
    /// keeps what is stored), else a new one.
    pub fn reuse(
        settings: Option<&crate::config::Cache>,
        previous: Option<&std::sync::Arc<Cache>>,
    ) -> Option<std::sync::Arc<Cache>> {
        let settings = settings?;
        match previous {
            Some(p) if p.settings == *settings => Some(p.clone()),
            _ => Some(std::sync::Arc::new(Cache::new(settings))),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].load(Ordering::Relaxed)
    }
}
