//! One backend of a pool: its address, weight and operator state (`mode`), and its live
//! state (in-flight requests, counters, peak-EWMA latency, idle connections) that survives a
//! reload. Below the balancer and sticky sessions, which read it, and the runtime, whose
//! snapshot holds it.

pub mod histogram;
pub mod load_hook;
pub mod mode;
pub mod tcp_counters;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::upstream::ConnPool;
pub use mode::BackendMode;

/// Linkerd's default: an unmeasured backend is assumed to answer in 30 ms.
const DEFAULT_RTT_NS: f64 = 30_000_000.0;
/// Decay window of the peak-EWMA (Linkerd uses 10 s).
const EWMA_DECAY_NS: f64 = 10_000_000_000.0;

/// A backend as the current snapshot sees it.
#[derive(Debug)]
pub struct Backend {
    /// As written in the config: the name used in metrics and status.
    pub address: String,
    pub addr: SocketAddr,
    /// The balancing weight: the operator's (`POST /backends/state`) or the configured one.
    pub weight: u32,
    /// The configured weight (1 for autoscaled instances).
    pub config_weight: u32,
    /// Configured `disabled` (maintenance): never picked.
    pub disabled: bool,
    /// The operator's state (`POST /backends/state`): `Drain` takes no new requests,
    /// `Maint` no traffic at all.
    pub mode: BackendMode,
    /// The pool's slow-start window, if any.
    pub slow_start: Option<Duration>,
    /// Live state shared with the previous and next snapshot.
    pub stats: Arc<BackendStats>,
    pub conns: Arc<ConnPool>,
}

impl Backend {
    /// A plain HTTP/1.1 backend at `addr` with `weight`, enabled and healthy, as unit tests
    /// of the layers above build them (one worker's connection pool, slow start off).
    #[cfg(test)]
    pub fn for_tests(addr: SocketAddr, weight: u32) -> Backend {
        Backend {
            address: addr.to_string(),
            addr,
            weight,
            config_weight: weight,
            disabled: false,
            mode: Default::default(),
            slow_start: None,
            stats: Arc::new(BackendStats::default()),
            conns: Arc::new(ConnPool::new(addr, 1)),
        }
    }

    /// May the balancer pick this backend for a new request or session now?
    /// (enabled, in the `ready` state, healthy, not ejected, not draining)
    #[inline]
    pub fn usable(&self) -> bool {
        self.accepts_new() && self.stats.healthy() && !self.stats.draining.load(Ordering::Relaxed)
    }

    /// May a request already pinned to this backend (sticky session) still go to it?
    /// Like `usable`, but a draining backend keeps its sessions.
    #[inline]
    pub fn serves_pinned(&self) -> bool {
        self.in_service() && self.stats.healthy()
    }

    /// May this backend take any traffic (not configured `disabled`, not in `maint`)?
    /// Panic mode ignores health, never this. Active checks run only for these.
    #[inline]
    pub fn in_service(&self) -> bool {
        !self.disabled && self.mode != BackendMode::Maint
    }

    /// May it take new requests and sessions, health aside (in service and not drained
    /// by the operator)? What panic mode picks from.
    #[inline]
    pub fn accepts_new(&self) -> bool {
        !self.disabled && self.mode == BackendMode::Ready
    }

    /// Weight in thousandths, scaled down while the backend is in slow start: from 10% of its
    /// weight when it came (back) up to 100% at the end of the window.
    #[inline]
    pub fn weight_milli(&self) -> u64 {
        let full = u64::from(self.weight.max(1)) * 1000;
        match self.ramp_factor() {
            Some(f) => ((full as f64) * f).max(1.0) as u64,
            None => full,
        }
    }

    /// The slow-start factor in [0.1, 1), or `None` when not ramping.
    #[inline]
    pub fn ramp_factor(&self) -> Option<f64> {
        let start = self.stats.ramp_start_ns.load(Ordering::Relaxed);
        if start == 0 {
            return None;
        }
        let window = self.slow_start?.as_nanos() as f64;
        let elapsed = self.stats.now_ns().saturating_sub(start) as f64;
        if elapsed >= window {
            // Done ramping: later picks skip the clock.
            let _ = self.stats.ramp_start_ns.compare_exchange(
                start,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return None;
        }
        Some((elapsed / window).max(0.1))
    }

    #[inline]
    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }
}

/// Counters and gauges of one backend, all atomics: written on the hot path without locks.
#[derive(Debug)]
pub struct BackendStats {
    /// In-flight requests (from pick to the end of the response body).
    pub active: AtomicU64,
    /// Responses by status class: index 0 = failures with no response, 1..=5 = 1xx..5xx.
    pub responses: [AtomicU64; 6],
    /// Connect failures, resets, timeouts: requests that got no usable answer.
    pub failures: AtomicU64,
    /// Sum of time-to-response-headers in microseconds, and its count.
    pub latency_us_sum: AtomicU64,
    pub latency_count: AtomicU64,
    /// Health as decided by active checks (true until a check says otherwise).
    pub up: AtomicBool,
    /// Ejected by passive outlier detection.
    pub ejected: AtomicBool,
    /// Ejections so far (each doubles the next one), and when the last one ended.
    pub ejections: AtomicU32,
    /// Every ejection since start (`ejections` is forgotten after good behaviour).
    pub ejections_total: AtomicU64,
    /// Active checks by result: [passed, failed].
    pub checks: [AtomicU64; 2],
    /// Time from the start of an attempt (connect included) to the response head.
    pub ttfb: histogram::DurationHistogram,
    pub last_lift_ns: AtomicU64,
    /// Consecutive failures seen by outlier detection.
    pub consecutive_failures: AtomicU32,
    /// Consecutive active-check results (only the checker writes them).
    pub check_successes: AtomicU32,
    pub check_failures: AtomicU32,
    /// A backend added while autolb runs: unusable until its first check passes.
    pub awaiting_first_check: AtomicBool,
    /// Draining (autoscaler scale-in, or removed by a reload): takes no new requests or
    /// sessions; requests and WebSockets pinned to it (sticky) may still use it.
    pub draining: AtomicBool,
    /// Open WebSocket (upgraded) connections through this backend.
    pub websockets: AtomicU64,
    /// TCP (`protocol: tcp` listeners) connections and bytes through this backend.
    pub tcp: tcp_counters::TcpBackendCounters,
    /// Requests sent here because a sticky session pinned them (scale-in spares backends
    /// with recent sessions).
    pub pinned: AtomicU64,
    /// Notified when a draining backend's `drain_timeout` is over: its WebSockets close
    /// with 1001 ("going away").
    pub close_websockets: tokio::sync::Notify,
    /// Slow start: when the ramp began (ns since `epoch`, +1), 0 when not ramping.
    pub ramp_start_ns: AtomicU64,
    /// The last active check, for the status page (written by the checker only).
    pub last_check: Mutex<Option<CheckReport>>,
    /// Its WARN lines about failed requests, at most one a second.
    pub log: crate::log_throttle::LogThrottle,
    /// A balancer ordered by load (`least_conn`) to tell of changes of `active` and
    /// `websockets`.
    pub load_hook: load_hook::LoadHookSlot,
    ewma_bits: AtomicU64,
    ewma_stamp_ns: AtomicU64,
    epoch: Instant,
}

impl BackendStats {
    /// One more request (or TCP connection) in flight here.
    #[inline]
    pub fn begin(&self) -> u64 {
        let prev = self.active.fetch_add(1, Ordering::Relaxed);
        self.load_hook.notify();
        prev
    }

    /// One request (or TCP connection) less in flight here.
    #[inline]
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.load_hook.notify();
    }

    /// A WebSocket opened (`1`) or closed (`-1`) here.
    #[inline]
    pub fn websocket(&self, opened: bool) {
        if opened {
            self.websockets.fetch_add(1, Ordering::Relaxed);
        } else {
            self.websockets.fetch_sub(1, Ordering::Relaxed);
        }
        self.load_hook.notify();
    }
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            active: AtomicU64::new(0),
            responses: Default::default(),
            failures: AtomicU64::new(0),
            latency_us_sum: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            up: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            checks: Default::default(),
            ttfb: Default::default(),
            last_lift_ns: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            awaiting_first_check: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            websockets: AtomicU64::new(0),
            tcp: Default::default(),
            pinned: AtomicU64::new(0),
            close_websockets: tokio::sync::Notify::new(),
            ramp_start_ns: AtomicU64::new(0),
            last_check: Mutex::new(None),
            log: Default::default(),
            load_hook: Default::default(),
            ewma_bits: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            ewma_stamp_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// The outcome of the last active check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub ok: bool,
    /// e.g. `status 200`, `connection refused`, `timed out after 1s`.
    pub detail: String,
    pub at: SystemTime,
    pub took: Duration,
}

impl BackendStats {
    /// A backend that starts unusable until its first passing check (added while running).
    pub fn awaiting_check() -> BackendStats {
        let s = BackendStats::default();
        s.up.store(false, Ordering::Relaxed);
        s.awaiting_first_check.store(true, Ordering::Relaxed);
        s
    }

    /// Healthy: up by active checks and not ejected.
    #[inline]
    pub fn healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    /// Nanoseconds since this backend's state was created, plus one (0 means "never").
    pub fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
            + 1
    }

    /// Begin a slow-start ramp now.
    pub fn start_ramp(&self) {
        self.ramp_start_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Count a response by status class.
    #[inline]
    pub fn record_status(&self, status: u16) {
        let class = (status / 100) as usize;
        let idx = if (1..=5).contains(&class) { class } else { 0 };
        self.responses[idx].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.responses[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Record a time-to-response-headers: feeds the average and the peak-EWMA.
    pub fn record_latency(&self, rtt: Duration, now: Instant) {
        self.ttfb.record(rtt);
        let rtt_us = rtt.as_micros().min(u64::MAX as u128) as u64;
        self.latency_us_sum.fetch_add(rtt_us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);

        let rtt_ns = rtt.as_nanos() as f64;
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let prev_stamp = self.ewma_stamp_ns.swap(now_ns, Ordering::Relaxed);
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let next = if rtt_ns > prev {
            // Peak sensitivity: a slow answer is believed at once.
            rtt_ns
        } else {
            let elapsed = now_ns.saturating_sub(prev_stamp) as f64;
            let w = (-elapsed / EWMA_DECAY_NS).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        // Racing updates may lose one sample; the estimate stays sound.
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Peak-EWMA latency estimate in nanoseconds.
    #[inline]
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    pub fn total_responses(&self) -> u64 {
        self.responses
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn mean_latency(&self) -> Option<Duration> {
        let n = self.latency_count.load(Ordering::Relaxed);
        (n > 0).then(|| Duration::from_micros(self.latency_us_sum.load(Ordering::Relaxed) / n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_takes_peaks_at_once_and_decays_slowly() {
        let stats = BackendStats::default();
        let t0 = Instant::now();
        stats.record_latency(Duration::from_millis(500), t0);
        assert_eq!(stats.ewma_ns(), 500_000_000.0);
        // A fast answer 1 s later only moves the estimate by 1 - e^-0.1 (about 9.5%).
        tokio::time::advance(Duration::from_secs(1)).await;
        stats.record_latency(Duration::from_millis(1), Instant::now());
        let ms = stats.ewma_ns() / 1e6;
        assert!((450.0..456.0).contains(&ms), "{ms}");
        // After a long quiet time the fast answers dominate.
        tokio::time::advance(Duration::from_secs(60)).await;
        stats.record_latency(Duration::from_millis(1), Instant::now());
        assert!(stats.ewma_ns() / 1e6 < 5.0);
    }

    #[test]
    fn status_classes() {
        let stats = BackendStats::default();
        stats.record_status(204);
        stats.record_status(503);
        stats.record_failure();
        assert_eq!(stats.responses[2].load(Ordering::Relaxed), 1);
        assert_eq!(stats.responses[5].load(Ordering::Relaxed), 1);
        assert_eq!(stats.responses[0].load(Ordering::Relaxed), 1);
        assert_eq!(stats.total_responses(), 3);
    }
}
