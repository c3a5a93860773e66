//! A pool as the snapshot holds it: settings, backends, the balancer built over them, and
//! pool-wide statistics that survive a reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::overrides::Overrides;
use super::stats::LatencyWindow;
use crate::backend::histogram::DurationHistogram;
use crate::backend::{Backend, BackendStats};
use crate::balance::Balancer;
use crate::config::{self, Algorithm, HashKey, HealthCheck, Outlier, RetryOn, Timeouts};
use crate::upstream::ConnPool;

/// Request statistics of one pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub window: LatencyWindow,
    pub histogram: DurationHistogram,
    /// Requests autolb answered itself for this pool (502/503/504).
    pub local_errors: AtomicU64,
    /// Requests currently in flight through this pool.
    pub active: AtomicU64,
    /// Requests waiting for a first instance (scale from zero).
    pub cold_waiters: AtomicU64,
    /// Autoscaled pools: the last start attempt of every instance failed (the program
    /// cannot be run, or exited before it was ready), so a request without a ready backend
    /// gets 503 at once instead of waiting for a start that is not coming. Set by the
    /// autoscaler; cleared once an instance is ready or a new one is started.
    pub start_failing: AtomicBool,
    /// Woken when a backend of the pool becomes ready, and when cold requests arrive.
    pub ready_notify: tokio::sync::Notify,
    pub demand_notify: tokio::sync::Notify,
    /// Attempts made again on another backend, by why the previous one failed (in the
    /// order of `RETRY_REASONS`).
    pub retries: [AtomicU64; 4],
    /// Request body bytes read from clients, and response body bytes forwarded to them
    /// from the pool's backends.
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: AtomicU64,
    /// gRPC calls by the `grpc-status` they ended with (0-16; `crate::proxy::grpc`).
    pub grpc_statuses: [AtomicU64; 17],
    /// Its WARN lines about requests autolb answered itself, at most one a second.
    pub log: crate::log_throttle::LogThrottle,
}

/// Labels of `autolb_retries_total{reason}`, in the order of `PoolStats::retries`.
pub const RETRY_REASONS: [&str; 4] = ["connect_failure", "timeout", "reset", "status"];

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
    /// Autoscaled pools: requests wait for a first ready instance.
    pub cold_start: Option<ColdStart>,
    /// Sticky sessions (`sticky:`), over `backends`.
    pub affinity: Option<crate::affinity::Affinity>,
    pub backends: Vec<Arc<Backend>>,
    pub balancer: Balancer,
    pub stats: Arc<PoolStats>,
    /// `limits:` the concurrency limit and its queue (None: no limit).
    pub queue: Option<super::limit::Queue>,
    /// `grpc_web`: gRPC-Web requests translated (`crate::proxy::grpc_web`).
    pub grpc_web: Option<config::GrpcWeb>,
    /// `cache:` the pool's HTTP cache (kept over reloads while its settings stay the same).
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// `compress`: responses compressed for clients that accept it.
    pub compress: Option<config::Compress>,
}

/// Scale-from-zero queue of an autoscaled pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart {
    pub queue: u32,
    pub timeout: std::time::Duration,
}

/// A backend the autoscaler manages: its state is owned by the instance, not the config.
#[derive(Debug, Clone)]
pub struct ManagedBackend {
    pub address: String,
    pub addr: std::net::SocketAddr,
    /// 1..=256 (1 but for members found through DNS SRV records).
    pub weight: u32,
    pub stats: Arc<BackendStats>,
    pub conns: Arc<ConnPool>,
}

/// The check an autoscaled pool without `health_check` gets: a TCP connect every second,
/// ready after one pass.
pub fn default_instance_check() -> HealthCheck {
    HealthCheck {
        kind: config::HealthCheckKind::Tcp,
        path: "/".into(),
        service: String::new(),
        host: None,
        expected_status: vec![(200, 399)],
        port: None,
        interval: std::time::Duration::from_secs(1),
        timeout: std::time::Duration::from_secs(1),
        rise: 1,
        fall: 3,
    }
}

impl Pool {
    /// Build from config, the autoscaler's instances and the operator's overrides, reusing
    /// the state of backends (by address) and of the pool itself from `previous`.
    pub fn build(
        cfg: &config::Pool,
        managed: &[ManagedBackend],
        overrides: &Overrides,
        previous: Option<&Pool>,
        workers: usize,
    ) -> Pool {
        let over = |address: &str| {
            overrides
                .get(&cfg.name, address)
                .copied()
                .unwrap_or_default()
        };
        // The previous backends by address (the first of equal ones), so a reload to N
        // backends finds each one's state in O(1), not by a scan.
        let previous_backends: HashMap<&str, &Arc<Backend>> = previous
            .map(|p| {
                let mut by_address = HashMap::with_capacity(p.backends.len());
                for old in &p.backends {
                    by_address.entry(old.address.as_str()).or_insert(old);
                }
                by_address
            })
            .unwrap_or_default();
        let mut backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                let prev = previous_backends.get(b.address.as_str());
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
                let o = over(&b.address);
                Arc::new(Backend {
                    address: b.address.clone(),
                    addr: b.addr,
                    weight: o.weight.map_or(b.weight, |(w, _)| w),
                    config_weight: b.weight,
                    disabled: b.disabled,
                    mode: o.mode,
                    slow_start: cfg.slow_start,
                    stats,
                    conns,
                })
            })
            .collect();
        backends.extend(managed.iter().map(|m| {
            let o = over(&m.address);
            Arc::new(Backend {
                address: m.address.clone(),
                addr: m.addr,
                weight: o.weight.map_or(m.weight, |(w, _)| w),
                config_weight: m.weight,
                disabled: false,
                mode: o.mode,
                slow_start: cfg.slow_start,
                stats: m.stats.clone(),
                conns: m.conns.clone(),
            })
        }));
        // The pool's `protocol` and `tls` (a no-op unless they changed).
        for b in &backends {
            b.conns.configure(cfg, &b.address);
        }
        let balancer = Balancer::new(cfg.balance, &backends);
        Pool {
            name: cfg.name.clone(),
            algorithm: cfg.balance,
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            retry_methods: cfg.retry_methods.clone(),
            retry_on: cfg.retry_on.clone(),
            timeouts: cfg.timeouts,
            health_check: cfg
                .health_check
                .clone()
                .or_else(|| cfg.autoscale.as_ref().map(|_| default_instance_check())),
            outlier: cfg.outlier.clone(),
            panic_threshold: cfg.panic_threshold,
            cold_start: cfg.autoscale.as_ref().map(|a| ColdStart {
                queue: a.cold_start_queue,
                timeout: a.cold_start_timeout,
            }),
            affinity: cfg
                .sticky
                .as_ref()
                .map(|s| crate::affinity::Affinity::new(s, &cfg.name, &backends)),
            backends,
            balancer,
            stats: previous.map_or_else(Default::default, |p| p.stats.clone()),
            grpc_web: cfg.grpc_web.clone(),
            compress: cfg.compress.clone(),
            cache: crate::cache::Cache::reuse(
                cfg.cache.as_ref(),
                previous.and_then(|p| p.cache.as_ref()),
            ),
            queue: super::limit::Queue::build(
                cfg.limits.as_ref(),
                previous.and_then(|p| p.queue.as_ref()),
            ),
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
        let enabled = self.backends.iter().filter(|b| b.accepts_new()).count();
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
