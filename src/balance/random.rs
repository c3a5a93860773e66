//! `random`: a backend drawn with probability proportional to its weight (cumulative
//! weights, binary search), round robin when draws keep hitting unusable backends.

use std::sync::Arc;

use super::{eligible, ramp_admits, PickContext, RoundRobin, Selection};
use crate::backend::Backend;

#[derive(Debug)]
pub struct Random {
    /// Cumulative weights.
    cumulative: Box<[u64]>,
    fallback: RoundRobin,
}

impl Random {
    pub fn new(backends: &[Arc<Backend>]) -> Random {
        let cumulative = backends
            .iter()
            .scan(0u64, |acc, b| {
                *acc += u64::from(b.weight);
                Some(*acc)
            })
            .collect();
        Random {
            cumulative,
            fallback: RoundRobin::default(),
        }
    }
}

impl Selection for Random {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total > 0 {
            for _ in 0..4 {
                let r = fastrand::u64(..total);
                let i = self.cumulative.partition_point(|&c| c <= r);
                if i < backends.len() && eligible(backends, ctx, i) && ramp_admits(&backends[i]) {
                    return Some(i);
                }
            }
        }
        self.fallback.pick(backends, ctx)
    }
}
