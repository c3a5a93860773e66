//! `least_conn`: fewest in-flight requests and WebSockets per unit of weight, ties taking
//! turns. In O(log n), as HAProxy keeps servers in a tree by load: a tournament tree
//! over the pool's backends whose leaves are keyed by load per unit of weight, then by how
//! long ago each backend was last picked (so that equals take turns). Backends report each
//! change of their load (`runtime::load_hook`); a pick reads the root, checks it, and
//! refreshes one more leaf in turn (slow-start weights and health move without a report).
//!
//! Lock-free: leaves and nodes are atomics, and a node is recomputed until its children
//! stop changing under it, so concurrent updates settle on the true minimum. A pick that
//! cannot use the root (panic mode, backends already tried, a stale unusable root) returns
//! `None` and the caller scans, which is exact.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::{connections, eligible, PickContext, Selection};
use crate::backend::load_hook::LoadWatcher;
use crate::backend::Backend;

/// The key of a backend that may not be picked.
const UNUSABLE: u64 = u64::MAX;
/// Low bits of a key: the pick sequence (wraps every million picks: a backend picked just
/// before the wrap is then briefly preferred among equals).
const SEQ_BITS: u32 = 20;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// The load part of a key saturates here (2^44 - 2).
const MAX_SCORE: u64 = (1 << (64 - SEQ_BITS)) - 2;
/// No backend under this node (padding to a power of two).
const NONE: u32 = u32::MAX;

/// The selection: the tree, and an exact scan when the tree cannot answer.
#[derive(Debug)]
pub struct LeastConn {
    tree: Arc<LoadTree>,
    /// The rotating start of a scan (ties go to the first in it).
    cursor: AtomicUsize,
}

impl LeastConn {
    pub fn new(backends: &[Arc<Backend>]) -> LeastConn {
        LeastConn {
            tree: LoadTree::new(backends),
            cursor: AtomicUsize::new(0),
        }
    }

    fn scan(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let n = backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = start.wrapping_add(k) % n;
            if !eligible(backends, ctx, i) {
                continue;
            }
            let b = &backends[i];
            let (l, w) = (connections(b) + 1, b.weight_milli());
            match best {
                // l/w < bl/bw  <=>  l*bw < bl*w
                Some((_, bl, bw)) if l * bw >= bl * w => {}
                _ => best = Some((i, l, w)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

impl Selection for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        self.tree.pick(ctx).or_else(|| self.scan(backends, ctx))
    }
}

/// The tree of one pool's backends (built with its snapshot).
#[derive(Debug)]
pub struct LoadTree {
    backends: Box<[Arc<Backend>]>,
    /// Per backend: its key (lower is better).
    keys: Box<[AtomicU64]>,
    /// Per backend: the pick sequence when it was last picked.
    picked: Box<[AtomicU64]>,
    /// Heap layout: node 1 is the root, node k's children are 2k and 2k+1, the leaves are
    /// `cap..2*cap` (backend i at `cap + i`). Each holds the index of its best backend.
    nodes: Box<[AtomicU32]>,
    cap: usize,
    seq: AtomicU64,
    sweep: AtomicUsize,
}

impl LoadTree {
    /// The tree of `backends`, registered in each backend's stats.
    pub fn new(backends: &[Arc<Backend>]) -> Arc<LoadTree> {
        let n = backends.len();
        let cap = n.next_power_of_two().max(1);
        let tree = Arc::new(LoadTree {
            backends: backends.into(),
            keys: (0..n).map(|_| AtomicU64::new(UNUSABLE)).collect(),
            picked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            nodes: (0..2 * cap)
                .map(|k| {
                    let leaf = k.checked_sub(cap).filter(|i| *i < n);
                    AtomicU32::new(leaf.map_or(NONE, |i| i as u32))
                })
                .collect(),
            cap,
            seq: AtomicU64::new(1),
            sweep: AtomicUsize::new(0),
        });
        for i in 0..n {
            tree.refresh(i);
        }
        let weak: Weak<dyn LoadWatcher> = Arc::downgrade(&(tree.clone() as Arc<dyn LoadWatcher>));
        for (i, b) in backends.iter().enumerate() {
            b.stats.load_hook.install(weak.clone(), i);
        }
        tree
    }

    /// The least loaded usable backend, or `None` when the caller must scan.
    #[inline]
    pub fn pick(&self, ctx: &PickContext) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 || ctx.panic || ctx.exclude != 0 {
            return None;
        }
        // One leaf in turn catches what moved without a report (health, slow start).
        self.refresh(self.sweep.fetch_add(1, Ordering::Relaxed) % n);
        for _ in 0..4 {
            let i = self.nodes[1].load(Ordering::Acquire);
            if i == NONE || self.keys[i as usize].load(Ordering::Acquire) == UNUSABLE {
                return None;
            }
            let i = i as usize;
            if self.backends[i].usable() {
                // Last among equals from now on; the request's start refreshes its leaf.
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                self.picked[i].store(seq, Ordering::Relaxed);
                return Some(i);
            }
            // It went down since its leaf was computed.
            self.refresh(i);
        }
        None
    }

    fn key(&self, i: usize) -> u64 {
        let b = &self.backends[i];
        if !b.usable() {
            return UNUSABLE;
        }
        let score = ((connections(b) + 1) * 1_000_000 / b.weight_milli()).min(MAX_SCORE);
        (score << SEQ_BITS) | (self.picked[i].load(Ordering::Relaxed) & SEQ_MASK)
    }

    /// Recompute backend `i`'s key and the path from its leaf to the root.
    fn refresh(&self, i: usize) {
        self.keys[i].store(self.key(i), Ordering::Release);
        let mut node = (self.cap + i) / 2;
        while node >= 1 {
            self.settle(node);
            node /= 2;
        }
    }

    /// Node `k` := the better of its children, again until they hold still.
    fn settle(&self, k: usize) {
        for _ in 0..4 {
            let (l, r) = (
                self.nodes[2 * k].load(Ordering::Acquire),
                self.nodes[2 * k + 1].load(Ordering::Acquire),
            );
            self.nodes[k].store(self.better(l, r), Ordering::Release);
            if self.nodes[2 * k].load(Ordering::Acquire) == l
                && self.nodes[2 * k + 1].load(Ordering::Acquire) == r
            {
                return;
            }
        }
    }

    fn better(&self, a: u32, b: u32) -> u32 {
        match (a, b) {
            (NONE, x) | (x, NONE) => x,
            _ => {
                let ka = self.keys[a as usize].load(Ordering::Acquire);
                let kb = self.keys[b as usize].load(Ordering::Acquire);
                if kb < ka {
                    b
                } else {
                    a
                }
            }
        }
    }
}

impl LoadWatcher for LoadTree {
    fn load_changed(&self, index: usize) {
        if index < self.backends.len() {
            self.refresh(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::balance::tests::backends;

    /// The lowest load per weight among usable backends (what a scan finds).
    fn best_load(bs: &[Arc<Backend>]) -> Option<u64> {
        bs.iter()
            .filter(|b| b.usable())
            .map(|b| (connections(b) + 1) * 1_000_000 / b.weight_milli())
            .min()
    }

    #[test]
    fn the_root_is_always_a_least_loaded_usable_backend() {
        fastrand::seed(7);
        for n in [1, 2, 3, 7, 64, 100] {
            let weights: Vec<u32> = (0..n).map(|i| (i % 3 + 1) as u32).collect();
            let bs = backends(&weights);
            let tree = LoadTree::new(&bs);
            for step in 0..2000 {
                let i = fastrand::usize(..n);
                match fastrand::u8(..10) {
                    0..=4 => {
                        bs[i].stats.begin();
                    }
                    5..=7 if bs[i].stats.active.load(Ordering::Relaxed) > 0 => bs[i].stats.end(),
                    8 => bs[i].stats.websocket(true),
                    _ => {
                        // Health moves without a report: the pick must still be usable.
                        let up = bs[i].stats.up.load(Ordering::Relaxed);
                        bs[i].stats.up.store(!up, Ordering::Relaxed);
                    }
                }
                // None: the caller scans (the root is unusable or nothing is known).
                if let Some(p) = tree.pick(&PickContext::default()) {
                    assert!(bs[p].usable(), "n={n} step={step}");
                    let load = (connections(&bs[p]) + 1) * 1_000_000 / bs[p].weight_milli();
                    // Every reported change is in the tree: only unreported recoveries (a
                    // backend back up, its leaf stale until swept) may be missed.
                    if best_load(&bs).is_some_and(|b| b < load) {
                        let known_best = (0..n)
                            .filter(|&k| tree.keys[k].load(Ordering::Relaxed) != UNUSABLE)
                            .filter(|&k| bs[k].usable())
                            .map(|k| (connections(&bs[k]) + 1) * 1_000_000 / bs[k].weight_milli())
                            .min();
                        assert_eq!(known_best, Some(load), "n={n} step={step}");
                    }
                }
            }
            // After a sweep over every leaf, the tree knows everything again.
            for _ in 0..n {
                let _ = tree.pick(&PickContext::default());
            }
            if let Some(p) = tree.pick(&PickContext::default()) {
                let load = (connections(&bs[p]) + 1) * 1_000_000 / bs[p].weight_milli();
                assert_eq!(Some(load), best_load(&bs), "n={n}");
            }
        }
    }

    #[test]
    fn equals_take_turns() {
        let bs = backends(&[1, 1, 1, 1]);
        let tree = LoadTree::new(&bs);
        let mut seen = vec![0; 4];
        for _ in 0..400 {
            let i = tree.pick(&PickContext::default()).expect("a backend");
            seen[i] += 1;
            bs[i].stats.begin();
            bs[i].stats.end();
        }
        assert_eq!(seen, vec![100; 4]);
    }

    #[test]
    fn concurrent_updates_settle_on_the_minimum() {
        let bs = backends(&[1; 50]);
        let tree = LoadTree::new(&bs);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (bs, tree) = (&bs, &tree);
                s.spawn(move || {
                    let mut held = Vec::new();
                    for k in 0..5000 {
                        let i = tree.pick(&PickContext::default()).unwrap_or(k % 50);
                        bs[i].stats.begin();
                        held.push(i);
                        if held.len() > 3 + t {
                            bs[held.remove(0)].stats.end();
                        }
                    }
                    for i in held {
                        bs[i].stats.end();
                    }
                });
            }
        });
        // Quiet again: every backend idle, and the root says so.
        assert!(bs.iter().all(|b| b.active() == 0));
        let root = tree.nodes[1].load(Ordering::Relaxed) as usize;
        let min = tree.keys.iter().map(|k| k.load(Ordering::Relaxed)).min();
        assert_eq!(Some(tree.keys[root].load(Ordering::Relaxed)), min);
    }

    #[test]
    fn a_new_tree_takes_the_reports_and_a_dropped_one_hears_nothing() {
        let bs = backends(&[1, 1]);
        let old = LoadTree::new(&bs);
        let new = LoadTree::new(&bs);
        drop(old);
        bs[0].stats.begin();
        bs[0].stats.begin();
        assert_eq!(new.pick(&PickContext::default()), Some(1));
    }
}
