//! Selection algorithms over a pool's usable backends: the `Selection` trait, one file per
//! algorithm, and the `Balancer` that maps a pool's `config::Algorithm` to one. Lock-free:
//! atomics and tables built once per snapshot.

mod consistent_hash;
mod least_conn;
mod random;
pub mod ring;
mod round_robin;
mod two_choices;
mod weighted;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Algorithm;

use consistent_hash::ConsistentHash;
use least_conn::LeastConn;
use random::Random;
pub use ring::Ring;
use round_robin::RoundRobin;
use two_choices::TwoChoices;
use weighted::WeightedRoundRobin;

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

/// One algorithm: a table built once per snapshot from the pool's backends, and a pick
/// that reads it and the backends' live counters. Each algorithm is one file of this module;
/// `Balancer::new` is the one place that maps `config::Algorithm` to its selection.
pub trait Selection: std::fmt::Debug + Send + Sync {
    /// A backend index, or `None` when no backend is usable.
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize>;
}

/// The balancer of one pool. Built with the snapshot; `pick` takes `&self`.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    selection: Box<dyn Selection>,
}

impl Balancer {
    pub fn new(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Balancer {
        // Only least_conn listens to load changes; a previous snapshot's tree stops hearing.
        for b in backends {
            b.stats.load_hook.clear();
        }
        let selection: Box<dyn Selection> = match algorithm {
            Algorithm::RoundRobin => Box::new(RoundRobin::default()),
            Algorithm::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(backends)),
            Algorithm::LeastConn => Box::new(LeastConn::new(backends)),
            Algorithm::P2c => Box::new(TwoChoices::p2c()),
            Algorithm::PeakEwma => Box::new(TwoChoices::peak_ewma()),
            Algorithm::ConsistentHash => Box::new(ConsistentHash::new(backends)),
            Algorithm::Random => Box::new(Random::new(backends)),
        };
        Balancer {
            algorithm,
            selection,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Pick a backend index, or `None` when no backend is usable.
    #[inline]
    pub fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        self.selection.pick(backends, ctx)
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
