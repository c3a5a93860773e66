//! The HTTP cache's families: requests by result, and the bytes and objects stored, per
//! pool (a route's cache counts under its pool).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{header, label};
use crate::cache::Outcome;
use crate::runtime::Snapshot;

/// One pool's caches (its own and its routes'), summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolCache {
    /// Requests by outcome, in the order of `Outcome::ALL`.
    pub requests: [u64; 4],
    pub bytes: u64,
    pub objects: u64,
    /// The sum of the caches' `max_size`.
    pub max_size: u64,
}

impl PoolCache {
    /// `GET /loadbalancer/status`'s `cache` of a pool: requests by result, the hit ratio
    /// ((hit + stale) / (hit + stale + miss); null before any), objects and bytes.
    pub fn json(&self) -> serde_json::Value {
        let mut requests = serde_json::Map::new();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            requests.insert(o.label().to_string(), self.requests[i].into());
        }
        let [hit, miss, stale, _] = self.requests;
        let answered = hit + stale + miss;
        let ratio = (answered > 0).then(|| (hit + stale) as f64 / answered as f64);
        serde_json::json!({
            "requests": requests,
            "hit_ratio": ratio,
            "objects": self.objects,
            "bytes": self.bytes,
            "max_size": self.max_size,
        })
    }
}

/// Every pool with a cache (on the pool or one of its routes), summed per pool.
pub fn by_pool(snap: &Snapshot) -> BTreeMap<&str, PoolCache> {
    let mut pools: BTreeMap<&str, PoolCache> = BTreeMap::new();
    for (pool, cache) in snap.caches() {
        let e = pools.entry(pool).or_default();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            e.requests[i] += cache.requests(*o);
        }
        let (bytes, objects) = cache.store.usage();
        e.bytes += bytes;
        e.objects += objects;
        e.max_size += cache.settings.max_size;
    }
    pools
}

pub fn render(out: &mut String, snap: &Snapshot) {
    let pools = by_pool(snap);
    if pools.is_empty() {
        return;
    }
    header(
        out,
        "cache_requests_total",
        "counter",
        "Requests through a pool's HTTP cache by result (hit, miss, stale, bypass).",
    );
    for (pool, c) in &pools {
        let p = label(pool);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "autolb_cache_requests_total{{pool=\"{p}\",result=\"{}\"}} {}",
                o.label(),
                c.requests[i]
            );
        }
    }
    header(
        out,
        "cache_bytes",
        "gauge",
        "Bytes held by a pool's HTTP cache (bodies, fields and keys).",
    );
    for (pool, c) in &pools {
        let _ = writeln!(
            out,
            "autolb_cache_bytes{{pool=\"{}\"}} {}",
            label(pool),
            c.bytes
        );
    }
    header(
        out,
        "cache_objects",
        "gauge",
        "Resources stored in a pool's HTTP cache (each with its Vary variants).",
    );
    for (pool, c) in &pools {
        let _ = writeln!(
            out,
            "autolb_cache_objects{{pool=\"{}\"}} {}",
            label(pool),
            c.objects
        );
    }
}
