//! A pool as the snapshot holds it: settings, backends, the balancer built over them, and
//! pool-wide statistics that survive a reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::backend::{Backend, BackendStats};
use super::stats::{DurationHistogram, LatencyWindow};
use crate::balance::Balancer;
use crate::config::{self, Algorithm, HashKey, HealthCheck, Outlier, RetryOn, Timeouts};
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
    pub retry_methods: Vec<http::Method>,
    pub retry_on: RetryOn,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheck>,
    pub outlier: Option<Outlier>,
    pub panic_threshold: u8,
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
                    _ => {
                        // Added while running to a checked pool: unusable until checked.
                        let stats = if previous.is_some() && cfg.health_check.is_some() {
                            BackendStats::awaiting_check()
                        } else {
                            BackendStats::default()
                        };
                        (Arc::new(stats), Arc::new(ConnPool::new(b.addr, workers)))
                    }
                };
                Arc::new(Backend {
                    address: b.address.clone(),
                    addr: b.addr,
                    weight: b.weight,
                    disabled: b.disabled,
                    slow_start: cfg.slow_start,
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
            retry_methods: cfg.retry_methods.clone(),
            retry_on: cfg.retry_on.clone(),
            timeouts: cfg.timeouts,
            health_check: cfg.health_check.clone(),
            outlier: cfg.outlier.clone(),
            panic_threshold: cfg.panic_threshold,
            backends,
            balancer,
            stats: previous.map_or_else(Default::default, |p| p.stats.clone()),
        }
    }

    pub fn ready_backends(&self) -> usize {
        self.backends.iter().filter(|b| b.usable()).count()
    }

    /// Envoy's panic mode: too few healthy backends to trust health, so use them all.
    pub fn in_panic(&self) -> bool {
        if self.panic_threshold == 0 {
            return false;
        }
        let enabled = self.backends.iter().filter(|b| !b.disabled).count();
        let healthy = self.ready_backends();
        healthy * 100 < enabled * usize::from(self.panic_threshold)
    }

    /// Seconds a client should wait before retrying a 503: the health-check interval.
    pub fn retry_after_secs(&self) -> u64 {
        self.health_check
            .as_ref()
            .map_or(1, |h| h.interval.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }
}
