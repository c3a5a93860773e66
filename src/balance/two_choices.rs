//! `p2c` and `peak_ewma`: the power of two choices. Two distinct random usable backends,
//! the cheaper wins: by in-flight load per weight (`p2c`), or by latency EWMA times load
//! (`peak_ewma`).

use std::sync::Arc;

use super::{eligible, load, PickContext, Selection};
use crate::backend::Backend;

#[derive(Debug)]
pub struct TwoChoices {
    cost: fn(&Backend) -> f64,
}

impl TwoChoices {
    pub fn p2c() -> TwoChoices {
        TwoChoices {
            cost: |b| load(b) as f64,
        }
    }

    pub fn peak_ewma() -> TwoChoices {
        TwoChoices {
            cost: |b| b.stats.ewma_ns() * (b.active() + 1) as f64 / b.weight_milli() as f64,
        }
    }
}

impl Selection for TwoChoices {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let cost = self.cost;
        let n = backends.len();
        if n == 1 {
            return eligible(backends, ctx, 0).then_some(0);
        }
        for _ in 0..4 {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            match (eligible(backends, ctx, a), eligible(backends, ctx, b)) {
                (true, true) => {
                    return Some(if cost(&backends[b]) < cost(&backends[a]) {
                        b
                    } else {
                        a
                    })
                }
                // One or none usable: draw again.
                _ => continue,
            }
        }
        // Few usable backends left: scan for the cheapest.
        (0..n)
            .filter(|&i| eligible(backends, ctx, i))
            .min_by(|&x, &y| cost(&backends[x]).total_cmp(&cost(&backends[y])))
    }
}
