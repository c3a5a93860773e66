//! Passive outlier detection (Envoy-style): consecutive failures of real requests eject a
//! backend for a while, each repeat doubling the time up to a cap, never more than
//! `max_ejection_percent` of a pool at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Outlier;
use crate::runtime::events::EventLog;
use crate::runtime::{Backend, Pool};

/// What one attempt to a backend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that does not count as a failure.
    Success,
    ConnectFailure,
    /// Reset or closed after the request was sent, before a response head.
    Reset,
    Timeout,
    Status5xx,
}

impl Outcome {
    fn counts(self, cfg: &Outlier) -> bool {
        let c = &cfg.count;
        match self {
            Outcome::Success => false,
            Outcome::ConnectFailure => c.connect_failure,
            Outcome::Reset => c.reset,
            Outcome::Timeout => c.timeout,
            Outcome::Status5xx => c.status_5xx,
        }
    }
}

/// Feed one attempt's outcome; ejects the backend when it reaches the failure threshold.
#[inline]
pub fn observe(pool: &Pool, backend: &Arc<Backend>, outcome: Outcome, events: &Arc<EventLog>) {
    let Some(cfg) = &pool.outlier else {
        return;
    };
    let stats = &backend.stats;
    if !outcome.counts(cfg) {
        if outcome == Outcome::Success && stats.consecutive_failures.load(Ordering::Relaxed) != 0 {
            stats.consecutive_failures.store(0, Ordering::Relaxed);
        }
        return;
    }
    let n = stats.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if n < cfg.consecutive_failures {
        return;
    }
    stats.consecutive_failures.store(0, Ordering::Relaxed);
    eject(pool, backend, cfg, outcome, n, events);
}

fn eject(
    pool: &Pool,
    backend: &Arc<Backend>,
    cfg: &Outlier,
    outcome: Outcome,
    failures: u32,
    events: &Arc<EventLog>,
) {
    let stats = &backend.stats;
    let total = pool.backends.len();
    let ejected = pool
        .backends
        .iter()
        .filter(|b| b.stats.ejected.load(Ordering::Relaxed))
        .count();
    if (ejected + 1) * 100 > total * usize::from(cfg.max_ejection_percent) {
        tracing::warn!(
            pool = %pool.name,
            backend = %backend.address,
            ejected,
            "outlier not ejected: max_ejection_percent reached"
        );
        return;
    }
    if stats
        .ejected
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // Forget old ejections once the backend behaved for a full max_ejection.
    let now = stats.now_ns();
    let last_lift = stats.last_lift_ns.load(Ordering::Relaxed);
    if last_lift != 0 && now.saturating_sub(last_lift) > cfg.max_ejection.as_nanos() as u64 {
        stats.ejections.store(0, Ordering::Relaxed);
    }
    let k = stats.ejections.fetch_add(1, Ordering::Relaxed);
    stats.ejections_total.fetch_add(1, Ordering::Relaxed);
    let time = ejection_time(cfg, k);
    let detail = format!("{failures} consecutive failures (last: {outcome:?}), for {time:?}");
    tracing::warn!(pool = %pool.name, backend = %backend.address, %detail, "backend ejected");
    events.push(&pool.name, &backend.address, "ejected", detail);

    let (backend, events, pool_name) = (backend.clone(), events.clone(), pool.name.clone());
    tokio::spawn(async move {
        tokio::time::sleep(time).await;
        // Only the ejection this timer belongs to: a newer one has its own timer.
        if backend.stats.ejections.load(Ordering::Relaxed) == k + 1 {
            lift(&pool_name, &backend, &events, "ejection time over");
        }
    });
}

/// `ejection * 2^k`, capped at `max_ejection`.
pub fn ejection_time(cfg: &Outlier, k: u32) -> Duration {
    let factor = 1u32 << k.min(16);
    cfg.ejection.saturating_mul(factor).min(cfg.max_ejection)
}

/// End an ejection (timer over, or a passing active check). No-op when not ejected.
pub fn lift(pool: &str, backend: &Arc<Backend>, events: &EventLog, why: &str) {
    let stats = &backend.stats;
    if stats
        .ejected
        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    stats.last_lift_ns.store(stats.now_ns(), Ordering::Relaxed);
    tracing::info!(pool = %pool, backend = %backend.address, why, "ejection lifted");
    events.push(pool, &backend.address, "ejection_lifted", why.to_string());
    if backend.slow_start.is_some() {
        stats.start_ramp();
    }
}

#[cfg(test)]
mod tests;
