//! `round_robin`: each pick starts one past the previous one and takes the first usable
//! backend; also the fallback of `consistent_hash` (no key) and `random`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{eligible, PickContext, Selection};
use crate::backend::Backend;

#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl Selection for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let n = backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| eligible(backends, ctx, i))
    }
}
