//! The HTTP cache's families: requests by result, and the bytes and objects stored, per
//! pool (a route's cache counts under its pool).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{header, label};
use crate::cache::Outcome;
use crate::runtime::Snapshot;

pub fn render(out: &mut String, snap: &Snapshot) {
    // Per pool: requests by outcome, bytes, objects.
    let mut pools: BTreeMap<&str, ([u64; 4], u64, u64)> = BTreeMap::new();
    for (pool, cache) in snap.caches() {
        let e = pools.entry(pool).or_default();
        for (i, o) in Outcome::ALL.iter().enumerate() {
            e.0[i] += cache.requests(*o);
        }
        let (bytes, objects) = cache.store.usage();
        e.1 += bytes;
        e.2 += objects;
    }
    if pools.is_empty() {
        return;
    }
    header(
        out,
        "cache_requests_total",
        "counter",
        "Requests through a pool's HTTP cache by result (hit, miss, stale, bypass).",
    );
    for (pool, (requests, _, _)) in &pools {
        let p = label(pool);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "autolb_cache_requests_total{{pool=\"{p}\",result=\"{}\"}} {}",
                o.label(),
                requests[i]
            );
        }
    }
    header(
        out,
        "cache_bytes",
        "gauge",
        "Bytes held by a pool's HTTP cache (bodies, fields and keys).",
    );
    for (pool, (_, bytes, _)) in &pools {
        let _ = writeln!(
            out,
            "autolb_cache_bytes{{pool=\"{}\"}} {bytes}",
            label(pool)
        );
    }
    header(
        out,
        "cache_objects",
        "gauge",
        "Resources stored in a pool's HTTP cache (each with its Vary variants).",
    );
    for (pool, (_, _, objects)) in &pools {
        let _ = writeln!(
            out,
            "autolb_cache_objects{{pool=\"{}\"}} {objects}",
            label(pool)
        );
    }
}
