//! A pool as the snapshot holds it: settings, backends, the balancer built over them, and
//! pool-wide statistics that survive a reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::backend::{Backend, BackendStats};
use super::stats::{DurationHistogram, LatencyWindow};
use crate::balance::Balancer;
use crate::config::{self, Algorithm, HashKey, Timeouts};
use crate::proxy::upstream::ConnPool;

/// Request statistics of one pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub window: LatencyWindow,
    pub histogram: DurationHistogram,
    /// Requests autolb answered itself for this pool (502/503/504).
    pub local_errors: AtomicU64,
    /// Requests currently in flight through this pool.
    pub active: AtomicU64,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub retries: u32,
    pub timeouts: Timeouts,
    pub backends: Vec<Arc<Backend>>,
    pub balancer: Balancer,
    pub stats: Arc<PoolStats>,
}

impl Pool {
    /// Build from config, reusing the state of backends (by address) and of the pool itself
    /// from `previous`.
    pub fn build(cfg: &config::Pool, previous: Option<&Pool>, workers: usize) -> Pool {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                let prev =
                    previous.and_then(|p| p.backends.iter().find(|old| old.address == b.address));
                let (stats, conns) = match prev {
                    Some(old) if old.addr == b.addr => (old.stats.clone(), old.conns.clone()),
                    _ => (
                        Arc::new(BackendStats::default()),
                        Arc::new(ConnPool::new(b.addr, workers)),
                    ),
                };
                Arc::new(Backend {
                    address: b.address.clone(),
                    addr: b.addr,
                    weight: b.weight,
                    disabled: b.disabled,
                    stats,
                    conns,
                })
            })
            .collect();
        let balancer = Balancer::new(cfg.balance, &backends);
        Pool {
            name: cfg.name.clone(),
            algorithm: cfg.balance,
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            timeouts: cfg.timeouts,
            backends,
            balancer,
            stats: previous.map_or_else(Default::default, |p| p.stats.clone()),
        }
    }

    pub fn ready_backends(&self) -> usize {
        self.backends.iter().filter(|b| b.usable()).count()
    }

    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }
}
