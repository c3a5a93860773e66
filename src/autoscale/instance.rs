//! One managed instance and its supervisor task: start, restart after a crash (with
//! exponential backoff), and stop on request.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::process;
use crate::config::Autoscale;
use crate::runtime::{BackendStats, ManagedBackend, PoolStats};
use crate::upstream::ConnPool;

/// Where an instance is in its life. `Running` shows as `starting` or `ready` by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Exited on its own; waiting to be restarted.
    Crashed,
    Draining,
    Stopping,
    Stopped,
}

/// What the status pages show about an instance; written by its supervisor.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub phase: Phase,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started: SystemTime,
    pub started_at: Instant,
    pub last_exit: Option<String>,
    /// Filled by the controller on each tick.
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_ticks: Option<u64>,
    /// Sticky requests: the pinned count at the start of the current window, and the
    /// requests of the last full window (`victim::STICKY_WINDOW`).
    pub sticky_mark: Option<(Instant, u64)>,
    pub sticky_last: u64,
}

impl InstanceInfo {
    /// Its recent sticky requests, given the backend's pinned count now.
    pub fn sticky_recent(&self, pinned: u64) -> u64 {
        let current = self
            .sticky_mark
            .map_or(pinned, |(_, at)| pinned.saturating_sub(at));
        current.max(self.sticky_last)
    }
}

pub struct Instance {
    pub id: String,
    pub port: u16,
    pub backend: ManagedBackend,
    pub info: Mutex<InstanceInfo>,
    /// Its last start attempt failed: the program could not be run, or it exited before
    /// its health check passed.
    start_failed: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Instance {
    pub fn info(&self) -> InstanceInfo {
        match self.info.lock() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut InstanceInfo)) {
        match self.info.lock() {
            Ok(mut i) => f(&mut i),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.update(|i| i.phase = phase);
    }

    /// `starting`, `ready`, `crashed`, `draining`, `stopping` or `stopped`.
    pub fn state(&self) -> &'static str {
        match self.info().phase {
            Phase::Running if self.backend.stats.healthy() => "ready",
            Phase::Running => "starting",
            Phase::Crashed => "crashed",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == "ready"
    }

    /// Whether its last start attempt failed and it is not serving.
    pub fn failed_to_start(&self) -> bool {
        self.start_failed.load(Ordering::Relaxed) && !self.is_ready()
    }

    /// Requests and WebSockets in flight: the cost of stopping it.
    pub fn load(&self) -> u64 {
        let s = &self.backend.stats;
        s.active.load(Ordering::Relaxed) + s.websockets.load(Ordering::Relaxed)
    }

    /// Roll its sticky-request window (called on every tick).
    pub fn note_sticky(&self, now: Instant) {
        let pinned = self.backend.stats.pinned.load(Ordering::Relaxed);
        self.update(|i| match i.sticky_mark {
            // The count began at 0 when the instance was made.
            None => i.sticky_mark = Some((now, 0)),
            Some((at, count))
                if now.saturating_duration_since(at) >= super::victim::STICKY_WINDOW =>
            {
                i.sticky_last = pinned.saturating_sub(count);
                i.sticky_mark = Some((now, pinned));
            }
            Some(_) => {}
        });
    }

    /// Ask the supervisor to stop the process (after draining is done).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Start an instance on `port` and its supervisor. It begins unusable: the pool's health
/// check must pass `rise` times before the balancer may pick it. A failed start wakes the
/// pool's autoscaler (`pool_stats.demand_notify`).
pub fn launch(
    cfg: Arc<Autoscale>,
    pool: &str,
    id: String,
    port: u16,
    workers: usize,
    pool_stats: Option<Arc<PoolStats>>,
) -> Arc<Instance> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stats = BackendStats::default();
    stats.up.store(false, Ordering::Relaxed);
    let (stop, stop_rx) = watch::channel(false);
    let instance = Arc::new(Instance {
        id,
        port,
        backend: ManagedBackend {
            address: addr.to_string(),
            addr,
            weight: 1,
            stats: Arc::new(stats),
            conns: Arc::new(ConnPool::new(addr, workers)),
        },
        info: Mutex::new(InstanceInfo {
            phase: Phase::Running,
            pid: None,
            restarts: 0,
            started: SystemTime::now(),
            started_at: Instant::now(),
            last_exit: None,
            cpu_percent: None,
            rss_bytes: None,
            cpu_ticks: None,
            sticky_mark: None,
            sticky_last: 0,
        }),
        start_failed: AtomicBool::new(false),
        stop,
    });
    tokio::spawn(supervise(
        instance.clone(),
        cfg,
        pool.to_string(),
        stop_rx,
        pool_stats,
    ));
    instance
}

/// Backoff before the n-th consecutive restart: 1s, 2s, 4s ... 30s.
pub fn backoff(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

async fn supervise(
    inst: Arc<Instance>,
    cfg: Arc<Autoscale>,
    pool: String,
    mut stop: watch::Receiver<bool>,
    pool_stats: Option<Arc<PoolStats>>,
) {
    let start_failed = |failed: bool| {
        inst.start_failed.store(failed, Ordering::Relaxed);
        if let (true, Some(s)) = (failed, &pool_stats) {
            s.demand_notify.notify_one();
        }
    };
    let mut consecutive_crashes = 0u32;
    loop {
        let mut child = match process::spawn(&cfg, &pool, &inst.id, inst.port) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pool = %pool, instance = %inst.id, error = %e, "cannot start instance");
                inst.update(|i| {
                    i.phase = Phase::Crashed;
                    i.last_exit = Some(format!("spawn failed: {e}"));
                });
                start_failed(true);
                consecutive_crashes += 1;
                if wait_or_stop(&mut stop, backoff(consecutive_crashes)).await {
                    break;
                }
                continue;
            }
        };
        let pid = child.id();
        let began = Instant::now();
        inst.update(|i| {
            i.pid = pid;
            i.started_at = began;
            i.started = SystemTime::now();
            if i.phase == Phase::Crashed {
                i.phase = Phase::Running;
            }
        });
        tracing::info!(pool = %pool, instance = %inst.id, port = inst.port, pid, "instance started");
        let mut stop_wait = stop.clone();
        tokio::select! {
            status = child.wait() => {
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                // Never route to it while it is down; its health check must pass `rise`
                // times again. Gone before it was ever ready: a failed start.
                let was_up = inst.backend.stats.up.swap(false, Ordering::Relaxed);
                inst.backend.stats.check_successes.store(0, Ordering::Relaxed);
                if *stop.borrow() {
                    inst.update(|i| { i.phase = Phase::Stopped; i.last_exit = Some(how); i.pid = None; });
                    return;
                }
                start_failed(!was_up);
                if began.elapsed() > Duration::from_secs(30) {
                    consecutive_crashes = 0;
                }
                consecutive_crashes += 1;
                let delay = backoff(consecutive_crashes);
                tracing::warn!(pool = %pool, instance = %inst.id, status = %how, restart_in = ?delay, "instance exited; restarting");
                inst.update(|i| {
                    i.phase = Phase::Crashed;
                    i.restarts += 1;
                    i.pid = None;
                    i.last_exit = Some(how);
                });
                if wait_or_stop(&mut stop, delay).await {
                    break;
                }
            }
            _ = async { let _ = stop_wait.wait_for(|s| *s).await; } => {
                inst.set_phase(Phase::Stopping);
                let how = process::stop(&mut child, cfg.stop_grace).await;
                tracing::info!(pool = %pool, instance = %inst.id, how = %how, "instance stopped");
                inst.update(|i| { i.phase = Phase::Stopped; i.last_exit = Some(how); i.pid = None; });
                return;
            }
        }
    }
    inst.update(|i| {
        i.phase = Phase::Stopped;
        i.pid = None;
    });
}

/// Sleep `d`, or return true early when a stop is requested.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let mut waiter = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = async { let _ = waiter.wait_for(|s| *s).await; } => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
