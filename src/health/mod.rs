//! Backend health: active checks with HAProxy's rise/fall semantics (one task per backend,
//! restarted whole on every snapshot swapped in), passive outlier ejection, writing their
//! transitions to the runtime's event log.

pub mod check;
pub mod grpc;
pub mod outlier;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::HealthCheck;
use crate::runtime::events::EventLog;
use crate::runtime::{Backend, BackendStats, CheckReport, PoolStats, Snapshot};

/// A change of a backend's active-check health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Apply one check result to the backend's counters (HAProxy semantics): DOWN after `fall`
/// consecutive failures, UP after `rise` consecutive successes, or after the first success
/// for a backend added while running.
pub fn record_check(stats: &BackendStats, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
    let up = stats.up.load(Ordering::Relaxed);
    if ok {
        stats.check_failures.store(0, Ordering::Relaxed);
        let n = stats
            .check_successes
            .load(Ordering::Relaxed)
            .saturating_add(1);
        stats.check_successes.store(n, Ordering::Relaxed);
        let needed = if stats.awaiting_first_check.load(Ordering::Relaxed) {
            1
        } else {
            rise
        };
        if !up && n >= needed {
            stats.up.store(true, Ordering::Relaxed);
            stats.awaiting_first_check.store(false, Ordering::Relaxed);
            return Some(Transition::Up);
        }
    } else {
        stats.check_successes.store(0, Ordering::Relaxed);
        let n = stats
            .check_failures
            .load(Ordering::Relaxed)
            .saturating_add(1);
        stats.check_failures.store(n, Ordering::Relaxed);
        if up && n >= fall {
            stats.up.store(false, Ordering::Relaxed);
            return Some(Transition::Down);
        }
    }
    None
}

/// The active-check tasks of the current snapshot: built by the server at start-up, told of
/// every snapshot the runtime swaps in (`runtime::SwapObserver`), stopped at shutdown.
pub struct HealthChecks {
    events: Arc<EventLog>,
    /// `None` once stopped: a snapshot swapped in during the drain starts no check.
    tasks: Mutex<Option<Vec<AbortHandle>>>,
}

impl HealthChecks {
    /// Checks that record their transitions in `events`.
    pub fn new(events: Arc<EventLog>) -> HealthChecks {
        HealthChecks {
            events,
            tasks: Mutex::new(Some(Vec::new())),
        }
    }

    /// Stop the previous snapshot's checks and start one task per checked backend of
    /// `snapshot` on the current runtime. Health state lives in the backends, so a restart
    /// keeps it: a changed check starts its new schedule without marking anything down.
    pub fn reconcile(&self, snapshot: &Snapshot) {
        let mut tasks = match self.tasks.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(tasks) = tasks.as_mut() else {
            return;
        };
        let mut started = Vec::new();
        for pool in &snapshot.pools {
            let Some(cfg) = &pool.health_check else {
                continue;
            };
            for backend in pool.backends.iter().filter(|b| b.in_service()) {
                let task = tokio::spawn(check_loop(
                    pool.name.clone(),
                    pool.stats.clone(),
                    backend.clone(),
                    cfg.clone(),
                    self.events.clone(),
                ));
                started.push(task.abort_handle());
            }
        }
        for old in std::mem::replace(tasks, started) {
            old.abort();
        }
    }

    /// Stop every check, for good (shutdown).
    pub fn stop(&self) {
        let mut tasks = match self.tasks.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        for t in tasks.take().into_iter().flatten() {
            t.abort();
        }
    }
}

impl crate::runtime::SwapObserver for HealthChecks {
    fn swapped(&self, snapshot: &Snapshot) {
        self.reconcile(snapshot);
    }
}

async fn check_loop(
    pool: String,
    pool_stats: Arc<PoolStats>,
    backend: Arc<Backend>,
    cfg: HealthCheck,
    events: Arc<EventLog>,
) {
    // Spread the first checks over one interval (a new backend is checked at once).
    let first = if backend.stats.awaiting_first_check.load(Ordering::Relaxed) {
        Duration::ZERO
    } else {
        cfg.interval.mul_f64(fastrand::f64())
    };
    tokio::time::sleep(first).await;
    loop {
        let started = Instant::now();
        let verdict = check::probe(&backend.conns, backend.addr, &backend.address, &cfg).await;
        if let Ok(mut last) = backend.stats.last_check.lock() {
            *last = Some(CheckReport {
                ok: verdict.ok,
                detail: verdict.detail.clone(),
                at: SystemTime::now(),
                took: started.elapsed(),
            });
        }
        let stats = &backend.stats;
        stats.checks[usize::from(!verdict.ok)].fetch_add(1, Ordering::Relaxed);
        match record_check(stats, verdict.ok, cfg.rise, cfg.fall) {
            Some(Transition::Down) => {
                let detail = format!(
                    "{} consecutive failed checks, last: {}",
                    stats.check_failures.load(Ordering::Relaxed),
                    verdict.detail
                );
                tracing::warn!(pool = %pool, backend = %backend.address, %detail, "backend DOWN");
                events.push(&pool, &backend.address, "down", detail);
            }
            Some(Transition::Up) => {
                let detail = format!(
                    "{} consecutive passed checks, last: {}",
                    stats.check_successes.load(Ordering::Relaxed),
                    verdict.detail
                );
                tracing::info!(pool = %pool, backend = %backend.address, %detail, "backend UP");
                events.push(&pool, &backend.address, "up", detail);
                // Requests waiting for a first instance (scale from zero) may go now.
                pool_stats.ready_notify.notify_waiters();
                if backend.slow_start.is_some() {
                    stats.start_ramp();
                }
            }
            None => {}
        }
        if verdict.ok {
            outlier::lift(&pool, &backend, &events, "a passing active check");
        }
        tokio::time::sleep(check::next_delay(cfg.interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(checks: &HealthChecks) -> Option<usize> {
        checks.tasks.lock().ok()?.as_ref().map(Vec::len)
    }

    #[tokio::test(start_paused = true)]
    async fn each_swap_restarts_the_checks_until_they_are_stopped_for_good() {
        let yaml = "admin: { listen: \"127.0.0.1:0\" }
listeners:
  - { name: web, listen: \"127.0.0.1:0\", pool: web }
pools:
  web:
    health_check: { type: tcp, interval: 1s }
    backends: [ { address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:2\" } ]
";
        let cfg = crate::config::load_str(yaml, std::path::Path::new("t.yaml")).expect("config");
        let runtime = crate::runtime::Runtime::new(cfg.clone(), 1);
        let checks = Arc::new(HealthChecks::new(runtime.events.clone()));
        runtime.observe_swaps(checks.clone());
        assert_eq!(
            running(&checks),
            Some(2),
            "one task per checked backend at once"
        );
        runtime.apply(cfg.clone());
        assert_eq!(running(&checks), Some(2), "a swap replaces them");
        checks.stop();
        runtime.apply(cfg);
        assert_eq!(
            running(&checks),
            None,
            "a swap during the drain starts none"
        );
    }

    fn run(stats: &BackendStats, results: &str, rise: u32, fall: u32) -> Vec<Option<Transition>> {
        results
            .chars()
            .map(|c| record_check(stats, c == '+', rise, fall))
            .collect()
    }

    #[test]
    fn down_after_exactly_fall_failures_and_up_after_exactly_rise_successes() {
        let s = BackendStats::default();
        let t = run(&s, "--+--", 2, 3);
        assert!(
            t.iter().all(Option::is_none),
            "a success resets the failure count"
        );
        assert_eq!(run(&s, "-", 2, 3), vec![Some(Transition::Down)]);
        assert!(!s.up.load(Ordering::Relaxed));
        assert_eq!(run(&s, "----", 2, 3), vec![None; 4]);
        assert_eq!(
            run(&s, "+-+", 2, 3),
            vec![None; 3],
            "a failure resets the rise count"
        );
        assert_eq!(run(&s, "+", 2, 3), vec![Some(Transition::Up)]);
        assert_eq!(run(&s, "++", 2, 3), vec![None, None]);
    }

    #[test]
    fn rise_one_fall_one() {
        let s = BackendStats::default();
        assert_eq!(
            run(&s, "-+-+", 1, 1),
            vec![
                Some(Transition::Down),
                Some(Transition::Up),
                Some(Transition::Down),
                Some(Transition::Up)
            ]
        );
    }

    #[test]
    fn a_backend_added_while_running_is_up_after_its_first_passing_check() {
        let s = BackendStats::awaiting_check();
        assert!(!s.healthy());
        assert_eq!(run(&s, "-", 5, 3), vec![None]);
        assert_eq!(run(&s, "+", 5, 3), vec![Some(Transition::Up)]);
        assert!(s.healthy());
        // From then on the usual rise count applies.
        assert_eq!(run(&s, "---", 5, 3)[2], Some(Transition::Down));
        assert_eq!(run(&s, "++++", 5, 3), vec![None; 4]);
        assert_eq!(run(&s, "+", 5, 3), vec![Some(Transition::Up)]);
    }
}
