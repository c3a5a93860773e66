//! `consistent_hash`: the request's hash key (`PickContext::hash`) on a ketama ring of the
//! pool's backends; the next usable one clockwise. Without a key (missing header or
//! cookie) requests spread round robin, as HAProxy does.

use std::sync::Arc;

use super::{eligible, PickContext, Ring, RoundRobin, Selection};
use crate::backend::Backend;

#[derive(Debug)]
pub struct ConsistentHash {
    ring: Ring,
    fallback: RoundRobin,
}

impl ConsistentHash {
    pub fn new(backends: &[Arc<Backend>]) -> ConsistentHash {
        let points: Vec<(&str, u32)> = backends
            .iter()
            .map(|b| (b.address.as_str(), b.weight))
            .collect();
        ConsistentHash {
            ring: Ring::new(&points),
            fallback: RoundRobin::default(),
        }
    }
}

impl Selection for ConsistentHash {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        ctx.hash
            .and_then(|h| self.ring.lookup(h, |i| eligible(backends, ctx, i)))
            .or_else(|| self.fallback.pick(backends, ctx))
    }
}
