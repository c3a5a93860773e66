//! Lock-free request statistics: a one-minute sliding window of per-second latency
//! histograms (for `/health/performance`: rates over 1 s, 10 s and 60 s, percentiles, and
//! the peak second since start) and the Prometheus duration histograms.

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

    /// Which second `now` falls in, counted from this window's start.
    fn second_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Requests of each complete second still in the window, as (age in seconds, 1 = the
    /// last complete second, up to 60; requests).
    pub fn complete_seconds(&self, now: Instant) -> impl Iterator<Item = (u64, u64)> + '_ {
        let current = self.second_of(now);
        self.slots.iter().filter_map(move |slot| {
            let s = slot.second.load(Ordering::Acquire);
            if s == u64::MAX || s >= current || current - s > SLOTS as u64 {
                return None;
            }
            Some((current - s, slot.requests.load(Ordering::Relaxed)))
        })
    }

    /// Requests per second over the last `secs` complete seconds (at most a minute, and at
    /// most as many as have passed since the window started); `None` before one second
    /// has passed.
    pub fn rate(&self, now: Instant, secs: u64) -> Option<f64> {
        let secs = secs.clamp(1, SLOTS as u64);
        let span = self.second_of(now).min(secs);
        if span == 0 {
            return None;
        }
        let requests: u64 = self
            .complete_seconds(now)
            .filter(|(age, _)| *age <= span)
            .map(|(_, n)| n)
            .sum();
        Some(requests as f64 / span as f64)
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

/// The busiest second seen: requests in it and when it ended (Unix milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    pub requests: u64,
    pub at_ms: u64,
}

/// Peak requests per second since start, overall and per pool (by name, so that a reload
/// keeps them). Folded in from the windows' complete seconds by whoever reads them and by
/// a sampler that runs more often than the windows forget (see `track_peaks`); never
/// touched by the data plane.
#[derive(Debug, Default)]
pub struct Peaks {
    inner: std::sync::Mutex<PeaksInner>,
}

#[derive(Debug, Default)]
struct PeaksInner {
    overall: Peak,
    pools: std::collections::HashMap<String, Peak>,
}

/// Unix time in milliseconds of the end of the complete second `age` seconds ago.
fn age_to_ms(age: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub((age - 1) * 1000)
}

impl Peaks {
    /// Fold the complete seconds of `pools` (name, window) into the peaks; returns the
    /// overall peak and each pool's, in the order given.
    pub fn update<'a>(
        &self,
        pools: impl Iterator<Item = (&'a str, &'a LatencyWindow)>,
        now: Instant,
    ) -> (Peak, Vec<Peak>) {
        // Sum the pools by age (their second boundaries differ by less than a second).
        let mut overall = [0u64; SLOTS + 1];
        let mut per_pool = Vec::new();
        for (name, w) in pools {
            let mut best = Peak::default();
            for (age, n) in w.complete_seconds(now) {
                overall[age as usize] += n;
                if n > best.requests {
                    best = Peak {
                        requests: n,
                        at_ms: age_to_ms(age),
                    };
                }
            }
            per_pool.push((name, best));
        }
        let best_overall = overall
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .max_by_key(|(_, n)| **n)
            .map(|(age, n)| Peak {
                requests: *n,
                at_ms: age_to_ms(age as u64),
            })
            .unwrap_or_default();
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if best_overall.requests > inner.overall.requests {
            inner.overall = best_overall;
        }
        let pools = per_pool
            .into_iter()
            .map(|(name, best)| {
                let kept = inner.pools.entry(name.to_string()).or_default();
                if best.requests > kept.requests {
                    *kept = best;
                }
                *kept
            })
            .collect();
        (inner.overall, pools)
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

    #[tokio::test(start_paused = true)]
    async fn rates_over_one_ten_and_sixty_seconds_follow_the_load_now() {
        let w = LatencyWindow::default();
        let ms = Duration::from_millis(1);
        assert_eq!(w.rate(Instant::now(), 1), None, "no complete second yet");
        // 50 s at 100 requests/s, then 10 s at 1000/s.
        for sec in 0..60u64 {
            let n = if sec < 50 { 100 } else { 1000 };
            for _ in 0..n {
                w.record(ms, false, Instant::now());
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        assert_eq!(w.rate(now, 1), Some(1000.0));
        assert_eq!(w.rate(now, 10), Some(1000.0));
        assert_eq!(w.rate(now, 60), Some(15_000.0 / 60.0));
        let peaks = Peaks::default();
        let (overall, pools) = peaks.update([("web", &w)].into_iter(), now);
        assert_eq!(overall.requests, 1000);
        assert_eq!(pools[0].requests, 1000);
        // Idle for 5 s: the 1 s rate is 0 at once, the 10 s one halves.
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert_eq!(w.rate(now, 1), Some(0.0));
        assert_eq!(w.rate(now, 10), Some(500.0));
        // A minute later the window is empty, and the peak stays.
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert_eq!(w.rate(now, 60), Some(0.0));
        let (overall, _) = peaks.update([("web", &w)].into_iter(), now);
        assert_eq!(overall.requests, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_peak_adds_pools_second_by_second() {
        let (a, b) = (LatencyWindow::default(), LatencyWindow::default());
        let ms = Duration::from_millis(1);
        for (n_a, n_b) in [(10, 1), (1, 10), (6, 6)] {
            for _ in 0..n_a {
                a.record(ms, false, Instant::now());
            }
            for _ in 0..n_b {
                b.record(ms, false, Instant::now());
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let (overall, pools) =
            Peaks::default().update([("a", &a), ("b", &b)].into_iter(), Instant::now());
        assert_eq!(overall.requests, 12);
        assert_eq!((pools[0].requests, pools[1].requests), (10, 10));
    }
}
