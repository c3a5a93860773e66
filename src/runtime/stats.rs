//! Lock-free request statistics: a one-minute sliding window of per-second latency
//! histograms (for `/health/performance`) and a Prometheus duration histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 60;
/// Log-linear buckets over microseconds: 8 sub-buckets per power of two (<= 12.5% error).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
pub const BUCKETS: usize = 256;

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let mant = (us >> (exp - SUB_BITS)) & (SUB - 1);
    let idx = (exp - SUB_BITS + 1) as u64 * SUB + mant;
    (idx as usize).min(BUCKETS - 1)
}

/// Upper edge of a bucket in microseconds.
pub fn bucket_upper_us(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx + 1;
    }
    let exp = idx / SUB + SUB_BITS as u64 - 1;
    let mant = idx % SUB;
    (SUB + mant + 1) << (exp - SUB_BITS as u64)
}

struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Requests, errors and latencies of the last minute, in one-second slots.
pub struct LatencyWindow {
    epoch: Instant,
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for LatencyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyWindow").finish_non_exhaustive()
    }
}

/// What a window says about its last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }
}

impl LatencyWindow {
    #[inline]
    pub fn record(&self, latency: Duration, error: bool, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread moved the slot to a new second: clear what the old second left.
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for b in slot.buckets.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        slot.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Add this window's last `secs` seconds (at most a minute) into `acc` (bucket counts)
    /// and return requests, errors.
    pub fn merge_into(&self, acc: &mut [u64; BUCKETS], now: Instant, secs: u64) -> (u64, u64) {
        let current = now.saturating_duration_since(self.epoch).as_secs();
        let age = secs.clamp(1, SLOTS as u64);
        let (mut requests, mut errors) = (0, 0);
        for slot in self.slots.iter() {
            let s = slot.second.load(Ordering::Acquire);
            if s == u64::MAX || s > current || current - s >= age {
                continue;
            }
            requests += slot.requests.load(Ordering::Relaxed);
            errors += slot.errors.load(Ordering::Relaxed);
            for (a, b) in acc.iter_mut().zip(slot.buckets.iter()) {
                *a += b.load(Ordering::Relaxed);
            }
        }
        (requests, errors)
    }

    /// Seconds this window has covered, up to a minute (for requests/s).
    pub fn span_secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch)
            .as_secs_f64()
            .clamp(1.0, SLOTS as f64)
    }

    pub fn summary(&self, now: Instant) -> WindowSummary {
        summarize(std::iter::once(self), now)
    }

    /// The last `secs` seconds only (the autoscaler's short window).
    pub fn summary_recent(&self, now: Instant, secs: u64) -> WindowSummary {
        summarize_recent(std::iter::once(self), now, secs)
    }
}

/// One summary over several windows (e.g. every pool): their buckets are merged.
pub fn summarize<'a>(
    windows: impl Iterator<Item = &'a LatencyWindow>,
    now: Instant,
) -> WindowSummary {
    summarize_recent(windows, now, SLOTS as u64)
}

/// Like `summarize`, over the last `secs` seconds.
pub fn summarize_recent<'a>(
    windows: impl Iterator<Item = &'a LatencyWindow>,
    now: Instant,
    secs: u64,
) -> WindowSummary {
    let mut acc = [0u64; BUCKETS];
    let (mut requests, mut errors, mut span) = (0, 0, 1.0f64);
    for w in windows {
        let (r, e) = w.merge_into(&mut acc, now, secs);
        requests += r;
        errors += e;
        span = span.max(w.span_secs(now).min(secs.max(1) as f64));
    }
    let total: u64 = acc.iter().sum();
    let pct = |q: f64| -> Duration {
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in acc.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(bucket_upper_us(i));
            }
        }
        Duration::from_micros(bucket_upper_us(BUCKETS - 1))
    };
    WindowSummary {
        requests,
        errors,
        rps: requests as f64 / span,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
    }
}

/// Upper bounds (seconds) of `autolb_request_duration_seconds`.
pub const HISTOGRAM_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of request durations; `counts` has one extra slot for +Inf.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    pub counts: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    pub sum_us: AtomicU64,
}

impl DurationHistogram {
    #[inline]
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = HISTOGRAM_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(HISTOGRAM_BOUNDS.len());
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            65_000,
            1_000_000,
            3_600_000_000,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            last = b;
            let upper = bucket_upper_us(b);
            assert!(upper > us, "{us} -> {upper}");
            assert!(upper as f64 <= (us as f64) * 1.126 + 1.0, "{us} -> {upper}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_percentiles_and_expiry() {
        let w = LatencyWindow::default();
        for i in 0..100u64 {
            w.record(Duration::from_millis(i + 1), i >= 98, Instant::now());
        }
        let s = w.summary(Instant::now());
        assert_eq!((s.requests, s.errors), (100, 2));
        let p50 = s.p50.as_secs_f64() * 1000.0;
        let p99 = s.p99.as_secs_f64() * 1000.0;
        assert!((50.0..=57.0).contains(&p50), "{p50}");
        assert!((99.0..=112.0).contains(&p99), "{p99}");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(w.summary(Instant::now()).requests, 0);
    }
}
