//! `weighted_round_robin`: smooth weighted round robin (nginx), the order of one full
//! weight cycle computed once per snapshot; a backend in slow start keeps each of its
//! turns with its ramp factor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{eligible, ramp_admits, PickContext, Selection};
use crate::backend::Backend;

#[derive(Debug)]
pub struct WeightedRoundRobin {
    cursor: AtomicUsize,
    /// The smooth order of one full weight cycle.
    sequence: Box<[u32]>,
}

impl WeightedRoundRobin {
    pub fn new(backends: &[Arc<Backend>]) -> WeightedRoundRobin {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        WeightedRoundRobin {
            cursor: AtomicUsize::new(0),
            sequence: smooth_sequence(&weights).into(),
        }
    }
}

impl Selection for WeightedRoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let pick = |k: usize| self.sequence[start.wrapping_add(k) % len] as usize;
        // A slot of a backend in slow start is taken only with its ramp factor.
        (0..len)
            .map(pick)
            .find(|&i| {
                i < backends.len() && eligible(backends, ctx, i) && ramp_admits(&backends[i])
            })
            .or_else(|| {
                (0..len)
                    .map(pick)
                    .find(|&i| i < backends.len() && eligible(backends, ctx, i))
            })
    }
}

/// One cycle of nginx's smooth weighted round robin: each step adds every weight to its
/// current value, picks the largest, and subtracts the total from it. Weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total.max(0) as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example_has_no_bursts() {
        let names: String = smooth_sequence(&[5, 1, 1])
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect();
        assert_eq!(names, "aabacaa");
    }

    #[test]
    fn proportions_are_exact_per_cycle() {
        let seq = smooth_sequence(&[3, 1, 2]);
        assert_eq!(seq.len(), 6);
        for (i, w) in [3, 1, 2].iter().enumerate() {
            assert_eq!(seq.iter().filter(|&&x| x as usize == i).count(), *w);
        }
    }
}
