//! Selection algorithms over a pool's usable backends; lock-free: atomics and tables built
//! once per snapshot.

mod least_conn;
pub mod ring;
mod wrr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Algorithm;
use crate::runtime::Backend;

pub use ring::Ring;

/// What a pick may depend on besides the backends.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext {
    /// The request's hash key (consistent_hash), from `affinity::hash_key`.
    pub hash: Option<u64>,
    /// Backends already tried by this request (bit i = backend i; i >= 64 is never excluded).
    pub exclude: u64,
    /// Panic mode: health is ignored (`disabled`, drained and `maint` backends are still
    /// skipped).
    pub panic: bool,
}

#[inline]
fn excluded(ctx: &PickContext, i: usize) -> bool {
    i < 64 && ctx.exclude & (1 << i) != 0
}

#[inline]
fn eligible(backends: &[Arc<Backend>], ctx: &PickContext, i: usize) -> bool {
    let b = &backends[i];
    let ok = if ctx.panic {
        b.accepts_new()
    } else {
        b.usable()
    };
    ok && !excluded(ctx, i)
}

/// The balancer of one pool. Built with the snapshot; `pick` takes `&self`.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Round-robin position (also the rotating start for least_conn ties).
    cursor: AtomicUsize,
    /// weighted_round_robin: the smooth (nginx) order of one full weight cycle.
    sequence: Box<[u32]>,
    /// consistent_hash: the ketama ring.
    ring: Ring,
    /// random: cumulative weights.
    cumulative: Box<[u64]>,
    /// least_conn: the backends ordered by load.
    tree: Option<Arc<least_conn::LoadTree>>,
}

impl Balancer {
    pub fn new(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Balancer {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let sequence = match algorithm {
            Algorithm::WeightedRoundRobin => wrr::smooth_sequence(&weights).into(),
            _ => Box::default(),
        };
        let ring = match algorithm {
            Algorithm::ConsistentHash => Ring::new(
                backends
                    .iter()
                    .map(|b| (b.address.as_str(), b.weight))
                    .collect::<Vec<_>>()
                    .as_slice(),
            ),
            _ => Ring::default(),
        };
        let cumulative = match algorithm {
            Algorithm::Random => weights
                .iter()
                .scan(0u64, |acc, w| {
                    *acc += u64::from(*w);
                    Some(*acc)
                })
                .collect(),
            _ => Box::default(),
        };
        let tree = match algorithm {
            Algorithm::LeastConn => Some(least_conn::LoadTree::new(backends)),
            _ => {
                for b in backends {
                    b.stats.load_hook.clear();
                }
                None
            }
        };
        Balancer {
            algorithm,
            cursor: AtomicUsize::new(0),
            sequence,
            ring,
            cumulative,
            tree,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Pick a backend index, or `None` when no backend is usable.
    pub fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(backends, ctx),
            Algorithm::WeightedRoundRobin => self.weighted(backends, ctx),
            Algorithm::LeastConn => self.least_conn(backends, ctx),
            Algorithm::P2c => self.two_choices(backends, ctx, |b| load(b) as f64),
            Algorithm::PeakEwma => self.two_choices(backends, ctx, |b| {
                b.stats.ewma_ns() * (b.active() + 1) as f64 / b.weight_milli() as f64
            }),
            Algorithm::ConsistentHash => match ctx.hash {
                Some(h) => self
                    .ring
                    .lookup(h, |i| eligible(backends, ctx, i))
                    .or_else(|| self.round_robin(backends, ctx)),
                // No key (missing header or cookie): spread like HAProxy, round robin.
                None => self.round_robin(backends, ctx),
            },
            Algorithm::Random => self.random(backends, ctx),
        }
    }

    fn round_robin(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let n = backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| eligible(backends, ctx, i))
    }

    fn weighted(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
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

    /// Fewest in-flight requests and WebSockets per unit of weight; ties take turns. From
    /// the tree (O(log n)); a scan when the tree cannot answer (see `least_conn`).
    fn least_conn(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if let Some(i) = self.tree.as_ref().and_then(|t| t.pick(ctx)) {
            return Some(i);
        }
        self.least_conn_scan(backends, ctx)
    }

    /// Fewest in-flight requests and WebSockets per unit of weight; ties go to the first in a
    /// rotating order.
    fn least_conn_scan(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
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

    /// Power of two choices: two distinct random usable backends, the lower cost wins.
    fn two_choices(
        &self,
        backends: &[Arc<Backend>],
        ctx: &PickContext,
        cost: impl Fn(&Backend) -> f64,
    ) -> Option<usize> {
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
                (true, false) | (false, true) => continue,
                (false, false) => continue,
            }
        }
        // Few usable backends left: scan for the cheapest.
        (0..n)
            .filter(|&i| eligible(backends, ctx, i))
            .min_by(|&x, &y| cost(&backends[x]).total_cmp(&cost(&backends[y])))
    }

    fn random(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
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
        self.round_robin(backends, ctx)
    }
}

/// In-flight requests per unit of (slow-start scaled) weight, scaled to stay an integer.
#[inline]
fn load(b: &Backend) -> u64 {
    (connections(b) + 1) * 1_000_000 / b.weight_milli()
}

/// What least_conn and p2c count as a backend's load: in-flight requests and open WebSockets.
#[inline]
fn connections(b: &Backend) -> u64 {
    b.active() + b.stats.websockets.load(Ordering::Relaxed)
}

/// Thinning for table-driven algorithms: a backend in slow start keeps each of its turns
/// with probability equal to its ramp factor.
#[inline]
fn ramp_admits(b: &Backend) -> bool {
    match b.ramp_factor() {
        None => true,
        Some(f) => fastrand::f64() < f,
    }
}

#[cfg(test)]
mod tests;
